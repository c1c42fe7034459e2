"""SegmentWriter with real encoder output: WebM for VP8 + Opus, Matroska for H264 + Opus."""

from __future__ import annotations

import av
import pytest

from sfu.recording.depacketizer import for_codec
from sfu.recording.writer import SegmentWriter, TrackFormat
from test_depacketizer import packetize


@pytest.mark.parametrize("codec,suffix", [("VP8", "webm"), ("H264", "mkv")])
def test_frames_muxed_without_reencoding_decode_with_their_size(tmp_path, codec, suffix):
    path = tmp_path / f"out.{suffix}"
    writer = SegmentWriter(path, [TrackFormat("video", codec)])
    assert writer.format == ("webm" if codec == "VP8" else "matroska")
    depack = for_codec(codec)
    frames = [f for packets in packetize(codec, 60) for p in packets for f in depack.push(p)]
    for frame in frames:
        writer.add(0, frame.timestamp / 90000, frame.data, frame.keyframe)
    writer.close()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec.lower()
        decoded = [(f.width, f.height) for f in container.decode(video=0)]
        duration = container.duration / 1e6
    assert len(decoded) >= 58 and set(decoded) == {(320, 240)}
    assert abs(duration - 2.0) < 0.1, duration


def test_nothing_is_written_before_the_first_keyframe(tmp_path):
    writer = SegmentWriter(tmp_path / "x.webm", [TrackFormat("video", "VP8")])
    writer.add(0, 0.0, b"\x01\x02\x03", False)  # an inter frame: no size known, no header
    assert not writer.started and not (tmp_path / "x.webm").exists()
    writer.close()
