"""Two shards, a room spilling over both: one shard killed, or drained, under its viewers.

Viewers follow their session's server-sent events (tests/peers.py ``follow=True``),
as the built-in watch page does: a ``reconnect`` makes them POST again, and the
placement puts them on a shard that is up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

import peers
from conftest import start_server, stop_server


async def _api(base_url: str, path: str, method: str = "GET"):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, base_url + path) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()


async def _spilled_room(server, room: str):
    """A publisher and four viewers, two on each shard; returns (publisher, home, other, by shard)."""
    publisher = await peers.publish(server.base_url, room)
    viewers = [await peers.watch(server.base_url, room, follow=True) for _ in range(4)]
    await asyncio.gather(*(v.wait_frames(10) for v in viewers))
    _, info = await _api(server.base_url, f"/api/rooms/{room}")
    home = info["shard"]
    shard_of = {p["location"]: p["shard"] for p in info["peers"]}
    by_shard: dict[int, list[peers.Viewer]] = {0: [], 1: []}
    for v in viewers:
        by_shard[shard_of[v.location]].append(v)
    assert len(by_shard[home]) == 2 and len(by_shard[1 - home]) == 2, {k: len(v) for k, v in by_shard.items()}
    return publisher, home, 1 - home, by_shard


async def _pids(server) -> dict[int, int]:
    _, shards = await _api(server.base_url, "/api/shards")
    return {s["id"]: s["pid"] for s in shards}


async def test_viewers_of_a_killed_shard_get_media_again_within_3_s(tmp_path) -> None:
    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2", "SFU_SHARD_MAX_VIEWERS": "2"})
    publisher, everyone = None, []
    try:
        publisher, home, other, by_shard = await _spilled_room(server, "crash")
        everyone = by_shard[home] + by_shard[other]
        killed_at = time.monotonic()
        os.kill((await _pids(server))[other], signal.SIGKILL)
        await asyncio.sleep(4.0)
        back = [min((t for t in v.frame_times if t > killed_at), default=float("inf")) - killed_at
                for v in by_shard[other]]
        print(f"media again after kill -9: {', '.join(f'{b:.2f} s' for b in back)}")
        assert max(back) < 3.0, back
        assert all(any(name == "reconnect" for _, name, _ in v.events) for v in by_shard[other])
        # The publisher's shard never stopped: its viewers saw no gap.
        for v in by_shard[home]:
            gap = v.longest_gap(killed_at - 0.5)
            print(f"home viewer's longest gap: {gap:.3f} s")
            assert gap <= 0.2, gap
        metrics = server.metrics()
        assert metrics[f'sfu_shard_restarts_total{{shard="{other}"}}'] == 1
        assert metrics[f'sfu_shard_up{{shard="{other}"}}'] == 1
        assert "shard died" in server.log_path.read_text()
    finally:
        for v in everyone:
            await v.close()
        if publisher is not None:
            await publisher.close()
        stop_server(server)


@pytest.mark.parametrize("how", ["admin", "sigterm"])
async def test_drain_moves_viewers_with_under_a_second_lost(tmp_path, how) -> None:
    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2", "SFU_SHARD_MAX_VIEWERS": "2"})
    publisher, everyone = None, []
    try:
        publisher, home, other, by_shard = await _spilled_room(server, "drain")
        everyone = by_shard[home] + by_shard[other]
        old_pid = (await _pids(server))[other]
        started = time.monotonic()
        if how == "admin":
            status, body = await _api(server.base_url, f"/api/shards/{other}/drain", "POST")
            assert status == 202 and body["peers"] == 2, body
            status, _ = await _api(server.base_url, f"/api/shards/{other}/drain", "POST")
            assert status == 409  # already draining
        else:
            os.kill(old_pid, signal.SIGTERM)
        # The drained shard is replaced by a fresh process once its viewers left.
        deadline = time.monotonic() + 15
        while (await _pids(server))[other] == old_pid:
            assert time.monotonic() < deadline, "the drained shard was not replaced"
            await asyncio.sleep(0.2)
        drained_s = time.monotonic() - started
        await asyncio.sleep(1.0)
        for v in by_shard[other]:
            assert len(v.moves) == 1, v.events
            gap = v.longest_gap(started - 0.5)
            print(f"drained viewer's longest gap: {gap:.3f} s (moved in {v.moves[0][1] - v.moves[0][0]:.2f} s)")
            assert gap <= 1.0, gap
        for v in by_shard[home]:
            assert v.longest_gap(started - 0.5) <= 0.2
        _, info = await _api(server.base_url, "/api/rooms/drain")
        assert {p["shard"] for p in info["peers"]} == {home}  # the fresh shard took nobody yet
        metrics = server.metrics()
        assert metrics[f'sfu_shard_restarts_total{{shard="{other}"}}'] == 0  # a drain is not a crash
        assert metrics["sfu_shard_drains_total"] == 1
        print(f"drain took {drained_s:.2f} s")
        # Everyone still decodes.
        counts = [v.video_frames for v in everyone]
        await asyncio.gather(*(v.wait_frames(c + 10, timeout_s=5) for v, c in zip(everyone, counts)))
    finally:
        for v in everyone:
            await v.close()
        if publisher is not None:
            await publisher.close()
        stop_server(server)
