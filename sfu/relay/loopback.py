"""LoopbackRelay: two shards of one machine, plain RTP over loopback.

Both shards open a relay transport addressed to the other's UDP port (one per
pair, used both ways). Carrying a producer is a consumer on the source shard's
relay transport with an SSRC we choose, and a producer with that SSRC on the
destination's: the source rewrites the stream exactly as for a viewer, so the
copy is gap-free, and the destination keeps its own history for its joiners.
No SRTP: the datagrams never leave the host.
"""

from __future__ import annotations

import random
import secrets
from typing import TYPE_CHECKING, Any

from .. import control
from ..signalling.sdp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL
from .base import Relay

if TYPE_CHECKING:
    from ..signalling.rooms import ProducerInfo

RELAY_EXTENSIONS = {EXT_AUDIO_LEVEL: 1, EXT_ABS_SEND_TIME: 2}
"""Header extensions on every relay, fixed: both ends know them without an SDP.
No mid: each relayed stream's SSRC is told to both ends."""

LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _ssrc() -> int:
    return random.randint(1, 0xFFFFFFFF)


class LoopbackRelay(Relay):
    def __init__(self, shards: Any, a: int, b: int, rtc_host: str) -> None:
        """``shards``: the signalling's list of ShardProcess, indexed by shard id (read
        at each call: a restarted shard is a new object)."""
        self.shards = shards
        self.endpoints = (min(a, b), max(a, b))
        self.id = f"relay-{self.endpoints[0]}-{self.endpoints[1]}"
        self.host = LOOPBACK.get(rtc_host, rtc_host)

    async def open(self) -> None:
        a, b = (self.shards[i] for i in self.endpoints)
        await a.request(control.OpenRelay(relay_id=self.id, peer_host=self.host, peer_port=b.rtc_port))
        await b.request(control.OpenRelay(relay_id=self.id, peer_host=self.host, peer_port=a.rtc_port))

    async def carry(self, producer: "ProducerInfo", destination: int) -> str:
        if destination not in self.endpoints or producer.shard not in self.endpoints or producer.shard == destination:
            raise ValueError(f"{self.id} cannot carry from shard {producer.shard} to {destination}")
        codec = producer.codec
        rtx = producer.kind == "video" and codec.rtx_payload_type is not None
        ssrc, rtx_ssrc = _ssrc(), (_ssrc() if rtx else None)
        copy_id = secrets.token_urlsafe(12)
        # The copy first: the source starts sending (its GOP history) at once.
        await self.shards[destination].request(control.Produce(
            transport_id=self.id, producer_id=copy_id, kind=producer.kind, codec=codec.name, mid="",
            payload_type=codec.payload_type, clock_rate=codec.clock_rate,
            rtx_payload_type=codec.rtx_payload_type if rtx else None, ssrc=ssrc, rtx_ssrc=rtx_ssrc,
            extensions=RELAY_EXTENSIONS, rid=producer.rid))
        try:
            await self.shards[producer.shard].request(control.Consume(
                transport_id=self.id, consumer_id=f"{self.id}/{copy_id}", producer_id=producer.id, mid="",
                payload_type=codec.payload_type, ssrc=ssrc,
                rtx_payload_type=codec.rtx_payload_type if rtx else None, rtx_ssrc=rtx_ssrc,
                extensions=RELAY_EXTENSIONS, nack=True))
        except control.ControlError:
            await self.release(copy_id, destination)
            raise
        return copy_id

    async def release(self, copy_id: str, destination: int) -> None:
        try:
            await self.shards[destination].request(control.CloseProducer(producer_id=copy_id))
        except control.ControlError:
            pass  # that shard is gone, and the copy with it

    async def close(self, endpoint: int | None = None) -> None:
        for i in self.endpoints if endpoint is None else (endpoint,):
            try:
                await self.shards[i].request(control.CloseRelay(relay_id=self.id), timeout_s=1.0)
            except control.ControlError:
                pass
