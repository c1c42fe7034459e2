"""QuicRelay: tracks between nodes or sites through the nodes' QUIC relay processes.

The same ``Relay`` interface as the loopback and node relays. Each shard has one
relay transport (``quic``) addressed to its node's QUIC relay process; carrying
a producer registers its SSRCs as an ``out`` flow on the publisher node's relay
and an ``in`` flow on ours, and makes the consumer there and the copy here, as
the node relay does. See ``quic_endpoint`` for what travels and how a cut link
heals.
"""

from __future__ import annotations

import random
import secrets
from typing import TYPE_CHECKING, Any

from .. import control
from .base import Relay
from .loopback import RELAY_EXTENSIONS
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
            relay_id=QUIC_RELAY, peer_host="127.0.0.1", peer_port=self.quic_process.rtc_port))
        await call_node(self.remote_url, "/internal/quic/open", {"shard": self.remote_shard}, self.token)

    async def carry(self, producer: "ProducerInfo", destination: int) -> str:
        codec = producer.codec
        rtx = producer.kind == "video" and codec.rtx_payload_type is not None
        ssrc = random.randint(1, 0xFFFFFFFF)
        rtx_ssrc = random.randint(1, 0xFFFFFFFF) if rtx else None
        ssrcs = [ssrc] + ([rtx_ssrc] if rtx_ssrc else [])
        copy_id = secrets.token_urlsafe(12)
        await self.shards[destination].request(control.Produce(
            transport_id=QUIC_RELAY, producer_id=copy_id, kind=producer.kind, codec=codec.name, mid="",
            payload_type=codec.payload_type, clock_rate=codec.clock_rate,
            rtx_payload_type=codec.rtx_payload_type if rtx else None, ssrc=ssrc, rtx_ssrc=rtx_ssrc,
            extensions=RELAY_EXTENSIONS, rid=producer.rid))
        await self.quic_process.request(control.QuicFlow(
            ssrcs=ssrcs, direction="in", peer_host=self.remote_quic[0], peer_port=self.remote_quic[1],
            shard_port=self.shards[destination].rtc_port))
        try:
            await call_node(self.remote_url, "/internal/quic/carry", {
                "producer_id": producer.id, "consumer_id": f"{QUIC_RELAY}/{copy_id}", "ssrc": ssrc,
                "rtx_ssrc": rtx_ssrc, "peer_host": self.local_quic[0], "peer_port": self.local_quic[1]}, self.token)
        except NodeRelayError:
            await self.release(copy_id, destination, ssrcs)
            raise
        self._ssrcs[copy_id] = ssrcs
        return copy_id

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
