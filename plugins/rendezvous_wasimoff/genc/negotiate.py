"""Subprotocol negotiation for the provider and client sockets."""

from __future__ import annotations

from rendezvous.transports.base import Channel
from rendezvous_wasimoff.codec import SUBPROTOCOLS, Codec

CLOSE_PROTOCOL_ERROR = 1002


async def negotiate(channel: Channel) -> Codec | None:
    """Accept with the first of our subprotocols the peer offers; none → close 1002, as the original."""
    chosen = next((p for p in SUBPROTOCOLS if p in channel.info.subprotocols), None)
    if chosen is None:
        await channel.accept()
        await channel.close(CLOSE_PROTOCOL_ERROR, "unsupported subprotocol")
        return None
    await channel.accept(chosen)
    codec = Codec(chosen)
    channel.expect("text" if codec.json else "binary")  # the other kind is refused on its header
    return codec
