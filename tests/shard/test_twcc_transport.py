"""transport-cc through the shard: Consume's extension id reaches the engine, and
``WebRtcTransport.update_bandwidth`` feeds the viewer's feedback to its TwccEstimator."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures import shard_transport
from sfu import control
from sfu.shard.bandwidth import TWCC_ESTIMATE_TTL_S, ViewerBandwidth
from sfu.shard.shard import Shard
from sfu.signalling.sdp import EXT_ABS_SEND_TIME, EXT_MID, EXT_TRANSPORT_CC

VIEWER_EXTENSIONS = {EXT_MID: 4, EXT_ABS_SEND_TIME: 2, EXT_TRANSPORT_CC: 3}


class _Feedback:
    """The shard's engine, with ``take_twcc`` answering from a script."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.reports: list[list[tuple[float, float, int]]] = []

    def take_twcc(self, t: int) -> list[tuple[float, float, int]]:
        return self.reports.pop(0) if self.reports else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _steady(start: float, seconds: float, bps: float) -> list[tuple[float, float, int]]:
    """What a receiver reports of ``bps`` in 1,000-byte packets on an idle link."""
    n = int(bps * seconds / 8000)
    return [(start + i * seconds / n, 500.0 + start + i * seconds / n + 0.03, 1000) for i in range(n)]


async def test_consume_with_transport_cc_numbers_the_viewers_transport_and_feeds_its_estimate() -> None:
    shard = Shard(0)
    await shard.listen("127.0.0.1", 0)
    try:
        publisher = await shard_transport(shard, 0)
        for rid in ("l", "h"):
            await shard.on_request(control.Produce(
                transport_id=publisher, producer_id=rid, kind="video", codec="VP8", mid="0", payload_type=96,
                clock_rate=90000, rtx_payload_type=97, rid=rid, extensions={EXT_MID: 4}))
        viewer_id, plain_id = await shard_transport(shard, 1), await shard_transport(shard, 2)
        for n, transport_id, extensions in ((1, viewer_id, VIEWER_EXTENSIONS), (2, plain_id, {EXT_MID: 4})):
            await shard.on_request(control.Consume(
                transport_id=transport_id, consumer_id=f"c{n}", producer_id="h", mid="0", payload_type=96,
                ssrc=1000 + n, rtx_payload_type=97, rtx_ssrc=2000 + n, layer_producer_ids=["l", "h"],
                extensions=extensions))
        viewer, plain = shard.transports[viewer_id], shard.transports[plain_id]
        assert shard.engine.transport_twcc(viewer.slot)["id"] == 3
        assert shard.engine.transport_twcc(plain.slot)["id"] == 0
        assert shard.engine.transport_twcc(shard.transports[publisher].slot)["id"] == 0

        engine = shard.engine = _Feedback(shard.engine)
        now = 100.0
        for step in range(8):  # two seconds of feedback, every 250 ms
            engine.reports.append(_steady(step * 0.25, 0.25, 800_000))
            viewer.update_bandwidth(now + step * 0.25)
        assert viewer.twcc is not None and viewer.twcc.estimate_bps is not None
        estimate = viewer.bandwidth.estimate_bps(now + 1.75)
        assert estimate == viewer.twcc.estimate_bps and 700_000 < estimate < 1_300_000
        assert viewer.bandwidth.remb_bps is None  # Chrome sends none with transport-cc
        # A viewer without transport-cc has no estimator.
        plain.update_bandwidth(now)
        assert plain.twcc is None and plain.bandwidth.estimate_bps(now) is None
    finally:
        shard.close()


def test_the_transport_cc_estimate_is_the_lowest_and_expires() -> None:
    bw = ViewerBandwidth()
    bw.on_twcc(900_000, 10.0)
    assert bw.estimate_bps(10.0) == 900_000
    bw.on_remb(700_000)  # a receiver that sends both: the lower counts
    assert bw.estimate_bps(10.0) == 700_000
    bw.on_remb(2_000_000)
    assert bw.estimate_bps(10.0) == 900_000
    # Feedback that stops leaves the others to speak.
    assert bw.estimate_bps(10.0 + TWCC_ESTIMATE_TTL_S + 0.1) == 2_000_000


def test_receiver_report_loss_is_left_to_the_transport_cc_estimate() -> None:
    # Its own loss control saw every packet, later than the report (which covers the
    # second before it); the report's loss counts again only once the feedback stops.
    bw = ViewerBandwidth()
    now = 0.0
    for step in range(9):
        now = step * 0.25
        bw.on_sent(int(2_000_000 / 8 * now), now)
    bw.on_twcc(900_000, now)
    bw.on_loss_report(0.8, now)
    assert bw.estimate_bps(now) == 900_000
    later = now + TWCC_ESTIMATE_TTL_S + 0.5
    bw.on_loss_report(0.8, later)
    assert bw.estimate_bps(later) == pytest.approx(2_000_000 * 0.2, rel=0.05)
