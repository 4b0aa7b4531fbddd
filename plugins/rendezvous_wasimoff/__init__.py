"""The wasimoff profile: a broker for WebAssembly tasks on volunteer providers (generations C and A).

Layout: ``broker.py`` is the core both generations share; ``genc/`` and ``gena/`` speak the two
protocols; ``runtime.py`` puts them together; ``peer/`` is our Python provider, a separate peer
(docs/profiles/wasimoff.md, "Code layout").
"""

from rendezvous_wasimoff.profile import WasimoffProfile, WasimoffSettings

profile = WasimoffProfile()

__all__ = ["WasimoffProfile", "WasimoffSettings", "profile"]
