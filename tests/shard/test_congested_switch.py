"""A simulcast viewer moved down: its old layer is held on a congested link, bridged with
its base temporal layer when a cap moved it (the consumer's side; the engine's is in
test_engine.py)."""

from __future__ import annotations

from typing import Any

from fixtures import shard_transport
from sfu import control
from sfu.shard.bandwidth import CONGESTED_PACING_FACTOR
from sfu.shard.shard import Shard


class Recorder:
    """The shard's engine, with the layer and pacing calls written down."""

    RECORDED = ("set_consumer_producer", "set_consumer_temporal", "set_transport_pacing")

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._engine, name)
        if name not in self.RECORDED:
            return attr

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)
        return record

    def take(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        calls, self.calls = self.calls, []
        return calls


async def _viewer_on_top(shard: Shard) -> tuple[Any, Any, Recorder]:
    publisher = await shard_transport(shard, 0)
    for rid, bps in (("l", 150_000.0), ("h", 1_500_000.0)):
        await shard.on_request(control.Produce(
            transport_id=publisher, producer_id=rid, kind="video", codec="VP8", mid="0", payload_type=96,
            clock_rate=90000, rtx_payload_type=97, rid=rid))
        shard.producers[rid].bitrate_bps = bps
        shard.producers[rid].temporal_layers = 3
    viewer = await shard_transport(shard, 1)
    await shard.on_request(control.Consume(
        transport_id=viewer, consumer_id="c", producer_id="h", mid="0", payload_type=96, ssrc=1000,
        rtx_payload_type=97, rtx_ssrc=2000, layer_producer_ids=["l", "h"]))
    consumer, transport = shard.consumers["c"], shard.transports[viewer]
    recorder = Recorder(shard.engine)
    shard.engine = recorder
    transport.bandwidth.on_remb(5_000_000)
    transport.update_bandwidth(0.0)
    consumer.update_layer(0.0)
    assert consumer.layer.rid == "h"
    recorder.take()
    return consumer, transport, recorder


async def test_a_move_down_on_congestion_holds_the_old_layer_and_paces_at_the_estimate() -> None:
    shard = Shard(0)
    await shard.listen("127.0.0.1", 0)
    try:
        consumer, transport, recorder = await _viewer_on_top(shard)
        transport.bandwidth.on_remb(600_000)
        consumer.update_layer(1.0)  # as the shard's fast path does on a sharp fall, before any tick
        assert consumer.layer.rid == "l" and consumer.policy.went_down
        calls = recorder.take()
        assert ("set_consumer_producer", (consumer.slot, shard.producers["l"].slot), {"hold": True}) in calls
        assert not any(name == "set_consumer_temporal" and args[1] == 0 for name, args, _ in calls)
        assert ("set_transport_pacing", (transport.slot, 600_000 * CONGESTED_PACING_FACTOR), {}) in calls
    finally:
        shard.close()


async def test_a_move_down_on_a_cap_bridges_with_the_base_temporal_layer() -> None:
    shard = Shard(0)
    await shard.listen("127.0.0.1", 0)
    try:
        consumer, transport, recorder = await _viewer_on_top(shard)
        consumer.max_layer_rid = "l"
        consumer.update_layer(1.0)
        assert consumer.layer.rid == "l" and not consumer.policy.went_down
        calls = recorder.take()
        assert calls[-2:] == [
            ("set_consumer_temporal", (consumer.slot, 0), {"until_switch": True}),
            ("set_consumer_producer", (consumer.slot, shard.producers["l"].slot), {"hold": False}),
        ]
        assert not any(name == "set_transport_pacing" for name, _, _ in calls)
    finally:
        shard.close()
