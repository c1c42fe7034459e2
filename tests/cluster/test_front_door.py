"""A signalling replica with tokens: it forwards WHIP/WHEP POSTs to the room's node (clients
drop Authorization on a cross-origin redirect), and sessions are addressed at their node."""

from __future__ import annotations

import aiohttp
import pytest

import peers
from conftest import TEST_SECRET, start_server, stop_server
from sfu.auth import issue_token


async def test_replica_forwards_token_requests_to_the_node(tmp_path, redis_server) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "c").mkdir()
    common = ("--auth-secret", TEST_SECRET, "--redis-url", redis_server.url)
    a = start_server(tmp_path / "a", *common, "--node-id", "a", env={"SFU_SHARDS": "1"})
    c = start_server(tmp_path / "c", *common, "--node-id", "c", env={"SFU_SHARDS": "0"})
    publisher = viewer = None
    try:
        publisher = await peers.publish(c.base_url, "hall", token=issue_token(TEST_SECRET, "hall", publish=True))
        assert publisher.location.startswith(a.base_url + "/whip/hall/"), publisher.location
        viewer = await peers.watch(c.base_url, "hall", token=issue_token(TEST_SECRET, "hall", subscribe=True))
        assert viewer.location.startswith(a.base_url + "/whep/hall/")
        await viewer.wait_frames(10)
        # A bad token is refused by the node, through the replica.
        async with aiohttp.ClientSession() as http:
            async with http.post(c.base_url + "/whep/hall", data="v=0\r\n", headers={
                    "Content-Type": "application/sdp", "Authorization": "Bearer nope"}) as r:
                assert r.status == 401
        # The room WebSocket API through the replica: carried to the room's node.
        participant = peers.RoomClient(c.base_url, "hall")
        try:
            joined = await participant.join("guest", token=issue_token(TEST_SECRET, "hall", subscribe=True))
            assert joined["type"] == "joined" and [t["kind"] for t in joined["tracks"]] == ["audio", "video"]
            subscribed = await participant.subscribe()
            assert subscribed["type"] == "subscribed", subscribed
            assert participant.viewer is not None
            await participant.viewer.wait_frames(5)
        finally:
            await participant.close()
        async with aiohttp.ClientSession() as http:
            token = issue_token(TEST_SECRET, "hall", publish=True)
            async with http.delete(publisher.location, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
    finally:
        for p in (viewer, publisher):
            if p is not None:
                await p.close()
        stop_server(a)
        stop_server(c)
