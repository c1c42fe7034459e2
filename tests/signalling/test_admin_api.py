"""The REST admin API against a real server: rooms, peers, shards, closing a peer, and its guard."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

import peers
from conftest import TEST_SECRET, SfuServer
from sfu.auth import issue_token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_rooms_peers_shards_and_closing_a_peer(sfu_server: SfuServer) -> None:
    publisher = await peers.publish(sfu_server.base_url, "town-hall")
    viewer = await peers.watch(sfu_server.base_url, "town-hall")
    try:
        await viewer.wait_frames(5)
        async with aiohttp.ClientSession() as http:
            async with http.get(sfu_server.base_url + "/api/rooms") as r:
                assert r.status == 200
                rooms = await r.json()
            assert [(room["name"], room["publishers"], room["viewers"]) for room in rooms] == [("town-hall", 1, 1)]
            by_kind = {p["kind"]: p for p in rooms[0]["peers"]}
            assert sorted(t["kind"] for t in by_kind["whip"]["tracks"]) == ["audio", "video"]
            assert by_kind["whep"]["consumers"] == 2 and by_kind["whep"]["connected"]
            async with http.get(sfu_server.base_url + "/api/rooms/town-hall") as r:
                assert (await r.json())["name"] == "town-hall"
            async with http.get(sfu_server.base_url + "/api/rooms/nowhere") as r:
                assert r.status == 404
            async with http.get(sfu_server.base_url + "/api/peers") as r:
                assert {p["kind"] for p in await r.json()} == {"whip", "whep"}
            async with http.get(sfu_server.base_url + "/api/shards") as r:
                shards = await r.json()
            assert len(shards) == 1 and shards[0]["up"] and shards[0]["restarts"] == 0
            assert shards[0]["transports"] == 2 and shards[0]["consumers"] == 2 and shards[0]["packets_out"] > 0
            assert shards[0]["rooms"] == 1 and shards[0]["peers"] == 2
            # Close the viewer: its resource is gone and the shard dropped its transport.
            async with http.delete(sfu_server.base_url + f"/api/peers/{by_kind['whep']['id']}") as r:
                assert r.status == 204
            async with http.delete(sfu_server.base_url + f"/api/peers/{by_kind['whep']['id']}") as r:
                assert r.status == 404
            async with http.get(sfu_server.base_url + "/api/shards") as r:
                assert (await r.json())[0]["transports"] == 1
        assert await viewer.delete() == 404
    finally:
        await viewer.close()
        await publisher.close()


@pytest.mark.parametrize("token,status", [
    (None, 401),
    ("garbage", 401),
    (issue_token("another-secret-0123456789abcdefgh", "*", admin=True), 401),
    (issue_token(TEST_SECRET, "*", publish=True, subscribe=True), 403),  # every room, but not admin
    (issue_token(TEST_SECRET, "*", admin=True), 200),
])
async def test_admin_api_needs_an_admin_token(sfu_auth_server: SfuServer, token: str | None, status: int) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/api/rooms"), ("GET", "/api/peers"), ("GET", "/api/shards"),
                             ("DELETE", "/api/peers/nobody"), ("POST", "/api/shards/0/drain")):
            async with http.request(method, sfu_auth_server.base_url + path,
                                    headers=bearer(token) if token else {}) as r:
                # With the right token: no such peer; the only shard cannot drain.
                expected = {"DELETE": 404, "POST": 409}.get(method, 200) if status == 200 else status
                assert r.status == expected, (method, path, await r.text())


async def test_shards_report_their_load_and_new_rooms_go_to_the_idle_one(tmp_path) -> None:
    from conftest import start_server, stop_server

    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2"})
    sessions = []
    try:
        publisher = await peers.publish(server.base_url, "busy")
        viewers = [await peers.watch(server.base_url, "busy") for _ in range(3)]
        sessions = [*viewers, publisher]
        await asyncio.gather(*(v.wait_frames(10) for v in viewers))
        await asyncio.sleep(2.2)  # two load reports
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base_url + "/api/shards") as r:
                shards = {s["id"]: s for s in await r.json()}
            async with http.get(server.base_url + "/api/rooms/busy") as r:
                busy = (await r.json())["shard"]
        idle = 1 - busy
        assert shards[busy]["load"]["packets_out_per_s"] > 100  # 3 viewers of audio + video
        assert shards[busy]["load"]["packets_in_per_s"] > 30
        assert 0 < shards[busy]["load"]["cpu"] < 2
        assert shards[idle]["load"]["packets_out_per_s"] == 0
        # The next room goes to the idle shard.
        other = await peers.publish(server.base_url, "quiet")
        sessions.append(other)
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base_url + "/api/rooms/quiet") as r:
                assert (await r.json())["shard"] == idle
    finally:
        for session in sessions:
            await session.close()
        stop_server(server)


async def test_drain_refuses_what_it_cannot_do(sfu_server: SfuServer) -> None:
    async with aiohttp.ClientSession() as http:
        for path, status in (("/api/shards/7/drain", 404), ("/api/shards/x/drain", 404),
                             ("/api/shards/0/drain", 409)):
            async with http.post(sfu_server.base_url + path) as r:
                assert r.status == status, (path, await r.text())
