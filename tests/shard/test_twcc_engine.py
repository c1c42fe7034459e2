"""Transport-wide congestion control in the engine, on both implementations.

draft-holmer-rmcat-transport-wide-cc-extensions-01: for a viewer that negotiated
the transport-wide sequence number extension, every packet the engine sends to
its transport (media, RTX, probes, padding, of any of its consumers) carries the
next 16-bit transport-wide sequence number, and the engine remembers when each
left and how big it was. The viewer's feedback (RTPFB, PT 205, FMT 15) says which
arrived and when; ``take_twcc`` hands that to Python as (send time, arrival time
or -1, size) per packet.

Every test taking ``engine_cls`` runs once on the compiled ``sfu._fastpath.Engine``
and once on its pure-Python twin. Feedback packets are built here, straight from
the draft (§3.1), independently of the code under test. Transports are plain (no
SRTP), so sizes are the datagrams' sizes.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any, Callable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import make_rtcp_nack, make_rtcp_pli, make_rtp, make_vp8_payload, nack_items, read_rtp

import sfu.fastpath  # noqa: F401  (gives the compiled engine libsrtp's entry points)
import sfu._fastpath as cython_impl
import sfu.fastpath_reference as python_impl

ENGINES = {"cython": cython_impl.Engine, "python": python_impl.Engine}
VP8, OPUS = cython_impl.CODEC_VP8, cython_impl.CODEC_OPUS
MID_ID, TCC_ID = 4, 7          # the viewer's ids; the publisher's transport-cc (3) is never forwarded
VIDEO_SSRC, VIDEO_RTX_SSRC, AUDIO_SSRC = 0x1111, 0x1112, 0x2222
VIEW_VIDEO, VIEW_RTX, VIEW_AUDIO = 0x10000, 0x20000, 0x30000
SENTINEL = b"\xffend-of-test-barrier"
TICK_S = 0.00025               # receive deltas count 250 us
REF_S = 0.064                  # the reference time counts 64 ms
FIRST_REF = 1 << 24            # the engine counts the first reference time one wrap up (arrivals stay > 0)


def arrival(ref: int, ticks: int = 0) -> float:
    """An arrival time as the engine reports it: ``ticks`` after reference time ``ref``
    (of a transport's first feedback, or unwrapped from it)."""
    return ((ref + FIRST_REF) * 256 + ticks) * TICK_S


@pytest.fixture(params=list(ENGINES))
def engine_cls(request: pytest.FixtureRequest) -> type:
    return ENGINES[request.param]


# =====================================================================================
# Feedback, written from the draft
# =====================================================================================


def _symbol(delta: int | None) -> int:
    """00 not received, 01 received with a one-byte delta, 10 with a two-byte signed one."""
    if delta is None:
        return 0
    return 1 if 0 <= delta <= 255 else 2


def run_chunk(symbol: int, length: int) -> int:
    assert 0 <= symbol <= 3 and 0 <= length < 1 << 13
    return (symbol << 13) | length


def vector1_chunk(symbols: Sequence[int]) -> int:
    assert len(symbols) <= 14 and set(symbols) <= {0, 1}
    bits = list(symbols) + [0] * (14 - len(symbols))
    return 0x8000 | sum(b << (13 - i) for i, b in enumerate(bits))


def vector2_chunk(symbols: Sequence[int]) -> int:
    assert len(symbols) <= 7
    syms = list(symbols) + [0] * (7 - len(symbols))
    return 0xC000 | sum(s << (12 - 2 * i) for i, s in enumerate(syms))


def encode_chunks(symbols: Sequence[int], layout: Sequence[tuple[str, int]] | None = None) -> list[int]:
    """Status chunks covering ``symbols``; ``layout``: (kind, statuses covered) per chunk,
    kind "run", "v1" or "v2"; by default two-bit vectors throughout."""
    if layout is None:
        layout = [("v2", 7)] * ((len(symbols) + 6) // 7)
    chunks, i = [], 0
    for kind, n in layout:
        part = symbols[i:i + n]
        i += n
        if kind == "run":
            assert len(set(part)) <= 1
            chunks.append(run_chunk(part[0] if part else 0, len(part)))
        elif kind == "v1":
            chunks.append(vector1_chunk(part))
        else:
            chunks.append(vector2_chunk(part))
    assert i >= len(symbols)
    return chunks


def twcc_feedback(base_seq: int, deltas: Sequence[int | None], *, ref: int = 0, fb_count: int = 0,
                  layout: Sequence[tuple[str, int]] | None = None, chunks: Sequence[int] | None = None,
                  padding: int = 0, sender: int = 0xA000, media: int = VIEW_VIDEO, count: int | None = None) -> bytes:
    """A transport-cc feedback packet: ``deltas[k]`` is packet base_seq + k's receive delta
    in 250 us ticks (from the previous received packet, the first from the reference
    time), or None if it was not received. ``padding``: RTCP padding bytes (P bit)."""
    symbols = [_symbol(d) for d in deltas]
    chunks = list(chunks) if chunks is not None else encode_chunks(symbols, layout)
    body = struct.pack("!IIHHI", sender, media, base_seq & 0xFFFF, len(deltas) if count is None else count,
                       ((ref & 0xFFFFFF) << 8) | (fb_count & 0xFF))
    body += b"".join(struct.pack("!H", c) for c in chunks)
    for d, s in zip(deltas, symbols):
        if s == 1:
            body += struct.pack("!B", d)
        elif s == 2:
            body += struct.pack("!h", d)
    body += bytes(-len(body) % 4)
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    return struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | 15, 205, (4 + len(body)) // 4 - 1) + body


def test_the_encoder_matches_the_drafts_examples() -> None:
    # §3.1.3: a run of 221 "received small delta"; §3.1.4: the two status vector examples.
    assert run_chunk(1, 221) == 0b0_01_0000011011101
    assert vector1_chunk([0, 1] + [0] * 5 + [0] * 5 + [1, 0]) == 0b1_0_01000000000010
    assert vector2_chunk([0, 2, 0, 0, 0, 0, 0]) == 0b1_1_00100000000000


# =====================================================================================
# The rig: a publisher, viewers with and without transport-cc
# =====================================================================================


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


class Rig:
    """A VP8 (with RTX) and an Opus producer; viewer 0 negotiated transport-cc, viewer 1 did not."""

    def __init__(self, engine_cls: type, **options: Any) -> None:
        options.setdefault("pacer_enabled", False)
        self.sock, self.publisher = udp(), udp()
        self.viewers = [udp(), udp()]
        self.engine = e = engine_cls(self.sock.fileno(), lambda data, addr: None, **options)
        self.pub = e.add_transport(secure=False, mid=MID_ID)
        e.set_transport_address(self.pub, *self.publisher.getsockname())
        self.video = e.add_producer(self.pub, video=True, codec=VP8, payload_type=96, clock_rate=90000,
                                    rtx_payload_type=97, ssrc=VIDEO_SSRC, rtx_ssrc=VIDEO_RTX_SSRC, mid=b"0")
        self.audio = e.add_producer(self.pub, video=False, codec=OPUS, payload_type=111, clock_rate=48000,
                                    ssrc=AUDIO_SSRC, mid=b"1")
        self.transports, self.video_consumers, self.audio_consumers = [], [], []
        for v, sock in enumerate(self.viewers):
            t = e.add_transport(secure=False, rtcp_ssrc=0xA000 + v)
            e.set_transport_address(t, *sock.getsockname())
            tcc = TCC_ID if v == 0 else 0
            self.transports.append(t)
            self.video_consumers.append(e.add_consumer(
                t, self.video, payload_type=100, ssrc=VIEW_VIDEO + v, rtx_payload_type=101,
                rtx_ssrc=VIEW_RTX + v, mid=MID_ID, mid_value=b"v", first_seq=1000, transport_cc=tcc))
            self.audio_consumers.append(e.add_consumer(
                t, self.audio, payload_type=109, ssrc=VIEW_AUDIO + v, mid=MID_ID, mid_value=b"a",
                first_seq=2000, transport_cc=tcc))

    def feed(self, data: bytes, sock: socket.socket | None = None) -> None:
        self.engine.feed(data, *(sock or self.publisher).getsockname())

    def video_packet(self, seq: int, keyframe: bool = False, tid: int | None = None, size: int = 40) -> bytes:
        payload = make_vp8_payload(keyframe, picture_id=seq & 0x7FFF if tid is not None else None,
                                   tl0picidx=0 if tid is not None else None, tid=tid, frame=bytes([seq & 0xFF]) * size)
        return make_rtp(seq=seq, ts=3000 * (seq // 2), ssrc=VIDEO_SSRC, pt=96,
                        extensions={MID_ID: b"0", 3: b"\x12\x34"}, payload=payload)

    def audio_packet(self, seq: int) -> bytes:
        return make_rtp(seq=seq, ts=960 * seq, ssrc=AUDIO_SSRC, pt=111, extensions={MID_ID: b"1", 3: b"\x00\x01"},
                        payload=b"\xfc" + bytes([seq & 0xFF]) * 20)

    def take(self, sock: socket.socket) -> list[bytes]:
        """Everything the engine sent to ``sock`` so far (a barrier datagram ends it)."""
        self.sock.sendto(SENTINEL, sock.getsockname())
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                assert time.monotonic() < deadline, "the barrier datagram never arrived"
                select.select([sock], [], [], 0.05)
                continue
            if data == SENTINEL:
                return got
            got.append(data)

    @staticmethod
    def drain(sock: socket.socket) -> None:
        """Throw away what ``sock`` holds (loopback delivers as the engine sends)."""
        while True:
            try:
                sock.recv(4096)
            except BlockingIOError:
                return

    def close(self) -> None:
        for s in (self.sock, self.publisher, *self.viewers):
            s.close()


@pytest.fixture
def make_rig(engine_cls: type) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**options: Any) -> Rig:
        rigs.append(Rig(engine_cls, **options))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def tcc_seq(datagram: bytes) -> int | None:
    """The transport-wide sequence number a sent RTP packet carries (None: none)."""
    values = [v for i, v in read_rtp(datagram)["elements"] if i == TCC_ID]
    assert len(values) <= 1 and all(len(v) == 2 for v in values)
    return struct.unpack("!H", values[0])[0] if values else None


def elements(datagram: bytes) -> dict[int, bytes]:
    return dict(read_rtp(datagram)["elements"])


# =====================================================================================
# Stamping
# =====================================================================================


def test_every_packet_to_a_twcc_viewer_carries_the_next_transport_wide_number(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e = rig.engine
    rig.feed(rig.video_packet(500, keyframe=True))
    for i in range(1, 6):
        rig.feed(rig.audio_packet(70 + i))
        rig.feed(rig.video_packet(500 + i))
    got, plain = rig.take(rig.viewers[0]), rig.take(rig.viewers[1])
    assert len(got) == len(plain) == 11
    # One counter for the transport, across its video and audio consumers, from 0.
    assert [tcc_seq(d) for d in got] == list(range(11))
    ssrcs = [read_rtp(d)["ssrc"] for d in got]
    assert ssrcs == [VIEW_VIDEO] + [VIEW_AUDIO, VIEW_VIDEO] * 5
    # Everything else is what a viewer without transport-cc gets: its mid, same payload.
    for d, p in zip(got, plain):
        a, b = read_rtp(d), read_rtp(p)
        assert set(elements(d)) == {MID_ID, TCC_ID}
        assert elements(p) == {MID_ID: elements(d)[MID_ID]}
        assert (a["seq"], a["ts"], a["pt"], a["payload"]) == (b["seq"], b["ts"], b["pt"], b["payload"])
        assert a["ssrc"] - b["ssrc"] == -1
    assert e.transport_twcc(rig.transports[0]) == {"id": TCC_ID, "sent": 11, "feedbacks": 0}
    assert e.transport_twcc(rig.transports[1]) == {"id": 0, "sent": 0, "feedbacks": 0}
    assert e.take_twcc(rig.transports[0]) == [] and e.take_twcc(rig.transports[1]) == []


def test_rtx_probes_and_padding_are_stamped_in_sending_order(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    video = rig.video_consumers[0]
    rig.feed(rig.video_packet(500, keyframe=True, tid=0))
    rig.feed(rig.video_packet(501, tid=0))
    # A temporal cap: the TID 1 frame goes out as padding, numbered all the same.
    e.set_consumer_temporal(video, 0)
    rig.feed(rig.video_packet(502, tid=1))
    e.set_consumer_temporal(video, -1)
    # A NACK for 1001 (RTX) and for 1002 (the padding, again).
    rig.feed(make_rtcp_nack(0xA000, VIEW_VIDEO, nack_items([1001, 1002])), rig.viewers[0])
    # A probe: RTX copies of the newest packets, from tick().
    e.set_consumer_probe(video, 2_000_000)
    deadline = time.monotonic() + 2
    while e.consumer_stats(video)["probe_bytes"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        e.tick()
    e.set_consumer_probe(video, 0)
    got = rig.take(rig.viewers[0])
    kinds = []
    for d in got:
        f = read_rtp(d)
        kinds.append("padding" if f["padding"] else "rtx" if f["ssrc"] == VIEW_RTX else "media")
    assert kinds[:5] == ["media", "media", "padding", "rtx", "padding"]
    assert set(kinds[5:]) == {"rtx"} and len(kinds) > 5
    assert [tcc_seq(d) for d in got] == list(range(len(got)))
    # The padding-only packet: 12-byte header, one-word extension block, 4 bytes of padding.
    padding = got[2]
    assert len(padding) == 24 and padding[-1] == 4 and padding[16:20] == bytes([(TCC_ID << 4) | 1, 0, 2, 0])
    assert read_rtp(padding)["seq"] == 1002
    assert e.transport_twcc(t)["sent"] == len(got)


def test_the_sequence_number_wraps(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    e.remove_consumer(rig.video_consumers[1])  # the viewer without transport-cc is not needed
    e.remove_consumer(rig.audio_consumers[1])
    packet = rig.audio_packet(1)
    for i in range(65536 - 3):
        rig.feed(packet)
        if i % 512 == 0:
            rig.drain(rig.viewers[0])
    rig.take(rig.viewers[0])
    for i in range(6):
        rig.feed(rig.audio_packet(2 + i))
    got = rig.take(rig.viewers[0])
    assert [tcc_seq(d) for d in got] == [65533, 65534, 65535, 0, 1, 2]
    # Feedback across the wrap finds each of them.
    e.take_twcc(t)
    rig.feed(twcc_feedback(65533, [4, 4, None, 4, 4, 4], ref=100), rig.viewers[0])
    reports = e.take_twcc(t)
    assert [r[1] for r in reports] == pytest.approx(
        [arrival(100, k) if k else -1.0 for k in (4, 8, 0, 12, 16, 20)])
    assert [r[2] for r in reports] == [len(d) for d in got]


# =====================================================================================
# Feedback
# =====================================================================================


def _send(rig: Rig, count: int) -> tuple[list[bytes], float, float]:
    """``count`` audio packets to both viewers; what viewer 0 got and when they were sent."""
    before = time.monotonic()
    for i in range(count):
        rig.feed(rig.audio_packet(100 + i))
    after = time.monotonic()
    got = rig.take(rig.viewers[0])
    rig.take(rig.viewers[1])
    first = tcc_seq(got[0])
    assert [tcc_seq(d) for d in got] == list(range(first, first + count))
    return got, before, after


def test_feedback_reports_arrivals_and_losses_with_send_time_and_size(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    got, before, after = _send(rig, 10)
    deltas = [10, 0, None, 255, 256, -8, None, 300, 1]  # packets 0..8: 9 is left out
    rig.feed(twcc_feedback(0, deltas, ref=5000, fb_count=1), rig.viewers[0])
    reports = e.take_twcc(t)
    assert len(reports) == 9
    ticks, expected = (5000 + FIRST_REF) * 256, []
    for d in deltas:
        if d is None:
            expected.append(-1.0)
        else:
            ticks += d
            expected.append(ticks * TICK_S)
    assert [r[1] for r in reports] == expected  # exact: integer ticks, then one multiplication
    assert [r[2] for r in reports] == [len(d) for d in got[:9]]
    assert all(before <= r[0] <= after for r in reports)
    assert [r[0] for r in reports] == sorted(r[0] for r in reports)
    assert e.transport_twcc(t) == {"id": TCC_ID, "sent": 10, "feedbacks": 1}
    assert e.totals()["twcc_feedbacks"] == 1
    assert e.take_twcc(t) == []  # each report is handed over once
    rig.feed(twcc_feedback(9, [7], ref=5001, fb_count=2), rig.viewers[0])
    assert [r[1] for r in e.take_twcc(t)] == [arrival(5001, 7)]


@pytest.mark.parametrize("layout", [
    [("run", 6), ("run", 4), ("run", 4)],
    [("v1", 14)],
    [("v2", 7), ("v2", 7)],
    [("run", 6), ("v2", 7), ("v1", 1)],
])
def test_every_chunk_kind(make_rig: Callable[..., Rig], layout: list[tuple[str, int]]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    _send(rig, 14)
    # Received with small deltas, a lost run, small deltas again (1-bit vectors can say it).
    deltas: list[int | None] = [4, 4, 4, 4, 4, 4, None, None, None, None, 8, 8, 8, 8]
    if layout == [("v2", 7), ("v2", 7)]:
        deltas[4], deltas[11] = 1000, -20  # large and negative deltas need 2-bit symbols
    rig.feed(twcc_feedback(0, deltas, ref=1, layout=layout), rig.viewers[0])
    reports = e.take_twcc(t)
    ticks, expected = (1 + FIRST_REF) * 256, []
    for d in deltas:
        if d is not None:
            ticks += d
        expected.append(-1.0 if d is None else ticks * TICK_S)
    assert [r[1] for r in reports] == expected
    assert e.drop_counts().get("rtcp_malformed", 0) == 0


def test_run_length_chunk_longer_than_the_count(make_rig: Callable[..., Rig]) -> None:
    # A receiver may cover the last statuses with a longer run; the count decides.
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    _send(rig, 5)
    packet = twcc_feedback(0, [1, 1, 1], chunks=[run_chunk(1, 8000)], ref=2)
    rig.feed(packet, rig.viewers[0])
    assert [r[1] for r in e.take_twcc(t)] == [arrival(2, k) for k in (1, 2, 3)]
    assert e.drop_counts() == {}


def test_feedback_for_packets_not_sent_or_long_gone_is_ignored(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    _send(rig, 4)
    # 65534, 65535 were never sent (we are at 4); 4, 5 not yet.
    rig.feed(twcc_feedback(65534, [1, 1, 1, None, 1, 1, 1, 1]), rig.viewers[0])
    assert [r[1] for r in e.take_twcc(t)] == [arrival(0, 3), -1.0, arrival(0, 4), arrival(0, 5)]
    assert e.transport_twcc(t)["feedbacks"] == 1


def test_a_packet_reported_lost_then_received(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    _send(rig, 3)
    rig.feed(twcc_feedback(0, [10, None, 10], ref=0), rig.viewers[0])
    # It came after all (the next feedback includes it); a later "lost" changes nothing.
    rig.feed(twcc_feedback(1, [30], ref=0), rig.viewers[0])
    rig.feed(twcc_feedback(0, [None, None, None], ref=0), rig.viewers[0])
    assert [r[1] for r in e.take_twcc(t)] == [arrival(0, 10), arrival(0, 30), arrival(0, 20)]
    # Once taken, what a later feedback says of it is not handed over again.
    rig.feed(twcc_feedback(0, [1, 2, 3], ref=0), rig.viewers[0])
    assert e.take_twcc(t) == []


def test_arrivals_stay_positive_whatever_the_receivers_clock(make_rig: Callable[..., Rig]) -> None:
    # A clock starting at zero and a negative first delta: still an arrival, not "lost" (-1).
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    _send(rig, 2)
    rig.feed(twcc_feedback(0, [-400, 300], ref=0), rig.viewers[0])
    arrivals = [r[1] for r in e.take_twcc(t)]
    assert arrivals == [arrival(0, -400), arrival(0, -100)] and min(arrivals) > 0


def test_reference_time_unwraps(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    _send(rig, 3)
    rig.feed(twcc_feedback(0, [0], ref=0xFFFFFE), rig.viewers[0])
    rig.feed(twcc_feedback(1, [0], ref=0x000001), rig.viewers[0])  # three 64 ms later, past the wrap
    rig.feed(twcc_feedback(2, [0], ref=0xFFFFFF), rig.viewers[0])  # and back: reordered feedback
    arrivals = [r[1] for r in e.take_twcc(t)]
    assert arrivals[1] - arrivals[0] == pytest.approx(3 * REF_S)
    assert arrivals[2] - arrivals[0] == pytest.approx(REF_S)


def test_feedback_with_rtcp_padding(make_rig: Callable[..., Rig]) -> None:
    # libwebrtc pads its feedback to 32 bits with the P bit and the count in the last byte.
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    _send(rig, 2)
    rig.feed(twcc_feedback(0, [3, 4], padding=4), rig.viewers[0])
    assert [r[1] for r in e.take_twcc(t)] == [arrival(0, 3), arrival(0, 7)]
    assert e.drop_counts() == {}


def test_feedback_on_a_transport_without_twcc_is_ignored(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e = rig.engine
    _send(rig, 2)
    rig.feed(twcc_feedback(0, [3, 4]), rig.viewers[1])
    rig.feed(_cut(twcc_feedback(0, [3, 4]), 12), rig.viewers[1])  # not even read
    assert e.take_twcc(rig.transports[1]) == [] and e.totals()["twcc_feedbacks"] == 0
    assert e.drop_counts() == {}


def _header(body: bytes, flags: int = 0) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("!BBH", 0x80 | flags | 15, 205, (4 + len(body)) // 4 - 1) + body


def _cut(packet: bytes, size: int) -> bytes:
    """The first ``size`` bytes (a multiple of 4), with the RTCP length saying so."""
    out = bytearray(packet[:size])
    struct.pack_into("!H", out, 2, size // 4 - 1)
    return bytes(out)


MALFORMED = {
    "shorter than its fixed part": _header(struct.pack("!IIHH", 1, 2, 0, 1)),
    "no packet status": twcc_feedback(0, [], chunks=[run_chunk(1, 3)]),
    "chunks end before the count": _header(struct.pack("!IIHHIH", 1, 2, 0, 20, 0, vector2_chunk([1] * 7))),
    "chunks run past the packet": _cut(twcc_feedback(0, [1] * 30, layout=[("v1", 14), ("v1", 14), ("v1", 2)]), 24),
    "deltas run past the packet": twcc_feedback(0, [1] * 4, chunks=[run_chunk(1, 4), run_chunk(2, 4)], count=8),
    "a reserved symbol in a run": twcc_feedback(0, [1, 1], chunks=[run_chunk(3, 2)]),
    "a reserved symbol in a vector": twcc_feedback(0, [1, 1], chunks=[0xC000 | (1 << 12) | (3 << 10)]),
    "padding longer than the packet": twcc_feedback(0, [1, 2], padding=4)[:-1] + b"\x30",
    "zero padding count": twcc_feedback(0, [1, 2], padding=4)[:-1] + b"\x00",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_feedback_is_counted_and_changes_nothing(make_rig: Callable[..., Rig], name: str) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    rig.feed(rig.video_packet(500, keyframe=True))  # transport-wide number 0
    rig.take(rig.viewers[0])
    _send(rig, 8)
    before = e.totals()["keyframe_requests_received"]
    # The rest of the compound packet is still read: a PLI after it asks for a keyframe.
    rig.feed(MALFORMED[name] + make_rtcp_pli(0xA000, VIEW_VIDEO), rig.viewers[0])
    assert e.drop_counts() == {"rtcp_malformed": 1}
    assert e.take_twcc(t) == [] and e.transport_twcc(t)["feedbacks"] == 0
    assert e.totals()["keyframe_requests_received"] == before + 1
    # Nothing of it stuck: the next good feedback starts from its own reference time.
    rig.feed(twcc_feedback(0, [5], ref=3), rig.viewers[0])
    assert [r[1] for r in e.take_twcc(t)] == [arrival(3, 5)]


def test_only_the_last_1024_packets_are_kept(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    e, t = rig.engine, rig.transports[0]
    packet = rig.audio_packet(1)
    for i in range(1500):
        rig.feed(packet)
        if i % 512 == 0:
            rig.drain(rig.viewers[0])
    rig.take(rig.viewers[0])
    rig.feed(twcc_feedback(0, [1] * 1500, layout=[("run", 1500)]), rig.viewers[0])
    reports = e.take_twcc(t)
    assert len(reports) == 1024
    assert reports[0][1] == arrival(0, 1500 - 1023)


def test_transport_cc_id_is_checked_and_removal_frees_it(engine_cls: type) -> None:
    sock = udp()
    try:
        e = engine_cls(sock.fileno(), lambda data, addr: None)
        t = e.add_transport(secure=False)
        p = e.add_producer(t, video=False, codec=OPUS, payload_type=111, clock_rate=48000, ssrc=1)
        for bad in (-1, 15, 255):
            with pytest.raises(ValueError):
                e.add_consumer(t, p, payload_type=111, ssrc=2, transport_cc=bad)
            with pytest.raises(ValueError):
                e.set_transport_extensions(t, transport_cc=bad)
        e.set_transport_extensions(t, transport_cc=5)
        assert e.transport_twcc(t)["id"] == 5
        e.set_transport_extensions(t, transport_cc=0)
        assert e.transport_twcc(t)["id"] == 0
        e.add_consumer(t, p, payload_type=111, ssrc=2, transport_cc=6)
        e.add_consumer(t, p, payload_type=111, ssrc=3)  # 0 leaves the transport's as it is
        assert e.transport_twcc(t)["id"] == 6
        e.remove_transport(t)
        t2 = e.add_transport(secure=False)  # the same slot, fresh
        assert t2 == t and e.transport_twcc(t2) == {"id": 0, "sent": 0, "feedbacks": 0}
        with pytest.raises(KeyError):
            e.take_twcc(99)
    finally:
        sock.close()


# =====================================================================================
# Any bytes: no crash, both implementations agree
# =====================================================================================


class Pair:
    """The same rig on both engines, fed the same datagrams."""

    def __init__(self) -> None:
        self.rigs = [Rig(ENGINES["cython"]), Rig(ENGINES["python"])]
        for rig in self.rigs:
            for i in range(40):
                rig.feed(rig.audio_packet(100 + i))
            rig.take(rig.viewers[0])

    def feed(self, data: bytes) -> None:
        for rig in self.rigs:
            rig.feed(data, rig.viewers[0])

    def outcome(self) -> list[Any]:
        out = []
        for rig in self.rigs:
            e, t = rig.engine, rig.transports[0]
            # Send times are each engine's own clock; the rest must be the same.
            out.append((e.drop_counts(), e.transport_twcc(t), [(a, s) for _, a, s in e.take_twcc(t)],
                        e.totals()["keyframe_requests_received"]))
        return out

    def close(self) -> None:
        for rig in self.rigs:
            rig.close()


@st.composite
def feedbacks(draw: st.DrawFn) -> bytes:
    """Feedback near what was sent, well-formed or not, with a tail of random bytes."""
    count = draw(st.integers(1, 60))
    deltas = draw(st.lists(st.none() | st.integers(-300, 300), min_size=count, max_size=count))
    layout = []
    left = count
    while left > 0:
        kind = draw(st.sampled_from(["run", "v1", "v2"]))
        n = min(left, draw(st.integers(1, 14 if kind == "v1" else 7 if kind == "v2" else 20)))
        syms = [_symbol(d) for d in deltas[count - left:count - left + n]]
        if kind == "run" and len(set(syms)) > 1 or kind == "v1" and 2 in syms:
            kind = "v2"
            n = min(n, 7)
        layout.append((kind, n))
        left -= n
    packet = bytearray(twcc_feedback(draw(st.integers(0, 45) | st.integers(0, 0xFFFF)), deltas,
                                     ref=draw(st.integers(0, 0xFFFFFF)), layout=layout,
                                     padding=draw(st.sampled_from([0, 0, 4, 8]))))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["flip", "truncate", "append"]))
        if how == "flip" and len(packet) > 4:
            packet[draw(st.integers(4, len(packet) - 1))] ^= draw(st.integers(1, 255))
        elif how == "truncate":
            del packet[draw(st.integers(4, len(packet))):]
        else:
            packet += draw(st.binary(min_size=1, max_size=12))
    if draw(st.booleans()) and len(packet) >= 4:  # keep the RTCP length honest, so the body is parsed
        struct.pack_into("!H", packet, 2, (len(packet) + 3) // 4 - 1)
        packet += bytes(-len(packet) % 4)
    return bytes(packet)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(feedbacks() | st.binary(max_size=80).map(lambda b: b"\x8f\xcd" + b), min_size=1, max_size=6),
       tail=st.booleans())
def test_fuzz_feedback_parser_never_crashes_and_both_engines_agree(packets: list[bytes], tail: bool) -> None:
    pair = Pair()
    try:
        for packet in packets:
            pair.feed(packet + (make_rtcp_pli(0xA000, VIEW_AUDIO) if tail else b""))
        cython_outcome, python_outcome = pair.outcome()
        assert cython_outcome == python_outcome
    finally:
        pair.close()
