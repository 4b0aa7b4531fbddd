"""The generation-A provider endpoint ``/transport`` (a WebTransport session): the control stream
the provider opens (MessagePack ``{type, message}`` values), the RPC stream the broker opens,
and the connect sequence: ``ping``, ``fs:list``, every stored file probed and uploaded, admission."""

from __future__ import annotations

from typing import Any

import anyio
import msgpack

from rendezvous.transports.base import ChannelClosed
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.gena.provider import GenAProvider
from rendezvous_wasimoff.gena.rpc import BadReply, MsgpackRpcClient, RpcFailed, read_listing
from rendezvous_wasimoff.storage import off_loop

GEN_A_PROVIDES = frozenset({"wasip1"})  # what a run call can express: no zip rootfs, no Pyodide


class ProviderTransport:
    def __init__(self, broker: Broker, providers: dict[GenAProvider, None]) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.providers = providers  # admitted gen-A providers, shared with the client API

    async def handle(self, session: Any) -> None:
        info = session.info
        await session.accept()
        name = f"{info.client_host}:{info.client_port}" if info.client_port else str(info.client_host)
        provider = GenAProvider(self.broker, session, name)
        try:
            with anyio.fail_after(self.settings.listing_timeout):
                control = await session.accept_stream()
        except TimeoutError:
            await session.close(1002, "no control stream")
            return
        # Open the RPC stream at once: the provider sends nothing on the control stream
        # before it sees it (spec §7.3).
        provider.rpc = MsgpackRpcClient(session.open_stream(), self.settings.max_message_size)
        broker = self.broker
        storage = broker.storage
        close_code, close_reason = 1000, ""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._rpc_reader, provider, tg.cancel_scope)
            tg.start_soon(self._control_reader, provider, control, tg.cancel_scope)
            try:
                with anyio.fail_after(self.settings.listing_timeout):
                    if await provider.rpc.call("ping", "ping") != "pong":
                        raise RpcFailed("ping was not answered with pong")
                    provider.files.update(read_listing(await provider.rpc.call("fs:list", None)))
                # (read in a worker thread: on a cluster the files may come from Redis)
                for stored_name in await off_loop(storage, storage.names):
                    found = await off_loop(storage, storage.get, stored_name)
                    if found is not None:
                        await provider.ensure(stored_name, found[0])
                refs = await off_loop(storage, lambda: [r for r in (storage.resolve(n) for n in provider.files) if r])
                self.providers[provider] = None
                await broker.admit(provider, refs, provider.capacity, GEN_A_PROVIDES, generation="A")
                await anyio.sleep_forever()
            except (RpcFailed, ChannelClosed, TimeoutError, ValueError) as exc:
                broker.log.info("provider failed to register", provider=name, generation="A", error=str(exc)[:200])
                if isinstance(exc, BadReply):
                    close_code, close_reason = 1007, str(exc)
            finally:
                with anyio.CancelScope(shield=True):
                    tg.cancel_scope.cancel()
                    self.providers.pop(provider, None)
                    await broker.retire(provider, generation="A")
                    await session.close(close_code, close_reason)

    async def _rpc_reader(self, provider: GenAProvider, scope: anyio.CancelScope) -> None:
        try:
            assert provider.rpc is not None
            await provider.rpc.read_forever()
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self.broker.log.info("bad rpc stream from provider", provider=provider.name, error=str(exc)[:200])
            await provider.session.close(1007, "bad rpc stream")
        finally:
            scope.cancel()

    async def _control_reader(self, provider: GenAProvider, control: Any, scope: anyio.CancelScope) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1024 * 1024, strict_map_key=False)
        try:
            while True:
                data = await control.receive()
                if not data:
                    break
                unpacker.feed(data)
                for value in unpacker:
                    await self._on_control(provider, value)
        except ChannelClosed:
            pass
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self.broker.log.info("bad control stream from provider", provider=provider.name, error=str(exc)[:200])
            await provider.session.close(1007, "bad control stream")
        finally:
            scope.cancel()

    async def _on_control(self, provider: GenAProvider, value: Any) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("message"), dict):
            return  # the original logs and ignores what it does not know
        kind, message = value.get("type"), value["message"]
        if kind == "poolinfo":
            pool = message.get("pool")
            if isinstance(pool, int) and not isinstance(pool, bool):
                provider.capacity = max(0, pool)
                if provider in self.providers:
                    await self.broker.set_capacity(provider, provider.capacity)
        elif kind == "providerinfo":
            provider.info = {k: v for k, v in message.items() if isinstance(k, str) and isinstance(v, str)}
        elif kind == "hello":
            pass
