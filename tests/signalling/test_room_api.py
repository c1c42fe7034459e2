"""The room WebSocket API with real aiortc peers: join, publish, subscribe, events, leave."""

from __future__ import annotations

import asyncio
import json

import aiohttp

import peers
from conftest import start_server, stop_server


async def test_two_participants_see_each_other_and_media_flows(sfu_server) -> None:
    alice, bob = peers.RoomClient(sfu_server.base_url, "team"), peers.RoomClient(sfu_server.base_url, "team")
    try:
        joined = await alice.join("Alice")
        assert joined["type"] == "joined" and joined["participants"] == [] and joined["tracks"] == []
        joined = await bob.join("Bob")
        assert joined["participants"] == [{"id": alice.participant, "name": "Alice"}]
        await alice.wait_event("participant_joined", participant={"id": bob.participant, "name": "Bob"})

        published, _ = await alice.publish()
        assert published["type"] == "published" and len(published["tracks"]) == 2
        event = await bob.wait_event("track_published", participant=alice.participant)
        assert sorted(t["kind"] for t in event["tracks"]) == ["audio", "video"]

        subscribed = await bob.subscribe()
        assert subscribed["type"] == "subscribed", subscribed
        assert {s["participant"] for s in subscribed["slots"].values()} == {alice.participant}
        assert bob.viewer is not None
        await bob.viewer.wait_frames(10)

        # Alice's own tone makes her the active speaker.
        speaker = await bob.wait_event("active_speaker", participant=alice.participant)
        assert speaker["level_dbov"] > -30

        # Alice subscribing gets nothing of her own back: the room has no one else's tracks.
        own = await alice.subscribe()
        assert own["type"] == "error" and own["status"] == 409, own

        left = await alice.request({"type": "leave"})
        assert left["type"] == "left"
        for _ in range(50):  # the server closes the socket after "left", normally
            if alice.ws.closed:
                break
            await asyncio.sleep(0.05)
        assert alice.ws.closed and alice.ws.close_code == 1000, alice.ws.close_code
        await bob.wait_event("participant_left", participant=alice.participant)
        await bob.wait_event("track_unpublished", participant=alice.participant)
        async with aiohttp.ClientSession() as http:
            async with http.get(sfu_server.base_url + "/api/rooms/team") as r:
                room = await r.json()
        assert [p["kind"] for p in room["peers"]] == ["whep"]  # Alice's publisher session ended with her
    finally:
        await alice.close()
        await bob.close()


async def test_bad_messages_get_errors_and_the_socket_lives(sfu_server) -> None:
    client = peers.RoomClient(sfu_server.base_url, "bad")
    try:
        await client.connect()
        assert client.ws is not None
        await client.ws.send_str(json.dumps({"type": "publish", "sdp": "v=0", "id": 1}))
        reply = await asyncio.wait_for(_next(client), 5)
        assert reply["type"] == "error" and reply["status"] == 400 and "join" in reply["reason"]
    finally:
        await client.close()

    client = peers.RoomClient(sfu_server.base_url, "bad")
    try:
        await client.join("x")
        assert client.ws is not None
        for junk in ["not json", "[1, 2]", '{"no": "type"}', '{"type": 7}']:
            await client.ws.send_str(junk)
        await client.ws.send_bytes(b"\x00\x01")
        for _ in range(5):
            error = await asyncio.wait_for(_next(client), 5)
            assert error["type"] == "error" and error["status"] == 400, error
        for message in [{"type": "fly"}, {"type": "publish"}, {"type": "publish", "sdp": "garbage"},
                        {"type": "subscribe", "sdp": "v=0\r\n", "last_n": -1},
                        {"type": "unsubscribe", "session": "nope"}]:
            reply = await client.request(message)
            assert reply["type"] == "error" and 400 <= reply["status"] < 500, (message, reply)
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    finally:
        await client.close()


async def _next(client: peers.RoomClient) -> dict:
    while not client.events:
        await asyncio.sleep(0.02)
    return client.events.pop(0)


async def test_tokens_guard_the_room(tmp_path) -> None:
    from sfu.auth import issue_token

    secret = "room-api-test-secret-0123456789abcdef"
    server = start_server(tmp_path, "--auth-secret", secret)
    try:
        for token, status in [(None, 401), ("garbage", 401),
                              (issue_token(secret, "elsewhere", subscribe=True), 403)]:
            client = peers.RoomClient(server.base_url, "guarded")
            try:
                reply = await client.join("x", token=token)
                assert reply["type"] == "error" and reply["status"] == status, (token, reply)
            finally:
                await client.close()
        viewer = peers.RoomClient(server.base_url, "guarded")
        try:
            reply = await viewer.join("v", token=issue_token(secret, "guarded", subscribe=True))
            assert reply["type"] == "joined"
            published, _ = await viewer.publish()
            assert published["type"] == "error" and published["status"] == 403
        finally:
            await viewer.close()
    finally:
        stop_server(server)


async def test_last_n_follows_the_active_speaker(sfu_server) -> None:
    """Two publishers of different sizes; a viewer with last_n=1 shows whoever speaks."""
    a, b, viewer = (peers.RoomClient(sfu_server.base_url, "panel") for _ in range(3))
    try:
        await a.join("A")
        await b.join("B")
        await viewer.join("viewer")
        _, tone_a = await a.publish(size=(320, 240), amplitude=8000)
        _, tone_b = await b.publish(size=(480, 360), amplitude=0)
        await viewer.wait_event("active_speaker", participant=a.participant)
        subscribed = await viewer.subscribe(audio=2, video=1, last_n=1)
        assert subscribed["type"] == "subscribed", subscribed
        slot = [s for s in subscribed["slots"].values() if s["kind"] == "video"]
        assert [s["participant"] for s in slot] == [a.participant]
        assert viewer.viewer is not None
        await viewer.viewer.wait_frames(10)
        assert viewer.viewer.frame_sizes[-1] == (320, 240)

        tone_a.amplitude, tone_b.amplitude = 0, 8000
        await viewer.wait_event("active_speaker", participant=b.participant)
        event = await viewer.wait_event("slots")
        assert [s["participant"] for s in event["slots"].values() if s["kind"] == "video"] == [b.participant]
        # The same m-line now decodes B's video: the switch waited for B's keyframe.
        deadline = asyncio.get_running_loop().time() + 10
        while viewer.viewer.frame_sizes[-1] != (480, 360):
            assert asyncio.get_running_loop().time() < deadline, viewer.viewer.frame_sizes[-5:]
            await asyncio.sleep(0.1)
        count = viewer.viewer.video_frames
        await viewer.viewer.wait_frames(count + 10)
        assert viewer.viewer.audio_frames > 0
    finally:
        for client in (a, b, viewer):
            await client.close()


# --- the parsers of client input, property-tested ------------------------------------

from types import SimpleNamespace  # noqa: E402

from aiohttp import WSMsgType  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sfu.signalling.room_api import RequestError, RoomApi  # noqa: E402
from sfu.signalling.sessions import Subscription  # noqa: E402

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=10)


@given(st.one_of(st.text(), json_values.map(json.dumps)))
def test_any_text_frame_decodes_or_is_a_400(text):
    try:
        message = RoomApi._decode(SimpleNamespace(type=WSMsgType.TEXT, data=text))
    except RequestError as exc:
        assert exc.status == 400
    else:
        assert isinstance(message, dict) and isinstance(message["type"], str)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["layer", "max_width", "max_height", "last_n", "tracks", "other"]),
                       json_values, max_size=5))
def test_subscribe_options_validate_or_are_a_400(options):
    api = RoomApi.__new__(RoomApi)
    api.s = SimpleNamespace(rooms=SimpleNamespace(sessions={}))
    participant = SimpleNamespace(sessions={}, room="r")
    try:
        want = api._subscription(participant, {"type": "subscribe", **options})
    except RequestError as exc:
        assert exc.status == 400
    else:
        assert isinstance(want, Subscription)
        for name in ("max_width", "max_height", "last_n"):
            value = getattr(want, name)
            assert value is None or (type(value) is int and value >= 0)
        assert all(isinstance(t, str) for t in want.track_ids)
