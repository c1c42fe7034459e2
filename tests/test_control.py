"""The control channel between signalling and shards, over a real unix socket pair."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import msgspec
import pytest

from sfu.control import (
    MAX_FRAME_BYTES,
    Channel,
    CloseTransport,
    ControlError,
    GetStats,
    Hello,
    Produce,
    RestartIce,
    TransportStateChanged,
)

WAIT_S = 5.0  # generous upper bound for things that should happen at once


class ShardListener:
    """A scripted shard: how it answers depends on the request type."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.notifications: asyncio.Queue[Any] = asyncio.Queue()
        self.request_arrived = asyncio.Event()
        self.release = asyncio.Event()  # RestartIce waits for this

    async def on_request(self, body: Any) -> Any:
        self.requests.append(body)
        self.request_arrived.set()
        if isinstance(body, GetStats):
            return {"packets_in": 42, "shards": [1, 2]}
        if isinstance(body, Produce):
            return msgspec.structs.asdict(body)
        if isinstance(body, CloseTransport):
            if body.transport_id.startswith("missing"):
                raise KeyError(body.transport_id)
            # Answer in reverse order of the number in the id, to mix up replies.
            await asyncio.sleep(0.001 * (10 - int(body.transport_id[1:])))
            return body.transport_id
        if isinstance(body, RestartIce):
            await self.release.wait()
            return "restarted"
        raise AssertionError(f"unexpected {body!r}")

    def on_notification(self, body: Any) -> None:
        self.notifications.put_nowait(body)


class Pair:
    def __init__(self, client: Channel, server: Channel, client_listener: ShardListener,
                 server_listener: ShardListener) -> None:
        self.client, self.server = client, server
        self.client_listener, self.server_listener = client_listener, server_listener


async def _wait(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, WAIT_S)


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "c.sock"


@pytest.fixture
async def pair(socket_path: Path) -> AsyncIterator[Pair]:
    server_listener, client_listener = ShardListener(), ShardListener()
    accepted: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(Channel(reader, writer, server_listener))

    server = await asyncio.start_unix_server(on_connect, path=str(socket_path))
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    client = Channel(reader, writer, client_listener)
    server_channel = await _wait(accepted)
    yield Pair(client, server_channel, client_listener, server_listener)
    server_listener.release.set()
    client.close()
    server_channel.close()
    await _wait(asyncio.gather(client.closed, server_channel.closed))
    server.close()
    await server.wait_closed()


async def test_request_response_round_trip(pair: Pair) -> None:
    assert await pair.client.request(GetStats()) == {"packets_in": 42, "shards": [1, 2]}
    assert pair.server_listener.requests == [GetStats()]


async def test_request_body_arrives_typed(pair: Pair) -> None:
    body = Produce(transport_id="t1", producer_id="p1", kind="video", codec="VP8", mid="0",
                   payload_type=96, clock_rate=90000, rtx_payload_type=97, ssrc=1234,
                   extensions={"urn:ietf:params:rtp-hdrext:sdes:mid": 4})
    result = await pair.client.request(body)
    (received,) = pair.server_listener.requests
    assert type(received) is Produce
    assert received == body
    assert result == msgspec.structs.asdict(body)


async def test_both_ends_can_request(pair: Pair) -> None:
    assert await pair.server.request(GetStats()) == {"packets_in": 42, "shards": [1, 2]}
    assert pair.client_listener.requests == [GetStats()]


async def test_concurrent_requests_get_their_own_responses(pair: Pair) -> None:
    ids = [f"t{i}" for i in range(10)]
    results = await _wait(asyncio.gather(*(pair.client.request(CloseTransport(transport_id=i)) for i in ids)))
    assert results == ids


async def test_error_response_becomes_control_error(pair: Pair) -> None:
    with pytest.raises(ControlError) as excinfo:
        await pair.client.request(CloseTransport(transport_id="missing-7"))
    assert str(excinfo.value) == "KeyError: 'missing-7'"
    # The shard lives on, and so does the channel.
    assert await pair.client.request(GetStats()) == {"packets_in": 42, "shards": [1, 2]}


async def test_timeout(pair: Pair) -> None:
    request = RestartIce(transport_id="t", local_ufrag="a", local_pwd="b", remote_ufrag="c", remote_pwd="d")
    with pytest.raises(ControlError) as excinfo:
        await pair.client.request(request, timeout_s=0.05)
    assert str(excinfo.value) == "RestartIce timed out after 0.05 s"
    # The late answer is sent now, so it reaches us before the answer to the
    # next request (one ordered stream); it must not be taken for that answer.
    pair.server_listener.release.set()
    assert await pair.client.request(GetStats()) == {"packets_in": 42, "shards": [1, 2]}
    assert pair.client.closed.done() is False


async def test_notifications_both_ways(pair: Pair) -> None:
    hello = Hello(shard_id=3, pid=4321, rtc_port=40000, fingerprint_sha256="AB:CD")
    pair.server.notify(hello)
    assert await _wait(pair.client_listener.notifications.get()) == hello
    change = TransportStateChanged(transport_id="t1", state="failed", reason="dtls")
    pair.client.notify(change)
    received = await _wait(pair.server_listener.notifications.get())
    assert type(received) is TransportStateChanged
    assert received == change
    assert pair.client_listener.requests == pair.server_listener.requests == []


async def test_notifications_keep_their_order(pair: Pair) -> None:
    for i in range(20):
        pair.server.notify(TransportStateChanged(transport_id=f"t{i}", state="connected"))
    got = [await _wait(pair.client_listener.notifications.get()) for _ in range(20)]
    assert [n.transport_id for n in got] == [f"t{i}" for i in range(20)]


async def test_closing_fails_pending_requests(pair: Pair) -> None:
    request = RestartIce(transport_id="t", local_ufrag="a", local_pwd="b", remote_ufrag="c", remote_pwd="d")
    pending = asyncio.ensure_future(pair.client.request(request, timeout_s=WAIT_S))
    await _wait(pair.server_listener.request_arrived.wait())
    pair.server.close()  # the shard goes away while the request is in flight
    with pytest.raises(ControlError) as excinfo:
        await _wait(pending)
    assert str(excinfo.value) == "control channel closed"
    await _wait(pair.client.closed)
    with pytest.raises(ControlError, match="control channel closed"):
        await pair.client.request(GetStats())
    with pytest.raises(ControlError, match="control channel closed"):
        pair.client.notify(Hello(shard_id=1, pid=1, rtc_port=1, fingerprint_sha256=""))


async def test_closing_our_own_end_fails_our_pending_requests(pair: Pair) -> None:
    request = RestartIce(transport_id="t", local_ufrag="a", local_pwd="b", remote_ufrag="c", remote_pwd="d")
    pending = asyncio.ensure_future(pair.client.request(request, timeout_s=WAIT_S))
    await _wait(pair.server_listener.request_arrived.wait())
    pair.client.close()
    with pytest.raises(ControlError, match="control channel closed"):
        await _wait(pending)
    await _wait(pair.server.closed)  # the other end notices too


async def _raw_peer(socket_path: Path) -> tuple[Channel, ShardListener, asyncio.StreamReader,
                                                asyncio.StreamWriter, asyncio.AbstractServer]:
    """A Channel on the server side and a bare stream on the client side, to send bad frames."""
    listener = ShardListener()
    accepted: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
    server = await asyncio.start_unix_server(
        lambda r, w: accepted.set_result(Channel(r, w, listener)), path=str(socket_path))
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    return await _wait(accepted), listener, reader, writer, server


@pytest.mark.parametrize("frame", [
    (MAX_FRAME_BYTES + 1).to_bytes(4, "big"),
    b"\xff\xff\xff\xff" + b"x" * 100,
], ids=["max + 1", "4 GiB"])
async def test_oversized_frame_closes_the_channel(socket_path: Path, frame: bytes) -> None:
    channel, _, reader, writer, server = await _raw_peer(socket_path)
    try:
        pending = asyncio.ensure_future(channel.request(GetStats(), timeout_s=WAIT_S))
        request_frame = await _wait(reader.readexactly(4))
        await _wait(reader.readexactly(int.from_bytes(request_frame, "big")))  # never answered
        writer.write(frame)
        await writer.drain()
        await _wait(channel.closed)
        with pytest.raises(ControlError, match="control channel closed"):
            await _wait(pending)
        assert await _wait(reader.read()) == b""  # it hung up on us
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_frame_of_exactly_max_size_is_read(socket_path: Path) -> None:
    # The limit is inclusive: a frame of MAX_FRAME_BYTES is accepted.
    channel, listener, reader, writer, server = await _raw_peer(socket_path)
    try:
        body = TransportStateChanged(transport_id="t", state="closed", reason="")
        fields = {"type": "note", "body": msgspec.to_builtins(body)}
        # Pad with an unknown field, which the decoder ignores, up to the limit;
        # a bin 32 header is 3 bytes longer than the empty bin 8 one.
        pad_bytes = MAX_FRAME_BYTES - len(msgspec.msgpack.encode({**fields, "pad": b""})) - 3
        frame = msgspec.msgpack.encode({**fields, "pad": b"x" * pad_bytes})
        assert len(frame) == MAX_FRAME_BYTES
        writer.write(len(frame).to_bytes(4, "big") + frame)
        await writer.drain()
        assert await _wait(listener.notifications.get()) == body
        assert not channel.closed.done()
    finally:
        writer.close()
        await _wait(channel.closed)
        server.close()
        await server.wait_closed()


async def test_undecodable_frame_closes_the_channel(socket_path: Path) -> None:
    channel, listener, reader, writer, server = await _raw_peer(socket_path)
    try:
        junk = msgspec.msgpack.encode({"type": "no-such-frame"})
        writer.write(len(junk).to_bytes(4, "big") + junk)
        await writer.drain()
        await _wait(channel.closed)
        assert listener.requests == []
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
