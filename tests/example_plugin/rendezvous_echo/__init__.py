"""A complete rendezvous profile in one file: ``/echo`` echoes every frame, with a prefix."""

import attrs

from rendezvous import ChannelRoute, setting


@attrs.frozen
class EchoSettings:
    prefix: str = setting("echo: ", help="text put before every echoed frame", env=["ECHO_PREFIX"])


class EchoRuntime:
    def __init__(self, context):
        self.prefix = context.settings.prefix
        self.routes = [ChannelRoute("/echo", self.echo, max_message_size=1024)]
        self.static_dir = None

    async def echo(self, channel):
        await channel.accept()
        while True:
            frame = await channel.receive()  # raises ChannelClosed when the peer goes
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            await channel.send(self.prefix + text)

    async def run(self):
        """No timers: nothing to do in the background."""


class EchoProfile:
    name = "echo"
    summary = "echo frames back (example plugin)"
    settings = EchoSettings
    default_port = 8765
    server_env = {}

    def create(self, context):
        return EchoRuntime(context)


profile = EchoProfile()
