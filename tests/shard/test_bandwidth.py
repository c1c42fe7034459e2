"""ViewerBandwidth and the probe's padding rate: pure logic, time driven by hand."""

from __future__ import annotations

import pytest

from sfu.shard.bandwidth import (
    CONGESTED_PACING_FACTOR, CONGESTED_PACING_S, LOSS_ESTIMATE_TTL_S, MIN_PACING_BPS, PACING_FACTOR, ViewerBandwidth,
)
from sfu.shard.consumer import PROBE_DOUBLING_S, PROBE_LEAD, PROBE_OVERSHOOT, probe_padding_bps


def sending(bw: ViewerBandwidth, bps: float, seconds: float, start: float = 0.0, step: float = 0.25) -> float:
    """Feed the sent-bytes counter as if ``bps`` went out for ``seconds``; returns the end time."""
    total = 0
    now = start
    bw.on_sent(total, now)
    while now < start + seconds - 1e-9:
        now += step
        total += int(bps / 8 * step)
        bw.on_sent(total, now)
    return now


def test_no_estimate_means_the_engines_pacing() -> None:
    bw = ViewerBandwidth()
    assert bw.estimate_bps(0.0) is None and bw.pacing_bps(0.0) == 0.0
    sending(bw, 1_000_000, 2)
    assert bw.send_rate_bps == pytest.approx(1_000_000, rel=0.01)
    assert bw.estimate_bps(2.0) is None  # sending says nothing about the link


def test_remb_sets_the_estimate_and_the_pacing() -> None:
    bw = ViewerBandwidth()
    bw.on_remb(800_000)
    assert bw.estimate_bps(0.0) == 800_000
    assert bw.pacing_bps(0.0) == 800_000 * PACING_FACTOR
    bw.on_remb(10_000)
    assert bw.pacing_bps(0.0) == MIN_PACING_BPS
    bw.on_remb(0)  # none (yet): back to no estimate
    assert bw.estimate_bps(0.0) is None


def test_after_a_congested_move_down_the_pacing_is_the_estimate_for_a_while() -> None:
    bw = ViewerBandwidth()
    bw.on_remb(900_000)
    bw.on_congestion(10.0)
    assert CONGESTED_PACING_FACTOR < PACING_FACTOR
    assert bw.pacing_bps(10.0) == bw.pacing_bps(10.0 + CONGESTED_PACING_S - 0.01) == 900_000 * CONGESTED_PACING_FACTOR
    assert bw.pacing_bps(10.0 + CONGESTED_PACING_S) == 900_000 * PACING_FACTOR
    assert bw.estimate_bps(10.0) == 900_000  # the estimate itself is left alone


def test_heavy_loss_lowers_the_estimate_below_the_remb_for_a_while() -> None:
    bw = ViewerBandwidth()
    now = sending(bw, 2_000_000, 2)
    bw.on_remb(1_800_000)  # the REMB lags: the link just narrowed
    bw.on_loss_report(0.6, now)
    assert bw.estimate_bps(now) == pytest.approx(2_000_000 * 0.4, rel=0.01)
    assert bw.estimate_bps(now + LOSS_ESTIMATE_TTL_S + 0.1) == 1_800_000  # expired
    # A report with little loss ends it at once; a small loss never starts one.
    bw.on_loss_report(0.6, now + 3)
    bw.on_loss_report(0.01, now + 4)
    assert bw.estimate_bps(now + 4) == 1_800_000
    bw.on_loss_report(0.05, now + 5)
    assert bw.estimate_bps(now + 5) == 1_800_000


def test_the_worst_of_reports_close_together_counts() -> None:
    bw = ViewerBandwidth()
    now = sending(bw, 1_000_000, 2)
    bw.on_loss_report(0.5, now)
    bw.on_loss_report(0.2, now + 0.1)  # another stream's report, same moment
    assert bw.estimate_bps(now + 0.1) == pytest.approx(500_000, rel=0.01)


def test_probe_padding() -> None:
    # Not probing: nothing.
    assert probe_padding_bps(None, 300_000, 1_000_000, 5) == 0
    # With an estimate: up to the next step (plus overshoot), never more than the lead allows.
    assert probe_padding_bps(600_000, 300_000, 10_000_000, 0) == pytest.approx(600_000 * PROBE_OVERSHOOT - 300_000)
    assert probe_padding_bps(2_000_000, 300_000, 540_000, 0) == pytest.approx(540_000 / PROBE_LEAD - 300_000)
    assert probe_padding_bps(2_000_000, 500_000, 400_000, 0) == 0  # media alone is already above the lead
    # Blind (no estimate yet): the offer doubles from the media rate.
    assert probe_padding_bps(2_000_000, 300_000, 0, 0) == 0
    assert probe_padding_bps(2_000_000, 300_000, 0, PROBE_DOUBLING_S) == pytest.approx(300_000)
    assert probe_padding_bps(2_000_000, 300_000, 0, 100) == pytest.approx(2_000_000 * PROBE_OVERSHOOT - 300_000)
