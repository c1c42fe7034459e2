"""RedisDirectory: the directory on Redis, for several nodes and signalling replicas.

Keys (prefix ``sfu:``): ``node:<id>`` (JSON, expiring NODE_TTL_S after the last
heartbeat), ``nodes`` (a set of ids, pruned as their keys expire), ``home:<room>``
(``node shard``, claimed with a compare-and-set script that takes over a home
whose node expired), ``tracks:<room>`` (a hash of producer id -> JSON),
``presence:<room>`` (a hash of node id -> JSON of its participants, expiring with
the room's last update).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from .directory import NODE_TTL_S, Directory, NodeRecord, RoomHome

# KEYS[1] = home:<room>; ARGV[1] = "node shard", ARGV[2] = the key prefix.
# Take the home if it is free or its node's key has expired; return the holder.
CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local node = string.match(current, '^(%S+)')
  if redis.call('EXISTS', ARGV[2] .. 'node:' .. node) == 1 then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


class RedisDirectory(Directory):
    def __init__(self, url: str, prefix: str = "sfu:", ttl_s: float = NODE_TTL_S) -> None:
        self.redis = aioredis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._claim = self.redis.register_script(CLAIM)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def heartbeat(self, node: NodeRecord) -> None:
        import time

        node.seen_at = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("node", node.id), json.dumps(node.to_json()), px=int(self.ttl_s * 1000))
            pipe.sadd(self._key("nodes"), node.id)
            await pipe.execute()

    async def leave(self, node_id: str) -> None:
        await self.redis.delete(self._key("node", node_id))
        await self.redis.srem(self._key("nodes"), node_id)

    async def nodes(self) -> list[NodeRecord]:
        ids = sorted(await self.redis.smembers(self._key("nodes")))
        if not ids:
            return []
        values = await self.redis.mget([self._key("node", i) for i in ids])
        gone = [i for i, v in zip(ids, values) if v is None]
        if gone:
            await self.redis.srem(self._key("nodes"), *gone)
        return [NodeRecord.from_json(json.loads(v)) for v in values if v is not None]

    async def _up(self, node_id: str) -> bool:
        return bool(await self.redis.exists(self._key("node", node_id)))

    async def claim_room(self, room: str, home: RoomHome) -> RoomHome:
        value = await self._claim(keys=[self._key("home", room)], args=[f"{home.node} {home.shard}", self.prefix])
        node, shard = value.split()
        return RoomHome(node, int(shard))

    async def room_home(self, room: str) -> RoomHome | None:
        value = await self.redis.get(self._key("home", room))
        if value is None:
            return None
        node, shard = value.split()
        return RoomHome(node, int(shard)) if await self._up(node) else None

    async def release_room(self, room: str, node_id: str) -> None:
        key = self._key("home", room)
        value = await self.redis.get(key)
        if value is not None and value.split()[0] == node_id:
            await self.redis.delete(key)

    async def publish_tracks(self, room: str, node_id: str, tracks: dict[str, dict[str, Any]]) -> None:
        if tracks:
            await self.redis.hset(self._key("tracks", room),
                                  mapping={k: json.dumps({**v, "node": node_id}) for k, v in tracks.items()})

    async def unpublish_tracks(self, room: str, producer_ids: list[str]) -> None:
        if producer_ids:
            await self.redis.hdel(self._key("tracks", room), *producer_ids)

    async def tracks(self, room: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self._key("tracks", room))
        out: dict[str, dict[str, Any]] = {}
        up: dict[str, bool] = {}
        for producer_id, value in raw.items():
            track = json.loads(value)
            node = track["node"]
            if node not in up:
                up[node] = await self._up(node)
            if up[node]:
                out[producer_id] = track
        return out

    async def set_presence(self, room: str, node_id: str, people: dict[str, dict[str, Any]]) -> None:
        key = self._key("presence", room)
        if people:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, node_id, json.dumps(people))
                pipe.pexpire(key, int(self.ttl_s * 1000) * 6)  # a room nobody updates goes away
                await pipe.execute()
        else:
            await self.redis.hdel(key, node_id)

    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self._key("presence", room))
        out: dict[str, dict[str, Any]] = {}
        for node, value in sorted(raw.items()):
            if await self._up(node):
                out.update({k: {**v, "node": node} for k, v in json.loads(value).items()})
        return out

    async def close(self) -> None:
        await self.redis.aclose()
