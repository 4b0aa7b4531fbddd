"""Generation C, the current wasimoff protocol: providers on a WebSocket speaking protobuf (or
protojson) Envelopes; clients on ConnectRPC, HTTP exec or the client socket.

``generation.py`` puts the routes together; ``providers.py`` is the provider socket and
``session.py`` one provider on it (the broker's Worker); ``client_socket.py``, ``connect.py``
and ``http_exec.py`` are the three client APIs; ``negotiate.py`` picks the subprotocol.
"""

from rendezvous_wasimoff.genc.generation import GenerationC

__all__ = ["GenerationC"]
