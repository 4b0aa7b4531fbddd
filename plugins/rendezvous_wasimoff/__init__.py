"""The wasimoff profile: a broker for WebAssembly tasks on volunteer providers (generation C)."""

from rendezvous_wasimoff.profile import WasimoffProfile, WasimoffSettings

profile = WasimoffProfile()

__all__ = ["WasimoffProfile", "WasimoffSettings", "profile"]
