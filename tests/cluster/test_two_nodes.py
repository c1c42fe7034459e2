"""Two nodes and a signalling replica on one real Redis: a publisher on node A, viewers on
node B decode through the node relay; A's signalling is killed and the directory recovers;
every replica gives the same placement answers."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

import peers
from conftest import start_server, stop_server


async def _get(base_url: str, path: str):
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + path) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def test_publisher_on_a_viewers_on_b_and_a_dies(tmp_path, redis_server) -> None:
    def node(name: str, *extra: str):
        return start_server(tmp_path / name, "--dev", "--redis-url", redis_server.url, "--node-id", name, *extra,
                            env={"SFU_SHARDS": "1"})

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    a, b = node("a"), node("b")
    c = start_server(tmp_path / "c", "--dev", "--redis-url", redis_server.url, "--node-id", "c",
                     env={"SFU_SHARDS": "0"})
    publisher, viewers, late = None, [], None
    try:
        publisher = await peers.publish(a.base_url, "town")
        await asyncio.sleep(0.5)  # the tracks reach the directory
        viewers = [await peers.watch(b.base_url, "town", follow=True) for _ in range(2)]
        await asyncio.gather(*(v.wait_frames(15) for v in viewers))
        deadline = time.monotonic() + 5
        while not all(v.audio_frames > 0 for v in viewers):
            assert time.monotonic() < deadline, [v.audio_frames for v in viewers]
            await asyncio.sleep(0.1)
        shards_b = await _get(b.base_url, "/api/shards")
        assert shards_b[0]["producers"] == 2 and shards_b[0]["relays"] == 1  # one copy per track
        answers = [await _get(n.base_url, "/api/placement/town") for n in (a, b, c)]
        assert answers[0] == answers[1] == answers[2], answers
        assert answers[0]["home"] == {"node": "a", "shard": 0} and answers[0]["nodes"] == ["a", "b", "c"]

        # A publisher arriving at node B for this room is sent to A (307), and lands there.
        second = await peers.publish(b.base_url, "town", audio=True, video=False)
        assert second.base_url == b.base_url
        rooms_a = await _get(a.base_url, "/api/rooms/town")
        assert sum(p["kind"] == "whip" for p in rooms_a["peers"]) == 2
        await second.pc.close()

        killed_at = time.monotonic()
        os.kill(a.process.pid, signal.SIGKILL)  # node A's signalling; its shard follows
        deadline = killed_at + 15
        while True:
            nodes = [n["id"] for n in await _get(b.base_url, "/api/nodes")]
            if "a" not in nodes:
                break
            assert time.monotonic() < deadline, nodes
            await asyncio.sleep(0.25)
        gone_s = time.monotonic() - killed_at
        print(f"node a left the directory {gone_s:.1f} s after its signalling was killed")
        assert gone_s <= 12.0
        answers = [await _get(n.base_url, "/api/placement/town") for n in (b, c)]
        assert answers[0] == answers[1] and answers[0]["home"] is None and answers[0]["nodes"] == ["b", "c"]
        # B's viewers were told their publisher went away.
        await asyncio.sleep(2.5)
        assert all(any(name == "reconnect" for _, name, _ in v.events) for v in viewers), [v.events for v in viewers]
        # The room is placed again: a new publisher on B holds it, and C agrees.
        late = await peers.publish(b.base_url, "town")
        answers = [await _get(n.base_url, "/api/placement/town") for n in (b, c)]
        assert answers[0] == answers[1] and answers[0]["home"] == {"node": "b", "shard": 0}
        watcher = await peers.watch(b.base_url, "town")
        viewers.append(watcher)
        await watcher.wait_frames(10)
        # A signalling replica with no shards sends viewers to the room's node.
        via_c = await peers.watch(c.base_url, "town")
        viewers.append(via_c)
        await via_c.wait_frames(5)
    finally:
        for v in viewers:
            await v.close()
        for p in (publisher, late):
            if p is not None:
                await p.close()
        for server in (a, b, c):
            stop_server(server)
