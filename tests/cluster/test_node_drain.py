"""A rolling update: every shard of node A drains; its viewer moves to node B (which
relays the room from A while A's publisher is still there), and A's rooms are free."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

import peers
from conftest import start_server, stop_server


async def test_draining_node_sends_its_viewers_to_another_node(tmp_path, redis_server) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    env = {"SFU_SHARDS": "1", "SFU_DRAIN_TIMEOUT_S": "8"}
    a = start_server(tmp_path / "a", "--dev", "--redis-url", redis_server.url, "--node-id", "a", env=env)
    b = start_server(tmp_path / "b", "--dev", "--redis-url", redis_server.url, "--node-id", "b", env=env)
    publisher = viewer = None
    try:
        publisher = await peers.publish(a.base_url, "townhall")
        viewer = await peers.watch(a.base_url, "townhall", follow=True)
        await viewer.wait_frames(10)
        async with aiohttp.ClientSession() as http:
            async with http.post(a.base_url + "/api/shards/0/drain") as r:
                assert r.status == 202, await r.text()
        started = time.monotonic()
        while not viewer.moves:
            assert time.monotonic() - started < 10, viewer.events
            await asyncio.sleep(0.1)
        # It landed on node B (307 from A, whose only shard drains), relayed from A.
        assert viewer.location.startswith(b.base_url + "/whep/townhall/"), viewer.location
        count = viewer.video_frames
        await viewer.wait_frames(count + 15, timeout_s=10)
        gap = viewer.longest_gap(started - 0.5)
        print(f"moved to node b in {viewer.moves[0][1] - viewer.moves[0][0]:.2f} s; longest gap {gap:.2f} s")
        assert gap < 1.0
        async with aiohttp.ClientSession() as http:
            async with http.get(b.base_url + "/api/placement/townhall") as r:
                placement = await r.json()
        assert placement["home"] is None  # A let the room go: its publisher's next POST lands elsewhere
    finally:
        for p in (viewer, publisher):
            if p is not None:
                await p.close()
        stop_server(a)
        stop_server(b)
