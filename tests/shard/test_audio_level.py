"""RFC 6464 audio levels per audio producer (``Engine.take_audio_levels``), on both engines.

Every test taking ``engine_cls`` runs once on the compiled ``sfu._fastpath.Engine``
and once on its pure-Python twin ``sfu.fastpath_reference.Engine``. A publisher's
packets are real RTP (``tests/fixtures.py``) carrying the client-to-mixer audio
level in the one-byte header extension form of RFC 8285 (RFC 6464 §3: one byte,
the V bit then the level in -dBov, 127 being silence), fed to an engine on a real
UDP socket from a plain (no SRTP) transport's address with ``engine.feed()``.

What is accumulated: every packet the engine accepts from an audio producer's
media SSRC that carries the negotiated audio-level element of length 1. RTX
packets are not (the original was counted when it arrived); duplicates on the
media SSRC are, as they are in the producer's ``received``.
"""

from __future__ import annotations

import gc
import math
import socket
import sys
import tracemalloc
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import make_rtp, make_rtx, make_vp8_payload

import sfu.fastpath  # noqa: F401  (gives the compiled engine libsrtp's entry points)
import sfu._fastpath as cython_impl
import sfu.fastpath_reference as python_impl

ENGINES = {"cython": cython_impl.Engine, "python": python_impl.Engine}
VP8, OPUS = cython_impl.CODEC_VP8, cython_impl.CODEC_OPUS

LEVEL_ID, ABS_ID, TCC_ID, MID_ID = 1, 2, 3, 4   # the publisher's extension ids (Chrome's usual)
AUDIO_PT, AUDIO_RTX_PT, VIDEO_PT = 111, 112, 96
MIC, MIC_RTX, SECOND_MIC, CAMERA = 0x2222, 0x2223, 0x4444, 0x1111


def level(dbov: int, voiced: bool = False) -> bytes:
    """The one-byte RFC 6464 value: V bit, then the level as -dBov."""
    assert 0 <= dbov <= 127
    return bytes([(0x80 if voiced else 0) | dbov])


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


class Publisher:
    """An engine with one publisher's transport: two audio producers and a video one."""

    def __init__(self, engine_cls: type, *, audio_level: int = LEVEL_ID) -> None:
        self.sock = udp()
        self.peer = udp()
        self.engine = engine_cls(self.sock.fileno(), lambda data, addr: None, pacer_enabled=False)
        e = self.engine
        self.transport = e.add_transport(secure=False, mid=MID_ID, abs_send_time=ABS_ID, audio_level=audio_level)
        e.set_transport_address(self.transport, *self.peer.getsockname())
        self.camera = e.add_producer(self.transport, video=True, codec=VP8, payload_type=VIDEO_PT,
                                     clock_rate=90000, ssrc=CAMERA, mid=b"0")
        self.mic = e.add_producer(self.transport, video=False, codec=OPUS, payload_type=AUDIO_PT,
                                  clock_rate=48000, rtx_payload_type=AUDIO_RTX_PT, ssrc=MIC, rtx_ssrc=MIC_RTX,
                                  mid=b"1")
        self.second_mic = e.add_producer(self.transport, video=False, codec=OPUS, payload_type=AUDIO_PT,
                                         clock_rate=48000, ssrc=SECOND_MIC, mid=b"2")
        self.seq = {MIC: 100, SECOND_MIC: 5000, CAMERA: 65530}

    def feed(self, data: bytes) -> None:
        self.engine.feed(data, *self.peer.getsockname())

    def audio(self, value: bytes | None, ssrc: int = MIC, **kwargs: Any) -> bytes:
        """The next audio packet of ``ssrc``, with the audio-level element ``value`` (none if None)."""
        seq = self.seq[ssrc] = (self.seq[ssrc] + 1) & 0xFFFF
        extensions: dict[int, bytes] = {MID_ID: b"1" if ssrc == MIC else b"2", TCC_ID: b"\x00\x08"}
        if value is not None:
            extensions[LEVEL_ID] = value
        kwargs.setdefault("extensions", extensions)
        kwargs.setdefault("payload", b"\xfc" + bytes([seq & 0xFF]) * 20)
        kwargs.setdefault("pt", AUDIO_PT)
        return make_rtp(seq=seq, ts=960 * seq, ssrc=ssrc, **kwargs)

    def speak(self, *values: bytes | None, ssrc: int = MIC) -> None:
        for value in values:
            self.feed(self.audio(value, ssrc))

    def received(self, p: int) -> int:
        return self.engine.producer_stats(p)["received"]

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


@pytest.fixture(params=list(ENGINES))
def engine_cls(request: pytest.FixtureRequest) -> type:
    return ENGINES[request.param]


@pytest.fixture
def make_publisher(engine_cls: type) -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def make(**kwargs: Any) -> Publisher:
        made.append(Publisher(engine_cls, **kwargs))
        return made[-1]

    yield make
    for pub in made:
        pub.close()


@pytest.fixture
def pub(make_publisher: Callable[..., Publisher]) -> Publisher:
    return make_publisher()


# =====================================================================================
# Levels and voice activity
# =====================================================================================


def test_levels_averaged_per_producer(pub: Publisher) -> None:
    pub.speak(level(10), level(20), level(30), level(41))
    pub.speak(level(127), level(127), level(126), ssrc=SECOND_MIC)
    assert pub.engine.take_audio_levels() == [(pub.mic, -25.25, 0.0), (pub.second_mic, -380 / 3, 0.0)]
    assert pub.engine.drop_counts() == {}


def test_each_tuple_is_slot_float_float(pub: Publisher) -> None:
    pub.speak(level(40, voiced=True))
    [(p, mean, voiced)] = pub.engine.take_audio_levels()
    assert type(p) is int and type(mean) is float and type(voiced) is float
    assert (p, mean, voiced) == (pub.mic, -40.0, 1.0)


def test_loudest_is_zero_dbov_not_minus_zero(pub: Publisher) -> None:
    pub.speak(level(0, voiced=True), level(0))
    [(_, mean, voiced)] = pub.engine.take_audio_levels()
    assert mean == 0.0 and math.copysign(1.0, mean) == 1.0
    assert voiced == 0.5


@pytest.mark.parametrize("flags, expected", [
    ((True, True, True, True), 1.0),
    ((True, False, False, False), 0.25),
    ((False, True, False, True, True), 0.6),
    ((False, False), 0.0),
])
def test_voiced_fraction_from_the_v_bit(pub: Publisher, flags: tuple[bool, ...], expected: float) -> None:
    pub.speak(*(level(50, voiced=v) for v in flags))
    [(p, mean, voiced)] = pub.engine.take_audio_levels()
    # The V bit is not part of the level.
    assert (p, mean) == (pub.mic, -50.0)
    assert voiced == pytest.approx(expected)
    assert 0.0 <= voiced <= 1.0


def test_the_level_is_read_in_the_two_byte_form_too(pub: Publisher) -> None:
    pub.feed(pub.audio(None, extensions=[(LEVEL_ID, level(33, voiced=True)), (200, b"long" * 10)], two_byte=True))
    assert pub.engine.take_audio_levels() == [(pub.mic, -33.0, 1.0)]


def test_the_negotiated_id_only(make_publisher: Callable[..., Publisher]) -> None:
    pub = make_publisher(audio_level=7)
    pub.speak(level(20))  # at id 1: not the audio level on this transport
    pub.feed(pub.audio(None, extensions={MID_ID: b"1", 7: level(60, voiced=True)}))
    assert pub.engine.take_audio_levels() == [(pub.mic, -60.0, 1.0)]
    unnegotiated = make_publisher(audio_level=0)
    unnegotiated.speak(level(20), level(30, voiced=True))
    assert unnegotiated.received(unnegotiated.mic) == 2
    assert unnegotiated.engine.take_audio_levels() == []


# =====================================================================================
# Reset, absence, what is never listed
# =====================================================================================


def test_take_resets_the_accumulators(pub: Publisher) -> None:
    e = pub.engine
    pub.speak(level(90), level(90, voiced=True))
    pub.speak(level(10), ssrc=SECOND_MIC)
    assert e.take_audio_levels() == [(pub.mic, -90.0, 0.5), (pub.second_mic, -10.0, 0.0)]
    assert e.take_audio_levels() == []
    # Only what came after the take: the second mic fell silent, so it is not listed.
    pub.speak(level(20, voiced=True))
    assert e.take_audio_levels() == [(pub.mic, -20.0, 1.0)]
    assert e.take_audio_levels() == []


def test_packets_without_the_extension_are_ignored(pub: Publisher) -> None:
    e = pub.engine
    pub.speak(None, None, None)
    pub.feed(pub.audio(None, extensions=None))  # no extension block at all
    assert pub.received(pub.mic) == 4
    assert e.take_audio_levels() == []
    # ... and do not dilute the mean or the voiced fraction of those that have it.
    pub.speak(None, level(30, voiced=True), None, level(50), None)
    assert e.take_audio_levels() == [(pub.mic, -40.0, 0.5)]


def test_video_producers_are_never_listed(pub: Publisher) -> None:
    e = pub.engine
    for i in range(3):  # a video packet carrying an element with the audio-level id
        pub.feed(make_rtp(seq=i, ts=3000 * i, ssrc=CAMERA, pt=VIDEO_PT, payload=make_vp8_payload(i == 0),
                          extensions={MID_ID: b"0", LEVEL_ID: level(3, voiced=True)}))
    assert pub.received(pub.camera) == 3
    assert e.take_audio_levels() == []
    pub.speak(level(70))
    assert [p for p, *_ in e.take_audio_levels()] == [pub.mic]


def test_rtx_is_not_counted_again(pub: Publisher) -> None:
    e = pub.engine
    original = pub.audio(level(10, voiced=True))
    pub.feed(original)
    pub.feed(make_rtx(original, seq=1, ssrc=MIC_RTX, pt=AUDIO_RTX_PT))
    # A retransmission whose element differs shows it was not read either.
    pub.feed(make_rtx(pub.audio(level(120)), seq=2, ssrc=MIC_RTX, pt=AUDIO_RTX_PT))
    assert pub.received(pub.mic) == 3  # the retransmissions were accepted ...
    assert e.take_audio_levels() == [(pub.mic, -10.0, 1.0)]  # ... but only the original's level counted


def test_dropped_packets_are_not_counted(pub: Publisher) -> None:
    e = pub.engine
    pub.feed(pub.audio(level(5), pt=0))                             # unexpected payload type
    pub.feed(pub.audio(level(5), payload=b"", padding=4))           # padding only
    pub.feed(pub.audio(level(5), ssrc=SECOND_MIC))                  # accepted
    pub.feed(make_rtp(seq=1, ssrc=0x9999, pt=AUDIO_PT, extensions={LEVEL_ID: level(5)}))  # unknown SSRC
    assert e.drop_counts() == {"rtp_unexpected_payload_type": 1, "rtp_padding_only": 1, "rtp_unknown_ssrc": 1}
    assert e.take_audio_levels() == [(pub.second_mic, -5.0, 0.0)]


def test_a_removed_producer_is_not_listed_and_its_slot_starts_at_zero(pub: Publisher) -> None:
    e = pub.engine
    pub.speak(level(100, voiced=True), level(100, voiced=True))
    pub.speak(level(40), ssrc=SECOND_MIC)
    e.remove_producer(pub.mic)  # with samples waiting
    assert e.take_audio_levels() == [(pub.second_mic, -40.0, 0.0)]
    # Removed with samples waiting, then its slot taken at once: the new producer inherits none.
    pub.speak(level(100, voiced=True), ssrc=SECOND_MIC)
    e.remove_producer(pub.second_mic)
    new_mic = 0x5555
    again = e.add_producer(pub.transport, video=False, codec=OPUS, payload_type=AUDIO_PT, clock_rate=48000,
                           ssrc=new_mic, mid=b"3")
    assert again == pub.mic  # the first free slot is reused
    also = e.add_producer(pub.transport, video=False, codec=OPUS, payload_type=AUDIO_PT, clock_rate=48000,
                          ssrc=SECOND_MIC, mid=b"2")
    assert also == pub.second_mic
    assert e.take_audio_levels() == []
    pub.seq[new_mic] = 0
    pub.speak(level(60), ssrc=new_mic)
    pub.speak(level(20, voiced=True), ssrc=SECOND_MIC)
    assert e.take_audio_levels() == [(again, -60.0, 0.0), (also, -20.0, 1.0)]
    # The removed producer's SSRC no longer counts for anyone.
    pub.speak(level(9))
    assert e.take_audio_levels() == []
    assert e.drop_counts() == {"rtp_unknown_ssrc": 1}


def test_removing_the_transport_drops_its_producers_levels(pub: Publisher) -> None:
    e = pub.engine
    pub.speak(level(12))
    e.remove_transport(pub.transport)
    assert e.take_audio_levels() == []


# =====================================================================================
# Malformed extensions
# =====================================================================================


@pytest.mark.parametrize("name, extension", [
    # One-byte elements (RFC 8285 §4.2): the length nibble says 2 bytes; RFC 6464 has one.
    ("two-byte value", {"extensions": {MID_ID: b"1", LEVEL_ID: b"\x85\x85"}}),
    ("sixteen-byte value", {"extensions": {LEVEL_ID: bytes(range(16))}}),
    # A two-byte form element of length 0 with the level's id.
    ("empty two-byte element", {"extension_profile": 0x1000, "extension_body": bytes([LEVEL_ID, 0, 0, 0])}),
    # Id 15 stops the parse before the level (RFC 8285 §4.2).
    ("after id 15", {"extension_body": bytes([0xF0, 0x00, (LEVEL_ID << 4), 0x85])}),
    # An unknown profile: the block is skipped whole.
    ("unknown profile", {"extension_profile": 0x1234, "extension_body": bytes([(LEVEL_ID << 4), 0x85, 0, 0])}),
])
def test_an_unusable_level_element_is_ignored(pub: Publisher, name: str, extension: dict) -> None:
    pub.feed(pub.audio(None, **extension))
    assert pub.received(pub.mic) == 1, name  # the packet itself is fine and forwarded
    assert pub.engine.take_audio_levels() == []


@pytest.mark.parametrize("name, packet, reason", [
    # The level element says one byte, the block ends first.
    ("element past the block", lambda pub: pub.audio(None, extension_body=bytes([0x00, 0x00, 0x00, LEVEL_ID << 4])),
     "rtp_bad_extension"),
    # The block claims more words than the datagram has.
    ("block past the datagram", lambda pub: pub.audio(level(5), payload=b"")[:-1], "rtp_truncated"),
    ("header cut in the block", lambda pub: pub.audio(level(5))[:14], "rtp_truncated"),
])
def test_a_broken_extension_block_drops_the_packet_and_counts_nothing(
        pub: Publisher, name: str, packet: Callable[[Publisher], bytes], reason: str) -> None:
    pub.feed(packet(pub))
    assert pub.engine.drop_counts() == {reason: 1}, name
    assert pub.received(pub.mic) == 0
    assert pub.engine.take_audio_levels() == []
    pub.speak(level(44))  # and the engine carries on
    assert pub.engine.take_audio_levels() == [(pub.mic, -44.0, 0.0)]


def test_random_bytes_in_the_extension_never_crash(pub: Publisher) -> None:
    for i in range(256):
        body = bytes([(LEVEL_ID << 4) | (i & 0x0F), i, 255 - i, i ^ 0x5A])
        pub.feed(pub.audio(None, extension_body=body))
        pub.feed(pub.audio(None, extension_profile=0x1000 | (i & 0x0F), extension_body=bytes([LEVEL_ID, i & 3, i, i])))
    for p, mean, voiced in pub.engine.take_audio_levels():
        assert p == pub.mic and -127.0 <= mean <= 0.0 and 0.0 <= voiced <= 1.0


# =====================================================================================
# Both engines agree on any mix of packets, takes and removals
# =====================================================================================


@st.composite
def d_steps(draw: st.DrawFn) -> list[tuple]:
    steps = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["audio", "audio", "audio", "audio", "video", "rtx", "raw", "take", "remove"]))
        if kind in ("audio", "rtx"):
            value = draw(st.none() | st.integers(0, 255).map(lambda b: bytes([b])) | st.binary(min_size=2, max_size=3))
            steps.append((kind, draw(st.sampled_from([MIC, SECOND_MIC])), value, draw(st.booleans())))
        elif kind == "raw":
            steps.append((kind, draw(st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4)))))
        elif kind == "remove":
            steps.append((kind, draw(st.sampled_from(["mic", "second_mic"]))))
        else:
            steps.append((kind,))
    return steps + [("take",)]


def _run(pub: Publisher, steps: list[tuple]) -> list:
    taken = []
    for step in steps:
        kind = step[0]
        if kind in ("audio", "rtx"):
            _, ssrc, value, two_byte = step
            extensions = [(MID_ID, b"x")] + ([] if value is None else [(LEVEL_ID, value)])
            packet = pub.audio(None, ssrc, extensions=extensions, two_byte=two_byte)
            if kind == "rtx":
                packet = make_rtx(packet, seq=pub.seq[ssrc], ssrc=MIC_RTX, pt=AUDIO_RTX_PT)
            pub.feed(packet)
        elif kind == "video":
            pub.feed(make_rtp(seq=1, ssrc=CAMERA, pt=VIDEO_PT, payload=make_vp8_payload(True),
                              extensions={LEVEL_ID: level(1, voiced=True)}))
        elif kind == "raw":
            pub.feed(pub.audio(None, extension_body=step[1]))
        elif kind == "remove":
            p = getattr(pub, step[1])
            if p is not None:
                pub.engine.remove_producer(p)
                setattr(pub, step[1], None)
        else:
            taken.append(pub.engine.take_audio_levels())
    return taken


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=d_steps())
def test_differential_both_engines_take_the_same_levels(steps: list[tuple]) -> None:
    pubs = [Publisher(ENGINES["cython"]), Publisher(ENGINES["python"])]
    try:
        cython_taken, python_taken = (_run(pub, steps) for pub in pubs)
        assert cython_taken == python_taken
        # The same floats, bit for bit (and so the same sign of zero).
        assert repr(cython_taken) == repr(python_taken)
        assert pubs[0].engine.drop_counts() == pubs[1].engine.drop_counts()
    finally:
        for pub in pubs:
            pub.close()


# =====================================================================================
# The compiled engine accumulates without a Python object per packet
# =====================================================================================


GROUP, WARMUP, MEASURED = 16, 2_048, 40_000
BLOCK_SLACK, PEAK_SLACK_BYTES = 8, 256   # as in test_engine_allocations.py


def test_accumulating_levels_allocates_no_python_object_per_packet() -> None:
    sock, sender = udp(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.connect(sock.getsockname())  # send() parses no address
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        e = cython_impl.Engine(sock.fileno(), lambda data, addr: None, pacer_enabled=False)
        t = e.add_transport(secure=False, mid=MID_ID, audio_level=LEVEL_ID)
        e.set_transport_address(t, *sender.getsockname())
        mic = e.add_producer(t, video=False, codec=OPUS, payload_type=AUDIO_PT, clock_rate=48000, ssrc=MIC)
        # Under 256 bytes, so the sizes send() returns are cached ints; levels 0..127, V on odd ones.
        packets = [make_rtp(seq=seq, ts=960 * seq, ssrc=MIC, pt=AUDIO_PT, payload=b"\xfc" + bytes(40),
                            extensions={MID_ID: b"1", LEVEL_ID: level(seq % 128, voiced=bool(seq & 1))})
                   for seq in range(65536)]
        groups = [packets[i:i + GROUP] for i in range(0, len(packets), GROUP)]

        def measure(order: Iterator[list], send: Any, on_readable: Any) -> None:
            # Nothing in here allocates: pre-bound methods, cached small ints.
            for group in order:
                i = 0
                while i < GROUP:
                    send(group[i])
                    i += 1
                on_readable()

        measure(iter(groups[:WARMUP // GROUP]), sender.send, e.on_readable)
        order = iter(groups[WARMUP // GROUP:(WARMUP + MEASURED) // GROUP])
        send, on_readable = sender.send, e.on_readable
        gc.collect()
        gc.disable()
        try:
            tracemalloc.start()
            try:
                blocks_before = sys.getallocatedblocks()
                traced_before = tracemalloc.get_traced_memory()[0]
                measure(order, send, on_readable)
                traced_after, peak = tracemalloc.get_traced_memory()
                blocks_after = sys.getallocatedblocks()
            finally:
                tracemalloc.stop()
        finally:
            gc.enable()
        assert e.producer_stats(mic)["received"] == WARMUP + MEASURED
        total = WARMUP + MEASURED
        [(p, mean, voiced)] = e.take_audio_levels()
        assert p == mic
        assert mean == pytest.approx(-sum(s % 128 for s in range(total)) / total)
        assert voiced == 0.5
        assert blocks_after - blocks_before <= BLOCK_SLACK
        assert traced_after - traced_before <= PEAK_SLACK_BYTES
        assert peak - traced_before <= PEAK_SLACK_BYTES
    finally:
        sock.close()
        sender.close()
