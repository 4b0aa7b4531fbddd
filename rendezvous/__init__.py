"""rendezvous: one core for the ways peers find each other on the web.

Embedding::

    import anyio, rendezvous

    async def main():
        config = rendezvous.make_config("overlay", server={"host": "127.0.0.1", "port": 0},
                                        settings={"overlay": {"secret": "s3cret"}})
        async with rendezvous.running(config) as server:
            print(server.url)       # e.g. http://127.0.0.1:41234
            await anyio.sleep_forever()
"""

from rendezvous.config import Config, ServerSettings, load_config
from rendezvous.errors import ConfigError, PluginError, RendezvousError
from rendezvous.profile import Profile, ProfileContext, ProfileRuntime
from rendezvous.server import RunningServer, make_config, running, serve
from rendezvous.settings import setting
from rendezvous.transports.base import (
    Channel,
    ChannelClosed,
    ChannelRoute,
    ConnectionInfo,
    ExchangeRoute,
    HttpRequest,
    HttpResponse,
    SessionRoute,
)

__version__ = "0.1.0"

__all__ = [
    "Channel", "ChannelClosed", "ChannelRoute", "Config", "ConfigError", "ConnectionInfo", "ExchangeRoute",
    "HttpRequest", "HttpResponse", "PluginError", "Profile", "ProfileContext", "ProfileRuntime", "RendezvousError",
    "RunningServer", "ServerSettings", "SessionRoute", "load_config", "make_config", "running", "serve", "setting",
]
