"""Relays between this machine's shards, as signalling manages them.

One relay per pair of shards, opened when a viewer first lands away from a
room's publisher; one copy per track and shard, made once however many viewers
arrive together (they wait on the same copy). A shard that dies takes its
relays and copies with it; the surviving ends are told to close theirs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from ..relay import LoopbackRelay, Relay
from .rooms import ProducerInfo

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling.relays")


class Relays:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling
        self.links: dict[tuple[int, int], Relay] = {}
        self._opening: dict[tuple[int, int], asyncio.Future[Relay]] = {}
        self._copying: dict[tuple[str, int], asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.copies_made = 0

    async def copy_on(self, producer: ProducerInfo, shard: int) -> str:
        """The id of ``producer`` on ``shard``: itself, its copy there, or a new copy."""
        existing = producer.id_on(shard)
        if existing is not None:
            return existing
        key = (producer.id, shard)
        pending = self._copying.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._copying[key] = future
        try:
            if producer.node:
                link = await self.s.cluster.link(producer, shard)
            else:
                link = await self._link(producer.shard, shard)
            copy_id = await link.carry(producer, shard)
            producer.copies[shard] = copy_id
            self.copies_made += 1
            log.info("track relayed", room=producer.room, producer=producer.id, kind=producer.kind,
                     rid=producer.rid, frm=producer.shard, to=shard, copy=copy_id)
            future.set_result(copy_id)
            return copy_id
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else need
            raise
        finally:
            del self._copying[key]

    async def _link(self, a: int, b: int) -> Relay:
        key = (min(a, b), max(a, b))
        link = self.links.get(key)
        if link is not None:
            return link
        pending = self._opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Relay] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            link = LoopbackRelay(self.s.shards, a, b, self.s.config.rtc_host)
            await link.open()
            self.links[key] = link
            future.set_result(link)
            return link
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._opening[key]

    def producer_ended(self, producer: ProducerInfo) -> None:
        """Its publisher left: end its copies (their viewers get a BYE)."""
        for shard, copy_id in list(producer.copies.items()):
            if producer.node:
                link = self.s.cluster.remote_links.get((shard, producer.node, producer.shard))
            else:
                link = self.links.get((min(shard, producer.shard), max(shard, producer.shard)))
            if link is not None:
                self._spawn(link.release(copy_id, shard))
        producer.copies.clear()

    def shard_died(self, shard_id: int) -> None:
        """Forget the dead shard's copies and relays; the other ends close theirs."""
        for room in self.s.rooms.rooms.values():
            for producer in [*room.producers(), *room.remote_producers]:
                producer.copies.pop(shard_id, None)
        for key in [k for k in self.s.cluster.remote_links if k[0] == shard_id]:
            link = self.s.cluster.remote_links.pop(key)
            self._spawn(link.close())  # the far end stops sending to our dead shard
        for key in [k for k in self.links if shard_id in k]:
            link = self.links.pop(key)
            self._spawn(link.close(key[0] if key[1] == shard_id else key[1]))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
