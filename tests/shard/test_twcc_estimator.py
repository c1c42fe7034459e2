"""TwccEstimator on simulated links: pure logic, time driven by hand.

A sender puts frames of packets on a bottleneck (a FIFO at the link rate, plus a
fixed propagation delay, optionally random loss); every 250 ms the estimator gets
what a transport-cc receiver would have reported by then, as ``Engine.take_twcc``
hands it over: (send time, arrival time on the receiver's clock or -1, size).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import pytest

from sfu.shard.twcc_estimator import (
    BETA, INIT_S, LOSS_HIGH_FRACTION, OVERUSE, THROUGHPUT_LIMIT_EXTRA_BPS, THROUGHPUT_LIMIT_FACTOR, TwccEstimator,
)

PACKET = 1200
RECEIVER_CLOCK = 12345.678  # the receiver's clock has nothing to do with ours
STEP = 0.25


@dataclass
class Link:
    capacity_bps: float
    delay_s: float = 0.04
    loss_every: int = 0  # every n-th packet is lost (0: none)
    busy_until: float = 0.0
    carried: int = 0

    def carry(self, send: float, size: int) -> float:
        """When a packet sent at ``send`` arrives (-1: lost)."""
        self.carried += 1
        if self.loss_every and self.carried % self.loss_every == 0:
            return -1.0
        start = max(send, self.busy_until)
        self.busy_until = start + size * 8 / self.capacity_bps
        return self.busy_until + self.delay_s


@dataclass
class Sim:
    est: TwccEstimator = field(default_factory=TwccEstimator)
    link: Link = field(default_factory=lambda: Link(10e6))
    now: float = 0.0
    fps: int = 30
    pending: list[tuple[float, float, int]] = field(default_factory=list)
    estimates: list[tuple[float, float | None]] = field(default_factory=list)
    sent_bits: float = 0.0

    def run(self, seconds: float, rate: float | Callable[[Sim], float]) -> None:
        """Send at ``rate`` (bit/s, or a function of the simulation) for ``seconds``."""
        end = self.now + seconds
        next_frame = self.now
        while self.now < end - 1e-9:
            step_end = self.now + STEP
            while next_frame < step_end - 1e-9:
                bps = rate(self) if callable(rate) else rate
                frame = max(int(bps / self.fps / 8), 100)
                t = next_frame
                while frame > 0:  # a frame's packets leave back to back, 0.1 ms apart
                    size = min(PACKET, frame)
                    frame -= size
                    arrival = self.link.carry(t, size)
                    self.pending.append((t, arrival, size))
                    self.sent_bits += size * 8
                    t += 0.0001
                next_frame += 1 / self.fps
            self.now = step_end
            # Feedback about what has arrived (and what was lost) by now.
            ready = [p for p in self.pending if p[1] < 0 or p[1] <= self.now]
            self.pending = [p for p in self.pending if not (p[1] < 0 or p[1] <= self.now)]
            reports = [(s, a + RECEIVER_CLOCK if a >= 0 else -1.0, n) for s, a, n in ready]
            self.estimates.append((self.now, self.est.update(reports, self.now)))

    def estimate_at(self, t: float) -> float | None:
        return next(e for when, e in self.estimates if when >= t - 1e-9)


def test_nothing_before_a_second_of_feedback() -> None:
    sim = Sim()
    sim.run(INIT_S - 0.25, 1_000_000)
    assert sim.est.estimate_bps is None
    sim.run(1.0, 1_000_000)
    # The first estimate is what arrived.
    assert sim.est.estimate_bps == pytest.approx(1_000_000, rel=0.1)


def test_steady_delay_lets_the_estimate_grow_up_to_what_arrives_allows() -> None:
    sim = Sim(link=Link(10e6))
    sim.run(2.0, 1_000_000)
    first = sim.est.estimate_bps
    assert first is not None
    sim.run(3.0, 1_000_000)
    assert sim.est.estimate_bps > first * 1.15  # multiplicative: ~8 % a second
    assert sim.est.usage != OVERUSE and sim.est.overuses == 0
    sim.run(10.0, 1_000_000)
    # ... but never past 1.5 x what arrives: nothing was sent to show more.
    cap = THROUGHPUT_LIMIT_FACTOR * sim.est.acked_bps + THROUGHPUT_LIMIT_EXTRA_BPS
    assert sim.est.estimate_bps == pytest.approx(cap, rel=0.05)


def test_rising_delay_is_overuse_and_the_estimate_drops_below_the_acked_rate_within_a_second() -> None:
    sim = Sim(link=Link(5e6))
    sim.run(4.0, 1_500_000)
    before = sim.est.estimate_bps
    assert before is not None and before > 1_500_000
    # The link narrows to 1 Mbit/s under a 1.5 Mbit/s stream: the queue grows 0.5 s a second.
    sim.link.capacity_bps = 1e6
    start = sim.now
    sim.run(1.0, 1_500_000)
    dropped = [(t, e) for t, e in sim.estimates if t > start and e is not None and e < 1_000_000]
    assert dropped, sim.estimates[-6:]
    assert dropped[0][0] - start <= 1.0
    assert sim.est.overuses >= 1
    # To 0.85 x what got through (about the link rate), below what we send and what arrives.
    assert sim.est.estimate_bps <= BETA * 1_000_000 * 1.1
    assert sim.est.estimate_bps < sim.est.acked_bps


def test_a_sender_that_follows_the_estimate_settles_near_the_link_rate() -> None:
    # As the SFU does: media plus probing up to 11 % above the estimate. From 300 kbit/s
    # at 8 % a second the climb to 2 Mbit/s takes about 25 s; then it stays near.
    sim = Sim(link=Link(2e6))
    sim.run(45.0, lambda s: 300_000 if s.est.estimate_bps is None else s.est.estimate_bps / 0.9)
    late = [e for t, e in sim.estimates if t > 30 and e is not None]
    assert min(late) > 0.7 * 2e6 and max(late) < 1.2 * 2e6
    assert sim.est.overuses >= 1  # it found the ceiling by delay, not by loss
    # ... and the queue stays short: what is still in flight at the end is little.
    assert sim.link.busy_until - sim.now < 0.5


def test_high_loss_cuts_the_estimate() -> None:
    sim = Sim(link=Link(10e6))
    sim.run(3.0, 1_000_000)
    before = sim.est.estimate_bps
    sim.link.loss_every = 4  # 25 %
    sim.run(2.0, 1_000_000)
    assert sim.est.loss_fraction is not None and sim.est.loss_fraction > LOSS_HIGH_FRACTION
    assert sim.est.estimate_bps < 0.8 * before
    assert sim.est.estimate_bps == sim.est.loss_based_bps < sim.est.delay_based_bps


def test_moderate_loss_holds_and_low_loss_grows() -> None:
    sim = Sim(link=Link(10e6))
    sim.run(3.0, 1_000_000)
    sim.link.loss_every = 16  # 6 %: between 2 % and 10 %, neither way
    sim.run(1.0, 1_000_000)
    held = sim.est.loss_based_bps
    sim.run(3.0, 1_000_000)
    assert sim.est.loss_based_bps == held
    assert sim.est.estimate_bps == held < sim.est.delay_based_bps  # the delay-based one went on growing
    sim.link.loss_every = 0
    sim.run(3.0, 1_000_000)
    assert sim.est.loss_based_bps > held * 1.1


def test_everything_lost() -> None:
    sim = Sim(link=Link(10e6))
    sim.run(3.0, 1_000_000)
    before = sim.est.estimate_bps
    sim.link.loss_every = 1
    sim.run(1.0, 1_000_000)
    assert sim.est.loss_fraction == 1.0 and sim.est.estimate_bps <= 0.5 * before + 1


def test_reordered_reports_and_clock_jumps_do_not_break_it() -> None:
    est = TwccEstimator()
    rng = random.Random(3)
    t = 0.0
    for step in range(40):
        reports = []
        for i in range(30):
            send = t + i * 0.008
            reports.append((send, 5000.0 + send + 0.03 + rng.uniform(0, 0.02), 1000))
        rng.shuffle(reports)
        if step == 20:
            reports = [(s, a + 100.0, n) for s, a, n in reports]  # the receiver's clock jumps
        t += 0.25
        est.update(reports, t)
    assert est.estimate_bps is not None and est.estimate_bps > 0
    assert est.update([], t + 0.25) == est.estimate_bps  # an empty report changes nothing
