"""The shard's plumbing for round trips and RED.

``CreateWebRtcTransport(report_rtt=True)`` transports have their round-trip time sent
to signalling once a second (``control.RoundTrips``, milliseconds), when the engine has
one; ``Produce`` and ``Consume`` hand ``red_payload_type`` to the engine. The engine
itself (what an RTT or a RED rewrite is) is tested in ``test_engine.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from fixtures import shard_transport
from sfu import control
from sfu.shard.shard import Shard


class _Engine:
    """The shard's engine, with round trips from a script and the calls it got recorded."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.rtts: dict[int, float] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def transport_rtt(self, t: int) -> float:
        return self.rtts.get(t, -1.0)

    def add_producer(self, *args: Any, **kwargs: Any) -> int:
        self.calls.append(("add_producer", kwargs))
        return self._engine.add_producer(*args, **kwargs)

    def add_consumer(self, *args: Any, **kwargs: Any) -> int:
        self.calls.append(("add_consumer", kwargs))
        return self._engine.add_consumer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _Channel:
    def __init__(self) -> None:
        self.notes: list[Any] = []

    def notify(self, body: Any) -> None:
        self.notes.append(body)


async def test_round_trips_of_the_transports_that_asked_go_to_signalling() -> None:
    shard = Shard(0)
    await shard.listen("127.0.0.1", 0)
    try:
        channel = shard.channel = _Channel()  # type: ignore[assignment]
        asked = await shard_transport(shard, 1, report_rtt=True)
        unmeasured = await shard_transport(shard, 2, report_rtt=True)
        silent = await shard_transport(shard, 3)  # report_rtt defaults to False
        engine = shard.engine = _Engine(shard.engine)
        shard._report_round_trips()
        assert channel.notes == []  # nothing measured yet: nothing sent
        engine.rtts = {shard.transports[asked].slot: 0.01234, shard.transports[silent].slot: 0.5}
        assert shard.transports[unmeasured].rtt_s is None
        shard._report_round_trips()
        assert channel.notes == [control.RoundTrips(rtts=[(asked, 12.3)])]
        # Through the control channel's own encoding, as signalling receives it.
        frame = control._decoder.decode(msgspec.msgpack.encode(control.NotificationFrame(body=channel.notes[0])))
        assert frame.body == control.RoundTrips(rtts=[(asked, 12.3)])
    finally:
        shard.close()


async def test_produce_and_consume_hand_red_to_the_engine() -> None:
    shard = Shard(0)
    await shard.listen("127.0.0.1", 0)
    try:
        engine = shard.engine = _Engine(shard.engine)
        publisher, viewer, plain = [await shard_transport(shard, n) for n in range(3)]
        await shard.on_request(control.Produce(
            transport_id=publisher, producer_id="mic", kind="audio", codec="opus", mid="0", payload_type=111,
            clock_rate=48000, ssrc=1234, red_payload_type=63))
        await shard.on_request(control.Produce(
            transport_id=publisher, producer_id="cam", kind="video", codec="VP8", mid="1", payload_type=96,
            clock_rate=90000, ssrc=5678))
        await shard.on_request(control.Consume(
            transport_id=viewer, consumer_id="c1", producer_id="mic", mid="0", payload_type=109, ssrc=1,
            red_payload_type=100))
        await shard.on_request(control.Consume(
            transport_id=plain, consumer_id="c2", producer_id="mic", mid="0", payload_type=111, ssrc=2))
        assert [(name, kwargs["red_payload_type"]) for name, kwargs in engine.calls] == [
            ("add_producer", 63), ("add_producer", -1), ("add_consumer", 100), ("add_consumer", -1)]
        # RED wraps audio: a video track with it is refused, and the error goes back to signalling.
        with pytest.raises(ValueError):
            await shard.on_request(control.Produce(
                transport_id=publisher, producer_id="bad", kind="video", codec="VP8", mid="2", payload_type=96,
                clock_rate=90000, red_payload_type=63))
    finally:
        shard.close()
