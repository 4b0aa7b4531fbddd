"""The running wasimoff profile: the broker core and the parts that speak to the world through it."""

from __future__ import annotations

import anyio

from rendezvous.profile import ProfileContext
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.gena import GenerationA
from rendezvous_wasimoff.genc import GenerationC
from rendezvous_wasimoff.settings import WasimoffSettings
from rendezvous_wasimoff.storage_routes import StorageRoutes


class WasimoffRuntime:
    def __init__(self, context: ProfileContext) -> None:
        settings: WasimoffSettings = context.settings
        self.settings = settings
        self.log = context.log
        self.broker = Broker(settings, context.log, context.clock, context.metrics, context.backend)
        self.gen_c = GenerationC(self.broker)
        self.gen_a = GenerationA(self.broker, context.webtransport)
        # What tests look at: storage, the dispatcher, gen C's admitted providers (gen A's: gen_a.providers).
        self.storage = self.broker.storage
        self.dispatch = self.broker.dispatch
        self.status = self.broker.status  # the status page's numbers
        self.providers = self.gen_c.providers
        self.routes = [
            *self.gen_c.routes,
            *StorageRoutes(self.storage, settings.max_upload).routes,
            *self.gen_a.routes,
        ]
        static = settings.static_files
        self.static_dir = static if static is not None and static.is_dir() else None
        if static is not None and self.static_dir is None:
            self.log.info("no static provider app served", static_files=str(static))

    def describe(self, url: str) -> list[tuple[str, dict[str, str]]]:
        ws = "ws" + url[4:]
        return [("providers connect", {"url": f"{ws}/api/provider/ws"}), ("clients submit", {"url": f"{url}/api/client/"})]

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.broker.run)
            tg.start_soon(self.gen_c.run)
