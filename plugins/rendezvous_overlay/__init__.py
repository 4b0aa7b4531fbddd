"""The overlay profile: a webrtc-bootstrap 4.4.1 compatible server for tree overlays.

Newcomers open ``/join`` WebSockets and get a 32-hex id; their signals go to the root of the
overlay (``/<secret>/webrtc-bootstrap-root``) unless they name a ``destination`` id.
"""

from rendezvous_overlay.profile import OverlayProfile, OverlaySettings

profile = OverlayProfile()

__all__ = ["OverlayProfile", "OverlaySettings", "profile"]
