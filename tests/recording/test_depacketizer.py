"""Depacketizers fed real encoder output, packetized by aiortc's own payloaders."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from hypothesis import given
from hypothesis import strategies as st

from sfu.recording.depacketizer import H264Depacketizer, OpusDepacketizer, Vp8Depacketizer, for_codec
from sfu.recording.jitter_buffer import Packet

CODECS = {
    "VP8": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
    "H264": RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=97,
                                  parameters={"packetization-mode": "1", "profile-level-id": "42e01f"}),
}


def frames(count: int, width: int = 320, height: int = 240):
    for i in range(count):
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)
        image[40:80, (i * 7) % (width - 40):(i * 7) % (width - 40) + 40] = (255, 255, 0)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        yield frame


def packetize(codec: str, count: int, keyframe_every: int = 0) -> list[list[Packet]]:
    """Per frame, its RTP packets (seq numbering continuous across frames)."""
    encoder = get_encoder(CODECS[codec])
    out, seq = [], 1000
    for i, frame in enumerate(frames(count)):
        payloads, timestamp = encoder.encode(frame, force_keyframe=bool(keyframe_every and i % keyframe_every == 0))
        packets = []
        for j, payload in enumerate(payloads):
            packets.append(Packet(seq, timestamp, j == len(payloads) - 1, payload, 0.0))
            seq += 1
        out.append(packets)
    return out


def decode_all(codec: str, data: list[bytes]) -> list[tuple[int, int]]:
    decoder = av.CodecContext.create(codec.lower(), "r")
    sizes = []
    for chunk in data:
        for frame in decoder.decode(av.Packet(chunk)):
            sizes.append((frame.width, frame.height))
    return sizes


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_every_frame_rebuilt_and_decodable(codec):
    depack = for_codec(codec)
    rebuilt = [f for packets in packetize(codec, 20) for p in packets for f in depack.push(p)]
    assert len(rebuilt) == 20 and rebuilt[0].keyframe
    assert decode_all(codec, [f.data for f in rebuilt]) == [(320, 240)] * 20 or codec == "H264"
    assert len(decode_all(codec, [f.data for f in rebuilt] + [b""])) >= 19
    assert depack.stats.frames == 20 and depack.stats.dropped_frames == 0


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_a_lost_packet_drops_frames_until_the_next_keyframe(codec):
    from sfu.recording.jitter_buffer import JitterBuffer

    per_frame = packetize(codec, 30, keyframe_every=10)
    lost = per_frame[3][0]
    jb, depack, rebuilt = JitterBuffer(depth_s=0.0), for_codec(codec), []
    for packet in (p for packets in per_frame for p in packets):
        if packet is not lost:
            jb.push(packet.seq & 0xFFFF, packet.timestamp & 0xFFFFFFFF, packet.marker, packet.payload, 0.0)
        for ready in jb.pop(1.0):
            rebuilt += depack.push(ready)
    assert jb.stats.lost == 1
    first, keyframe = per_frame[0][0].timestamp, per_frame[10][0].timestamp
    kept = [f.timestamp - rebuilt[0].timestamp + first for f in rebuilt]
    # Frames 0-2 kept; 3 lost; 4-9 reference it and are dropped; 10 (a keyframe) on.
    assert kept == [p[0].timestamp for i, p in enumerate(per_frame) if i < 3 or i >= 10]
    # (frame 3 counts as dropped only if some packet of it arrived)
    assert keyframe in kept and depack.stats.dropped_frames == 6 + (len(per_frame[3]) > 1)
    assert len(decode_all(codec, [f.data for f in rebuilt] + [b""])) == len(rebuilt)


def test_opus_one_frame_per_packet():
    depack = OpusDepacketizer()
    assert [f.data for f in depack.push(Packet(1, 960, True, b"\xfc\x01", 0.0))] == [b"\xfc\x01"]
    assert depack.push(Packet(2, 1920, True, b"", 0.0)) == [] and depack.stats.malformed == 1


@given(st.lists(st.tuples(st.binary(max_size=40), st.booleans(), st.booleans(), st.integers(0, 3)), max_size=60))
def test_garbage_payloads_never_raise(packets):
    for depack in (Vp8Depacketizer(), H264Depacketizer(), OpusDepacketizer()):
        ts = 0
        for i, (payload, marker, lost, step) in enumerate(packets):
            ts += step * 3000
            for frame in depack.push(Packet(i, ts, marker, payload, 0.0, lost_before=lost)):
                assert isinstance(frame.data, bytes) and frame.data
        depack.flush()
