"""The recorder's jitter buffer: order, duplicates, loss, wrap-around."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from sfu.recording.jitter_buffer import JitterBuffer, unwrap


def test_unwrap_picks_the_nearest():
    assert unwrap(2, 65534, 16) == 65538
    assert unwrap(65534, 65538, 16) == 65534
    assert unwrap(5, 10, 16) == 5
    assert unwrap(0, (1 << 32) - 10, 32) == 1 << 32


def test_reordered_packets_come_out_in_order_and_duplicates_once():
    jb = JitterBuffer(depth_s=0.1)
    for seq in (10, 12, 11, 11, 13):
        jb.push(seq, seq * 3000, False, bytes([seq]), 0.0)
    out = jb.pop(0.0)
    assert [p.payload[0] for p in out] == [10, 11, 12, 13]
    assert jb.stats.duplicates == 1 and jb.stats.reordered == 1


def test_a_hole_is_given_up_after_the_depth_and_flagged():
    jb = JitterBuffer(depth_s=0.1)
    jb.push(1, 0, False, b"a", 0.0)
    jb.push(3, 0, False, b"c", 0.0)
    assert [p.payload for p in jb.pop(0.05)] == [b"a"]
    later = jb.pop(0.2)
    assert [p.payload for p in later] == [b"c"] and later[0].lost_before
    assert jb.stats.lost == 1
    jb.push(2, 0, False, b"b", 0.3)  # too late now
    assert jb.stats.late == 1 and jb.pop(0.3) == []


def test_sequence_and_timestamp_wrap_around():
    jb = JitterBuffer(depth_s=0.1)
    seqs = [65533, 65534, 65535, 0, 1, 2]
    for i, seq in enumerate(seqs):
        jb.push(seq, (0xFFFFFFFF - 3000 + i * 1500) & 0xFFFFFFFF, False, b"x", 0.0)
    out = jb.pop(0.0)
    assert [p.seq for p in out] == list(range(out[0].seq, out[0].seq + 6))
    assert all(b.timestamp - a.timestamp == 1500 for a, b in zip(out, out[1:]))


def test_a_full_buffer_gives_up_without_waiting():
    jb = JitterBuffer(depth_s=100.0, max_packets=4)
    jb.push(100, 0, False, b"x", 0.0)
    assert len(jb.pop(0.0)) == 1
    for seq in (102, 103, 104):
        jb.push(seq, 0, False, b"x", 0.0)
    assert jb.pop(0.0) == []  # three waiting behind the hole: within the depth
    jb.push(105, 0, False, b"x", 0.0)
    assert [p.seq & 0xFFFF for p in jb.pop(0.0)] == [102, 103, 104, 105]
    assert jb.stats.lost == 1


@given(st.integers(0, 65535), st.integers(1, 200), st.floats(0, 0.3), st.randoms(use_true_random=False))
def test_every_packet_out_once_in_order_and_the_rest_counted(start, count, drop, rnd):
    jb = JitterBuffer(depth_s=0.05)
    sent = [(start + i) & 0xFFFF for i in range(count)]
    kept = [s for s in sent if rnd.random() >= drop] or sent[:1]
    arrivals = kept + rnd.sample(kept, min(3, len(kept)))  # some duplicates
    # Reorder within small windows, as a network does.
    for i in range(0, len(arrivals) - 2, 3):
        if rnd.random() < 0.5:
            arrivals[i], arrivals[i + 2] = arrivals[i + 2], arrivals[i]
    out = []
    for t, seq in enumerate(arrivals):
        jb.push(seq, seq * 90, False, b"", t * 0.001)
        out += jb.pop(t * 0.001)
    out += jb.flush()
    seqs = [p.seq for p in out]
    assert seqs == sorted(set(seqs))
    assert jb.stats.received == len(out)
    first = out[0].seq
    assert jb.stats.lost + len(out) + jb.stats.late >= seqs[-1] - first + 1 - jb.stats.late


def test_random_garbage_order_never_raises():
    rnd = random.Random(7)
    jb = JitterBuffer(depth_s=0.01)
    for i in range(5000):
        jb.push(rnd.randrange(65536), rnd.randrange(1 << 32), rnd.random() < 0.1, b"", i * 0.001)
        jb.pop(i * 0.001)
    jb.flush()
    assert len(jb) == 0
