"""NodeRelay: a track from a shard of another node to a shard of this one.

Like the loopback relay, one relay transport per pair of shards on each side,
addressed to the other's media port, and a consumer/producer pair per track
with an SSRC both ends are told. The far side is driven through its node's
internal API (``/internal/relay/*``, an admin token of the cluster's secret);
this side through its own shard's control channel. Media between nodes is plain
RTP for now: run nodes on a private cluster network (the QUIC relay of the
cross-site issue encrypts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from .. import control
from .base import Copy, Relay

if TYPE_CHECKING:
    from ..signalling.rooms import ProducerInfo


class NodeRelayError(control.ControlError):
    pass


async def call_node(url: str, path: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
    """POST to another node's internal API."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.post(url + path, json=body, headers=headers) as r:
                if r.status != 200:
                    raise NodeRelayError(f"{path} on {url}: {r.status} {await r.text()}")
                return await r.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NodeRelayError(f"{path} on {url}: {exc}") from None


class NodeRelay(Relay):
    def __init__(self, shards: Any, local_shard: int, local_host: str, remote_url: str, remote_node: str,
                 remote_shard: int, remote_host: str, remote_port: int, local_node: str,
                 token: str | None) -> None:
        self.shards = shards
        self.local_shard = local_shard
        self.local_host = local_host
        self.remote_url = remote_url.rstrip("/")
        self.remote_shard = remote_shard
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.token = token
        a, b = sorted([f"{local_node}/{local_shard}", f"{remote_node}/{remote_shard}"])
        self.id = f"node-{a}-{b}"
        self.endpoints = (local_shard, -1)

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await call_node(self.remote_url, path, body, self.token)

    async def open(self) -> None:
        local_port = self.shards[self.local_shard].rtc_port
        await self.shards[self.local_shard].request(control.OpenRelay(
            relay_id=self.id, peer_host=self.remote_host, peer_port=self.remote_port))
        await self._call("/internal/relay/open", {"relay_id": self.id, "shard": self.remote_shard,
                                                  "peer_host": self.local_host, "peer_port": local_port})

    async def carry(self, producer: "ProducerInfo", destination: int) -> str:
        copy = Copy.of(producer)
        await self.shards[destination].request(copy.produce(self.id, producer))
        try:
            await self._call("/internal/relay/carry", {
                "relay_id": self.id, "producer_id": producer.id, "consumer_id": f"{self.id}/{copy.id}",
                "ssrc": copy.ssrc, "rtx_ssrc": copy.rtx_ssrc})
        except NodeRelayError:
            await self.release(copy.id, destination)
            raise
        return copy.id

    async def release(self, copy_id: str, destination: int) -> None:
        try:
            await self.shards[destination].request(control.CloseProducer(producer_id=copy_id))
        except control.ControlError:
            pass
        try:
            await self._call("/internal/relay/release", {"consumer_id": f"{self.id}/{copy_id}"})
        except NodeRelayError:
            pass  # that node is gone, and its consumer with it

    async def close(self, endpoint: int | None = None) -> None:
        try:
            await self.shards[self.local_shard].request(control.CloseRelay(relay_id=self.id), timeout_s=1.0)
        except control.ControlError:
            pass
        if endpoint is None:
            try:
                await self._call("/internal/relay/close", {"relay_id": self.id, "shard": self.remote_shard})
            except NodeRelayError:
                pass
