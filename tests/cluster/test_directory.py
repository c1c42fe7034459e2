"""Both directories, one suite: the in-memory default and Redis (a real redis-server)."""

from __future__ import annotations

import asyncio

import pytest

from bench.redis_server import RedisServer
from sfu.cluster.directory import MemoryDirectory, NodeRecord, RoomHome
from sfu.cluster.redis_directory import RedisDirectory

TTL_S = 1.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def directory(request, redis_server):
    if request.param == "memory":
        d = MemoryDirectory(ttl_s=TTL_S)
    else:
        d = RedisDirectory(redis_server.url, prefix=f"test-{id(request)}:", ttl_s=TTL_S)
    yield d
    await d.close()


def node(i: str, port: int = 50000) -> NodeRecord:
    return NodeRecord(id=i, http_url=f"http://127.0.0.1:{port}", rtc_host="127.0.0.1", shard_ports=[port])


async def test_nodes_heartbeat_and_expire(directory):
    await directory.heartbeat(node("a"))
    await directory.heartbeat(node("b", 50010))
    assert [n.id for n in await directory.nodes()] == ["a", "b"]
    await asyncio.sleep(TTL_S * 0.6)
    await directory.heartbeat(node("a"))
    await asyncio.sleep(TTL_S * 0.6)
    assert [n.id for n in await directory.nodes()] == ["a"]  # b stopped heartbeating
    await directory.leave("a")
    assert await directory.nodes() == []


async def test_room_claims_are_first_come_and_free_when_the_node_dies(directory):
    await directory.heartbeat(node("a"))
    await directory.heartbeat(node("b"))
    assert await directory.claim_room("town", RoomHome("a", 0)) == RoomHome("a", 0)
    assert await directory.claim_room("town", RoomHome("b", 1)) == RoomHome("a", 0)  # a holds it
    assert await directory.room_home("town") == RoomHome("a", 0)
    await asyncio.sleep(TTL_S * 0.6)
    await directory.heartbeat(node("b"))
    await asyncio.sleep(TTL_S * 0.6)
    assert await directory.room_home("town") is None  # a is gone
    assert await directory.claim_room("town", RoomHome("b", 1)) == RoomHome("b", 1)
    await directory.release_room("town", "a")  # not a's any more: nothing happens
    assert await directory.room_home("town") == RoomHome("b", 1)
    await directory.release_room("town", "b")
    assert await directory.room_home("town") is None


async def test_claims_race_to_one_winner(directory):
    for i in "abcdefgh":
        await directory.heartbeat(node(i))
    homes = await asyncio.gather(*(directory.claim_room("race", RoomHome(i, 0)) for i in "abcdefgh"))
    assert len({(h.node, h.shard) for h in homes}) == 1


async def test_tracks_are_listed_while_their_node_is_up(directory):
    await directory.heartbeat(node("a"))
    await directory.publish_tracks("town", "a", {"p1": {"kind": "video"}, "p2": {"kind": "audio"}})
    tracks = await directory.tracks("town")
    assert tracks == {"p1": {"kind": "video", "node": "a"}, "p2": {"kind": "audio", "node": "a"}}
    await directory.unpublish_tracks("town", ["p2"])
    assert list(await directory.tracks("town")) == ["p1"]
    await asyncio.sleep(TTL_S * 1.2)
    assert await directory.tracks("town") == {}  # a stopped heartbeating


async def test_presence_spans_nodes_and_ends_with_them(directory):
    await directory.heartbeat(node("a"))
    await directory.heartbeat(node("b"))
    await directory.set_presence("choir", "a", {"p1": {"name": "alto", "access_ms": 4.0}})
    await directory.set_presence("choir", "b", {"p2": {"name": "bass", "access_ms": None}})
    assert await directory.presence("choir") == {
        "p1": {"name": "alto", "access_ms": 4.0, "node": "a"}, "p2": {"name": "bass", "access_ms": None, "node": "b"}}
    await directory.set_presence("choir", "a", {"p3": {"name": "tenor"}})  # replaces a's list
    assert sorted(await directory.presence("choir")) == ["p2", "p3"]
    await directory.set_presence("choir", "a", {})
    assert list(await directory.presence("choir")) == ["p2"]
    await asyncio.sleep(TTL_S * 0.6)
    await directory.heartbeat(node("a"))
    await asyncio.sleep(TTL_S * 0.6)
    assert await directory.presence("choir") == {}  # b stopped heartbeating
    assert await directory.presence("elsewhere") == {}
