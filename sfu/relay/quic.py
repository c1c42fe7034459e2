"""QuicRelay: tracks between nodes or sites through the nodes' QUIC relay processes.

The same ``Relay`` interface as the loopback and node relays. Each shard has one
relay transport (``quic``) addressed to its node's QUIC relay process; carrying
a producer registers its SSRCs as an ``out`` flow on the publisher node's relay
and an ``in`` flow on ours, and makes the consumer there and the copy here, as
the node relay does. See ``quic_endpoint`` for what travels and how a cut link
heals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import control
from .base import Copy, Relay
from .node import NodeRelayError, call_node

if TYPE_CHECKING:
    from ..signalling.rooms import ProducerInfo

QUIC_RELAY = "quic"


class QuicRelay(Relay):
    def __init__(self, shards: Any, local_shard: int, quic_process: Any, local_quic: tuple[str, int],
                 remote_url: str, remote_quic: tuple[str, int], remote_shard: int, token: str | None) -> None:
        self.shards = shards
        self.local_shard = local_shard
        self.quic_process = quic_process
        self.local_quic = local_quic
        self.remote_url = remote_url.rstrip("/")
        self.remote_quic = remote_quic
        self.remote_shard = remote_shard
        self.token = token
        self.id = QUIC_RELAY
        self.endpoints = (local_shard, -1)
        self._ssrcs: dict[str, list[int]] = {}  # copy id -> its flow's SSRCs

    async def open(self) -> None:
        await self.shards[self.local_shard].request(control.OpenRelay(
            relay_id=QUIC_RELAY, peer_host=self.quic_process.host, peer_port=self.quic_process.rtc_port))
        await call_node(self.remote_url, "/internal/quic/open", {"shard": self.remote_shard}, self.token)

    async def carry(self, producer: "ProducerInfo", destination: int) -> str:
        copy = Copy.of(producer)
        await self.shards[destination].request(copy.produce(QUIC_RELAY, producer))
        await self.quic_process.request(control.QuicFlow(
            ssrcs=copy.ssrcs, direction="in", peer_host=self.remote_quic[0], peer_port=self.remote_quic[1],
            shard_port=self.shards[destination].rtc_port))
        try:
            await call_node(self.remote_url, "/internal/quic/carry", {
                "producer_id": producer.id, "consumer_id": f"{QUIC_RELAY}/{copy.id}", "ssrc": copy.ssrc,
                "rtx_ssrc": copy.rtx_ssrc, "peer_host": self.local_quic[0], "peer_port": self.local_quic[1]},
                self.token)
        except NodeRelayError:
            await self.release(copy.id, destination, copy.ssrcs)
            raise
        self._ssrcs[copy.id] = copy.ssrcs
        return copy.id

    async def release(self, copy_id: str, destination: int, ssrcs: list[int] | None = None) -> None:
        ssrcs = ssrcs or self._ssrcs.pop(copy_id, [])
        try:
            await self.shards[destination].request(control.CloseProducer(producer_id=copy_id))
            await self.quic_process.request(control.QuicFlowClose(ssrcs=ssrcs))
        except control.ControlError:
            pass
        try:
            await call_node(self.remote_url, "/internal/quic/release",
                            {"consumer_id": f"{QUIC_RELAY}/{copy_id}", "ssrcs": ssrcs}, self.token)
        except NodeRelayError:
            pass

    async def close(self, endpoint: int | None = None) -> None:
        pass  # the shard's quic transport serves every flow; flows end with their tracks
