"""Public helpers for testing profiles, ours and third parties', the way we test ours.

- :mod:`.clock`: :class:`FakeClock` to drive a core matcher by hand (unit tests, no I/O), :func:`wait_until`.
- :mod:`.server`: :func:`serve` starts a real server on 127.0.0.1 with an ephemeral port.
- :mod:`.websocket`: :func:`ws_connect`, :func:`recv_json`, :func:`assert_silent`, :func:`closed_code`,
  :func:`ws_exchange` for WebSocket clients (needs the ``websockets`` package: ``pip install rendezvous[test]``).
- :mod:`.http`: :func:`http_call` (one HTTP/1.1 request per connection, for many concurrent long-polls) and
  :class:`LongPoll` (a channel over the long-poll bridge).
- :mod:`.webtransport`: :func:`wt_connect`, :class:`WebTransportSessionClient`, :func:`h3_call` (aioquic).
- :mod:`.tls`: :func:`self_signed_certificate`.
- :mod:`.conformance`: :func:`check_channel`, what every transport's channel must do.
"""

from __future__ import annotations

from rendezvous.testing.clock import FakeClock, wait_until
from rendezvous.testing.http import HttpReply, LongPoll, http_call
from rendezvous.testing.server import serve
from rendezvous.testing.tls import self_signed_certificate
from rendezvous.testing.websocket import assert_silent, closed_code, recv_frame, recv_json, ws_connect, ws_exchange
from rendezvous.testing.webtransport import WebTransportClient, WebTransportSessionClient, h3_call, wt_connect

__all__ = [
    "FakeClock", "HttpReply", "LongPoll", "WebTransportClient", "WebTransportSessionClient", "assert_silent",
    "closed_code", "h3_call", "http_call", "recv_frame", "recv_json", "self_signed_certificate", "serve",
    "wait_until", "ws_connect", "ws_exchange", "wt_connect",
]
