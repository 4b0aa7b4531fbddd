"""Every access to aioquic's private attributes, in one place (the server and the test clients).

Checked against aioquic 1.7.2 (pyproject allows ``aioquic>=1.2``). When aioquic changes, this is
the one file to fix; ``tests/unit/test_webtransport_session.py`` exercises each function against
the installed aioquic, in memory. Everything else in rendezvous uses aioquic's public API only
(a protocol keeps the ``QuicConnection`` it is constructed with rather than reading ``_quic``).
"""

from __future__ import annotations

from typing import Any

from aioquic.h3.connection import FrameType, H3Connection
from aioquic.quic.connection import QuicConnection


def peer_address(quic: QuicConnection) -> tuple[Any, Any]:
    """``(host, port)`` of the peer, ``(None, None)`` before one is known."""
    public = getattr(quic, "get_peer_address", None)  # aioquic 1.3+
    addr = public() if public is not None else (quic._network_paths[0].addr if quic._network_paths else None)
    return (addr[0], addr[1]) if addr else (None, None)


def register_bidi_stream(h3: H3Connection, stream_id: int, session_id: int) -> None:
    """Mark a bidirectional stream *we* opened with ``create_webtransport_stream`` as a
    WebTransport stream of ``session_id``.

    aioquic 1.7.2 does not (spec webtransport.md, pitfall 10): the peer's bytes on it would then
    be parsed as HTTP/3 frames and the connection closed with H3_FRAME_ERROR.
    """
    with h3._get_or_create_stream(stream_id) as stream:
        stream.frame_type = FrameType.WEBTRANSPORT_STREAM
        stream.session_id = session_id


def unacked_bytes(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged by the peer (0 for a stream gone)."""
    stream = quic._streams.get(stream_id)
    return len(stream.sender._buffer) if stream is not None else 0


def listening_port(server: Any) -> int:
    """The UDP port an ``aioquic.asyncio.serve`` server is bound to."""
    return server._transport.get_extra_info("sockname")[1]


def replace_configuration(server: Any, configuration: Any) -> None:
    """Connections an ``aioquic.asyncio.serve`` server accepts from now on use ``configuration``
    (open connections keep theirs)."""
    server._configuration = configuration


def peer_certificate(quic: QuicConnection) -> Any:
    """The certificate (``cryptography`` x509) the peer presented, or None."""
    return getattr(quic.tls, "_peer_certificate", None)
