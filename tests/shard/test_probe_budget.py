"""The shard pads at most max_probing consumers at once (a join wave must not probe all)."""

from __future__ import annotations

from fixtures import shard_transport
from sfu import control
from sfu.shard.shard import Shard


async def test_probing_consumers_are_capped_per_shard() -> None:
    shard = Shard(0)
    await shard.listen("127.0.0.1", 0)
    try:
        shard.max_probing = 2
        publisher = await shard_transport(shard, 0)
        for rid in ("l", "h"):
            await shard.on_request(control.Produce(
                transport_id=publisher, producer_id=rid, kind="video", codec="VP8", mid="0", payload_type=96,
                clock_rate=90000, rtx_payload_type=97, rid=rid))
        consumers = []
        for n in range(1, 4):
            viewer = await shard_transport(shard, n)
            await shard.on_request(control.Consume(
                transport_id=viewer, consumer_id=f"c{n}", producer_id="h", mid="0", payload_type=96, ssrc=1000 + n,
                rtx_payload_type=97, rtx_ssrc=2000 + n, layer_producer_ids=["l", "h"]))
            consumers.append(shard.consumers[f"c{n}"])
        for consumer in consumers:
            consumer._set_probe(500_000)
        assert [c.probe_bps for c in consumers] == [500_000, 500_000, 0]
        assert shard.probing == 2 and shard.stats()["probing_consumers"] == 2
        consumers[0].close()  # its budget goes back
        consumers[2]._set_probe(500_000)
        assert consumers[2].probe_bps == 500_000 and shard.probing == 2
        consumers[1]._set_probe(0)
        assert shard.probing == 1
    finally:
        shard.close()
