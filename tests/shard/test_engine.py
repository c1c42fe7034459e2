"""The shard's packet engine, one suite run on both implementations.

Every test taking ``engine_cls`` runs once on the compiled ``sfu._fastpath.Engine``
and once on its pure-Python twin ``sfu.fastpath_reference.Engine``. The engine
gets a real non-blocking UDP socket on 127.0.0.1; tests ``feed()`` datagrams as
if they came from a publisher's address and read what the engine sent from
test sockets standing in for the viewers. Transports are plain (no SRTP) so
the bytes seen are the bytes before encryption, except in the SRTP tests.
The differential test at the end feeds both engines the same random input and
requires byte-identical output on every socket.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from fixtures import (
    make_dtls_record, make_h264_payload, make_red_payload, make_report_block, make_rtcp_fir, make_rtcp_nack,
    make_rtcp_pli, make_rtcp_remb, make_rtcp_rr, make_rtcp_sr, make_rtp, make_rtx, make_stun_binding_request,
    make_vp8_payload, nack_items, read_red_payload, read_rtp,
)

import sfu.fastpath  # noqa: F401  (gives the compiled engine libsrtp's entry points)
import sfu._fastpath as cython_impl
import sfu.fastpath_reference as python_impl

ENGINES = {"cython": cython_impl.Engine, "python": python_impl.Engine}

# The publisher's header extension ids (Chrome's usual); 3 is transport-cc, never forwarded.
LEVEL_ID, ABS_ID, TCC_ID, MID_ID = 1, 2, 3, 4
VP8, H264, OPUS = cython_impl.CODEC_VP8, cython_impl.CODEC_H264, cython_impl.CODEC_OPUS
SENTINEL = b"\xffend-of-test-barrier"


@pytest.fixture(params=list(ENGINES))
def engine_cls(request: pytest.FixtureRequest) -> type:
    return ENGINES[request.param]


def test_cython_engine_is_compiled() -> None:
    # Otherwise half of this suite would silently test Python twice.
    assert cython_impl.__file__.endswith(".so")
    assert ENGINES["cython"].__module__ == "sfu._fastpath"
    assert ENGINES["python"].__module__ == "sfu.fastpath_reference"


def test_same_drop_reasons() -> None:
    assert cython_impl.DROP_REASONS == python_impl.DROP_REASONS
    documented = {"unknown_address", "srtp_not_ready", "srtp_unprotect_failed", "srtcp_unprotect_failed",
                  "rtp_truncated", "rtp_bad_version", "rtp_bad_padding", "rtp_bad_extension",
                  "rtp_unknown_ssrc", "rtp_unexpected_payload_type", "rtp_padding_only",
                  "rtcp_malformed", "waiting_for_keyframe", "nack_not_in_buffer"}
    assert documented <= set(python_impl.DROP_REASONS)


# =====================================================================================
# Independent decoders for what the engine sends
# =====================================================================================


def rtcp(data: bytes) -> list[dict]:
    """A compound RTCP packet, split; each part with its header fields and body."""
    parts, pos = [], 0
    while pos < len(data):
        b0, pt, words = struct.unpack_from("!BBH", data, pos)
        end = pos + 4 * (words + 1)
        parts.append({"version": b0 >> 6, "count": b0 & 0x1F, "pt": pt, "body": data[pos + 4:end]})
        pos = end
    assert pos == len(data)
    return parts


def report_blocks(body: bytes, count: int) -> list[dict]:
    names = ("ssrc", "fraction_lost", "cumulative_lost", "highest", "jitter", "lsr", "dlsr")
    blocks = []
    for i in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", body, 4 + 24 * i)
        blocks.append(dict(zip(names, (ssrc, lost >> 24, lost & 0xFFFFFF, highest, jitter, lsr, dlsr))))
    return blocks


# =====================================================================================
# The rig: an engine on a real socket, peers on theirs
# =====================================================================================


def udp(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for a few hundred datagrams
    s.bind((host, 0))
    s.setblocking(False)
    return s


class Rig:
    """An engine on ``sock``; ``publisher`` and ``viewers`` are the peers' sockets."""

    def __init__(self, engine_cls: type, viewers: int = 3, **options: Any) -> None:
        options.setdefault("pacer_enabled", False)
        self.sock = udp()
        self.publisher = udp()
        self.viewers = [udp() for _ in range(viewers)]
        self.stranger = udp()
        self.slow_path: list[tuple[bytes, tuple[str, int]]] = []
        self.engine = engine_cls(self.sock.fileno(), self._on_slow_path, **options)

    def _on_slow_path(self, data: bytes, addr: tuple[str, int]) -> None:
        self.slow_path.append((data, addr))

    def sockets(self) -> list[socket.socket]:
        return [self.publisher, *self.viewers, self.stranger]

    def transport(self, sock: socket.socket, **kwargs: Any) -> int:
        t = self.engine.add_transport(secure=False, **kwargs)
        self.engine.set_transport_address(t, *sock.getsockname())
        return t

    def feed(self, data: bytes, sock: socket.socket | None = None) -> None:
        self.engine.feed(data, *(sock or self.publisher).getsockname())

    def take(self, sock: socket.socket) -> list[bytes]:
        """Everything the engine sent to ``sock`` so far, in order.

        A sentinel sent from the engine's own socket after the engine returned
        arrives after everything the engine sent before it (same sender, same
        loopback queue): read up to it, no sleeping, no guessing.
        """
        self.sock.sendto(SENTINEL, sock.getsockname())
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError("the barrier datagram never arrived")
                select.select([sock], [], [], 0.05)
                continue
            if data == SENTINEL:
                return got
            got.append(data)

    def close(self) -> None:
        for s in (self.sock, *self.sockets()):
            s.close()


@pytest.fixture
def make_rig(engine_cls: type) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(viewers: int = 3, **options: Any) -> Rig:
        rig = Rig(engine_cls, viewers, **options)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


@dataclass
class Viewer:
    """What one viewer negotiated; each differs, to show the rewrite is per consumer."""

    video_pt: int
    audio_pt: int
    ids: dict[str, int]
    video_mid: bytes
    audio_mid: bytes
    first_seq: int
    first_ts: int
    rtx_pt: int = -1
    first_rtx_seq: int = 0
    nack: bool = True
    rtcp_ssrc: int = 0
    audio_red_pt: int = -1  # RED negotiated for audio (-1: RED reaches it stripped)


VIEWERS = [
    Viewer(100, 109, {"mid": 9, "abs_send_time": 5, "audio_level": 6}, b"v0", b"a0",
           first_seq=65530, first_ts=0xFFFFFF00, rtx_pt=101, first_rtx_seq=65535, rtcp_ssrc=0xA000,
           audio_red_pt=108),
    Viewer(96, 111, {"mid": 3}, b"video-track-mid", b"1", first_seq=1000, first_ts=5, rtcp_ssrc=0xB000),
    Viewer(120, 121, {}, b"x", b"y", first_seq=0, first_ts=0, nack=False, rtcp_ssrc=0xC000),
]


def video_ssrc(v: int) -> int:
    return 0x10000 + v


def rtx_ssrc(v: int) -> int:
    return 0x20000 + v


def audio_ssrc(v: int) -> int:
    return 0x30000 + v


@dataclass
class Room:
    rig: Rig
    publisher: int
    video: int
    audio: int
    viewers: list[int] = field(default_factory=list)
    video_consumers: list[int] = field(default_factory=list)
    audio_consumers: list[int] = field(default_factory=list)
    VIDEO_SSRC = 0x1111
    VIDEO_RTX_SSRC = 0x1112
    AUDIO_SSRC = 0x2222
    VIDEO_PT, VIDEO_RTX_PT, AUDIO_PT, AUDIO_RED_PT = 96, 97, 111, 63
    PUBLISHER_RTCP_SSRC = 0xFEED

    @property
    def engine(self) -> Any:
        return self.rig.engine

    def add_viewer(self, v: int) -> None:
        spec, e = VIEWERS[v], self.rig.engine
        t = self.rig.transport(self.rig.viewers[v], rtcp_ssrc=spec.rtcp_ssrc)
        self.viewers.append(t)
        self.video_consumers.append(e.add_consumer(
            t, self.video, payload_type=spec.video_pt, ssrc=video_ssrc(v), rtx_payload_type=spec.rtx_pt,
            rtx_ssrc=rtx_ssrc(v) if spec.rtx_pt >= 0 else None, nack=spec.nack,
            mid_value=spec.video_mid, first_seq=spec.first_seq, first_ts=spec.first_ts,
            first_rtx_seq=spec.first_rtx_seq, **spec.ids))
        self.audio_consumers.append(e.add_consumer(
            t, self.audio, payload_type=spec.audio_pt, ssrc=audio_ssrc(v), mid_value=spec.audio_mid,
            first_seq=spec.first_seq ^ 0x5555, first_ts=spec.first_ts ^ 0x55555555,
            red_payload_type=spec.audio_red_pt, **spec.ids))

    def video_packet(self, seq: int, ts: int = 0, keyframe: bool = False, **kwargs: Any) -> bytes:
        kwargs.setdefault("payload", make_vp8_payload(keyframe, frame=bytes([seq & 0xFF]) * 8))
        kwargs.setdefault("extensions", {MID_ID: b"0", ABS_ID: b"\x0a\x0b\x0c", TCC_ID: b"\x00\x07"})
        return make_rtp(seq=seq, ts=ts, ssrc=self.VIDEO_SSRC, pt=self.VIDEO_PT, **kwargs)

    def audio_packet(self, seq: int, ts: int = 0, **kwargs: Any) -> bytes:
        kwargs.setdefault("payload", b"\xfc" + bytes([seq & 0xFF]) * 20)
        kwargs.setdefault("extensions", {MID_ID: b"1", LEVEL_ID: b"\x85", TCC_ID: b"\x00\x08"})
        kwargs.setdefault("pt", self.AUDIO_PT)
        return make_rtp(seq=seq, ts=ts, ssrc=self.AUDIO_SSRC, **kwargs)

    def red_packet(self, seq: int, ts: int, redundant: int = 2, **kwargs: Any) -> bytes:
        """Chrome's RED for Opus: the frames of the ``redundant`` packets before this one
        (20 ms apart), then this one's, each an Opus TOC byte and the sequence number."""
        frames = [(self.AUDIO_PT, 960 * k, opus_frame(seq - k)) for k in range(redundant, 0, -1)]
        kwargs.setdefault("payload", make_red_payload(self.AUDIO_PT, opus_frame(seq), frames))
        return self.audio_packet(seq, ts, pt=self.AUDIO_RED_PT, **kwargs)


def opus_frame(seq: int) -> bytes:
    return b"\xfc" + struct.pack("!H", seq & 0xFFFF) * (5 + seq % 7)


def make_room(rig: Rig, viewers: int | None = None, video_ssrc_known: bool = True) -> Room:
    e = rig.engine
    t = rig.transport(rig.publisher, mid=MID_ID, abs_send_time=ABS_ID, audio_level=LEVEL_ID,
                      rtcp_ssrc=Room.PUBLISHER_RTCP_SSRC)
    video = e.add_producer(t, video=True, codec=VP8, payload_type=Room.VIDEO_PT, clock_rate=90000,
                           rtx_payload_type=Room.VIDEO_RTX_PT,
                           ssrc=Room.VIDEO_SSRC if video_ssrc_known else None,
                           rtx_ssrc=Room.VIDEO_RTX_SSRC if video_ssrc_known else None, mid=b"0")
    audio = e.add_producer(t, video=False, codec=OPUS, payload_type=Room.AUDIO_PT, clock_rate=48000,
                           ssrc=Room.AUDIO_SSRC, mid=b"1", red_payload_type=Room.AUDIO_RED_PT)
    room = Room(rig, t, video, audio)
    for v in range(len(rig.viewers) if viewers is None else viewers):
        room.add_viewer(v)
    return room


def plis(datagrams: list[bytes]) -> list[tuple[int, int]]:
    """(sender, media) of each PLI among ``datagrams``."""
    found = []
    for d in datagrams:
        for part in rtcp(d):
            if part["pt"] == 206 and part["count"] == 1:
                found.append(struct.unpack("!II", part["body"]))
    return found


ABS_NOW = "abs-send-time stamped at sending"


def stamped(elements: list[tuple[int, Any]], abs_id: int = 5) -> list[tuple[int, Any]]:
    """The header extensions, with an abs-send-time of the last second shown as ABS_NOW.

    The engine stamps abs-send-time (6.18 fixed-point seconds of the monotonic clock,
    mod 64 s) when it sends, not when the publisher did.
    """
    now = int(time.monotonic() * 262144) & 0xFFFFFF
    return [(i, ABS_NOW if i == abs_id and len(v) == 3 and (now - int.from_bytes(v, "big")) & 0xFFFFFF < 262144
             else v) for i, v in elements]


def unstamped(datagram: bytes, abs_id: int = 5) -> bytes:
    """A plain RTP datagram with its abs-send-time zeroed (RTCP and others unchanged):
    the time of sending is the one byte-for-byte difference between two sends."""
    if len(datagram) < 12 or 192 <= datagram[1] <= 223 or not datagram[0] & 0x10:
        return datagram
    out = bytearray(datagram)
    pos = 12 + 4 * (out[0] & 0x0F)
    if pos + 4 > len(out) or out[pos:pos + 2] != b"\xbe\xde":
        return datagram
    end = min(len(out), pos + 4 + 4 * struct.unpack_from("!H", out, pos + 2)[0])
    pos += 4
    while pos < end:
        if out[pos] == 0:
            pos += 1
            continue
        ident, length = out[pos] >> 4, (out[pos] & 0x0F) + 1
        if ident == abs_id and length == 3:
            out[pos + 1:pos + 4] = bytes(3)
        pos += 1 + length
    return bytes(out)


def drops(engine: Any) -> dict[str, int]:
    return engine.drop_counts()


# =====================================================================================
# Forwarding and the per-consumer rewrite
# =====================================================================================


def test_each_consumer_gets_its_own_rewrite(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    key = room.video_packet(40000, ts=123456, keyframe=True, csrcs=(77, 78), padding=7)
    delta = room.video_packet(40001, ts=123456 + 3000, marker=True)
    rig.feed(key)
    rig.feed(delta)
    originals = [read_rtp(key), read_rtp(delta)]
    original_payloads = [make_vp8_payload(True, frame=bytes([0x40]) * 8),
                         make_vp8_payload(False, frame=bytes([0x41]) * 8)]
    for v, sock in enumerate(rig.viewers):
        spec = VIEWERS[v]
        got = [read_rtp(d) for d in rig.take(sock)]
        assert len(got) == 2
        for i, (packet, original) in enumerate(zip(got, originals)):
            assert packet["version"] == 2
            assert not packet["padding"]  # padding removed
            assert packet["pt"] == spec.video_pt
            assert packet["ssrc"] == video_ssrc(v)
            assert packet["seq"] == (spec.first_seq + i) & 0xFFFF
            assert packet["ts"] == (spec.first_ts + 3000 * i) & 0xFFFFFFFF
            assert packet["marker"] == original["marker"]
            assert packet["csrcs"] == original["csrcs"]
            assert packet["payload"] == original_payloads[i]
            expected = []
            if "mid" in spec.ids:
                expected.append((spec.ids["mid"], spec.video_mid))
            if "abs_send_time" in spec.ids:
                expected.append((spec.ids["abs_send_time"], ABS_NOW))
            assert stamped(packet["elements"]) == expected  # transport-cc dropped, ids the viewer's
            assert packet["profile"] == (0xBEDE if expected else None)
    stats = [rig.engine.consumer_stats(c) for c in room.video_consumers]
    assert all(s["packets_sent"] == 2 and s["started"] for s in stats)
    assert all(s["bytes_sent"] == sum(map(len, original_payloads)) for s in stats)
    assert rig.engine.producer_stats(room.video)["received"] == 2
    totals = rig.engine.totals()
    assert totals["packets_in"] == 2
    assert totals["packets_out"] == 6
    assert drops(rig.engine) == {}


def test_audio_level_and_abs_send_time_carried(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    rig.feed(room.audio_packet(7, ts=960, extensions={MID_ID: b"1", LEVEL_ID: b"\x85",
                                                      ABS_ID: b"\x01\x02\x03", 7: b"unknown"}))
    got = read_rtp(rig.take(rig.viewers[0])[0])
    assert got["pt"] == VIEWERS[0].audio_pt and got["ssrc"] == audio_ssrc(0)
    # abs-send-time is ours (the time we sent it), so a viewer's estimate measures our path.
    assert stamped(got["elements"]) == [(9, b"a0"), (5, ABS_NOW), (6, b"\x85")]
    assert read_rtp(rig.take(rig.viewers[1])[0])["elements"] == [(3, b"1")]
    assert read_rtp(rig.take(rig.viewers[2])[0])["profile"] is None
    # A publisher that sends none (transport-cc only, say): the viewer that asked still gets one.
    rig.feed(room.audio_packet(8, ts=1920, extensions={MID_ID: b"1"}))
    assert stamped(read_rtp(rig.take(rig.viewers[0])[0])["elements"]) == [(9, b"a0"), (5, ABS_NOW)]


def test_two_byte_extensions_from_the_publisher_are_read(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    rig.feed(room.audio_packet(7, extensions=[(LEVEL_ID, b"\x99"), (200, b"long" * 10)], two_byte=True))
    assert stamped(read_rtp(rig.take(rig.viewers[0])[0])["elements"]) == [(9, b"a0"), (5, ABS_NOW), (6, b"\x99")]


def test_audio_starts_at_once_and_asks_for_nothing(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    rig.feed(room.audio_packet(500, ts=48000))
    for v, sock in enumerate(rig.viewers):
        [packet] = map(read_rtp, rig.take(sock))
        assert packet["seq"] == VIEWERS[v].first_seq ^ 0x5555
        assert packet["ts"] == VIEWERS[v].first_ts ^ 0x55555555
    # A PLI for an audio consumer reaches no one.
    rig.feed(make_rtcp_pli(1, audio_ssrc(0)), rig.viewers[0])
    assert rig.take(rig.publisher) == []
    assert rig.engine.totals()["keyframe_requests_sent"] == 0
    assert drops(rig.engine) == {}


def test_video_waits_for_a_keyframe_and_asks_the_publisher(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    for seq in (10, 11, 12):
        rig.feed(room.video_packet(seq, ts=seq * 3000))
    assert all(rig.take(sock) == [] for sock in rig.viewers)
    assert drops(rig.engine) == {"waiting_for_keyframe": 3 * 3}
    # One PLI went to the publisher (the other viewers' requests were coalesced into it).
    assert plis(rig.take(rig.publisher)) == [(Room.PUBLISHER_RTCP_SSRC, Room.VIDEO_SSRC)]
    totals = rig.engine.totals()
    assert totals["keyframe_requests_sent"] == 1
    assert totals["keyframe_requests_coalesced"] == 2
    rig.feed(room.video_packet(13, ts=13 * 3000, keyframe=True))
    rig.feed(room.video_packet(14, ts=14 * 3000))
    for v, sock in enumerate(rig.viewers):
        got = [read_rtp(d) for d in rig.take(sock)]
        assert [p["seq"] for p in got] == [VIEWERS[v].first_seq, (VIEWERS[v].first_seq + 1) & 0xFFFF]
        assert got[0]["ts"] == VIEWERS[v].first_ts
    assert drops(rig.engine) == {"waiting_for_keyframe": 9}


@pytest.mark.parametrize("codec,key,not_key", [
    (VP8, make_vp8_payload(True), make_vp8_payload(False)),
    (VP8, make_vp8_payload(True, picture_id=300, tl0picidx=5, tid=1),
     make_vp8_payload(True, start=False)),  # a keyframe's continuation does not start one
    (H264, make_h264_payload(5), make_h264_payload(1)),
    (H264, make_h264_payload(stap_a=[7, 8, 5]), make_h264_payload(stap_a=[6, 1])),
    (H264, make_h264_payload(fu_a=5, fu_start=True), make_h264_payload(fu_a=5, fu_start=False)),
], ids=["vp8", "vp8-extended", "h264-idr", "h264-stap-a", "h264-fu-a"])
def test_keyframe_detection_per_codec(make_rig: Callable[..., Rig], codec: int, key: bytes,
                                      not_key: bytes) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    t = rig.transport(rig.publisher)
    p = e.add_producer(t, video=True, codec=codec, payload_type=102, clock_rate=90000, ssrc=5)
    c = e.add_consumer(rig.transport(rig.viewers[0]), p, payload_type=102, ssrc=6)
    rig.feed(make_rtp(seq=1, ssrc=5, pt=102, payload=not_key))
    assert not e.consumer_stats(c)["started"]
    rig.feed(make_rtp(seq=2, ssrc=5, pt=102, payload=key))
    rig.feed(make_rtp(seq=3, ssrc=5, pt=102, payload=not_key))
    assert [read_rtp(d)["payload"] for d in rig.take(rig.viewers[0])] == [key, not_key]
    assert drops(e) == {"waiting_for_keyframe": 1}


def test_sequence_and_timestamp_continuity_across_wraps(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    first_seq, first_ts = VIEWERS[0].first_seq, VIEWERS[0].first_ts
    seq0, ts0 = 65533, 0xFFFFD000
    sent = [0, 1, 3, 4, 5, 6, 7, 8, 9]  # 2 lost upstream (seq 65535)
    for i in sent:
        rig.feed(room.video_packet((seq0 + i) & 0xFFFF, ts=(ts0 + 3000 * i) & 0xFFFFFFFF, keyframe=i == 0))
    rig.feed(room.video_packet((seq0 + 2) & 0xFFFF, ts=(ts0 + 6000) & 0xFFFFFFFF))  # late, reordered
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["seq"] for p in got] == [(first_seq + i) & 0xFFFF for i in sent + [2]]
    assert [p["ts"] for p in got] == [(first_ts + 3000 * i) & 0xFFFFFFFF for i in sent + [2]]
    stats = rig.engine.producer_stats(room.video)
    assert stats["received"] == 10 and stats["lost"] == 0


# =====================================================================================
# RED (RFC 2198) audio: passed through in the viewer's payload types, or stripped
# =====================================================================================


def test_red_passes_through_in_the_viewers_payload_types(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    # A block of another payload type (comfort noise, 13) keeps it: only the wrapped codec's are renumbered.
    payload = make_red_payload(Room.AUDIO_PT, opus_frame(7),
                               [(13, 1920, b"\x01\x02"), (Room.AUDIO_PT, 960, opus_frame(6))])
    rig.feed(room.red_packet(7, ts=48000, marker=True, payload=payload))
    spec = VIEWERS[0]
    [got] = map(read_rtp, rig.take(rig.viewers[0]))
    assert (got["pt"], got["marker"], got["ssrc"]) == (spec.audio_red_pt, True, audio_ssrc(0))
    assert (got["seq"], got["ts"]) == (spec.first_seq ^ 0x5555, spec.first_ts ^ 0x55555555)
    assert read_red_payload(got["payload"]) == (
        [(13, 1920, b"\x01\x02"), (spec.audio_pt, 960, opus_frame(6))], spec.audio_pt, opus_frame(7))
    assert len(got["payload"]) == len(payload)
    assert stamped(got["elements"]) == [(9, b"a0"), (5, ABS_NOW), (6, b"\x85")]  # the level carried over
    assert rig.engine.consumer_stats(room.audio_consumers[0])["bytes_sent"] == len(payload)
    assert drops(rig.engine) == {}


def test_red_is_stripped_to_its_primary_for_viewers_without_red(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    # Plain and RED packets of one stream (a browser turns RED on and off), RED with 0 to 2 blocks.
    packets = [room.audio_packet(100, ts=0, payload=opus_frame(100)), room.red_packet(101, 960),
               room.red_packet(102, 1920, redundant=1, padding=5),
               room.audio_packet(103, 2880, payload=opus_frame(103)), room.red_packet(104, 3840, redundant=0)]
    for packet in packets:
        rig.feed(packet)
    for v in (1, 2):
        spec = VIEWERS[v]
        got = [read_rtp(d) for d in rig.take(rig.viewers[v])]
        first, ts0 = spec.first_seq ^ 0x5555, spec.first_ts ^ 0x55555555
        assert [p["seq"] for p in got] == [(first + i) & 0xFFFF for i in range(5)]
        assert [p["ts"] for p in got] == [(ts0 + 960 * i) & 0xFFFFFFFF for i in range(5)]
        assert [p["pt"] for p in got] == [spec.audio_pt] * 5
        assert [p["payload"] for p in got] == [opus_frame(100 + i) for i in range(5)]
        assert not any(p["padding"] for p in got)
        stats = rig.engine.consumer_stats(room.audio_consumers[v])
        assert (stats["packets_sent"], stats["bytes_sent"]) == (5, sum(len(opus_frame(100 + i)) for i in range(5)))
    # The viewer with RED gets RED as RED, plain as plain.
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["pt"] for p in got] == [109, 108, 108, 109, 108]
    primaries = [read_red_payload(p["payload"])[2] for p in got if p["pt"] == 108]
    assert primaries == [opus_frame(101 + i) for i in (0, 1, 3)]
    assert rig.engine.producer_stats(room.audio)["received"] == 5
    assert drops(rig.engine) == {}


RED_MALFORMED = [
    ("header-cut-short", bytes([0x80 | 111, 0, 0])),
    ("headers-only", make_red_payload(111, b"x", [(111, 960, b"ab")])[:4]),
    ("no-primary-header", make_red_payload(111, b"x", [(111, 960, b"ab"), (111, 0, b"cd")])[:8]),
    ("block-past-the-end", make_red_payload(111, b"", [(111, 960, b"abcd")])[:-1]),
    ("length-says-1023", bytes([0x80 | 111, 0, 0x03, 0xFF, 111]) + bytes(40)),
    ("empty-primary", make_red_payload(111, b"", [(111, 960, b"abcd")])),
    ("primary-header-alone", bytes([111])),
]


@pytest.mark.parametrize("payload", [c[1] for c in RED_MALFORMED], ids=[c[0] for c in RED_MALFORMED])
def test_malformed_red_is_dropped_and_counted(make_rig: Callable[..., Rig], payload: bytes) -> None:
    rig = make_rig()
    room = make_room(rig)
    rig.feed(room.red_packet(1, 0, payload=payload))
    rig.feed(room.red_packet(2, 0, payload=payload, padding=3))  # padding is not payload
    assert [rig.take(s) for s in rig.viewers] == [[], [], []]
    assert drops(rig.engine) == {"red_malformed": 2}
    assert rig.engine.producer_stats(room.audio)["received"] == 0


def test_red_primary_in_another_codec_is_unexpected(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    rig.feed(room.red_packet(1, 0, payload=make_red_payload(0, b"pcmu", [(Room.AUDIO_PT, 960, opus_frame(0))])))
    # RED for a producer that has none.
    rig.feed(make_rtp(seq=2, ssrc=Room.VIDEO_SSRC, pt=Room.AUDIO_RED_PT, payload=make_vp8_payload(True)))
    assert [rig.take(s) for s in rig.viewers] == [[], [], []]
    assert drops(rig.engine) == {"rtp_unexpected_payload_type": 2}


def test_red_is_for_audio_under_its_own_payload_type(engine_cls: type) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        e = engine_cls(sock.fileno(), lambda data, addr: None)
        t = e.add_transport(secure=False)
        for kwargs in (dict(video=True, codec=VP8, payload_type=96, red_payload_type=63),
                       dict(video=False, codec=OPUS, payload_type=111, red_payload_type=111),
                       dict(video=False, codec=OPUS, payload_type=111, rtx_payload_type=63, red_payload_type=63)):
            with pytest.raises(ValueError):
                e.add_producer(t, clock_rate=90000, **kwargs)
        e.add_producer(t, video=False, codec=OPUS, payload_type=111, clock_rate=48000, red_payload_type=63)


def test_red_ssrc_learnt_from_the_mid(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    t = rig.transport(rig.publisher, mid=MID_ID)
    p = e.add_producer(t, video=False, codec=OPUS, payload_type=111, clock_rate=48000, mid=b"a", red_payload_type=63)
    e.add_consumer(rig.transport(rig.viewers[0]), p, payload_type=100, ssrc=5)
    # A browser asked for RED sends nothing else: its first packet binds the SSRC.
    rig.feed(make_rtp(seq=1, ssrc=0xABC, pt=63, extensions={MID_ID: b"a"}, payload=make_red_payload(111, b"\xfcop")))
    assert e.producer_ssrc(p) == 0xABC
    assert [read_rtp(d)["payload"] for d in rig.take(rig.viewers[0])] == [b"\xfcop"]


# =====================================================================================
# SSRCs learnt from the mid, RTX from the publisher
# =====================================================================================


def test_ssrc_learnt_from_the_mid_extension(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig, video_ssrc_known=False)
    e = rig.engine
    assert e.producer_ssrc(room.video) is None
    # No mid: nothing to learn from.
    rig.feed(make_rtp(seq=1, ssrc=0xAAAA, pt=96, payload=make_vp8_payload(True)))
    # An RTX stream cannot be bound before its media stream.
    rig.feed(make_rtx(make_rtp(seq=1, ssrc=0xAAAA, pt=96, extensions={MID_ID: b"0"},
                               payload=make_vp8_payload(True)), seq=9, ssrc=0xBBBB, pt=97))
    # An unknown mid.
    rig.feed(make_rtp(seq=1, ssrc=0xAAAA, pt=96, extensions={MID_ID: b"7"}, payload=make_vp8_payload(True)))
    assert drops(e) == {"rtp_unknown_ssrc": 3}
    assert e.producer_ssrc(room.video) is None
    # The mid of the video producer with its payload type: bound.
    key = make_rtp(seq=100, ssrc=0xAAAA, pt=96, extensions={MID_ID: b"0"}, payload=make_vp8_payload(True))
    rig.feed(key)
    assert e.producer_ssrc(room.video) == 0xAAAA
    rig.feed(make_rtp(seq=102, ssrc=0xAAAA, pt=96, payload=make_vp8_payload(False)))  # mid no longer needed
    # Its RTX stream, by the mid and the RTX payload type; then unwrapped.
    lost = make_rtp(seq=101, ssrc=0xAAAA, pt=96, extensions={MID_ID: b"0"},
                    payload=make_vp8_payload(False, frame=b"lost"))
    rig.feed(make_rtx(lost, seq=5000, ssrc=0xBBBB, pt=97))
    # A second SSRC for an already bound mid is not taken.
    rig.feed(make_rtp(seq=1, ssrc=0xCCCC, pt=96, extensions={MID_ID: b"0"}, payload=make_vp8_payload(True)))
    assert drops(e) == {"rtp_unknown_ssrc": 4}
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    first = VIEWERS[0].first_seq
    assert [p["seq"] for p in got] == [first, (first + 2) & 0xFFFF, (first + 1) & 0xFFFF]
    assert got[2]["payload"] == make_vp8_payload(False, frame=b"lost")
    assert got[2]["pt"] == VIEWERS[0].video_pt


def test_rtx_from_the_publisher_is_unwrapped(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=2)
    room = make_room(rig)
    rig.feed(room.video_packet(10, ts=0, keyframe=True))
    lost = room.video_packet(11, ts=3000, marker=True, csrcs=(5,))
    rig.feed(make_rtx(lost, seq=7777, ssrc=Room.VIDEO_RTX_SSRC, pt=Room.VIDEO_RTX_PT, padding=20))
    for v, sock in enumerate(rig.viewers):
        got = [read_rtp(d) for d in rig.take(sock)]
        assert len(got) == 2
        assert got[1]["seq"] == (VIEWERS[v].first_seq + 1) & 0xFFFF
        assert got[1]["ts"] == (VIEWERS[v].first_ts + 3000) & 0xFFFFFFFF
        assert got[1]["pt"] == VIEWERS[v].video_pt and got[1]["marker"] and got[1]["csrcs"] == (5,)
        assert got[1]["payload"] == read_rtp(lost)["payload"] and not got[1]["padding"]
    # The repaired packet is in the history too.
    rig.feed(make_rtcp_nack(1, video_ssrc(1), [((VIEWERS[1].first_seq + 1) & 0xFFFF, 0)]), rig.viewers[1])
    [resent] = map(read_rtp, rig.take(rig.viewers[1]))
    assert resent["payload"] == read_rtp(lost)["payload"]
    # An RTX packet with only the original sequence number is a padding probe; shorter is broken.
    rtx = make_rtx(room.video_packet(12, payload=b""), seq=7778, ssrc=Room.VIDEO_RTX_SSRC, pt=Room.VIDEO_RTX_PT)
    rig.feed(rtx)
    rig.feed(rtx[:-1])
    assert drops(rig.engine) == {"rtp_padding_only": 1, "rtx_no_osn": 1}
    assert rig.engine.producer_stats(room.video)["received"] == 2


# =====================================================================================
# NACK from viewers
# =====================================================================================


def _forward_some(rig: Rig, room: Room, count: int = 5, seq0: int = 100) -> dict[int, list[bytes]]:
    for i in range(count):
        rig.feed(room.video_packet(seq0 + i, ts=3000 * i, keyframe=i == 0, marker=i % 2 == 1))
    return {v: rig.take(sock) for v, sock in enumerate(rig.viewers)}


def test_nack_answered_as_rtx_with_its_own_sequence(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    forwarded = _forward_some(rig, room)[0]
    first = VIEWERS[0].first_seq
    wanted = [(first + 1) & 0xFFFF, (first + 3) & 0xFFFF, (first + 4) & 0xFFFF]
    rig.feed(make_rtcp_nack(0xA000, video_ssrc(0), nack_items(wanted)), rig.viewers[0])
    got = rig.take(rig.viewers[0])
    rtx_seqs = [(VIEWERS[0].first_rtx_seq + i) & 0xFFFF for i in range(3)]  # 65535, 0, 1
    assert [unstamped(d) for d in got] == [unstamped(make_rtx(forwarded[i], seq=s, ssrc=rtx_ssrc(0),
                                                              pt=VIEWERS[0].rtx_pt))
                                           for i, s in zip((1, 3, 4), rtx_seqs)]
    assert all(stamped(read_rtp(d)["elements"])[1] == (5, ABS_NOW) for d in got)
    assert [read_rtp(d)["payload"][:2] for d in got] == [struct.pack("!H", s) for s in wanted]
    assert rig.engine.consumer_stats(room.video_consumers[0])["nacks_served"] == 3
    totals = rig.engine.totals()
    assert (totals["nacks_received"], totals["nacks_served"]) == (1, 3)
    assert drops(rig.engine) == {}


def test_nack_answered_plain_without_rtx(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    forwarded = _forward_some(rig, room)[1]
    first = VIEWERS[1].first_seq
    rig.feed(make_rtcp_nack(0xB000, video_ssrc(1), [(first + 2, 0), (first, 0b100)]), rig.viewers[1])
    assert rig.take(rig.viewers[1]) == [forwarded[2], forwarded[0], forwarded[3]]
    # A viewer that did not negotiate NACK gets nothing, and nothing is counted as a drop.
    rig.feed(make_rtcp_nack(0xC000, video_ssrc(2), [(VIEWERS[2].first_seq, 0)]), rig.viewers[2])
    assert rig.take(rig.viewers[2]) == []
    assert rig.engine.totals()["nacks_served"] == 3
    assert drops(rig.engine) == {}


def test_nack_only_from_the_consumers_own_transport(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    _forward_some(rig, room)
    # Viewer 1 naming viewer 0's SSRC: not its consumer, ignored.
    rig.feed(make_rtcp_nack(0xB000, video_ssrc(0), [(VIEWERS[0].first_seq, 0)]), rig.viewers[1])
    assert [rig.take(s) for s in rig.viewers] == [[], [], []]
    assert rig.engine.totals()["nacks_received"] == 0


def test_nack_for_a_padded_packet_resends_all_of_it(make_rig: Callable[..., Rig]) -> None:
    # The history keeps packets without padding; the copy must not claim any either.
    rig = make_rig()
    room = make_room(rig)
    rig.feed(room.video_packet(1, keyframe=True, payload=make_vp8_payload(True) + b"\x03", padding=9))
    rig.feed(room.video_packet(2, payload=make_vp8_payload(False) + b"\x00", padding=1))
    forwarded = rig.take(rig.viewers[1])
    first = VIEWERS[1].first_seq
    rig.feed(make_rtcp_nack(0xB000, video_ssrc(1), [(first, 1)]), rig.viewers[1])
    assert rig.take(rig.viewers[1]) == forwarded
    assert drops(rig.engine) == {}


def test_nack_not_in_buffer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    rig.feed(room.video_packet(100, keyframe=True))
    # Same slot of the 1024-packet history: 100 is gone. (A keyframe: a jump that long is
    # an outage, which a video consumer only resumes from at a keyframe.)
    rig.feed(room.video_packet(100 + 1024, keyframe=True))
    rig.take(rig.viewers[1])
    first = VIEWERS[1].first_seq
    rig.feed(make_rtcp_nack(0xB000, video_ssrc(1), [(first, 0), ((first + 5) & 0xFFFF, 0)]), rig.viewers[1])
    assert rig.take(rig.viewers[1]) == []
    assert drops(rig.engine) == {"nack_not_in_buffer": 2}
    # Audio keeps no history: a NACK for it is not a drop.
    rig.feed(room.audio_packet(1))
    rig.feed(make_rtcp_nack(0xB000, audio_ssrc(1), [(VIEWERS[1].first_seq ^ 0x5555, 0)]), rig.viewers[1])
    assert drops(rig.engine) == {"nack_not_in_buffer": 2}


# =====================================================================================
# PLI / FIR from viewers: coalesced keyframe requests
# =====================================================================================


def test_keyframe_requests_coalesced_per_interval(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(keyframe_min_interval_s=1000.0)
    room = make_room(rig)
    _forward_some(rig, room)  # everyone started on a keyframe: no joiners' requests
    e = rig.engine
    rig.feed(make_rtcp_pli(0xA000, video_ssrc(0)), rig.viewers[0])
    assert plis(rig.take(rig.publisher)) == [(Room.PUBLISHER_RTCP_SSRC, Room.VIDEO_SSRC)]
    rig.feed(make_rtcp_pli(0xB000, video_ssrc(1)), rig.viewers[1])
    rig.feed(make_rtcp_fir(0xA000, [(video_ssrc(0), 1)]), rig.viewers[0])
    rig.feed(make_rtcp_pli(0xC000, video_ssrc(2)), rig.viewers[2])
    rig.feed(make_rtcp_pli(0xC000, 0xDEAD), rig.viewers[2])  # not a consumer: not a request
    assert e.tick() <= 0.05
    assert rig.take(rig.publisher) == []
    totals = e.totals()
    assert (totals["keyframe_requests_received"], totals["keyframe_requests_sent"],
            totals["keyframe_requests_coalesced"]) == (4, 1, 3)
    # The window ends: a request before the tick still joins the pending one,
    # which leaves with the next tick, once.
    e.keyframe_min_interval_s = 0.0
    rig.feed(make_rtcp_pli(0xB000, video_ssrc(1)), rig.viewers[1])
    assert rig.take(rig.publisher) == []
    e.tick()
    e.tick()
    assert plis(rig.take(rig.publisher)) == [(Room.PUBLISHER_RTCP_SSRC, Room.VIDEO_SSRC)]
    stats = e.producer_stats(room.video)
    assert (stats["keyframe_requests_sent"], stats["keyframe_requests_coalesced"]) == (2, 4)
    # A joining viewer's request (Python's request_keyframe) goes the same way.
    e.request_keyframe(room.video)
    e.request_keyframe(room.audio)  # audio: nothing
    assert plis(rig.take(rig.publisher)) == [(Room.PUBLISHER_RTCP_SSRC, Room.VIDEO_SSRC)]
    assert drops(e) == {}


def test_a_waiting_viewer_asks_again_only_after_a_second(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1, keyframe_min_interval_s=0.0)
    room = make_room(rig)
    for seq in range(5):
        rig.feed(room.video_packet(seq))
    assert len(plis(rig.take(rig.publisher))) == 1
    assert drops(rig.engine) == {"waiting_for_keyframe": 5}


# =====================================================================================
# RTCP to and from the publisher
# =====================================================================================


def test_sender_report_rewritten_for_each_consumer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=3)
    room = make_room(rig, viewers=2)
    payloads = [make_vp8_payload(True, frame=b"k" * 30), make_vp8_payload(False, frame=b"d" * 10)]
    for i, payload in enumerate(payloads):
        rig.feed(room.video_packet(200 + i, ts=90000 + 3000 * i, payload=payload))
    room.add_viewer(2)  # joins late: not started, gets no SR
    for sock in rig.viewers:
        rig.take(sock)
    sr = make_rtcp_sr(Room.VIDEO_SSRC, ntp_seconds=0xE1234567, ntp_fraction=0x89ABCDEF, rtp_ts=90000 + 4500,
                      packets=999, octets=99999, report_blocks=[bytes(24)])
    rig.feed(sr + make_rtcp_rr(Room.VIDEO_SSRC))
    for v in range(2):
        [packet] = map(rtcp, rig.take(rig.viewers[v]))
        assert [(p["pt"], p["count"]) for p in packet] == [(200, 0)]
        ssrc, ntp_s, ntp_f, rtp_ts, count, octets = struct.unpack("!IIIIII", packet[0]["body"])
        assert ssrc == video_ssrc(v)
        assert (ntp_s, ntp_f) == (0xE1234567, 0x89ABCDEF)
        assert rtp_ts == (VIEWERS[v].first_ts + 4500) & 0xFFFFFFFF
        assert (count, octets) == (2, sum(map(len, payloads)))
    assert rig.take(rig.viewers[2]) == []
    # SRs for the RTX stream or an unknown SSRC are not relayed.
    rig.feed(make_rtcp_sr(Room.VIDEO_RTX_SSRC))
    rig.feed(make_rtcp_sr(0x9999))
    assert [rig.take(s) for s in rig.viewers] == [[], [], []]
    assert drops(rig.engine) == {}


# The publisher's SR in make_rtcp_sr's default NTP time, and its middle 32 bits: what LSR echoes.
NTP_SECONDS, NTP_FRACTION, NTP_MIDDLE = 0xE1234567, 0x89ABCDEF, 0x456789AB


def _started_room(rig: Rig) -> Room:
    room = make_room(rig)
    rig.feed(room.video_packet(1, keyframe=True))
    rig.feed(room.audio_packet(1))
    for sock in rig.viewers:
        rig.take(sock)
    return room


def _sender_report(rig: Rig, ssrc: int = Room.VIDEO_SSRC, **ntp: int) -> tuple[float, float]:
    """The publisher's SR, relayed to the viewers; the engine's clock around it."""
    before = time.monotonic()
    rig.feed(make_rtcp_sr(ssrc, **ntp))
    return before, time.monotonic()


def test_round_trip_from_a_receiver_report_echoing_our_sender_report(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = _started_room(rig)
    e = rig.engine
    assert e.consumer_stats(room.video_consumers[0])["rtt_s"] == 0.0 and e.transport_rtt(room.viewers[0]) == -1.0
    sent = _sender_report(rig)
    assert [rtcp(d)[0]["pt"] for d in rig.take(rig.viewers[0])] == [200]
    time.sleep(0.05)
    dlsr = 1311  # 20 ms the viewer held the SR
    start = time.monotonic()
    rig.feed(make_rtcp_rr(0xA000, report_blocks=[make_report_block(video_ssrc(0), 32, NTP_MIDDLE, dlsr)]),
             rig.viewers[0])
    end = time.monotonic()
    stats = e.consumer_stats(room.video_consumers[0])
    # RFC 3550 §6.4.1: arrival - LSR's send time - DLSR, on the engine's clock.
    assert start - sent[1] - dlsr / 65536 - 1e-6 <= stats["rtt_s"] <= end - sent[0] - dlsr / 65536 + 1e-6
    assert stats["rtt_s"] > 0.02 and stats["fraction_lost"] == 32 / 256
    assert e.transport_rtt(room.viewers[0]) == stats["rtt_s"]
    # Not measured: the other viewers, and the audio consumer (no SR relayed for it).
    assert e.transport_rtt(room.viewers[1]) == -1.0
    assert e.consumer_stats(room.audio_consumers[0])["rtt_s"] == 0.0
    assert drops(e) == {}


def test_round_trip_from_the_report_blocks_of_a_viewers_sender_report(make_rig: Callable[..., Rig]) -> None:
    # A viewer that also sends (its own camera) reports in its SRs, not in RRs.
    rig = make_rig()
    room = _started_room(rig)
    e = rig.engine
    sent = _sender_report(rig, Room.AUDIO_SSRC)
    time.sleep(0.01)
    sr = make_rtcp_sr(0xB000, report_blocks=[make_report_block(0x9999, 1, NTP_MIDDLE),
                                             make_report_block(audio_ssrc(1), 64, NTP_MIDDLE, 0)])
    rig.feed(sr, rig.viewers[1])
    end = time.monotonic()
    stats = e.consumer_stats(room.audio_consumers[1])
    assert 0.01 <= stats["rtt_s"] <= end - sent[0] + 1e-6
    assert (stats["fraction_lost"], stats["reports"]) == (0.25, 1)
    assert e.transport_rtt(room.viewers[1]) == stats["rtt_s"]


def test_round_trip_only_from_a_report_on_the_last_sender_report(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = _started_room(rig)
    e = rig.engine
    video = room.video_consumers[0]

    def report(*blocks: bytes, count: int | None = None) -> None:
        rr = make_rtcp_rr(0xA000, report_blocks=blocks)
        if count is not None:
            rr = bytes([0x80 | count]) + rr[1:]
        rig.feed(rr, rig.viewers[0])

    report(make_report_block(video_ssrc(0), 0, NTP_MIDDLE, 0))  # before any SR
    _sender_report(rig)
    _sender_report(rig, ntp_seconds=NTP_SECONDS + 1)  # the last one: its middle is NTP_MIDDLE + 0x10000
    report(make_report_block(video_ssrc(0), 0, NTP_MIDDLE, 0))  # echoes the one before
    report(make_report_block(video_ssrc(0), 0, 0, 0))  # LSR 0: the viewer has no SR yet
    report(make_report_block(video_ssrc(0), 0, NTP_MIDDLE + 0x10000, 65536))  # held 1 s: negative
    report(make_report_block(video_ssrc(0), 0, NTP_MIDDLE + 0x10000, 0), count=0)  # not a block of the RR
    rig.feed(make_rtcp_rr(0xB000, report_blocks=[make_report_block(video_ssrc(0), 0, NTP_MIDDLE + 0x10000)]),
             rig.viewers[1])  # names viewer 0's SSRC from another transport
    assert e.consumer_stats(video)["rtt_s"] == 0.0 and e.transport_rtt(room.viewers[0]) == -1.0
    assert e.consumer_stats(video)["reports"] == 4
    report(make_report_block(video_ssrc(0), 0, NTP_MIDDLE + 0x10000, 0))
    assert 0 < e.consumer_stats(video)["rtt_s"] < 1.0
    assert drops(e) == {}


def test_transport_round_trip_is_the_newest_of_its_consumers(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = _started_room(rig)
    e = rig.engine
    _sender_report(rig)
    _sender_report(rig, Room.AUDIO_SSRC)
    time.sleep(0.03)
    rig.feed(make_rtcp_rr(0xA000, report_blocks=[make_report_block(video_ssrc(0), 0, NTP_MIDDLE, 0)]), rig.viewers[0])
    video_rtt = e.transport_rtt(room.viewers[0])
    rig.feed(make_rtcp_rr(0xA000, report_blocks=[make_report_block(audio_ssrc(0), 0, NTP_MIDDLE, 1311)]),
             rig.viewers[0])
    audio_rtt = e.consumer_stats(room.audio_consumers[0])["rtt_s"]
    assert audio_rtt < video_rtt and e.transport_rtt(room.viewers[0]) == audio_rtt
    assert e.consumer_stats(room.video_consumers[0])["rtt_s"] == video_rtt
    e.remove_consumer(room.audio_consumers[0])  # a measurement of the path, which outlives it
    assert e.transport_rtt(room.viewers[0]) == audio_rtt


def test_receiver_reports_loss_jitter_lsr_and_remb(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=0)
    e = rig.engine
    t = rig.transport(rig.publisher, rtcp_ssrc=0xFEED)
    # At 10 Hz, timestamps 9 s apart dominate the jitter; arrival times add 0.1 unit per 10 ms.
    video = e.add_producer(t, video=True, codec=VP8, payload_type=96, clock_rate=10, ssrc=0x1111)
    audio = e.add_producer(t, video=False, codec=OPUS, payload_type=111, clock_rate=10, ssrc=0x2222)
    e.send_receiver_reports(t, 4_000_000)
    assert rig.take(rig.publisher) == []  # nothing received yet: no report
    seqs = [65530, 65531, 65532, 65535, 0, 1, 2, 3]  # 65533, 65534 lost; the sequence wraps
    for i, seq in enumerate(seqs):
        rig.feed(make_rtp(seq=seq, ts=90 * (i % 2), ssrc=0x1111, pt=96))
    rig.feed(make_rtp(seq=9, ts=0, ssrc=0x2222, pt=111))
    e.send_receiver_reports(t, 4_000_000)
    [datagram] = rig.take(rig.publisher)
    rr, remb = rtcp(datagram)
    assert (rr["pt"], rr["count"]) == (201, 2)
    assert struct.unpack_from("!I", rr["body"])[0] == 0xFEED
    block, audio_block = report_blocks(rr["body"], 2)
    jitter = 90 * (1 - (15 / 16) ** 7)  # RFC 3550 A.8 with |D| = 90 seven times: 32.7
    assert abs(block.pop("jitter") - jitter) <= 2
    assert block == {"ssrc": 0x1111, "fraction_lost": (2 << 8) // 10, "cumulative_lost": 2,
                     "highest": 65536 + 3, "lsr": 0, "dlsr": 0}
    assert audio_block == {"ssrc": 0x2222, "fraction_lost": 0, "cumulative_lost": 0, "highest": 9,
                           "jitter": 0, "lsr": 0, "dlsr": 0}
    assert (remb["pt"], remb["count"]) == (206, 15)
    sender, media, name, count, exp_mantissa, mantissa_low, ssrc = struct.unpack("!II4sBBHI", remb["body"])
    assert (sender, media, name, count, ssrc) == (0xFEED, 0, b"REMB", 1, 0x1111)  # video SSRCs only
    exponent, mantissa = exp_mantissa >> 2, ((exp_mantissa & 3) << 16) | mantissa_low
    assert mantissa < 1 << 18 and mantissa << exponent == 4_000_000
    # After an SR: LSR is its NTP middle; DLSR the time since, in 1/65536 s.
    rig.feed(make_rtcp_sr(0x1111, ntp_seconds=0x0000ABCD, ntp_fraction=0x12345678))
    for seq in (4, 6, 7):  # 5 lost
        rig.feed(make_rtp(seq=seq, ts=0, ssrc=0x1111, pt=96))
    before = time.monotonic()
    e.send_receiver_reports(t)  # no REMB asked
    elapsed = time.monotonic() - before
    [datagram] = rig.take(rig.publisher)
    [rr] = rtcp(datagram)
    block = report_blocks(rr["body"], 2)[0]
    assert (block["fraction_lost"], block["cumulative_lost"], block["highest"]) == ((1 << 8) // 4, 3, 65536 + 7)
    assert block["lsr"] == 0xABCD1234
    assert 0 <= block["dlsr"] < 65536 * (1 + elapsed)
    # Nothing new: a zero fraction, the same totals.
    e.send_receiver_reports(t)
    block = report_blocks(rtcp(rig.take(rig.publisher)[0])[0]["body"], 2)[0]
    assert (block["fraction_lost"], block["cumulative_lost"]) == (0, 3)
    stats = e.producer_stats(video)
    assert (stats["received"], stats["lost"]) == (11, 3)
    assert abs(stats["jitter"] - jitter) <= 2
    assert stats["jitter_seconds"] == stats["jitter"] / 10
    assert e.producer_stats(audio)["received"] == 1


def test_remb_only_with_video_producers(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=0)
    e = rig.engine
    t = rig.transport(rig.publisher)
    e.add_producer(t, video=False, codec=OPUS, payload_type=111, clock_rate=48000, ssrc=0x2222)
    rig.feed(make_rtp(seq=1, ssrc=0x2222, pt=111))
    e.send_receiver_reports(t, 1_000_000)
    assert [p["pt"] for p in rtcp(rig.take(rig.publisher)[0])] == [201]


@pytest.mark.parametrize("mantissa,exponent,expected", [
    (250_000, 4, 4_000_000),
    (0x3FFFF, 14, 0x3FFFF << 14),       # the largest that fits 32 bits
    (0x3FFFF, 15, 0xFFFFFFFF),          # saturates at 32 bits
    (2, 63, 0xFFFFFFFF),                # 2 << 63 does not fit 64 bits either
    (1, 32, 0xFFFFFFFF),
    (0, 63, 0),
    (1, 0, 1),
])
def test_remb_from_a_viewer(make_rig: Callable[..., Rig], mantissa: int, exponent: int, expected: int) -> None:
    rig = make_rig()
    room = make_room(rig)
    rig.feed(make_rtcp_rr(0xA000) + make_rtcp_remb(0xA000, mantissa, exponent, [video_ssrc(0)]), rig.viewers[0])
    assert rig.engine.transport_remb_bps(room.viewers[0]) == expected
    assert rig.engine.transport_remb_bps(room.viewers[1]) == 0
    assert drops(rig.engine) == {}


# =====================================================================================
# Pacer
# =====================================================================================


def _paced_rig(make_rig: Callable[..., Rig], burst: float) -> tuple[Rig, Room]:
    # No refill while the burst arrives (rate 0): how many leave at once is exact.
    rig = make_rig(viewers=1, pacer_enabled=True, pacer_rate_bps=0, pacer_burst_bytes=burst)
    return rig, make_room(rig)


def test_pacer_spreads_a_keyframe_burst_in_order(make_rig: Callable[..., Rig]) -> None:
    rig, room = _paced_rig(make_rig, burst=3000)
    e = rig.engine
    frame = bytes(1000)
    for i in range(10):
        rig.feed(room.video_packet(300 + i, keyframe=i == 0, payload=make_vp8_payload(i == 0, frame=frame)))
    rig.feed(room.audio_packet(1))  # audio is never paced
    first = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    # ~1,040-byte packets against 3,000 bytes of tokens: three leave, seven wait.
    assert [p["ssrc"] for p in first] == [video_ssrc(0)] * 3 + [audio_ssrc(0)]
    assert e.consumer_stats(room.video_consumers[0])["paced"] == 7
    assert e.tick() <= 0.005  # it wants to run again soon
    assert rig.take(rig.viewers[0]) == []  # no time passed at rate 0
    e.pacer_rate_bytes_s = 1e12  # now every tick refills the bucket to its burst size
    rig.feed(room.video_packet(310))  # a newcomer waits behind the queue
    assert rig.take(rig.viewers[0]) == []
    later = []
    for expected in (3, 3, 2):
        e.tick()
        got = rig.take(rig.viewers[0])
        assert len(got) == expected
        later += got
    assert e.consumer_stats(room.video_consumers[0])["paced"] == 0
    assert e.tick() == 0.05
    seqs = [p["seq"] for p in first[:3]] + [read_rtp(d)["seq"] for d in later]
    assert seqs == [(VIEWERS[0].first_seq + i) & 0xFFFF for i in range(11)]
    assert e.consumer_stats(room.video_consumers[0])["packets_sent"] == 11
    assert drops(e) == {}


def test_a_transport_paced_at_its_own_rate(make_rig: Callable[..., Rig]) -> None:
    # The engine's own rate is unlimited; viewer 0's link is set to 400 kbit/s (50 kB/s,
    # bursts of 2,400 bytes), as the shard does from that viewer's bandwidth estimate.
    rig = make_rig(pacer_enabled=True, pacer_rate_bps=1e15, pacer_burst_bytes=100_000)
    room = make_room(rig)
    e = rig.engine
    e.set_transport_pacing(room.viewers[0], 400_000)
    frame = bytes(1000)
    for i in range(12):
        rig.feed(room.video_packet(300 + i, keyframe=i == 0, payload=make_vp8_payload(i == 0, frame=frame)))
    # Viewer 0 gets its burst (two ~1,040-byte packets and the one that overdraws it), the rest
    # queue; the others, at the engine's rate, get all twelve at once.
    received = rig.take(rig.viewers[0])
    assert len(received) == 3
    assert [len(rig.take(s)) for s in rig.viewers[1:]] == [12, 12]
    assert e.consumer_stats(room.video_consumers[0])["paced"] == 9
    start = time.monotonic()
    while len(received) < 12 and time.monotonic() - start < 2:
        e.tick()
        received += rig.take(rig.viewers[0])
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    assert [read_rtp(d)["seq"] for d in received] == [(VIEWERS[0].first_seq + i) & 0xFFFF for i in range(12)]
    assert elapsed >= 0.1  # 9 x ~1,040 bytes at 50 kB/s: ~0.19 s, spread rather than at once
    # Back to the engine's rate: nothing waits.
    e.set_transport_pacing(room.viewers[0], 0)
    e.tick()
    rig.feed(room.video_packet(312))
    received += rig.take(rig.viewers[0])
    assert len(received) == 13
    assert e.transport_sent_bytes(room.viewers[0]) == sum(map(len, received))  # plain RTP: as sent
    assert drops(e) == {}


def test_pacer_queue_overflow_drops_the_oldest(make_rig: Callable[..., Rig]) -> None:
    rig, room = _paced_rig(make_rig, burst=1)
    e = rig.engine
    for i in range(1100):
        rig.feed(room.video_packet(i, keyframe=i == 0))
    assert len(rig.take(rig.viewers[0])) == 1
    assert drops(e) == {"pacer_queue_full": 1100 - 1 - 1024}
    assert e.consumer_stats(room.video_consumers[0])["paced"] == 1024
    e.pacer_rate_bytes_s, e.pacer_burst_bytes = 1e12, 3000  # some 50 packets a tick
    got: list[int] = []
    for _ in range(100):
        e.tick()
        got += [read_rtp(d)["seq"] for d in rig.take(rig.viewers[0])]
        if not e.consumer_stats(room.video_consumers[0])["paced"]:
            break
    assert got == [(VIEWERS[0].first_seq + i) & 0xFFFF for i in range(1100 - 1024, 1100)]


def test_pacer_drops_what_the_history_lost(make_rig: Callable[..., Rig]) -> None:
    rig, room = _paced_rig(make_rig, burst=1)
    e = rig.engine
    rig.feed(room.video_packet(0, keyframe=True))
    rig.feed(room.video_packet(1))
    # Overwrites 1 in the history while 1 waits. A keyframe, as after any outage that
    # long: the viewer's numbering then closes the gap.
    rig.feed(room.video_packet(1 + 1024, keyframe=True))
    e.pacer_rate_bytes_s = e.pacer_burst_bytes = 1e12
    e.tick()
    got = [read_rtp(d)["seq"] for d in rig.take(rig.viewers[0])]
    assert got == [VIEWERS[0].first_seq, (VIEWERS[0].first_seq + 1) & 0xFFFF]
    assert drops(e) == {"pacer_expired": 1}


# =====================================================================================
# Lifecycle
# =====================================================================================


def test_remove_consumer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    _forward_some(rig, room)
    e.remove_consumer(room.video_consumers[0])
    with pytest.raises(KeyError):
        e.consumer_stats(room.video_consumers[0])
    with pytest.raises(KeyError):
        e.remove_consumer(room.video_consumers[0])
    rig.feed(room.video_packet(105))
    rig.feed(make_rtcp_nack(0xA000, video_ssrc(0), [(VIEWERS[0].first_seq, 0)]), rig.viewers[0])
    rig.feed(make_rtcp_pli(0xA000, video_ssrc(0)), rig.viewers[0])
    assert rig.take(rig.viewers[0]) == []
    assert [len(rig.take(s)) for s in rig.viewers[1:]] == [1, 1]
    assert e.producer_stats(room.video)["consumers"] == 2
    assert e.totals()["nacks_received"] == e.totals()["keyframe_requests_received"] == 0
    # The slot is reused, and the new consumer waits for a keyframe of its own.
    again = e.add_consumer(room.viewers[0], room.video, payload_type=100, ssrc=0x7777, first_seq=9)
    assert again == room.video_consumers[0]
    rig.feed(room.video_packet(106))
    rig.feed(room.video_packet(107, keyframe=True))
    assert [read_rtp(d)["seq"] for d in rig.take(rig.viewers[0])] == [9]
    assert drops(e) == {"waiting_for_keyframe": 1}


def test_remove_producer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    _forward_some(rig, room)
    e.remove_producer(room.video)
    for call in (lambda: e.producer_stats(room.video), lambda: e.request_keyframe(room.video),
                 lambda: e.remove_producer(room.video), lambda: e.producer_ssrc(room.video),
                 lambda: e.add_consumer(room.viewers[0], room.video, payload_type=96, ssrc=1)):
        with pytest.raises(KeyError):
            call()
    rig.feed(room.video_packet(105))
    assert drops(e) == {"rtp_unknown_ssrc": 1}
    # Its consumers stay (Python sends their BYE), asking for nothing.
    assert e.consumer_stats(room.video_consumers[0])["packets_sent"] == 5
    rig.feed(make_rtcp_nack(0xA000, video_ssrc(0), [(VIEWERS[0].first_seq, 0)]), rig.viewers[0])
    rig.feed(make_rtcp_pli(0xA000, video_ssrc(0)), rig.viewers[0])
    assert [rig.take(s) for s in rig.sockets()] == [[]] * 5
    e.remove_consumer(room.video_consumers[0])
    bye = struct.pack("!BBHI", 0x81, 203, 1, video_ssrc(1))
    e.send_rtcp(room.viewers[1], bye)
    assert rig.take(rig.viewers[1]) == [bye]
    # Audio still flows.
    rig.feed(room.audio_packet(1))
    assert all(len(rig.take(s)) == 1 for s in rig.viewers)


def test_remove_transport(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    _forward_some(rig, room)
    e.remove_transport(room.viewers[0])
    for call in (lambda: e.consumer_stats(room.video_consumers[0]),
                 lambda: e.consumer_stats(room.audio_consumers[0]),
                 lambda: e.transport_last_seen(room.viewers[0]),
                 lambda: e.send_receiver_reports(room.viewers[0]),
                 lambda: e.set_transport_address(room.viewers[0], "127.0.0.1", 1)):
        with pytest.raises(KeyError):
            call()
    rig.feed(make_rtcp_pli(0xA000, video_ssrc(0)), rig.viewers[0])
    assert drops(e) == {"unknown_address": 1}
    e.remove_transport(room.publisher)
    with pytest.raises(KeyError):
        e.producer_stats(room.audio)
    rig.feed(room.audio_packet(1))
    assert drops(e) == {"unknown_address": 2}
    assert [rig.take(s) for s in rig.sockets()] == [[]] * 5
    # Slots are reused, lowest first.
    assert e.add_transport(secure=False) == min(room.publisher, room.viewers[0])


def test_an_address_belongs_to_the_newest_transport(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    _forward_some(rig, room)
    with pytest.raises(ValueError):
        e.set_transport_address(room.viewers[0], "not-an-address", 1)
    with pytest.raises(KeyError):
        e.set_transport_address(99, "127.0.0.1", 1)
    rig.feed(room.audio_packet(1))  # a failed update left viewer 0 as it was
    assert [len(rig.take(s)) for s in rig.viewers] == [1, 1, 1]
    # Viewer 1's transport moves to viewer 0's address (a NAT rebinding, say).
    e.set_transport_address(room.viewers[1], *rig.viewers[0].getsockname())
    rig.feed(room.audio_packet(2))
    got = [read_rtp(d)["ssrc"] for d in rig.take(rig.viewers[0])]
    assert got == [audio_ssrc(1)]  # viewer 0's transport lost the address
    assert rig.take(rig.viewers[1]) == []
    rig.feed(make_rtcp_pli(0xB000, video_ssrc(1)), rig.viewers[0])  # now means viewer 1
    assert e.totals()["keyframe_requests_received"] == 1


def test_last_seen(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    t0 = e.transport_last_seen(room.publisher)
    assert abs(t0 - time.monotonic()) < 5  # the same clock as the event loop's
    time.sleep(0.002)
    rig.feed(room.audio_packet(1))
    t1 = e.transport_last_seen(room.publisher)
    assert t1 > t0
    time.sleep(0.002)
    rig.feed(make_rtcp_rr(1), rig.viewers[0])
    assert e.transport_last_seen(room.viewers[0]) > t0
    assert e.transport_last_seen(room.publisher) == t1
    time.sleep(0.002)
    e.touch_transport(room.publisher)
    assert e.transport_last_seen(room.publisher) > t1


def test_received_counts_authenticated_rtp_and_rtcp(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    assert e.transport_received(room.publisher) == 0
    assert e.transport_received(room.viewers[0]) == 0
    rig.feed(room.audio_packet(1))
    rig.feed(room.audio_packet(2))
    rig.feed(make_rtcp_rr(1), rig.viewers[0])
    assert e.transport_received(room.publisher) == 2
    assert e.transport_received(room.viewers[0]) == 1
    e.touch_transport(room.viewers[1])  # a STUN check is not media
    assert e.transport_received(room.viewers[1]) == 0


# =====================================================================================
# Classification, the slow path, drops
# =====================================================================================


def test_stun_and_dtls_go_to_the_slow_path(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    make_room(rig)
    stun, dtls = make_stun_binding_request(), make_dtls_record()
    rig.feed(stun, rig.stranger)
    rig.feed(dtls, rig.publisher)
    edges = [bytes([b]) + b"edge" for b in (0, 3, 20, 63)]
    for d in edges:
        rig.feed(d)
    # Through the socket, as the event loop would deliver them.
    rig.stranger.sendto(stun, rig.sock.getsockname())
    rig.publisher.sendto(dtls, rig.sock.getsockname())
    deadline = time.monotonic() + 5
    while len(rig.slow_path) < 8 and time.monotonic() < deadline:
        _wait_readable(rig.sock)
        rig.engine.on_readable()
    assert rig.slow_path == (
        [(stun, rig.stranger.getsockname()), (dtls, rig.publisher.getsockname())]
        + [(d, rig.publisher.getsockname()) for d in edges]
        + [(stun, rig.stranger.getsockname()), (dtls, rig.publisher.getsockname())])
    assert drops(rig.engine) == {}


def test_other_first_bytes_are_unknown_protocols(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    make_room(rig)
    for b in (4, 19, 64, 127, 192, 255):
        rig.feed(bytes([b]) + b"x" * 20)
    assert drops(rig.engine) == {"unknown_protocol": 6}
    assert rig.slow_path == []
    with pytest.raises(ValueError):
        rig.engine.feed(b"\x80", "nowhere", 1)


def _wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 5)[0], "nothing arrived"


def test_on_readable_reads_and_forwards_batches(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    packets = [room.video_packet(i, ts=i, keyframe=i == 0) for i in range(150)]  # > 2 batches of 64
    for p in packets:
        rig.publisher.sendto(p, rig.sock.getsockname())
    deadline = time.monotonic() + 5
    while rig.engine.totals()["packets_in"] < 150 and time.monotonic() < deadline:
        _wait_readable(rig.sock)
        rig.engine.on_readable()
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["seq"] for p in got] == [(VIEWERS[0].first_seq + i) & 0xFFFF for i in range(150)]
    assert [p["payload"] for p in got] == [read_rtp(p)["payload"] for p in packets]
    rig.engine.on_readable()  # nothing to read: returns at once


def test_ipv6_peers(engine_cls: type) -> None:
    sock, publisher, viewer = udp("::1"), udp("::1"), udp("::1")
    slow_path: list = []
    try:
        e = engine_cls(sock.fileno(), lambda data, addr: slow_path.append((data, addr)), pacer_enabled=False)
        tp = e.add_transport(secure=False)
        e.set_transport_address(tp, "0:0:0:0:0:0:0:1", publisher.getsockname()[1])  # any spelling
        p = e.add_producer(tp, video=False, codec=OPUS, payload_type=111, clock_rate=48000, ssrc=7)
        tv = e.add_transport(secure=False)
        e.set_transport_address(tv, "::1", viewer.getsockname()[1])
        e.add_consumer(tv, p, payload_type=109, ssrc=8, first_seq=5)
        publisher.sendto(make_rtp(seq=1, ssrc=7, pt=111, payload=b"opus"), sock.getsockname())
        publisher.sendto(make_stun_binding_request(), sock.getsockname())
        deadline = time.monotonic() + 5
        while not slow_path and time.monotonic() < deadline:
            _wait_readable(sock)
            e.on_readable()
        assert slow_path == [(make_stun_binding_request(), ("::1", publisher.getsockname()[1]))]
        assert select.select([viewer], [], [], 5)[0]
        got = read_rtp(viewer.recv(2048))
        assert (got["seq"], got["pt"], got["ssrc"], got["payload"]) == (5, 109, 8, b"opus")
        e.feed(make_rtp(seq=2, ssrc=7, pt=111), "::2", 9)
        assert e.drop_counts() == {"unknown_address": 1}
    finally:
        for s in (sock, publisher, viewer):
            s.close()


@dataclass
class DropCase:
    reason: str
    count: int
    run: Callable[[Rig, Room], None]
    secure: bool = False


KEY_BYTES = {Policy.SRTP_PROFILE_AES128_CM_SHA1_80: 30, Policy.SRTP_PROFILE_AEAD_AES_128_GCM: 28}


def _srtp_pair(profile: int = Policy.SRTP_PROFILE_AES128_CM_SHA1_80, *,
               allow_repeat_tx: bool = True) -> tuple[Session, Session, Session, Session]:
    """(engine rx, peer tx, engine tx, peer rx): both directions of one association."""
    key_in, key_out = os.urandom(KEY_BYTES[profile]), os.urandom(KEY_BYTES[profile])

    def session(key: bytes, direction: int, repeat: bool = True) -> Session:
        policy = Policy(key=key, ssrc_type=direction, srtp_profile=profile)
        policy.allow_repeat_tx = repeat
        return Session(policy)

    return (session(key_in, Policy.SSRC_ANY_INBOUND), session(key_in, Policy.SSRC_ANY_OUTBOUND),
            session(key_out, Policy.SSRC_ANY_OUTBOUND, allow_repeat_tx), session(key_out, Policy.SSRC_ANY_INBOUND))


def _secure_viewer(rig: Rig, room: Room, *, allow_repeat_tx: bool = True) -> tuple[int, int, Session, Session]:
    e = rig.engine
    t = e.add_transport(secure=True, rtcp_ssrc=0xD000)
    e.set_transport_address(t, *rig.stranger.getsockname())
    engine_rx, peer_tx, engine_tx, peer_rx = _srtp_pair(allow_repeat_tx=allow_repeat_tx)
    e.set_transport_srtp(t, engine_rx, engine_tx)
    c = e.add_consumer(t, room.video, payload_type=96, ssrc=0xD001)
    return t, c, peer_tx, peer_rx


def _srtp_protect_fails(rig: Rig, room: Room) -> None:
    # Without RTX a NACK resends the same sequence number; a sender that forbids repeats refuses.
    _, _, peer_tx, _ = _secure_viewer(rig, room, allow_repeat_tx=False)
    rig.feed(room.video_packet(1, keyframe=True))
    rig.feed(peer_tx.protect_rtcp(make_rtcp_nack(1, 0xD001, [(0, 0)])), rig.stranger)


def _send_fails(rig: Rig, room: Room) -> None:
    rig.engine.set_transport_address(room.viewers[0], "127.0.0.1", 0)  # port 0: EINVAL
    rig.feed(room.audio_packet(1))


def _pacer_case(reason: str) -> Callable[[Rig, Room], None]:
    # For each of the three video consumers: one packet leaves, the rest wait (no refill).
    def run(rig: Rig, room: Room) -> None:
        e = rig.engine
        e.pacer_enabled, e.pacer_rate_bytes_s, e.pacer_burst_bytes = True, 0.0, 1.0
        rig.feed(room.video_packet(0, keyframe=True))
        if reason == "pacer_queue_full":
            for i in range(1, 1026):
                rig.feed(room.video_packet(i))
        else:
            rig.feed(room.video_packet(1))
            rig.feed(room.video_packet(1 + 1024, keyframe=True))  # overwrites 1 in the history
            e.pacer_rate_bytes_s = e.pacer_burst_bytes = 1e12
            e.tick()
    return run


def _switch_under_spent_pacer(rig: Rig, room: Room, packets: int) -> None:
    """Viewer 0 alone, its pacer never refilling, moved to a second layer after
    ``packets`` of the first; that layer's keyframe makes the switch."""
    e = rig.engine
    e.pacer_enabled, e.pacer_rate_bytes_s, e.pacer_burst_bytes = True, 0.0, 1.0
    other = e.add_producer(room.publisher, video=True, codec=VP8, payload_type=Room.VIDEO_PT, clock_rate=90000,
                           ssrc=0x7777, mid=b"0")
    for v in (1, 2):
        e.remove_consumer(room.video_consumers[v])
    for i in range(packets):
        rig.feed(room.video_packet(i, keyframe=i == 0))
    e.set_consumer_producer(room.video_consumers[0], other)
    rig.feed(make_rtp(seq=9, ssrc=0x7777, pt=Room.VIDEO_PT, payload=make_vp8_payload(True)))


def _pacer_superseded(rig: Rig, room: Room) -> None:
    # Two packets of the old layer wait in the pacer when the new layer's keyframe comes.
    _switch_under_spent_pacer(rig, room, 3)


def _nack_over_budget(rig: Rig, room: Room) -> None:
    # A NACK for a packet of the layer before a switch, with the viewer's tokens spent.
    _switch_under_spent_pacer(rig, room, 1)
    rig.feed(make_rtcp_nack(1, video_ssrc(0), [(VIEWERS[0].first_seq, 0)]), rig.viewers[0])


def _held(rig: Rig, room: Room) -> None:
    """Viewer 0 alone, moved to a second layer with its current one held."""
    e = rig.engine
    other = e.add_producer(room.publisher, video=True, codec=VP8, payload_type=Room.VIDEO_PT, clock_rate=90000,
                           ssrc=0x7777, mid=b"0")
    for v in (1, 2):
        e.remove_consumer(room.video_consumers[v])
    rig.feed(room.video_packet(0, keyframe=True))
    e.set_consumer_producer(room.video_consumers[0], other, hold=True)


def _held_for_switch(rig: Rig, room: Room) -> None:
    # Two packets of the held layer, before the new one's keyframe: neither goes out.
    _held(rig, room)
    rig.feed(room.video_packet(1))
    rig.feed(room.video_packet(2))


def _nack_held(rig: Rig, room: Room) -> None:
    # A repair of what the held layer sent.
    _held(rig, room)
    rig.feed(make_rtcp_nack(1, video_ssrc(0), [(VIEWERS[0].first_seq, 0)]), rig.viewers[0])


DROP_CASES = [
    DropCase("unknown_address", 1, lambda rig, room: rig.feed(room.audio_packet(1), rig.stranger)),
    DropCase("srtp_not_ready", 2, lambda rig, room: [
        rig.engine.set_transport_address(rig.engine.add_transport(secure=True), *rig.stranger.getsockname()),
        rig.feed(room.audio_packet(1), rig.stranger), rig.feed(make_rtcp_rr(1), rig.stranger)]),
    DropCase("srtp_unprotect_failed", 1, lambda rig, room: [
        _secure_viewer(rig, room), rig.feed(room.audio_packet(1) + bytes(10), rig.stranger)]),
    DropCase("srtcp_unprotect_failed", 1, lambda rig, room: [
        _secure_viewer(rig, room), rig.feed(make_rtcp_rr(1) + bytes(14), rig.stranger)]),
    DropCase("rtp_truncated", 3, lambda rig, room: [
        rig.feed(room.audio_packet(1)[:11]), rig.feed(make_rtp(csrcs=(1, 2))[:19]),
        rig.feed(make_rtp(ssrc=Room.AUDIO_SSRC, pt=111, extensions={1: b"\x01"}, payload=b"")[:17])]),
    DropCase("rtp_bad_padding", 3, lambda rig, room: [
        rig.feed(bytes([0xA0]) + make_rtp(ssrc=Room.AUDIO_SSRC, pt=111, payload=b"abc\x00")[1:]),  # count 0
        rig.feed(bytes([0xA0]) + make_rtp(ssrc=Room.AUDIO_SSRC, pt=111, payload=b"ab\x09")[1:]),   # too many
        rig.feed(bytes([0xA0]) + make_rtp(ssrc=Room.AUDIO_SSRC, pt=111, payload=b"")[1:])]),       # none there
    DropCase("rtp_bad_extension", 2, lambda rig, room: [
        rig.feed(make_rtp(ssrc=Room.AUDIO_SSRC, pt=111, extension_body=bytes([0x13, 1, 2, 3]))),
        rig.feed(make_rtp(ssrc=Room.AUDIO_SSRC, pt=111, extension_profile=0x1000,
                          extension_body=bytes([0, 0, 0, 7])))]),
    DropCase("rtp_too_large", 1, lambda rig, room: rig.feed(room.audio_packet(1, payload=bytes(1800)))),
    DropCase("rtp_unknown_ssrc", 1, lambda rig, room: rig.feed(make_rtp(ssrc=0x4444, pt=111))),
    DropCase("rtp_unexpected_payload_type", 1, lambda rig, room: rig.feed(
        make_rtp(ssrc=Room.AUDIO_SSRC, pt=112))),
    DropCase("rtp_padding_only", 1, lambda rig, room: rig.feed(
        make_rtp(ssrc=Room.AUDIO_SSRC, pt=111, payload=b"", padding=8))),
    DropCase("rtx_no_osn", 1, lambda rig, room: rig.feed(
        make_rtp(ssrc=Room.VIDEO_RTX_SSRC, pt=97, payload=b"\x01"))),
    DropCase("rtcp_malformed", 4, lambda rig, room: [
        rig.feed(make_rtcp_rr(1)[:6], rig.viewers[0]),                               # shorter than its header
        rig.feed(make_rtcp_rr(1) + b"\x40\xc9\x00\x01abcd", rig.viewers[0]),         # version 1 inside
        rig.feed(struct.pack("!BBHI", 0x80, 201, 7, 1), rig.viewers[0]),              # length past the end
        rig.feed(make_rtcp_rr(1) + b"\x80\xcb", rig.viewers[0])]),                   # trailing bytes
    DropCase("waiting_for_keyframe", 3, lambda rig, room: rig.feed(room.video_packet(1))),
    DropCase("nack_not_in_buffer", 1, lambda rig, room: [
        rig.feed(room.video_packet(1, keyframe=True)),
        rig.feed(make_rtcp_nack(1, video_ssrc(1), [(VIEWERS[1].first_seq + 1, 0)]), rig.viewers[1])]),
    DropCase("srtp_protect_failed", 1, _srtp_protect_fails),
    DropCase("send_failed", 1, _send_fails),
    DropCase("pacer_queue_full", 3, _pacer_case("pacer_queue_full")),
    DropCase("pacer_expired", 3, _pacer_case("pacer_expired")),
    DropCase("nack_over_budget", 1, _nack_over_budget),
    DropCase("pacer_superseded", 2, _pacer_superseded),
    DropCase("held_for_switch", 2, _held_for_switch),
    DropCase("nack_held", 1, _nack_held),
    DropCase("red_malformed", 1, lambda rig, room: rig.feed(room.red_packet(1, 0, payload=bytes([0x80 | 111, 0, 0])))),
    # Audio closes a gap at once; a packet from inside it, late, has no number left.
    DropCase("late_before_switch", 3, lambda rig, room: [
        rig.feed(room.audio_packet(1)), rig.feed(room.audio_packet(200)), rig.feed(room.audio_packet(100))]),
    DropCase("unknown_protocol", 1, lambda rig, room: rig.feed(b"\x40hello")),
    DropCase("empty_datagram", 1, lambda rig, room: rig.feed(b"")),
]
# A datagram is RTP only if its first byte is 128..191, which is version 2 already.
UNREACHABLE = {"rtp_bad_version"}


def test_every_reachable_drop_reason_has_a_case() -> None:
    assert {c.reason for c in DROP_CASES} | UNREACHABLE == set(python_impl.DROP_REASONS)


@pytest.mark.parametrize("case", DROP_CASES, ids=[c.reason for c in DROP_CASES])
def test_drop_reason_counted(make_rig: Callable[..., Rig], case: DropCase) -> None:
    rig = make_rig()
    room = make_room(rig)
    case.run(rig, room)
    assert drops(rig.engine) == {case.reason: case.count}
    e = rig.engine
    e.count_drop(case.reason)  # Python's own drops share the counters
    assert drops(e) == {case.reason: case.count + 1}


def test_count_drop_rejects_unknown_reasons(make_rig: Callable[..., Rig]) -> None:
    with pytest.raises(ValueError):
        make_rig().engine.count_drop("no_such_reason")


# =====================================================================================
# SRTP
# =====================================================================================


def srtp(session: Session, function: str, data: bytes) -> bytes:
    """libsrtp through pylibsrtp's binding, without ``Session.protect``'s 1,500-byte limit."""
    from pylibsrtp._binding import ffi, lib
    buf = ffi.new("unsigned char[]", 4096)
    ffi.memmove(buf, data, len(data))
    length = ffi.new("int *", len(data))
    assert getattr(lib, function)(session._srtp[0], buf, length) == 0
    return ffi.buffer(buf, length[0])[:]


@pytest.mark.parametrize("profile", [Policy.SRTP_PROFILE_AES128_CM_SHA1_80, Policy.SRTP_PROFILE_AEAD_AES_128_GCM],
                         ids=["aes-cm", "gcm"])
def test_srtp_both_ways(make_rig: Callable[..., Rig], profile: int) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    pub_rx, pub_peer_tx, pub_tx, pub_peer_rx = _srtp_pair(profile)
    view_rx, view_peer_tx, view_tx, view_peer_rx = _srtp_pair(profile)
    tp = e.add_transport(secure=True, mid=MID_ID, rtcp_ssrc=0xFEED)
    e.set_transport_address(tp, *rig.publisher.getsockname())
    e.set_transport_srtp(tp, pub_rx, pub_tx)
    p = e.add_producer(tp, video=True, codec=VP8, payload_type=96, clock_rate=90000, ssrc=0x1111)
    tv = e.add_transport(secure=True)
    e.set_transport_address(tv, *rig.viewers[0].getsockname())
    e.set_transport_srtp(tv, view_rx, view_tx)
    e.add_consumer(tv, p, payload_type=98, ssrc=0x5555, mid=1, mid_value=b"m", first_seq=7, first_ts=70)
    # 1,700 bytes: larger than pylibsrtp's own 1,500-byte buffer, within the engine's limit.
    payloads = [make_vp8_payload(True, frame=bytes(1650)), make_vp8_payload(False)]
    for i, payload in enumerate(payloads):
        rig.feed(srtp(pub_peer_tx, "srtp_protect", make_rtp(seq=i, ts=i, ssrc=0x1111, pt=96, payload=payload,
                                                            extensions={MID_ID: b"0"})))
    got = [read_rtp(srtp(view_peer_rx, "srtp_unprotect", d)) for d in rig.take(rig.viewers[0])]
    assert [(p["seq"], p["ts"], p["pt"], p["ssrc"], p["elements"], p["payload"]) for p in got] == [
        (7 + i, 70 + i, 98, 0x5555, [(1, b"m")], payload) for i, payload in enumerate(payloads)]
    rig.feed(view_peer_tx.protect_rtcp(make_rtcp_pli(1, 0x5555)), rig.viewers[0])
    [pli] = rig.take(rig.publisher)
    assert plis([pub_peer_rx.unprotect_rtcp(pli)]) == [(0xFEED, 0x1111)]
    # Unauthenticated media is dropped; the plain bytes are not accepted either.
    rig.feed(make_rtp(seq=2, ssrc=0x1111, pt=96, payload=bytes(40)))
    rig.feed(make_rtcp_pli(1, 0x5555), rig.viewers[0])
    assert drops(e) == {"srtp_unprotect_failed": 1, "srtcp_unprotect_failed": 1}


# =====================================================================================
# Differential: both engines, the same random input, the same bytes out
# =====================================================================================

D_VIEWERS = [
    {"ids": {"mid": 9, "abs_send_time": 5, "audio_level": 6}, "rtx": True, "nack": True},
    # Everything it gets is numbered; it takes RED (its Opus PT is not the publisher's).
    {"ids": {"mid": 3, "transport_cc": 7}, "rtx": False, "nack": True, "red": True},
    {"ids": {}, "rtx": False, "nack": False},
]
# (kind, codec, pt, rtx pt, ssrc, rtx ssrc, mid): the H264 SSRCs are learnt from the mid.
D_PRODUCERS = [
    ("video", VP8, 96, 97, 0x1111, 0x1112, b"0"),
    ("audio", OPUS, 111, -1, 0x2222, None, b"1"),
    ("video", H264, 102, 103, None, None, b"2"),
]
D_LEARNT = {2: (0x3333, 0x3334)}
D_RED = {1: 63}  # the Opus producer also sends RED; viewer 1 takes it, the others get it stripped
# Publisher SR times the differential draws from, so viewers' reports can echo them (LSR).
D_NTP = [(0xE1234567, 0x89ABCDEF), (0xE1234568, 0x00010000)]
D_LSR = [((sec << 16) | (frac >> 16)) & 0xFFFFFFFF for sec, frac in D_NTP]


def d_consumer_ssrc(v: int, p: int, rtx: bool = False) -> int:
    return 0x100000 * (v + 1) + 0x100 * p + (1 if rtx else 0)


class DWorld:
    """One engine wired for the differential test, with its own sockets."""

    def __init__(self, engine_cls: type, options: dict, first_seqs: list[int]) -> None:
        self.rig = Rig(engine_cls, viewers=len(D_VIEWERS), **options)
        e = self.rig.engine
        self.publisher = self.rig.transport(self.rig.publisher, mid=MID_ID, abs_send_time=ABS_ID,
                                            audio_level=LEVEL_ID, rtcp_ssrc=0xFEED)
        self.producers = [
            e.add_producer(self.publisher, video=kind == "video", codec=codec, payload_type=pt,
                           clock_rate=90000 if kind == "video" else 48000, rtx_payload_type=rtx_pt,
                           ssrc=ssrc, rtx_ssrc=rtx_ssrc, mid=mid, red_payload_type=D_RED.get(p, -1))
            for p, (kind, codec, pt, rtx_pt, ssrc, rtx_ssrc, mid) in enumerate(D_PRODUCERS)]
        self.viewers = [self.rig.transport(s, rtcp_ssrc=0xA0 + v) for v, s in enumerate(self.rig.viewers)]
        self.consumers: dict[tuple[int, int], int] = {}
        for v, spec in enumerate(D_VIEWERS):
            for p, (kind, _, pt, rtx_pt, *_rest) in enumerate(D_PRODUCERS):
                rtx = spec["rtx"] and rtx_pt >= 0
                self.consumers[(v, p)] = e.add_consumer(
                    self.viewers[v], self.producers[p], payload_type=pt + 10 * v, ssrc=d_consumer_ssrc(v, p),
                    rtx_payload_type=rtx_pt + 10 * v if rtx else -1,
                    rtx_ssrc=d_consumer_ssrc(v, p, True) if rtx else None, nack=spec["nack"],
                    mid_value=f"m{p}".encode(), first_seq=first_seqs[v], first_ts=first_seqs[v] * 65537,
                    first_rtx_seq=first_seqs[v] ^ 0xFFFF,
                    red_payload_type=D_RED[p] + 1 if spec.get("red") and p in D_RED else -1, **spec["ids"])

    def apply(self, action: tuple) -> None:
        rig, e = self.rig, self.rig.engine
        kind = action[0]
        if kind == "feed":
            _, source, data = action
            rig.feed(data, rig.sockets()[source])
        elif kind == "tick":
            e.tick()
        elif kind == "reports":
            e.send_receiver_reports(self.publisher, action[1])
        elif kind == "request_keyframe":
            e.request_keyframe(self.producers[action[1]])
        elif kind == "interval":
            e.keyframe_min_interval_s = action[1]
        elif kind == "pacer_release":
            # Refill every bucket to its brim in one tick (any elapsed time at this rate
            # is plenty), then freeze the buckets again: what leaves does not depend on when.
            rate = e.pacer_rate_bytes_s
            e.pacer_rate_bytes_s = 1e18
            e.tick()
            e.pacer_rate_bytes_s = rate
        elif kind == "remove_consumer":
            key = (action[1], action[2])
            if key in self.consumers:
                e.remove_consumer(self.consumers.pop(key))

    def outcome(self) -> dict:
        e = self.rig.engine
        received = [self.rig.take(s) for s in self.rig.sockets()]
        received[0] = [_mask_report_timing(d) for d in received[0]]
        received[1] = [unstamped(d) for d in received[1]]  # viewer 0 asked for abs-send-time (id 5)
        producers = []
        for p in self.producers:
            stats = e.producer_stats(p)
            producers.append((e.producer_ssrc(p), {k: v for k, v in stats.items() if "jitter" not in k}))
        return {
            "received": received,
            "drops": e.drop_counts(),
            "totals": e.totals(),
            "producers": producers,
            # A round trip is each engine's own clock too: whether one was measured must match.
            "consumers": {k: {**stats, "rtt_s": stats["rtt_s"] > 0}
                          for k, stats in ((k, e.consumer_stats(c)) for k, c in self.consumers.items())},
            "rtt": [e.transport_rtt(t) >= 0 for t in self.viewers],
            "remb": [e.transport_remb_bps(t) for t in self.viewers],
            # Send times are each engine's own clock; arrivals and sizes must match.
            "twcc": [(e.transport_twcc(t), [(a, n) for _, a, n in e.take_twcc(t)]) for t in self.viewers],
            "slow_path": self.rig.slow_path,
        }


def _mask_report_timing(datagram: bytes) -> bytes:
    """Jitter and DLSR depend on arrival times, which differ between two runs: zero them."""
    if len(datagram) < 8 or datagram[1] != 201:
        return datagram
    data = bytearray(datagram)
    for i in range(data[0] & 0x1F):
        block = 8 + 24 * i
        data[block + 12:block + 16] = bytes(4)
        data[block + 20:block + 24] = bytes(4)
    return bytes(data)


@st.composite
def d_media(draw: st.DrawFn) -> bytes:
    p = draw(st.integers(0, len(D_PRODUCERS) - 1))
    kind, codec, pt, rtx_pt, ssrc, rtx_ssrc, mid = D_PRODUCERS[p]
    if ssrc is None:
        ssrc, rtx_ssrc = D_LEARNT[p]
    # Mostly near the opening; now and then after an outage (more than 64 missing).
    seq = (65500 + draw(st.integers(0, 90) | st.integers(150, 600))) & 0xFFFF
    ts = draw(st.sampled_from([0, 3000, 0xFFFFFF00, draw(st.integers(0, 0xFFFFFFFF))]))
    if codec == VP8:
        payload = make_vp8_payload(draw(st.booleans()), start=draw(st.booleans()),
                                   picture_id=draw(st.none() | st.integers(0, 0x7FFF)))
    elif codec == H264:
        payload = draw(st.sampled_from([make_h264_payload(5), make_h264_payload(1),
                                        make_h264_payload(stap_a=[7, 8, 5]), make_h264_payload(fu_a=5)]))
    elif p in D_RED and draw(st.booleans()):
        # RED: well formed (0-2 redundant blocks, one maybe of another codec), or cut anywhere.
        blocks = draw(st.lists(st.tuples(st.sampled_from([pt, pt, 13]), st.integers(0, 0x3FFF),
                                         st.binary(max_size=12)), max_size=2))
        payload = make_red_payload(draw(st.sampled_from([pt, pt, pt, 0])), b"\xfc" + draw(st.binary(max_size=20)),
                                   blocks)
        payload = payload[:draw(st.sampled_from([len(payload)] * 3 + [draw(st.integers(0, len(payload)))]))]
        pt = D_RED[p]
    else:
        payload = b"\xfc" + draw(st.binary(max_size=30))
    if pt not in D_RED.values():
        payload += draw(st.binary(max_size=12))
    extensions = draw(st.lists(st.sampled_from([
        (MID_ID, mid), (ABS_ID, b"\x01\x02\x03"), (LEVEL_ID, b"\x7f"), (TCC_ID, b"\x00\x01"),
        (MID_ID, b"zz"), (ABS_ID, b"\x01")]), max_size=4, unique=True))
    packet = make_rtp(seq=seq, ts=ts, ssrc=ssrc, pt=draw(st.sampled_from([pt, pt, pt, 0])),
                      marker=draw(st.booleans()), payload=payload, extensions=extensions or None,
                      csrcs=draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=2)),
                      padding=draw(st.sampled_from([0, 0, 1, 4, 17])))
    if rtx_ssrc is not None and draw(st.integers(0, 4)) == 0:
        packet = make_rtx(packet, seq=draw(st.integers(0, 0xFFFF)), ssrc=rtx_ssrc, pt=rtx_pt,
                          padding=draw(st.sampled_from([0, 3])))
    return packet


@st.composite
def d_rtcp_from_viewer(draw: st.DrawFn, first_seqs: list[int]) -> tuple[int, bytes]:
    v = draw(st.integers(0, len(D_VIEWERS) - 1))
    p = draw(st.integers(0, len(D_PRODUCERS) - 1))
    media = draw(st.sampled_from([d_consumer_ssrc(v, p)] * 4 + [d_consumer_ssrc((v + 1) % 3, p),
                                                              d_consumer_ssrc(v, p, True), 0x9999]))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        which = draw(st.sampled_from(["nack", "nack", "pli", "fir", "remb", "rr", "sr", "twcc"]))
        if which == "nack":  # mostly near the start, where the opening and the bursts put packets
            seqs = draw(st.lists(st.sampled_from([0, 0, 1, 2]) | st.integers(0, 12) | st.integers(-2, 95),
                                 min_size=1, max_size=6))
            parts.append(make_rtcp_nack(0xA0 + v, media, nack_items(first_seqs[v] + s for s in seqs)))
        elif which == "pli":
            parts.append(make_rtcp_pli(0xA0 + v, media))
        elif which == "fir":
            parts.append(make_rtcp_fir(0xA0 + v, [(media, draw(st.integers(0, 255)))]))
        elif which == "remb":
            parts.append(make_rtcp_remb(0xA0 + v, draw(st.integers(0, (1 << 18) - 1)), draw(st.integers(0, 63))))
        elif which == "rr":
            # Some echoing an SR the publisher may have sent (a round trip), some not.
            blocks = [make_report_block(draw(st.sampled_from([media, d_consumer_ssrc(v, p)])),
                                        draw(st.integers(0, 255)), draw(st.sampled_from(D_LSR + [0, 0x12345678])),
                                        draw(st.sampled_from([0, 0, 0xFFFFFF])))  # held 0 or 256 s: negative
                      for _ in range(draw(st.integers(0, 2)))]
            parts.append(make_rtcp_rr(0xA0 + v, report_blocks=blocks))
        elif which == "twcc":
            parts.append(_d_twcc(draw, 0xA0 + v, media))
        else:
            block = make_report_block(d_consumer_ssrc(v, p), 0, draw(st.sampled_from(D_LSR)), 0)
            parts.append(make_rtcp_sr(0xA0 + v, report_blocks=[block] * draw(st.integers(0, 1))))
    return 1 + v, b"".join(parts)


def _d_twcc(draw: st.DrawFn, sender: int, media: int) -> bytes:
    """Transport-wide feedback (two-bit status vectors) about the first numbers sent."""
    count = draw(st.integers(1, 30))
    symbols = draw(st.lists(st.sampled_from([0, 1, 1, 2]), min_size=count, max_size=count))
    body = struct.pack("!IIHHI", sender, media, draw(st.integers(0, 40)), count, draw(st.integers(0, 0xFFFFFFFF)))
    for i in range(0, count, 7):
        part = symbols[i:i + 7] + [0] * (7 - len(symbols[i:i + 7]))
        body += struct.pack("!H", 0xC000 | sum(sym << (12 - 2 * k) for k, sym in enumerate(part)))
    for sym in symbols:
        body += struct.pack("!B", draw(st.integers(0, 255))) if sym == 1 else \
            struct.pack("!h", draw(st.integers(-300, 3000))) if sym == 2 else b""
    body += bytes(-len(body) % 4)
    return struct.pack("!BBH", 0x8F, 205, len(body) // 4) + body


@st.composite
def d_rtcp_from_publisher(draw: st.DrawFn) -> bytes:
    ssrc = draw(st.sampled_from([0x1111, 0x1112, 0x2222, 0x3333, 0x7777]))
    ntp_seconds, ntp_fraction = draw(st.sampled_from(D_NTP) | st.tuples(st.integers(0, 0xFFFFFFFF),
                                                                        st.integers(0, 0xFFFFFFFF)))
    sr = make_rtcp_sr(ssrc, ntp_seconds=ntp_seconds, ntp_fraction=ntp_fraction,
                      rtp_ts=draw(st.integers(0, 0xFFFFFFFF)), packets=draw(st.integers(0, 99)))
    return sr + draw(st.sampled_from([b"", make_rtcp_rr(ssrc)]))


@st.composite
def d_mutated(draw: st.DrawFn, datagrams: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(datagrams))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "truncate", "append"]))
        if how == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif how == "truncate":
            del data[draw(st.integers(0, len(data))):]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@st.composite
def d_burst(draw: st.DrawFn) -> list[tuple]:
    """Consecutive packets of one producer: a frame, filling the history NACKs look in."""
    p = draw(st.sampled_from([0, 0, 1, 2]))
    kind, codec, pt, _, ssrc, _, mid = D_PRODUCERS[p]
    ssrc = ssrc or D_LEARNT[p][0]
    # Now and then after an outage (more than 64 missing), which a keyframe may end.
    start, count = draw(st.integers(1, 10) | st.integers(1, 40) | st.integers(100, 500)), draw(st.integers(1, 8))
    key = draw(st.booleans())

    red = p in D_RED and draw(st.booleans())
    if red:
        pt = D_RED[p]

    def payload(i: int) -> bytes:
        first = key and i == 0
        if red:  # the frame before as its redundant block, or (the last one) cut short
            packet = make_red_payload(D_PRODUCERS[p][2], b"\xfc" + bytes([i]), [(D_PRODUCERS[p][2], 960, b"\xfc")])
            return packet[:draw(st.sampled_from([len(packet)] * 5 + [4, 6]))] if i == count - 1 else packet
        return make_vp8_payload(first) if codec == VP8 else make_h264_payload(5 if first else 1) \
            if codec == H264 else b"\xfc"

    return [("feed", 0, make_rtp(seq=(65500 + start + i) & 0xFFFF, ts=3000 * start, ssrc=ssrc, pt=pt,
                                 marker=i == count - 1,
                                 payload=payload(i) + (b"" if red else bytes([i]) * draw(st.integers(0, 9))),
                                 extensions={MID_ID: mid, ABS_ID: b"\x00\x00\x01"},
                                 padding=draw(st.sampled_from([0, 0, 0, 2, 30]))))
            for i in range(count)]


@st.composite
def d_round_trip(draw: st.DrawFn) -> list[tuple]:
    """A publisher's SR relayed to the viewers, then a viewer's report echoing it (or not)."""
    p, v = draw(st.integers(0, len(D_PRODUCERS) - 1)), draw(st.integers(0, len(D_VIEWERS) - 1))
    ssrc = D_PRODUCERS[p][4] or D_LEARNT[p][0]
    n = draw(st.integers(0, len(D_NTP) - 1))
    sr = make_rtcp_sr(ssrc, ntp_seconds=D_NTP[n][0], ntp_fraction=D_NTP[n][1])
    block = make_report_block(d_consumer_ssrc(v, p), draw(st.integers(0, 255)),
                              draw(st.sampled_from([D_LSR[n]] * 3 + [D_LSR[1 - n], 0])),
                              draw(st.sampled_from([0, 0, 0xFFFFFF])))
    report = draw(st.sampled_from([make_rtcp_rr(0xA0 + v, report_blocks=[block]),
                                   make_rtcp_sr(0xA0 + v, report_blocks=[block])]))
    return [("feed", 0, sr), ("feed", 1 + v, report)]


@st.composite
def d_actions(draw: st.DrawFn, first_seqs: list[int]) -> list[tuple]:
    media = d_media()
    viewer_rtcp = d_rtcp_from_viewer(first_seqs)
    feed = st.one_of(
        media.map(lambda d: [("feed", 0, d)]),
        d_burst(),
        d_round_trip(),
        viewer_rtcp.map(lambda sd: [("feed", sd[0], sd[1])]),
        viewer_rtcp.map(lambda sd: [("feed", sd[0], sd[1])]),
        d_rtcp_from_publisher().map(lambda d: [("feed", 0, d)]),
        st.tuples(st.just("feed"), st.integers(0, 4),
                  d_mutated(st.one_of(media, viewer_rtcp.map(lambda sd: sd[1])))).map(lambda a: [a]),
        st.tuples(st.just("feed"), st.integers(0, 4), st.binary(max_size=40)).map(lambda a: [a]),
    )
    other = st.one_of(
        st.just(("tick",)),
        st.tuples(st.just("reports"), st.sampled_from([0, 300_000, 4_000_000, 0xFFFFFFFF])),
        st.tuples(st.just("request_keyframe"), st.integers(0, len(D_PRODUCERS) - 1)),
        st.tuples(st.just("interval"), st.sampled_from([0.0, 1000.0])),
        st.just(("pacer_release",)),
        st.tuples(st.just("remove_consumer"), st.integers(0, len(D_VIEWERS) - 1),
                  st.integers(0, len(D_PRODUCERS) - 1)),
    ).map(lambda a: [a])
    groups = draw(st.lists(st.one_of(feed, feed, feed, other), min_size=8, max_size=40))
    return [action for group in groups for action in group]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(),
       options=st.sampled_from([
           {"pacer_enabled": False, "keyframe_min_interval_s": 0.0},
           {"pacer_enabled": False, "keyframe_min_interval_s": 1000.0},
           # On, but with a bucket so deep it never queues: pacing is time, which no two runs share.
           {"pacer_enabled": True, "pacer_burst_bytes": 1e15, "pacer_rate_bps": 1e15,
            "keyframe_min_interval_s": 1000.0},
           # On, with buckets that never refill by themselves (rate 0): packets queue and
           # overflow deterministically; a "pacer_release" action lets one bucketful out.
           {"pacer_enabled": True, "pacer_burst_bytes": 120, "pacer_rate_bps": 0,
            "keyframe_min_interval_s": 0.0},
       ]),
       first_seqs=st.lists(st.integers(0, 0xFFFF), min_size=3, max_size=3))
def test_differential_both_engines_send_the_same_bytes(data: st.DataObject, options: dict,
                                                       first_seqs: list[int]) -> None:
    # Every example opens with a keyframe per producer (the H264 SSRC learnt from its mid),
    # so what follows meets started consumers, a history to NACK, SSRCs to report on.
    opening = [("feed", 0, make_rtp(seq=65500, ts=1, ssrc=0x1111, pt=96, extensions={MID_ID: b"0"},
                                    payload=make_vp8_payload(True))),
               ("feed", 0, make_rtp(seq=65500, ts=2, ssrc=0x3333, pt=102, extensions={MID_ID: b"2"},
                                    payload=make_h264_payload(5))),
               ("feed", 0, make_rtp(seq=65500, ts=3, ssrc=0x2222, pt=111, payload=b"\xfcopus"))]
    actions = opening + data.draw(d_actions(first_seqs))
    worlds = [DWorld(ENGINES["cython"], options, first_seqs), DWorld(ENGINES["python"], options, first_seqs)]
    try:
        # Interleaved, so both see the same moments (a waiting viewer re-asks after 1 s).
        for action in actions:
            for world in worlds:
                world.apply(action)
        cython_outcome, python_outcome = (w.outcome() for w in worlds)
        assert python_outcome["totals"]["packets_out"] >= 3 * len(D_VIEWERS)  # the opening, at least
        # Same peers, different socket addresses: compare the slow path by datagram only.
        cython_outcome["slow_path"] = [d for d, _ in cython_outcome["slow_path"]]
        python_outcome["slow_path"] = [d for d, _ in python_outcome["slow_path"]]
        assert cython_outcome == python_outcome
    finally:
        for world in worlds:
            world.rig.close()


def test_simulcast_layers_learnt_from_the_rid_extension(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=2)
    e = rig.engine
    rid_id, rrid_id = 10, 11
    pub = rig.transport(rig.publisher)
    e.set_transport_extensions(pub, mid=MID_ID, rid=rid_id, repaired_rid=rrid_id)
    layers = {rid: e.add_producer(pub, video=True, codec=1, payload_type=96, clock_rate=90000,
                                  rtx_payload_type=97, mid=b"1", rid=rid) for rid in (b"l", b"h")}
    watch_low = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"l"], payload_type=100, ssrc=0x1111)
    watch_high = e.add_consumer(rig.transport(rig.viewers[1]), layers[b"h"], payload_type=100, ssrc=0x2222)
    assert watch_low != watch_high
    for rid, ssrc in ((b"l", 0xA1), (b"h", 0xA2)):
        rig.feed(make_rtp(seq=10, ssrc=ssrc, pt=96, extensions={MID_ID: b"1", rid_id: rid},
                          payload=make_vp8_payload(True, frame=rid)))
    # A rid nobody published, and a layer's RTX before its media stream exists: not bound.
    rig.feed(make_rtp(seq=1, ssrc=0xA3, pt=96, extensions={MID_ID: b"1", rid_id: b"x"}, payload=make_vp8_payload(True)))
    assert e.producer_ssrc(layers[b"l"]) == 0xA1 and e.producer_ssrc(layers[b"h"]) == 0xA2
    # RTX of the high layer, told apart by the repaired rid.
    lost = make_rtp(seq=11, ssrc=0xA2, pt=96, extensions={MID_ID: b"1", rrid_id: b"h"},
                    payload=make_vp8_payload(False, frame=b"h-lost"))
    rig.feed(make_rtx(lost, seq=500, ssrc=0xB2, pt=97))
    low = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    high = [read_rtp(d) for d in rig.take(rig.viewers[1])]
    assert [(p["ssrc"], p["payload"]) for p in low] == [(0x1111, make_vp8_payload(True, frame=b"l"))]
    assert [(p["ssrc"], p["payload"]) for p in high] == [(0x2222, make_vp8_payload(True, frame=b"h")),
                                                         (0x2222, make_vp8_payload(False, frame=b"h-lost"))]
    assert drops(e) == {"rtp_unknown_ssrc": 1}


def _two_layers(rig: Rig) -> tuple[int, dict[bytes, int]]:
    e = rig.engine
    pub = rig.transport(rig.publisher)
    e.set_transport_extensions(pub, mid=MID_ID)
    layers = {rid: e.add_producer(pub, video=True, codec=1, payload_type=96, clock_rate=90000,
                                  ssrc=ssrc, mid=b"1", rid=rid) for rid, ssrc in ((b"l", 0xA1), (b"h", 0xA2))}
    return pub, layers


def _vp8(seq: int, ts: int, ssrc: int, key: bool, pic: int, tl0: int, frame: bytes) -> bytes:
    return make_rtp(seq=seq, ts=ts, ssrc=ssrc, pt=96,
                    payload=make_vp8_payload(key, picture_id=pic, picture_id_bits=15, tl0picidx=tl0, frame=frame))


def _pic_tl0(payload: bytes) -> tuple[int, int]:
    assert payload[0] & 0x80 and payload[1] & 0xC0 == 0xC0 and payload[2] & 0x80
    return ((payload[2] & 0x7F) << 8) | payload[3], payload[4]


def test_layer_switch_waits_for_a_keyframe_and_keeps_the_stream_continuous(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    _, layers = _two_layers(rig)
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"l"], payload_type=100, ssrc=0x1111,
                       first_seq=1000, first_ts=5000)
    # On the low layer: a keyframe then a delta frame.
    rig.feed(_vp8(10, 90000, 0xA1, True, 300, 7, b"l0"))
    rig.feed(_vp8(11, 93000, 0xA1, False, 301, 7, b"l1"))
    e.set_consumer_producer(c, layers[b"h"])
    assert e.consumer_producer(c) == layers[b"l"]  # not before the high layer's keyframe
    rig.feed(_vp8(500, 70000, 0xA2, False, 9000, 200, b"h-delta"))  # a delta of the target: not yet
    rig.feed(_vp8(12, 96000, 0xA1, False, 302, 7, b"l2"))          # the low layer still flows
    time.sleep(0.02)
    rig.feed(_vp8(501, 73000, 0xA2, True, 9001, 201, b"h-key"))    # the switch
    rig.feed(_vp8(13, 99000, 0xA1, False, 303, 7, b"l3"))          # the old layer no longer reaches it
    rig.feed(_vp8(502, 76000, 0xA2, False, 9002, 201, b"h-next"))
    assert e.consumer_producer(c) == layers[b"h"]
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert len(got) == 5
    assert [p["seq"] for p in got] == [1000, 1001, 1002, 1003, 1004]
    assert got[3]["payload"].endswith(b"h-key") and got[4]["payload"].endswith(b"h-next")
    assert {p["ssrc"] for p in got} == {0x1111}
    # Timestamps: continuous before, moving forward across the switch by the elapsed time.
    assert [p["ts"] - 5000 for p in got[:3]] == [0, 3000, 6000]
    assert 1 <= (got[3]["ts"] - got[2]["ts"]) & 0xFFFFFFFF < 90000
    assert (got[4]["ts"] - got[3]["ts"]) & 0xFFFFFFFF == 3000
    # VP8 picture id and TL0PICIDX continue from the low layer's.
    pics = [_pic_tl0(p["payload"]) for p in got]
    assert pics == [(300, 7), (301, 7), (302, 7), (303, 8), (304, 8)]


def test_h264_layer_switch_waits_for_an_idr_and_keeps_the_stream_continuous(make_rig: Callable[..., Rig]) -> None:
    """H264 simulcast: the same move, keyed on an IDR (a lone one, or the first of a STAP-A
    or an FU-A); no picture id to rewrite, the payload passes untouched."""
    rig = make_rig(viewers=1)
    e = rig.engine
    pub = rig.transport(rig.publisher)
    e.set_transport_extensions(pub, mid=MID_ID)
    layers = {rid: e.add_producer(pub, video=True, codec=H264, payload_type=102, clock_rate=90000,
                                  ssrc=ssrc, mid=b"1", rid=rid) for rid, ssrc in ((b"l", 0xB1), (b"h", 0xB2))}
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"l"], payload_type=100, ssrc=0x1111,
                       first_seq=2000, first_ts=7000)

    def h264(seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
        return make_rtp(seq=seq, ts=ts, ssrc=ssrc, pt=102, payload=payload)

    sps_pps_idr = make_h264_payload(None, stap_a=(7, 8, 5))
    rig.feed(h264(10, 90000, 0xB1, sps_pps_idr))                      # the low layer starts
    rig.feed(h264(11, 93000, 0xB1, make_h264_payload(1)))
    e.set_consumer_producer(c, layers[b"h"])
    rig.feed(h264(600, 50000, 0xB2, make_h264_payload(1)))            # not an IDR: no switch yet
    rig.feed(h264(12, 96000, 0xB1, make_h264_payload(1)))
    assert e.consumer_producer(c) == layers[b"l"]
    idr_start = make_h264_payload(None, fu_a=5, fu_start=True)
    rig.feed(h264(601, 53000, 0xB2, idr_start))                        # an IDR's first fragment: the switch
    rig.feed(h264(602, 53000, 0xB2, make_h264_payload(None, fu_a=5, fu_start=False, fu_end=True)))
    rig.feed(h264(13, 99000, 0xB1, make_h264_payload(1)))             # the old layer no longer reaches it
    assert e.consumer_producer(c) == layers[b"h"]
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["seq"] for p in got] == [2000, 2001, 2002, 2003, 2004]
    assert got[3]["payload"] == idr_start
    assert [p["ts"] - 7000 for p in got[:3]] == [0, 3000, 6000]
    assert 1 <= (got[3]["ts"] - got[2]["ts"]) & 0xFFFFFFFF < 90000 and got[4]["ts"] == got[3]["ts"]
    assert drops(e) == {}


def test_nack_across_a_layer_switch(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    _, layers = _two_layers(rig)
    viewer_t = rig.transport(rig.viewers[0])
    c = e.add_consumer(viewer_t, layers[b"l"], payload_type=100, ssrc=0x1111, first_seq=1000, first_ts=7000)
    rig.feed(_vp8(10, 0, 0xA1, True, 1, 1, b"l0"))
    e.set_consumer_producer(c, layers[b"h"])
    rig.feed(_vp8(500, 0, 0xA2, True, 50, 9, b"h0"))
    rig.feed(_vp8(501, 3000, 0xA2, False, 51, 9, b"h1"))
    sent = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    # 999 was never sent, 1000 went out from the low layer, 1001 and 1002 from the high one:
    # each is answered from the history of the layer that sent it, in the viewer's numbering.
    rig.feed(make_rtcp_nack(1, 0x1111, [(999, 0b111)]), rig.viewers[0])
    resent = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [(p["seq"], p["ts"], p["payload"]) for p in resent] == [(p["seq"], p["ts"], p["payload"]) for p in sent]
    assert resent[0]["payload"].endswith(b"l0") and _pic_tl0(resent[0]["payload"]) == (1, 1)
    assert resent[1]["payload"].endswith(b"h0") and _pic_tl0(resent[1]["payload"]) == (2, 2)
    assert drops(rig.engine)["nack_not_in_buffer"] == 1
    # Once the old layer is gone, what it sent is too.
    e.remove_producer(layers[b"l"])
    rig.feed(make_rtcp_nack(1, 0x1111, [(1000, 0)]), rig.viewers[0])
    assert rig.take(rig.viewers[0]) == []
    assert drops(rig.engine)["nack_not_in_buffer"] == 2


def test_switch_target_changes_and_removal(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    _, layers = _two_layers(rig)
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"l"], payload_type=100, ssrc=0x1111)
    # Not started yet: the move is immediate.
    e.set_consumer_producer(c, layers[b"h"])
    assert e.consumer_producer(c) == layers[b"h"]
    rig.feed(_vp8(1, 0, 0xA2, True, 5, 1, b"h0"))
    e.set_consumer_producer(c, layers[b"l"])   # pending
    e.set_consumer_producer(c, layers[b"h"])   # changed its mind: stays, nothing pending
    rig.feed(_vp8(1, 0, 0xA1, True, 5, 1, b"l0"))
    assert e.consumer_producer(c) == layers[b"h"]
    e.set_consumer_producer(c, layers[b"l"])
    e.remove_producer(layers[b"l"])             # the target goes away: the consumer stays put
    rig.feed(_vp8(2, 3000, 0xA2, False, 6, 1, b"h1"))
    got = [read_rtp(d)["payload"] for d in rig.take(rig.viewers[0])]
    assert [p[-2:] for p in got] == [b"h0", b"h1"]
    e.remove_consumer(c)
    rig.feed(_vp8(3, 6000, 0xA2, False, 7, 1, b"h2"))
    assert rig.take(rig.viewers[0]) == []


def test_viewer_loss_from_receiver_reports(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    _, layers = _two_layers(rig)
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"l"], payload_type=100, ssrc=0x1111)
    assert e.consumer_stats(c)["fraction_lost"] == 0
    rig.feed(make_rtcp_rr(9, [(0x9999, 200), (0x1111, 64)]), rig.viewers[0])
    assert e.consumer_stats(c)["fraction_lost"] == 0.25
    rig.feed(make_rtcp_rr(9, [(0x1111, 128)]), rig.publisher)  # not this consumer's transport
    assert e.consumer_stats(c)["fraction_lost"] == 0.25


def test_a_joining_viewer_starts_from_the_history_gop(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=2)
    room = make_room(rig, viewers=1)
    e = rig.engine
    rig.feed(room.video_packet(40, 0))                   # before the keyframe: not part of the GOP
    rig.feed(room.video_packet(41, 3000, keyframe=True))
    rig.feed(room.video_packet(42, 3000))
    rig.feed(room.video_packet(43, 6000))
    rig.take(rig.viewers[0])
    rig.take(rig.publisher)
    room.add_viewer(1)
    assert e.start_consumer(room.video_consumers[1]) is True
    got = [read_rtp(d) for d in rig.take(rig.viewers[1])]
    first = VIEWERS[1].first_seq
    assert [p["seq"] for p in got] == [first, (first + 1) & 0xFFFF, (first + 2) & 0xFFFF]
    assert [p["payload"][-8:] for p in got] == [bytes([s]) * 8 for s in (41, 42, 43)]
    assert (got[2]["ts"] - got[0]["ts"]) & 0xFFFFFFFF == 3000
    rig.feed(room.video_packet(44, 9000))                 # live packets follow on
    assert read_rtp(rig.take(rig.viewers[1])[0])["seq"] == (first + 3) & 0xFFFF
    assert plis(rig.take(rig.publisher)) == []           # the publisher was asked for nothing
    assert e.totals()["keyframe_history_starts"] == 1
    assert e.start_consumer(room.video_consumers[1]) is False  # already started: nothing to do


def test_no_gop_in_history_asks_the_publisher(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig, viewers=0)
    e = rig.engine
    rig.feed(room.video_packet(40, 0))                   # deltas only: nothing to start from
    room.add_viewer(0)
    assert e.start_consumer(room.video_consumers[0]) is False
    assert plis(rig.take(rig.publisher)) == [(Room.PUBLISHER_RTCP_SSRC, Room.VIDEO_SSRC)]
    assert e.start_consumer(room.audio_consumers[0]) is False  # audio needs no keyframe: starts live
    assert e.totals()["keyframe_history_starts"] == 0


def test_history_start_goes_through_the_pacer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1, pacer_enabled=True, pacer_rate_bps=80_000, pacer_burst_bytes=1_500)
    room = make_room(rig, viewers=0)
    e = rig.engine
    rig.feed(room.video_packet(10, 0, payload=make_vp8_payload(True, frame=bytes(1000))))
    for seq in range(11, 16):
        rig.feed(room.video_packet(seq, 0, payload=make_vp8_payload(False, frame=b"\x02" * 1000)))
    room.add_viewer(0)
    assert e.start_consumer(room.video_consumers[0]) is True
    now_sent = len(rig.take(rig.viewers[0]))
    assert 1 <= now_sent < 6                              # the burst allowance, not the whole GOP
    deadline = time.monotonic() + 5
    total = now_sent
    while total < 6 and time.monotonic() < deadline:
        time.sleep(e.tick())
        total += len(rig.take(rig.viewers[0]))
    assert total == 6


def test_a_long_gop_still_starts_from_the_history(make_rig: Callable[..., Rig]) -> None:
    # 2.5 Mbit/s with a keyframe every 2 s is ~570 packets a GOP: all of it fits the pacer.
    rig = make_rig(viewers=1, pacer_enabled=True, pacer_rate_bps=1e12, pacer_burst_bytes=1e9)
    room = make_room(rig, viewers=0)
    e = rig.engine
    for seq in range(100, 800):
        rig.feed(room.video_packet(seq, 0, keyframe=seq == 100))
    room.add_viewer(0)
    assert e.start_consumer(room.video_consumers[0]) is True
    got = [read_rtp(d)["seq"] for d in rig.take(rig.viewers[0])]
    assert got == [(VIEWERS[0].first_seq + i) & 0xFFFF for i in range(700)]
    assert e.totals()["keyframe_requests_sent"] == 0 and drops(e) == {}


# =====================================================================================
# An outage upstream (a relay cut for seconds): the viewer's numbering closes the gap
# =====================================================================================


def _numbered_vp8(room: Room, seq: int, key: bool = False) -> bytes:
    """A video packet whose timestamp, VP8 picture id and TL0PICIDX follow its number."""
    return room.video_packet(seq, ts=3000 * seq, payload=make_vp8_payload(
        key, picture_id=seq & 0x7FFF, picture_id_bits=15, tl0picidx=seq & 0xFF, frame=struct.pack("!H", seq)))


@pytest.mark.parametrize("paced", [False, True], ids=["unpaced", "paced"])
def test_a_long_input_gap_is_closed_at_the_next_keyframe(make_rig: Callable[..., Rig], paced: bool) -> None:
    # Paced: everything waits in the pacer (no tokens) and is numbered when it leaves.
    options = dict(pacer_enabled=True, pacer_rate_bps=0, pacer_burst_bytes=1) if paced else {}
    rig = make_rig(viewers=2, keyframe_min_interval_s=1000.0, **options)
    room = make_room(rig)
    e = rig.engine
    before, after = list(range(1000, 1010)), list(range(1310, 1320))  # 300 packets never arrive
    for seq in before + after:
        rig.feed(_numbered_vp8(room, seq, key=seq in (1000, 1315)))
    if paced:
        e.pacer_rate_bytes_s, e.pacer_burst_bytes = 1e12, 1e9
        e.tick()
    sent = after[5:]  # from the keyframe on
    for v in range(2):
        spec = VIEWERS[v]
        got = [read_rtp(d) for d in rig.take(rig.viewers[v])]
        assert [p["seq"] for p in got] == [(spec.first_seq + i) & 0xFFFF for i in range(15)]  # contiguous
        assert [p["payload"][-2:] for p in got] == [struct.pack("!H", s) for s in before + sent]
        # The timestamps keep their real spacing (the same clock, which SRs map); the VP8
        # picture id and TL0PICIDX continue, as at a layer switch.
        assert [(p["ts"] - spec.first_ts) & 0xFFFFFFFF for p in got] == [3000 * (s - 1000) for s in before + sent]
        assert [_pic_tl0(p["payload"]) for p in got] == [(1000 + i, (1000 + i) & 0xFF) for i in range(15)]
    # One keyframe request for the resumption (the second viewer's rode on it), no other.
    assert plis(rig.take(rig.publisher)) == [(Room.PUBLISHER_RTCP_SSRC, Room.VIDEO_SSRC)]
    assert e.totals()["keyframe_requests_sent"] == 1
    assert drops(e) == {"waiting_for_keyframe": 2 * 5}  # 1310..1314, for each viewer


def test_packets_from_inside_a_closed_gap_never_reuse_a_number(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    e = rig.engine
    for seq in [*range(1000, 1005), *range(1305, 1310)]:
        rig.feed(_numbered_vp8(room, seq, key=seq in (1000, 1305)))
    sent = {read_rtp(d)["seq"]: read_rtp(d) for d in rig.take(rig.viewers[0])}
    first = VIEWERS[0].first_seq
    assert sorted((s - first) & 0xFFFF for s in sent) == list(range(10))
    # Late: from inside the gap (a retransmission, on the RTX stream too), and a copy of one
    # from before it (its number is taken already in either numbering).
    for seq in (1100, 1304, 1003):
        rig.feed(_numbered_vp8(room, seq))
    rig.feed(make_rtx(_numbered_vp8(room, 1200), seq=1, ssrc=Room.VIDEO_RTX_SSRC, pt=Room.VIDEO_RTX_PT))
    assert rig.take(rig.viewers[0]) == []
    assert drops(e) == {"late_before_switch": 4}
    # NACKs on either side of the closed gap are answered from the right packets.
    rig.feed(make_rtcp_nack(0xA000, video_ssrc(0), nack_items([(first + 4) & 0xFFFF, (first + 5) & 0xFFFF])),
             rig.viewers[0])
    resent = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["payload"][2:] for p in resent] == [sent[(first + 4) & 0xFFFF]["payload"],
                                                  sent[(first + 5) & 0xFFFF]["payload"]]
    assert [p["payload"][-2:] for p in resent] == [struct.pack("!H", 1004), struct.pack("!H", 1305)]
    assert plis(rig.take(rig.publisher)) == []  # resumed on a keyframe: nothing to ask


def test_a_long_audio_gap_is_closed_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    e = rig.engine
    seqs = [*range(100, 105), *range(400, 405)]
    for seq in seqs:
        rig.feed(room.audio_packet(seq, ts=960 * seq))
    rig.feed(room.audio_packet(300, ts=960 * 300))  # from inside the gap, late
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    first, ts0 = VIEWERS[0].first_seq ^ 0x5555, VIEWERS[0].first_ts ^ 0x55555555
    assert [p["seq"] for p in got] == [(first + i) & 0xFFFF for i in range(10)]
    assert [(p["ts"] - ts0) & 0xFFFFFFFF for p in got] == [960 * (s - 100) for s in seqs]
    assert e.totals()["keyframe_requests_sent"] == 0
    assert drops(e) == {"late_before_switch": 1}


@pytest.mark.parametrize("missing,closed", [(3, False), (64, False), (65, True)])
def test_only_a_gap_of_more_than_64_packets_is_closed(make_rig: Callable[..., Rig], missing: int, closed: bool) -> None:
    # A shorter hole stays: the viewer's loss concealment, NACKs, RED and FEC work from it.
    rig = make_rig(viewers=1)
    room = make_room(rig)
    for seq in (10, 11, 12 + missing, 13 + missing):
        rig.feed(room.audio_packet(seq))
        rig.feed(_numbered_vp8(room, seq, key=seq in (10, 12 + missing)))
    by_ssrc: dict[int, list[int]] = {}
    for p in map(read_rtp, rig.take(rig.viewers[0])):
        by_ssrc.setdefault(p["ssrc"], []).append(p["seq"])
    steps = [0, 1, 2, 3] if closed else [0, 1, 2 + missing, 3 + missing]
    for ssrc, first in ((audio_ssrc(0), VIEWERS[0].first_seq ^ 0x5555), (video_ssrc(0), VIEWERS[0].first_seq)):
        assert by_ssrc[ssrc] == [(first + k) & 0xFFFF for k in steps]
    assert drops(rig.engine) == {}


def test_a_hole_our_pacer_made_is_not_closed(make_rig: Callable[..., Rig]) -> None:
    # The pacer lost the oldest 75 of what waited; the history has them for the viewer's NACKs.
    rig, room = _paced_rig(make_rig, burst=1)
    e = rig.engine
    for i in range(1100):
        rig.feed(_numbered_vp8(room, i, key=i == 0))
    e.pacer_rate_bytes_s, e.pacer_burst_bytes = 1e12, 1e9
    e.tick()
    got = [read_rtp(d)["seq"] for d in rig.take(rig.viewers[0])]
    first = VIEWERS[0].first_seq
    assert got == [first] + [(first + i) & 0xFFFF for i in range(76, 1100)]
    assert drops(e) == {"pacer_queue_full": 75} and plis(rig.take(rig.publisher)) == []


def test_input_that_goes_back_for_good_is_a_discontinuity_too(make_rig: Callable[..., Rig]) -> None:
    # After a closed gap, the sender restarts its numbering far back: not stragglers. After
    # 64 dropped as late, the stream continues from the newest number sent.
    rig = make_rig(viewers=1)
    room = make_room(rig)
    e = rig.engine
    seqs = [*range(5000, 5005), *range(5300, 5305), *range(100, 170)]
    for seq in seqs:
        rig.feed(room.audio_packet(seq, ts=960 * seq))
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    first = VIEWERS[0].first_seq ^ 0x5555
    assert [p["seq"] for p in got] == [(first + i) & 0xFFFF for i in range(16)]
    assert [p["payload"] for p in got] == [read_rtp(room.audio_packet(s))["payload"] for s in seqs[:10] + seqs[-6:]]
    assert drops(e) == {"late_before_switch": 64}


# =====================================================================================
# Bandwidth probes: RTX copies of recent packets, so a viewer's estimate can grow
# =====================================================================================


def _tick_for(engine: Any, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        engine.tick()
        time.sleep(0.005)
    return time.monotonic() - start


def test_probe_pads_with_rtx_copies_of_the_newest_packets(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    forwarded = {read_rtp(d)["seq"]: read_rtp(d) for d in _forward_some(rig, room, count=12)[0]}
    c = room.video_consumers[0]
    rate_bps = 2_000_000
    e.set_consumer_probe(c, rate_bps)
    elapsed = _tick_for(e, 0.3)
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    newest = [(VIEWERS[0].first_seq + 11 - k) & 0xFFFF for k in range(8)]
    assert got, "no probe packets"
    for i, packet in enumerate(got):
        assert (packet["ssrc"], packet["pt"]) == (rtx_ssrc(0), VIEWERS[0].rtx_pt)
        assert packet["seq"] == (VIEWERS[0].first_rtx_seq + i) & 0xFFFF
        osn = struct.unpack("!H", packet["payload"][:2])[0]
        assert osn in newest  # one of the 8 packets it got last, numbered as it got them
        assert packet["payload"][2:] == forwarded[osn]["payload"]
        assert packet["ts"] == forwarded[osn]["ts"]
        assert stamped(packet["elements"])[1] == (5, ABS_NOW)
    probe_bytes = e.consumer_stats(c)["probe_bytes"]
    assert e.totals()["probe_bytes"] == probe_bytes and e.totals()["probe_packets"] == len(got)
    # The rate asked for, give or take scheduling: tokens accrue with time, one 20 ms burst at most.
    budget = rate_bps / 8 * elapsed
    assert 0.2 * budget <= probe_bytes <= budget + max(rate_bps / 8 * 0.02, 1500) + 1500
    # Probes are not NACK answers, and the others (no RTX; no probe asked) got nothing.
    assert e.consumer_stats(c)["nacks_served"] == 0 and e.totals()["nacks_served"] == 0
    assert rig.take(rig.viewers[1]) == [] and rig.take(rig.viewers[2]) == []
    assert drops(e) == {}
    # 0 stops it.
    e.set_consumer_probe(c, 0)
    _tick_for(e, 0.05)
    assert rig.take(rig.viewers[0]) == []


def test_probe_needs_rtx_and_video(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    room = make_room(rig)
    e = rig.engine
    _forward_some(rig, room)
    rig.feed(room.audio_packet(1))
    for v in range(3):
        rig.take(rig.viewers[v])
    e.set_consumer_probe(room.video_consumers[1], 2_000_000)  # negotiated no RTX
    e.set_consumer_probe(room.audio_consumers[0], 2_000_000)  # audio
    _tick_for(e, 0.1)
    assert [rig.take(s) for s in rig.viewers] == [[], [], []]
    assert e.totals()["probe_packets"] == 0
    # Removing a consumer that probes leaves the engine consistent.
    e.set_consumer_probe(room.video_consumers[0], 2_000_000)
    e.remove_consumer(room.video_consumers[0])
    _tick_for(e, 0.05)
    assert rig.take(rig.viewers[0]) == []


def test_probe_waits_for_a_started_consumer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    e = rig.engine
    c = room.video_consumers[0]
    e.set_consumer_probe(c, 2_000_000)
    _tick_for(e, 0.05)
    assert rig.take(rig.viewers[0]) == []  # nothing sent yet: nothing to copy
    rig.feed(room.video_packet(7, keyframe=True))
    first = read_rtp(rig.take(rig.viewers[0])[0])
    _tick_for(e, 0.05)
    probes = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert probes and all(struct.unpack("!H", p["payload"][:2])[0] == first["seq"] for p in probes)


def test_probe_after_a_layer_switch_copies_only_the_new_layer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    e = rig.engine
    _, layers = _two_layers(rig)
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"l"], payload_type=100, ssrc=0x1111,
                       rtx_payload_type=101, rtx_ssrc=0x2222, first_seq=1000, first_ts=5000)
    for i in range(6):
        rig.feed(_vp8(10 + i, 90000 + 3000 * i, 0xA1, i == 0, 300 + i, 7, b"l%d" % i))
    e.set_consumer_producer(c, layers[b"h"])
    rig.feed(_vp8(500, 70000, 0xA2, True, 9000, 200, b"h-key"))  # our 1006
    rig.feed(_vp8(501, 73000, 0xA2, False, 9001, 200, b"h-next"))  # our 1007
    assert e.consumer_producer(c) == layers[b"h"]
    sent = {p["seq"]: p for p in map(read_rtp, rig.take(rig.viewers[0]))}
    assert sorted(sent) == list(range(1000, 1008))
    e.set_consumer_probe(c, 4_000_000)
    _tick_for(e, 0.1)
    probes = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert len(probes) > 2
    for p in probes:
        osn = struct.unpack("!H", p["payload"][:2])[0]
        assert osn in (1006, 1007)
        assert p["payload"][2:] == sent[osn]["payload"]  # the same bytes, picture id included
    assert drops(e) == {}


# =====================================================================================
# VP8 temporal layers: dropped by TID, the stream kept gap-free with padding
# =====================================================================================

PADDING_ONLY = b"\x00\x00\x00\x04"  # read_rtp keeps the padding: 3 zero bytes and the count
# A 3-layer VP8 pattern (L1T3): TIDs 0, 2, 1, 2, 0, 2, 1, 2, ...; two packets per frame.
TIDS = (0, 2, 1, 2)


def _temporal_stream(first: int, frames: int, tl0: int = 5) -> list[bytes]:
    packets = []
    for f in range(first, first + frames):
        tid = TIDS[f % 4]
        for part in range(2):
            packets.append(make_rtp(
                seq=1000 + 2 * f + part, ts=3000 * f, ssrc=Room.VIDEO_SSRC, pt=Room.VIDEO_PT, marker=part == 1,
                extensions={MID_ID: b"0"},
                payload=make_vp8_payload(f == 0, start=part == 0, picture_id=100 + f, picture_id_bits=15,
                                         tl0picidx=(tl0 + (f + 3) // 4) & 0xFF, tid=tid,
                                         frame=bytes([f, part]) * 6)))
    return packets


def test_temporal_layers_above_the_cap_go_out_as_padding(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    e = rig.engine
    c = room.video_consumers[0]
    e.set_consumer_temporal(c, 0)  # the base layer only: a quarter of the frame rate
    stream = _temporal_stream(0, 8)
    for packet in stream:
        rig.feed(packet)
    assert e.producer_stats(room.video)["temporal_layers"] == 3
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    first = VIEWERS[0].first_seq
    assert [p["seq"] for p in got] == [(first + i) & 0xFFFF for i in range(16)]  # no gap
    for i, p in enumerate(got):
        frame = i // 2
        if TIDS[frame % 4] == 0:
            assert p["payload"] == read_rtp(stream[i])["payload"]  # the base layer, as it was
            assert p["ts"] == (VIEWERS[0].first_ts + 3000 * frame) & 0xFFFFFFFF
        else:
            # Padding only, with the timestamp of the last frame kept (frame 0 or 4).
            assert p["padding"] and p["payload"] == PADDING_ONLY and not p["marker"]
            kept = frame - frame % 4
            assert p["ts"] == (VIEWERS[0].first_ts + 3000 * kept) & 0xFFFFFFFF
            assert (p["ssrc"], p["pt"]) == (video_ssrc(0), VIEWERS[0].video_pt)
    assert e.consumer_stats(c)["tid_dropped"] == 12
    # Up to TID 1 (half the frame rate), then everything: at once, no keyframe needed.
    e.set_consumer_temporal(c, 1)
    for packet in _temporal_stream(8, 4):
        rig.feed(packet)
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["padding"] for p in got] == [False, False, True, True, False, False, True, True]
    e.set_consumer_temporal(c, -1)
    for packet in _temporal_stream(12, 4):
        rig.feed(packet)
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert not any(p["padding"] for p in got) and len(got) == 8
    assert got[0]["seq"] == (first + 24) & 0xFFFF
    assert drops(e) == {}


def _base_layer_only(make_rig: Callable[..., Rig], frames: int) -> tuple[Rig, Any, int]:
    """One viewer capped at TID 0, after ``frames`` frames of the L1T3 stream."""
    rig = make_rig(viewers=1)
    room = make_room(rig)
    c = room.video_consumers[0]
    rig.engine.set_consumer_temporal(c, 0)
    for packet in _temporal_stream(0, frames):
        rig.feed(packet)
    return rig, rig.engine, c


def test_nack_for_a_padding_packet_gets_the_padding_again(make_rig: Callable[..., Rig]) -> None:
    rig, e, c = _base_layer_only(make_rig, 4)
    sent = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    first = VIEWERS[0].first_seq
    # Our seq first+2 was padding (frame 1, TID 2); first+1 was the base layer's second packet.
    rig.feed(make_rtcp_nack(0xA000, video_ssrc(0), nack_items([(first + 2) & 0xFFFF, (first + 1) & 0xFFFF])),
             rig.viewers[0])
    again = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert again[0]["seq"] == sent[2]["seq"] and again[0]["padding"] and again[0]["payload"] == PADDING_ONLY
    assert again[0]["ts"] == sent[2]["ts"] == sent[0]["ts"]
    assert again[1]["ssrc"] == rtx_ssrc(0)  # the kept packet, as RTX
    assert again[1]["payload"] == struct.pack("!H", (first + 1) & 0xFFFF) + sent[1]["payload"]
    assert e.consumer_stats(c)["nacks_served"] == 2 and drops(e) == {}


def test_probes_never_copy_a_dropped_temporal_layer(make_rig: Callable[..., Rig]) -> None:
    rig, e, c = _base_layer_only(make_rig, 7)  # ends on frames 5 and 6 (TIDs 2, 1): padding
    rig.take(rig.viewers[0])
    e.set_consumer_probe(c, 2_000_000)
    _tick_for(e, 0.1)
    probes = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert probes
    first = VIEWERS[0].first_seq
    kept = {(first + i) & 0xFFFF for i in (8, 9)}  # frame 4, the newest base-layer frame within reach
    assert {struct.unpack("!H", p["payload"][:2])[0] for p in probes} <= kept
    assert drops(e) == {}


def test_temporal_cap_until_switch_is_lifted_at_the_switch(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    e = rig.engine
    c = room.video_consumers[0]
    lower = e.add_producer(room.publisher, video=True, codec=VP8, payload_type=Room.VIDEO_PT, clock_rate=90000,
                           ssrc=0x7777, mid=b"0")
    for packet in _temporal_stream(0, 2):
        rig.feed(packet)
    # Going down: the current layer's base temporal layer only, until the lower layer's keyframe.
    e.set_consumer_temporal(c, 0, until_switch=True)
    e.set_consumer_producer(c, lower)
    for packet in _temporal_stream(2, 2):  # TIDs 1 and 2: padding now
        rig.feed(packet)
    assert e.consumer_stats(c)["tid_max"] == 0
    for i, tid in enumerate((0, 2)):
        rig.feed(make_rtp(seq=50 + i, ts=90000 + 3000 * i, ssrc=0x7777, pt=Room.VIDEO_PT, extensions={MID_ID: b"0"},
                          payload=make_vp8_payload(i == 0, picture_id=7 + i, tl0picidx=1, tid=tid)))
    assert e.consumer_producer(c) == lower and e.consumer_stats(c)["tid_max"] == -1
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["padding"] for p in got] == [False] * 4 + [True] * 4 + [False, False]  # the new layer's TID 2 flows
    assert [p["seq"] for p in got] == [(VIEWERS[0].first_seq + i) & 0xFFFF for i in range(10)]
    assert drops(e) == {}


def _viewer_on_top_layer(rig: Rig) -> tuple[Any, dict[bytes, int], int]:
    """One viewer receiving the top of two layers, its keyframe and a delta frame sent."""
    e = rig.engine
    _, layers = _two_layers(rig)
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"h"], payload_type=100, ssrc=0x1111,
                       first_seq=1000, first_ts=5000)
    rig.feed(_vp8(500, 90000, 0xA2, True, 300, 7, b"h0"))
    rig.feed(_vp8(501, 93000, 0xA2, False, 301, 7, b"h1"))
    return e, layers, c


def test_a_held_layer_sends_nothing_until_the_lower_layers_keyframe(make_rig: Callable[..., Rig]) -> None:
    """A move down on a congested link: from the decision to the keyframe nothing of the
    old layer goes out (media or repairs); the stream continues gap-free at the keyframe,
    and what the old layer sent is never repaired."""
    rig = make_rig(viewers=1, keyframe_min_interval_s=0.0)
    e, layers, c = _viewer_on_top_layer(rig)
    rig.take(rig.publisher)
    e.set_consumer_producer(c, layers[b"l"], hold=True)
    assert plis(rig.take(rig.publisher)) == [(1, 0xA1)]  # the lower layer's keyframe, asked for at once
    assert e.consumer_stats(c)["held"] and e.consumer_producer(c) == layers[b"h"]
    rig.feed(_vp8(502, 96000, 0xA2, False, 302, 7, b"h2"))          # held
    rig.feed(make_rtcp_nack(1, 0x1111, [(1000, 0b1)]), rig.viewers[0])  # not repaired
    rig.feed(_vp8(10, 1000, 0xA1, False, 50, 3, b"l-delta"))         # not the keyframe yet
    e.set_consumer_producer(c, layers[b"l"])                         # asked again without hold: still held
    rig.feed(_vp8(503, 99000, 0xA2, False, 303, 7, b"h3"))
    time.sleep(0.02)
    rig.feed(_vp8(11, 4000, 0xA1, True, 51, 4, b"l-key"))            # the switch
    rig.feed(_vp8(12, 7000, 0xA1, False, 52, 4, b"l-next"))
    assert e.consumer_producer(c) == layers[b"l"] and not e.consumer_stats(c)["held"]
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert len(got) == 4
    assert all(p["payload"].endswith(x) for p, x in zip(got, (b"h0", b"h1", b"l-key", b"l-next")))
    assert [p["seq"] for p in got] == [1000, 1001, 1002, 1003]        # held packets took no numbers
    assert 1 <= (got[2]["ts"] - got[1]["ts"]) & 0xFFFFFFFF < 90000
    assert [_pic_tl0(p["payload"]) for p in got] == [(300, 7), (301, 7), (302, 8), (303, 8)]
    # What the held layer sent stays unrepaired after the switch; the new layer's is repaired.
    rig.feed(make_rtcp_nack(1, 0x1111, [(1001, 0b11)]), rig.viewers[0])
    assert [read_rtp(d)["seq"] for d in rig.take(rig.viewers[0])] == [1002, 1003]
    assert drops(e) == {"held_for_switch": 2, "nack_held": 3}


def test_holding_drops_what_waits_in_the_pacer(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1, pacer_enabled=True, pacer_rate_bps=0, pacer_burst_bytes=1)
    e = rig.engine
    _, layers = _two_layers(rig)
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"h"], payload_type=100, ssrc=0x1111)
    for i in range(4):
        rig.feed(_vp8(500 + i, 3000 * i, 0xA2, i == 0, 300 + i, 7, b"h"))
    assert e.consumer_stats(c)["paced"] == 3  # the first used the one byte of budget
    e.set_consumer_producer(c, layers[b"l"], hold=True)
    assert e.consumer_stats(c)["paced"] == 0
    e.pacer_rate_bytes_s = e.pacer_burst_bytes = 1e9
    e.tick()
    assert len(rig.take(rig.viewers[0])) == 1
    assert drops(e) == {"held_for_switch": 3}


def test_a_held_switch_paces_the_keyframe_from_an_empty_bucket(make_rig: Callable[..., Rig]) -> None:
    """The hold saves up the viewer's pacing budget; the keyframe it waited for must not
    spend it as one burst into the link that just overflowed. Without hold it may."""
    for hold in (False, True):
        rig = make_rig(viewers=1, pacer_enabled=True)
        e = rig.engine
        _, layers = _two_layers(rig)
        t = rig.transport(rig.viewers[0])
        c = e.add_consumer(t, layers[b"h"], payload_type=100, ssrc=0x1111)
        e.set_transport_pacing(t, 1_000_000)  # a 5,000-byte bucket
        rig.feed(_vp8(500, 0, 0xA2, True, 300, 7, b"h0"))
        e.set_consumer_producer(c, layers[b"l"], hold=hold)
        time.sleep(0.05)  # the bucket fills again
        rig.feed(_vp8(10, 0, 0xA1, True, 50, 3, b"l-key"))
        assert e.consumer_producer(c) == layers[b"l"]
        assert e.consumer_stats(c)["paced"] == (1 if hold else 0)
        got = [read_rtp(d)["payload"] for d in rig.take(rig.viewers[0])]
        assert got[-1].endswith(b"l-key") != hold


def test_a_held_move_called_off_resumes_at_the_held_layers_keyframe(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1, keyframe_min_interval_s=0.0)
    e, layers, c = _viewer_on_top_layer(rig)
    e.set_consumer_producer(c, layers[b"l"], hold=True)
    rig.feed(_vp8(502, 96000, 0xA2, False, 302, 7, b"h2"))   # held
    rig.take(rig.publisher)
    e.set_consumer_producer(c, layers[b"h"])                  # called off: h resumes at its keyframe
    assert plis(rig.take(rig.publisher)) == [(1, 0xA2)]
    rig.feed(_vp8(503, 99000, 0xA2, False, 303, 7, b"h3"))   # still held: it references h2
    rig.feed(_vp8(504, 102000, 0xA2, True, 304, 8, b"h4"))   # its keyframe
    rig.feed(_vp8(505, 105000, 0xA2, False, 305, 8, b"h5"))
    got = [read_rtp(d) for d in rig.take(rig.viewers[0])]
    assert [p["payload"][-2:] for p in got] == [b"h0", b"h1", b"h4", b"h5"]
    assert [p["seq"] for p in got] == [1000, 1001, 1002, 1003]
    assert [(p["ts"] - 5000) & 0xFFFFFFFF for p in got] == [0, 3000, 12000, 15000]  # the same clock
    assert not e.consumer_stats(c)["held"]
    rig.feed(make_rtcp_nack(1, 0x1111, [(1001, 0b1)]), rig.viewers[0])  # before the resume: not repaired
    assert [read_rtp(d)["seq"] for d in rig.take(rig.viewers[0])] == [1002]
    assert drops(e) == {"held_for_switch": 2, "nack_held": 1}


def test_a_held_consumer_asks_for_the_keyframe_it_waits_for(make_rig: Callable[..., Rig]) -> None:
    """A viewer's PLI while its layer is held goes to the layer it moves to (the held one's
    keyframe would not be sent); if that layer goes away, the held one is asked instead."""
    rig = make_rig(viewers=1, keyframe_min_interval_s=0.0)
    e = rig.engine
    _, layers = _two_layers(rig)
    c = e.add_consumer(rig.transport(rig.viewers[0]), layers[b"h"], payload_type=100, ssrc=0x1111)
    rig.feed(_vp8(500, 0, 0xA2, True, 300, 7, b"h0"))
    e.set_consumer_producer(c, layers[b"l"], hold=True)
    rig.take(rig.publisher)
    rig.feed(make_rtcp_pli(1, 0x1111), rig.viewers[0])
    assert plis(rig.take(rig.publisher)) == [(1, 0xA1)]
    e.remove_producer(layers[b"l"])
    assert plis(rig.take(rig.publisher)) == [(1, 0xA2)]
    rig.feed(_vp8(501, 3000, 0xA2, False, 301, 7, b"h1"))  # still held until that keyframe
    rig.feed(_vp8(502, 6000, 0xA2, True, 302, 8, b"h2"))
    assert [read_rtp(d)["payload"][-2:] for d in rig.take(rig.viewers[0])] == [b"h0", b"h2"]


def test_a_sharp_fall_of_a_viewers_remb_is_flagged_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(viewers=1)
    room = make_room(rig)
    e = rig.engine
    t = room.viewers[0]
    rig.feed(make_rtcp_remb(0xA000, 2_000_000 >> 4, 4, [video_ssrc(0)]), rig.viewers[0])
    rig.feed(make_rtcp_remb(0xA000, 1_700_000 >> 4, 4, [video_ssrc(0)]), rig.viewers[0])  # -15 %: not sharp
    assert e.take_remb_falls() == [] and e.remb_falls == 0
    rig.feed(make_rtcp_remb(0xA000, 1_000_000 >> 4, 4, [video_ssrc(0)]), rig.viewers[0])  # -41 %
    rig.feed(make_rtcp_remb(0xA000, 500_000 >> 4, 4, [video_ssrc(0)]), rig.viewers[0])    # again, before anyone looked
    assert e.remb_falls == 1
    assert e.take_remb_falls() == [t]
    assert e.take_remb_falls() == []  # taken
    assert e.transport_remb_bps(t) == 500_000


def test_one_readable_event_is_bounded_by_the_packets_it_sends(engine_cls):
    """A backlog of media for a big room must not become one long call: control waits."""
    import socket
    import time

    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recv.bind(("127.0.0.1", 0))
    recv.setblocking(False)
    recv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    viewers = []
    engine = engine_cls(recv.fileno(), lambda data, addr: None, pacer_enabled=False)
    try:
        publisher = engine.add_transport(secure=False)
        engine.set_transport_address(publisher, "127.0.0.1", sender.getsockname()[1])
        producer = engine.add_producer(publisher, video=False, codec=OPUS, payload_type=111, clock_rate=48000,
                                       ssrc=1234)
        fanout, packets = 200, 200
        for i in range(fanout):
            v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            v.bind(("127.0.0.1", 0))
            viewers.append(v)
            t = engine.add_transport(secure=False)
            engine.set_transport_address(t, "127.0.0.1", v.getsockname()[1])
            engine.add_consumer(t, producer, payload_type=111, ssrc=5000 + i)
        for seq in range(packets):
            sender.sendto(bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big")
                          + (1234).to_bytes(4, "big") + b"\x01" * 40, recv.getsockname())
        time.sleep(0.05)
        before = engine.packets_out
        engine.on_readable()
        first = engine.packets_out - before
        # 8,192 sends, plus at most one read's worth (it reads 8192 // (fanout + 1) at a time).
        assert 0 < first <= 8192 + (8192 // (fanout + 1)) * fanout < packets * fanout, first
        for _ in range(20):
            engine.on_readable()
        assert engine.packets_out - before == packets * fanout  # the rest went out on later calls
    finally:
        for v in viewers:
            v.close()
        sender.close()
        recv.close()
