"""Transports: thin adapters that carry a profile's exchanges over bytes and connections.

A transport knows HTTP, WebSocket or WebTransport; it never knows a profile's protocol.
The seams are :class:`rendezvous.transports.base.Channel` (a bidirectional message
channel) and :class:`rendezvous.transports.base.HttpRequest` / ``HttpResponse``.
"""
