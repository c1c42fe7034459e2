"""Two shards: viewers beyond the publisher shard's capacity spill to the other one,
which receives each track once through the loopback relay; every viewer decodes."""

from __future__ import annotations

import asyncio

import aiohttp

import peers
from conftest import start_server, stop_server


async def _api(base_url: str, path: str):
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + path) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def test_viewers_spill_to_the_second_shard_through_one_relay_copy(tmp_path) -> None:
    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2", "SFU_SHARD_MAX_VIEWERS": "2"})
    viewers: list[peers.Viewer] = []
    publisher = None
    try:
        publisher = await peers.publish(server.base_url, "allhands")
        for _ in range(4):
            viewers.append(await peers.watch(server.base_url, "allhands"))
        await asyncio.gather(*(v.wait_frames(15) for v in viewers))
        assert all(v.audio_frames > 0 for v in viewers)

        room = await _api(server.base_url, "/api/rooms/allhands")
        home = room["shard"]
        by_shard: dict[int, int] = {}
        for peer in room["peers"]:
            if peer["kind"] == "whep":
                by_shard[peer["shard"]] = by_shard.get(peer["shard"], 0) + 1
        other = 1 - home
        # Capacity 2 on the publisher's shard; the rest spilled.
        assert by_shard.get(home) == 2 and by_shard.get(other) == 2, by_shard

        shards = {s["id"]: s for s in await _api(server.base_url, "/api/shards")}
        # The relay carries one copy of each track (audio, video), whatever the viewer count:
        # the other shard holds exactly two producers, the home shard two relay consumers
        # on top of its own viewers' two each.
        assert shards[other]["producers"] == 2, shards[other]
        assert shards[other]["relays"] == 1 and shards[home]["relays"] == 1
        assert shards[home]["consumers"] == 2 * 2 + 2, shards[home]
        assert shards[other]["consumers"] == 2 * 2, shards[other]
        # Per relayed packet the home shard sends one copy; the other shard fans it out.
        before = {i: s["packets_in"] for i, s in shards.items()}
        await asyncio.sleep(2.0)
        after = {s["id"]: s for s in await _api(server.base_url, "/api/shards")}
        relayed_in = after[other]["packets_in"] - before[other]
        published_in = after[home]["packets_in"] - before[home]
        # The other shard's input is one copy of the publisher's (plus a little RTCP), not two.
        assert 0.8 * published_in < relayed_in < 1.5 * published_in, (relayed_in, published_in)

        # Viewers keep decoding on both shards.
        counts = [v.video_frames for v in viewers]
        await asyncio.gather(*(v.wait_frames(c + 20, timeout_s=10) for v, c in zip(viewers, counts)))
    finally:
        for v in viewers:
            await v.close()
        if publisher is not None:
            await publisher.close()
        stop_server(server)


async def test_publisher_leaving_ends_the_relayed_copies(tmp_path) -> None:
    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2", "SFU_SHARD_MAX_VIEWERS": "1"})
    viewers: list[peers.Viewer] = []
    try:
        publisher = await peers.publish(server.base_url, "talk")
        viewers = [await peers.watch(server.base_url, "talk") for _ in range(2)]
        await asyncio.gather(*(v.wait_frames(5) for v in viewers))
        shards = await _api(server.base_url, "/api/shards")
        assert sorted(s["producers"] for s in shards) == [2, 2]  # the original and its copy
        assert await publisher.delete() == 200
        await publisher.close()
        # Every viewer's tracks end (RTCP BYE), on the relayed shard too.
        await asyncio.wait_for(asyncio.gather(*(v.ended["video"].wait() for v in viewers)), 10)
        shards = await _api(server.base_url, "/api/shards")
        assert [s["producers"] for s in shards] == [0, 0]
    finally:
        for v in viewers:
            await v.close()
        stop_server(server)
