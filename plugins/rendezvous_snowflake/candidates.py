"""Where an AMP-cache or SQS client is: the addresses of its offer's ICE candidates.

Those clients reach the broker through a cache or a queue, so the HTTP peer says nothing
about them. The Go broker (HEAD: ``util.GetCandidateAddrs``) parses the offer's SDP, ranks the
candidates of its media sections by type (host > prflx > srflx > relay, RFC 8445's type
preferences), then by priority, and takes the first one whose address is an IP (mDNS
``.local`` names are not). The candidate grammar is pion/ice's; the SDP grammar is checked
more lightly than pion/sdp's (the first line must be ``v=``; candidates count only after an
``m=`` line).
"""

from __future__ import annotations

import ipaddress
import json
import re

TYPE_PREFERENCE = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}
SDP_TYPES = frozenset({"offer", "pranswer", "answer", "rollback"})
_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{0,32}")
_DIGITS = re.compile(r"[0-9]+")


def offer_sdp(offer: str) -> str | None:
    """The ``sdp`` of a serialised SessionDescription (``util.DeserializeSessionDescription``)."""
    try:
        parsed = json.loads(offer)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or parsed.get("type") not in SDP_TYPES or not isinstance(parsed.get("sdp"), str):
        return None
    return parsed["sdp"]


def _address(value: str) -> str | None:
    """A candidate's connection address as Go's ``net.ParseIP(...).String()``, or None."""
    try:
        address = ipaddress.ip_address(value.partition("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_candidate(value: str) -> tuple[str, int, str | None] | None:
    """``candidate:`` attribute value → (type, priority, IP address or None for a name), or
    None when pion would refuse it."""
    fields = value.removeprefix("candidate:").split(" ")
    if len(fields) < 8 or fields[6] != "typ":
        return None
    foundation, component, protocol, priority, address, port, _, kind = fields[:8]
    if not _FOUNDATION.fullmatch(foundation) or not _DIGITS.fullmatch(component) or len(component) > 5:
        return None
    if not _DIGITS.fullmatch(priority) or len(priority) > 10 or not _DIGITS.fullmatch(port) or int(port) > 65535:
        return None
    if protocol.lower() not in ("udp", "tcp") or kind not in TYPE_PREFERENCE:
        return None
    ip = _address(address)
    if ip is None and not (kind == "host" and address.endswith(".local")):
        return None
    number = int(priority) & 0xFFFFFFFF
    if number == 0:  # pion computes one: type preference, the default local preference, component
        number = (TYPE_PREFERENCE[kind] << 24) + (65535 << 8) + 256 - int(component)
    return kind, number, ip


def candidate_addresses(sdp: str) -> list[str]:
    """The candidates' IP addresses, best first (``util.GetCandidateAddrs``)."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    if not lines or not lines[0].startswith("v="):
        return []
    candidates = []
    in_media = False
    for line in lines:
        if line.startswith("m="):
            in_media = True
        elif in_media and line.startswith("a=candidate:"):
            parsed = parse_candidate(line[len("a="):])
            if parsed is not None:
                candidates.append(parsed)
    # Go sorts ascending (type preference, priority) and reverses; its sort keeps the order of
    # equal candidates for small lists, so among equals the last one comes first.
    candidates.sort(key=lambda c: (TYPE_PREFERENCE[c[0]], c[1]))
    candidates.reverse()
    return [ip for _, _, ip in candidates if ip is not None]


def client_address(offer: str) -> str | None:
    """The address an AMP-cache or SQS client is geolocated by: the best candidate's."""
    sdp = offer_sdp(offer)
    addresses = candidate_addresses(sdp) if sdp is not None else []
    return addresses[0] if addresses else None
