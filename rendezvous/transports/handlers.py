"""One way to run a route's handler, whatever carries it (ASGI, native, HTTP/3, the bridges).

The carrier parses a request and writes a response; between the two, :func:`run_exchange`
decides: the route's method rule (405), the body cap, the handler, and what a handler
exception becomes (a logged 500 with a request id; never a traceback to the client, never a
silent hang). It also refuses to let a response carry a header that could split it: peer
text (a provider's name, say) that reaches a header with a CR, LF or other control
character, or a character outside Latin-1, is a 500 here rather than a forged header there.
"""

from __future__ import annotations

import re
import secrets

from rendezvous.observe.logging import get_logger
from rendezvous.transports.base import (
    Channel,
    ChannelClosed,
    ChannelRoute,
    ExchangeRoute,
    Forget,
    HttpRequest,
    HttpResponse,
    Respond,
    SessionRoute,
)

log = get_logger("rendezvous.exchange")

# A header name is an RFC 9110 token; a value is visible Latin-1 with spaces and tabs inside.
_BAD_NAME = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")


# Headers found fine before (a profile's constant headers, mostly): a set lookup, not two scans.
_FINE: set[tuple[str, str]] = set()
_FINE_MAX = 4096


def header_problem(headers: object) -> str | None:
    """Why ``headers`` (name, value pairs) cannot be written as they are, or None."""
    for pair in headers:  # type: ignore[attr-defined]
        if pair in _FINE:
            continue
        name, value = pair
        if not name or _BAD_NAME.search(name):
            return f"bad header name {name!r}"
        if _BAD_VALUE.search(value):
            return f"bad value for header {name!r}"
        if len(_FINE) < _FINE_MAX:
            _FINE.add((name, value))
    return None


def internal_error(path: str, reason: str | None = None) -> HttpResponse:
    """A 500 the client can quote (a request id), logged here with the exception if any."""
    request_id = secrets.token_hex(6)
    if reason is None:
        # Called from an except block: logs the exception being handled.
        log.exception("handler failed", path=path, request_id=request_id)  # noqa: LOG004
    else:
        log.error("handler failed", path=path, request_id=request_id, reason=reason)
    return HttpResponse.text(500, f"internal server error (request {request_id})\n")


async def run_exchange(route: ExchangeRoute, request: HttpRequest, too_large: bool = False) -> HttpResponse:
    """The response to ``request`` on ``route``; ``too_large``: the body went over the route's cap.

    Cancellation (the client hung up) propagates; every other exception is a logged 500.
    """
    refused = route.refusal(request.method)
    if refused is not None:
        return refused
    if too_large:
        return HttpResponse(route.too_large_status)
    try:
        response = await route.handler(request)
    except Exception:
        return internal_error(route.path)
    if response.headers and (problem := header_problem(response.headers)) is not None:
        return internal_error(route.path, problem)
    return response


def run_exchange_now(route: ExchangeRoute, request: HttpRequest, too_large: bool, respond: Respond) -> Forget | None:
    """:func:`run_exchange` for a route's ``immediate`` handler: ``respond`` gets the response,
    now or later (the same rules: 405, the body cap, a logged 500 for an exception or a bad
    header); returns what to call if the client leaves before it. ``respond`` must ignore
    a second call (a handler that raises after responding)."""
    refused = route.refusal(request.method)
    if refused is not None:
        respond(refused)
        return None
    if too_large:
        respond(HttpResponse(route.too_large_status))
        return None
    path = route.path

    def checked(response: HttpResponse) -> None:
        if response.headers and (problem := header_problem(response.headers)) is not None:
            response = internal_error(path, problem)
        respond(response)

    try:
        return route.immediate(request, checked)  # type: ignore[misc]
    except Exception:
        respond(internal_error(path))
        return None


async def run_channel(route: ChannelRoute | SessionRoute, channel: Channel) -> None:
    """Run ``route``'s handler on ``channel``; close the channel when it returns.

    An unexpected exception closes that one channel with 1011 and is logged once; the
    peer having gone (:class:`ChannelClosed`) is not an error.
    """
    try:
        await route.handler(channel)
    except ChannelClosed:
        pass
    except Exception:
        log.exception("channel handler failed", path=route.path)
        await channel.close(1011, "internal error")
    finally:
        await channel.close(1000)
