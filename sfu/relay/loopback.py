"""LoopbackRelay: two shards of one machine, plain RTP over loopback.

Both shards open a relay transport addressed to the other's UDP port (one per
pair, used both ways). Carrying a producer is a consumer on the source shard's
relay transport with an SSRC we choose, and a producer with that SSRC on the
destination's: the source rewrites the stream exactly as for a viewer, so the
copy is gap-free, and the destination keeps its own history for its joiners.
No SRTP: the datagrams never leave the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import control
from .base import Copy, Relay, relay_consume

if TYPE_CHECKING:
    from ..signalling.rooms import ProducerInfo

LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


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
        copy = Copy.of(producer)
        # The copy first: the source starts sending (its GOP history) at once.
        await self.shards[destination].request(copy.produce(self.id, producer))
        try:
            await self.shards[producer.shard].request(relay_consume(
                self.id, f"{self.id}/{copy.id}", producer.id, producer.codec, copy.ssrc, copy.rtx_ssrc))
        except control.ControlError:
            await self.release(copy.id, destination)
            raise
        return copy.id

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
