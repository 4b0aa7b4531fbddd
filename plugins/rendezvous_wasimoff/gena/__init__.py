"""Generation A, the WebTransport era (spec wasimoff.md §1 and §7), on the same broker core.

Providers open a WebTransport session to ``/transport``. Their first bidirectional stream is
the control stream (MessagePack values ``{type, message}``: ``hello``, ``providerinfo``,
``poolinfo``); the broker opens a second one and calls the provider over it with Go's
``net/rpc`` framing in MessagePack: ``ping``, ``fs:list``, ``fs:probe``, ``fs:upload``, ``run``.
Clients use ``/api/broker/v1/upload`` and ``/api/broker/v1/run``.

Every task, whichever API submitted it, is a gen-C ``Task.Wasip1.Request`` in the one
dispatcher, so either generation's providers run either generation's tasks; ``poolinfo.pool``
and ``ProviderResources.concurrency`` are both the provider's capacity. A gen-A provider runs
what ``run`` can express: tasks with a zip rootfs or artifacts from a gen-C client, and Pyodide
tasks, need a gen-C provider (capability ``rootfs`` / ``pyodide``). What a gen-A exec entry
adds (loadfs, datafile, trace) travels on the task (:class:`~rendezvous_wasimoff.tasks.GenAExec`).

``generation.py`` puts the routes together; ``transport.py`` is the provider endpoint and
``provider.py`` one provider on it (the broker's Worker); ``rpc.py`` the MessagePack RPC client;
``api.py`` the client API; ``translate.py`` the conversions between gen-A and gen-C shapes.
"""

from rendezvous_wasimoff.gena.generation import GenerationA
from rendezvous_wasimoff.gena.provider import GenAProvider
from rendezvous_wasimoff.gena.rpc import BadReply, RpcFailed, read_listing

__all__ = ["BadReply", "GenAProvider", "GenerationA", "RpcFailed", "read_listing"]
