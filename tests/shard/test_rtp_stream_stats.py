"""Receive statistics against RFC 3550 §6.4.1 and appendices A.3 and A.8."""

from __future__ import annotations

import pytest

from sfu.shard.rtp_stream_stats import RtpStreamStats

CLOCK_RATE = 90000
FRAME_TICKS = 3000  # 30 fps
FRAME_S = FRAME_TICKS / CLOCK_RATE


def feed(stats: RtpStreamStats, seqs, *, first_seq: int = 0, size: int = 1000) -> None:
    """Packets ``seqs`` (absolute, may exceed 16 bits) sent and received on time."""
    for seq in seqs:
        n = seq - first_seq
        stats.update(seq & 0xFFFF, (n * FRAME_TICKS) & 0xFFFFFFFF, 100.0 + n * FRAME_S, size)


def test_first_packet() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    stats.update(1000, 12345, 10.0, 1200)
    assert (stats.base_seq, stats.max_seq, stats.cycles) == (1000, 1000, 0)
    assert (stats.extended_max, stats.expected, stats.received, stats.lost) == (1000, 1, 1, 0)
    assert stats.bytes == 1200


def test_in_order_stream_without_loss() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, range(500, 600), first_seq=500)
    assert (stats.expected, stats.received, stats.lost) == (100, 100, 0)
    fraction, cumulative, extended_max, _, _, _ = stats.report_block(200.0)
    assert (fraction, cumulative, extended_max) == (0, 0, 599)


def test_sequence_wrap_counts_a_cycle() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, range(65530, 65540), first_seq=65530)  # 65530..65535, then 0..3
    assert stats.max_seq == 3
    assert stats.cycles == 1 << 16
    assert stats.extended_max == (1 << 16) + 3
    assert (stats.expected, stats.lost) == (10, 0)
    assert stats.report_block(200.0)[2] == (1 << 16) + 3


def test_several_wraps() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    seqs = range(0, 3 * 65536 + 5000, 999)  # steps of 999 stay "forward" (< 0x8000)
    feed(stats, seqs)
    assert stats.cycles == 3 << 16
    assert stats.extended_max == seqs[-1]
    assert stats.lost == seqs[-1] + 1 - len(seqs)


def test_late_packet_does_not_move_max_or_count_a_cycle() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, [65534, 65535, 0, 1, 2], first_seq=65534)
    stats.update(65533, 0, 100.0, 100)  # from before the wrap, arriving late
    assert stats.max_seq == 2
    assert stats.cycles == 1 << 16
    stats.update(3, 5 * FRAME_TICKS, 101.0, 100)
    assert stats.extended_max == (1 << 16) + 3


def test_loss_is_counted() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    received = [s for s in range(100) if s % 10 != 3]  # 10 of 100 lost
    feed(stats, received)
    assert (stats.expected, stats.received, stats.lost) == (100, 90, 10)
    assert stats.report_block(200.0)[1] == 10


def test_loss_across_a_wrap() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    received = [s for s in range(65500, 65600) if s not in (65535, 65536, 65540)]
    feed(stats, received, first_seq=65500)
    assert stats.extended_max == 65599
    assert (stats.expected, stats.lost) == (100, 3)


def test_fraction_lost_per_interval() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    # Interval 1: 100 expected, 25 lost -> 25/100 * 256 = 64.
    feed(stats, [s for s in range(100) if s % 4 != 1])
    fraction, cumulative, *_ = stats.report_block(10.0)
    assert (fraction, cumulative) == (64, 25)
    # Interval 2: no loss; the fraction is about this interval only.
    feed(stats, range(100, 200))
    fraction, cumulative, *_ = stats.report_block(20.0)
    assert (fraction, cumulative) == (0, 25)
    # Interval 3: 50 expected, 1 lost -> 256/50 = 5.12, truncated to 5.
    feed(stats, [s for s in range(200, 250) if s != 220])
    fraction, cumulative, *_ = stats.report_block(30.0)
    assert (fraction, cumulative) == (5, 26)


def test_fraction_lost_with_nothing_received_in_interval() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, range(10))
    stats.report_block(10.0)
    assert stats.report_block(20.0)[0] == 0  # nothing expected, nothing lost


def test_fraction_lost_everything_but_one() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, [0])
    stats.report_block(1.0)
    feed(stats, [1000])  # 999 lost, 1 received in the interval
    fraction, cumulative, *_ = stats.report_block(2.0)
    assert fraction == (999 << 8) // 1000 == 255
    assert cumulative == 999


def test_duplicates_make_no_negative_loss() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, list(range(10)) + list(range(10)))  # every packet twice
    assert stats.received == 20
    assert stats.lost == 0
    fraction, cumulative, *_ = stats.report_block(10.0)
    assert (fraction, cumulative) == (0, 0)  # RFC 3550 A.3: lost_interval <= 0 -> 0


def test_jitter_of_constant_rate_stream_is_zero() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, range(300))
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    assert stats.report_block(200.0)[3] == 0


def test_jitter_with_a_constant_network_delay_is_zero() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    for n in range(100):
        stats.update(n, 7777 + n * FRAME_TICKS, 50.0 + 0.25 + n * FRAME_S, 1000)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_jitter_with_alternating_delay_follows_rfc3550() -> None:
    # Every other packet arrives 10 ms late: |D(i-1, i)| is 900 ticks at 90 kHz
    # for every pair, and J(i) = J(i-1) + (|D| - J(i-1)) / 16 (RFC 3550 §6.4.1).
    clock_rate, extra_s = 90000, 0.010
    d = extra_s * clock_rate
    stats = RtpStreamStats(clock_rate)
    expected = 0.0
    for n in range(200):
        delay = extra_s if n % 2 else 0.0
        stats.update(n, n * FRAME_TICKS, 100.0 + n * FRAME_S + delay, 1000)
        if n:
            expected += (d - expected) / 16
        assert stats.jitter == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # The closed form of that recurrence, and its limit.
    assert stats.jitter == pytest.approx(d * (1 - (15 / 16) ** 199), rel=1e-6)
    assert stats.jitter == pytest.approx(900.0, rel=1e-3)
    assert stats.report_block(200.0)[3] == int(stats.jitter)


def test_jitter_is_in_timestamp_units() -> None:
    # The same 10 ms wobble is 80 units at 8 kHz, 480 at 48 kHz.
    for clock_rate, units in ((8000, 80), (48000, 480)):
        stats = RtpStreamStats(clock_rate)
        ticks = clock_rate // 50
        for n in range(400):
            stats.update(n, n * ticks, 100.0 + n * 0.02 + (0.01 if n % 2 else 0.0), 200)
        assert stats.jitter == pytest.approx(units, rel=1e-3)


def test_jitter_ignores_timestamp_wrap() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    start_ts = 0xFFFFFFFF - 5 * FRAME_TICKS
    for n in range(20):
        stats.update(n, (start_ts + n * FRAME_TICKS) & 0xFFFFFFFF, 100.0 + n * FRAME_S, 1000)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_report_block_lsr_and_dlsr() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, range(10))
    assert stats.report_block(100.0)[4:] == (0, 0)  # no SR yet
    stats.last_sr_ntp_middle = 0x12345678
    stats.last_sr_arrival = 100.0
    lsr, dlsr = stats.report_block(101.5)[4:]
    assert lsr == 0x12345678
    assert dlsr == int(1.5 * 65536)  # units of 1/65536 s


def test_bytes_are_summed() -> None:
    stats = RtpStreamStats(CLOCK_RATE)
    feed(stats, range(10), size=1200)
    assert stats.bytes == 12000
