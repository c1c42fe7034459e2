"""The NACK history: a ring of packets indexed by sequence number."""

from __future__ import annotations

from fixtures import make_rtp

from sfu.shard.retransmission_buffer import RetransmissionBuffer


def test_hit_returns_the_stored_packet() -> None:
    buffer = RetransmissionBuffer(size=16)
    packets = {seq: make_rtp(seq=seq, payload=bytes([seq])) for seq in range(100, 110)}
    for seq, packet in packets.items():
        buffer.store(seq, packet)
    for seq, packet in packets.items():
        assert buffer.get(seq) is packet


def test_miss_for_never_stored_sequence() -> None:
    buffer = RetransmissionBuffer(size=16)
    assert buffer.get(0) is None  # empty slots hold no packet, not even for seq 0
    buffer.store(5, make_rtp(seq=5))
    assert buffer.get(4) is None
    assert buffer.get(6) is None
    assert buffer.get(5 + 16) is None  # same slot, different sequence number


def test_overwrite_after_a_full_turn() -> None:
    buffer = RetransmissionBuffer(size=16)
    for seq in range(40):
        buffer.store(seq, make_rtp(seq=seq))
    for seq in range(40 - 16):
        assert buffer.get(seq) is None  # too old: its slot now holds a newer packet
    for seq in range(40 - 16, 40):
        assert buffer.get(seq) == make_rtp(seq=seq)


def test_overwrite_of_the_same_sequence_keeps_the_latest() -> None:
    buffer = RetransmissionBuffer(size=16)
    buffer.store(7, make_rtp(seq=7, payload=b"old"))
    buffer.store(7, make_rtp(seq=7, payload=b"new"))
    assert buffer.get(7) == make_rtp(seq=7, payload=b"new")


def test_sequence_wrap() -> None:
    buffer = RetransmissionBuffer()  # 1024 slots divide 65536
    for seq in list(range(65000, 65536)) + list(range(0, 400)):
        buffer.store(seq, make_rtp(seq=seq))
    for seq in (65000, 65535, 0, 399):
        assert buffer.get(seq) == make_rtp(seq=seq)
    assert buffer.get(400) is None
    assert buffer.get(64999) is None


def test_sequence_wrap_with_a_size_that_does_not_divide_65536() -> None:
    buffer = RetransmissionBuffer(size=1000)
    for seq in list(range(65436, 65536)) + list(range(0, 100)):
        buffer.store(seq, make_rtp(seq=seq))
    for seq in (65436, 65535, 0, 99):
        assert buffer.get(seq) == make_rtp(seq=seq)
    # 65535 and 535 share slot 535; only the stored one is returned.
    assert buffer.get(535) is None


def test_default_size_holds_a_second_of_video() -> None:
    buffer = RetransmissionBuffer()
    for seq in range(1024):
        buffer.store(seq, b"%d" % seq)
    assert all(buffer.get(seq) == b"%d" % seq for seq in range(1024))
    buffer.store(1024, b"next")
    assert buffer.get(0) is None
    assert buffer.get(1024) == b"next"
