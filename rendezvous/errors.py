"""The framework's exceptions: flat, specific, and each says whose fault it is."""


class RendezvousError(Exception):
    """Base class for everything the framework raises on purpose."""


class ConfigError(RendezvousError):
    """The operator's configuration is invalid. The message is one line, meant to be shown as is."""


class PluginError(RendezvousError):
    """A plugin could not be found or loaded."""
