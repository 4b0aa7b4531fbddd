"""WebTransport transport (HTTP/3 over QUIC, aioquic): channel routes over WebTransport sessions.

A session opened with an extended CONNECT to a channel route's path (``/join``, ...) is one
:class:`rendezvous.transports.base.Channel`. Messages travel on the first bidirectional
stream the client opens in the session, framed as ``u32 length (big endian) | u8 kind
(0 text, 1 binary) | payload``; the client opens that stream as soon as the session is ready.
The client may also send a message as a datagram or as a unidirectional stream (each one is
``u8 kind | payload``, a uni stream ended by FIN); the server sends on the bidirectional stream.
Sends wait while more than ``HIGH_WATER`` bytes are unacknowledged (backpressure), woken by the
peer's acknowledgements. A :class:`SessionRoute` gets the whole :class:`WebTransportSession`
instead (raw streams). Closing sends a ``CLOSE_WEBTRANSPORT_SESSION`` capsule carrying the close
code (1000, 1009, ...) and ends the CONNECT stream. Capsules the peer sends (GREASE, close) are
parsed; a close capsule ends the channel with the peer's code.

Plain HTTP/3 requests (not CONNECT) reach the exchange routes, as over HTTP/1.1 (the original
wasimoff broker serves every route over HTTP/3 too); static files are not served over HTTP/3.

The UDP listener runs in the same event loop as the HTTP server and starts and stops with it.
WebTransport here negotiates draft-02 (what Chromium 156 speaks; spec webtransport.md).

Modules: ``listener`` (the UDP listener, QUIC configuration, certificates), ``h3`` (the HTTP/3
protocol per connection: requests, extended CONNECT, backpressure), ``session`` (session and
channel adapters), ``capsules`` and ``framing`` (sans-IO wire formats), ``compat`` (every
private aioquic attribute we touch, for the server and the test clients alike).
"""

from rendezvous.transports.webtransport.capsules import (
    CLOSE_WEBTRANSPORT_SESSION,
    Capsule,
    CapsuleError,
    CapsuleReader,
    PeerStreams,
    close_capsule,
    parse_capsules,
    parse_close,
    parse_stream_prefix,
)
from rendezvous.transports.webtransport.framing import BINARY, TEXT, FramingError, MessageReader, frame_message
from rendezvous.transports.webtransport.h3 import HIGH_WATER, H3Protocol, offered_protocols
from rendezvous.transports.webtransport.listener import WebTransportTransport, server_configuration
from rendezvous.transports.webtransport.session import WebTransportChannel, WebTransportSession, WebTransportStream

__all__ = [
    "BINARY", "CLOSE_WEBTRANSPORT_SESSION", "HIGH_WATER", "TEXT", "Capsule", "CapsuleError", "CapsuleReader",
    "FramingError", "H3Protocol", "MessageReader", "PeerStreams", "WebTransportChannel", "WebTransportSession",
    "WebTransportStream", "WebTransportTransport", "close_capsule", "frame_message", "offered_protocols",
    "parse_capsules", "parse_close", "parse_stream_prefix", "server_configuration",
]
