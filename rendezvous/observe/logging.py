"""One logging setup for the whole process: structlog, key=value events.

Console rendering in a terminal, JSON lines otherwise. Client IP addresses are scrubbed from
every event unless ``unsafe_logging`` is on (as Snowflake's ``--unsafe-logging``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
import time
from typing import Any

import structlog

from rendezvous.core.limits import KeyedRateLimiter

SCRUBBED = "[scrubbed]"

# Candidate tokens; each is confirmed with ipaddress so that version strings, times and
# hex ids are left alone.
_IPV4 = re.compile(r"(?<![\w.])((?:\d{1,3}\.){3}\d{1,3})(?![\w.])")
_IPV6 = re.compile(r"(\[)?(?<![\w:.])((?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3}))(?![\w:.])(?(1)\])")


def _replace_ip(match: re.Match[str]) -> str:
    token = match.group(match.re.groups)  # the address without brackets
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return match.group(0)
    return SCRUBBED


def scrub(text: str) -> str:
    """Replace every IPv4/IPv6 address in ``text`` with ``[scrubbed]``."""
    if "." not in text and ":" not in text:
        return text
    return _IPV6.sub(_replace_ip, _IPV4.sub(_replace_ip, text))


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_scrub_value(v) for v in value)
    return value


#: Keys that carry the server's own addresses (where it listens), never a client's.
SERVER_ADDRESS_KEYS = frozenset({"url", "listen"})


def scrub_processor(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k in SERVER_ADDRESS_KEYS else _scrub_value(v) for k, v in event.items()}


class RateLimit:
    """A structlog processor: each event (by its name) at most ``rate`` lines a second, in bursts
    of ``burst``; the lines a flood suppresses are counted, and the next line of that event
    carries ``suppressed=N``. So no flood of bad input can fill the disk, and none goes unseen.
    """

    def __init__(self, rate: float = 10.0, burst: float = 50.0, clock: Any = time.monotonic) -> None:
        self.limiter = KeyedRateLimiter(rate, burst, max_keys=4096)
        self.suppressed: dict[str, int] = {}
        self.clock = clock

    def refuse(self, key: str) -> bool:
        """Whether a line of event ``key`` is over the rate now (then it is counted, not written)."""
        if self.limiter.allow(key, self.clock()):
            return False
        if len(self.suppressed) < 4096 or key in self.suppressed:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return True

    def annotate(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        """The processor half: an admitted line carries the count its event had suppressed."""
        if self.suppressed:
            missed = self.suppressed.pop(str(event.get("event", "")), 0)
            if missed:
                event["suppressed"] = missed
        return event

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if self.refuse(str(event.get("event", ""))):
            raise structlog.DropEvent
        return self.annotate(logger, method, event)


def rate_limited(base: type, limit: RateLimit) -> type:
    """``base`` (a structlog bound logger class) whose enabled level methods ask ``limit`` first,
    before an event dict is built: a suppressed line (a flood, or a busy server's per-request
    events) costs a token check, not the processor chain."""
    namespace: dict[str, Any] = {}
    for name in ("debug", "info", "warning", "warn", "error", "err", "exception", "critical", "fatal", "msg"):
        method = getattr(base, name, None)
        if method is None or getattr(method, "__name__", "") == "_nop":
            continue

        def limited(self: Any, event: Any = None, *args: Any, _method: Any = method, **kw: Any) -> Any:
            if limit.refuse(str(event)):
                return None
            return _method(self, event, *args, **kw)

        namespace[name] = limited
    return type(f"RateLimited{base.__name__}", (base,), namespace)


def configure(*, unsafe_logging: bool = False, log_format: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog (and the stdlib loggers that hypercorn/uvicorn use) once."""
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if log_format == "console" else structlog.processors.JSONRenderer()
    )
    limit = RateLimit()
    processors: list[Any] = [
        limit.annotate,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # exc_info (ours: True; stdlib records: a tuple) -> "exception": the formatted traceback,
        # in both formats, before scrubbing: tracebacks may quote client addresses.
        structlog.processors.format_exc_info,
    ]
    if not unsafe_logging:
        processors.append(scrub_processor)
    processors.append(renderer)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=processors,
        wrapper_class=rate_limited(structlog.make_filtering_bound_logger(numeric), limit),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Route the servers' stdlib logging through the same scrubbing renderer.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *processors[2:]],
            foreign_pre_chain=[structlog.stdlib.add_log_level],
        )
    )
    # asyncio: "Exception in callback" / "Task exception was never retrieved" reports.
    for name in ("hypercorn.error", "uvicorn", "uvicorn.error", "rendezvous", "asyncio"):
        stdlib_logger = logging.getLogger(name)
        stdlib_logger.handlers[:] = [handler]
        stdlib_logger.setLevel(max(numeric, logging.WARNING) if name != "rendezvous" else numeric)
        stdlib_logger.propagate = False


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
