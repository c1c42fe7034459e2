"""SegmentWriter: one publisher's frames into one Matroska file, without re-encoding.

WebM when every track is VP8 or Opus, Matroska otherwise (H264). Clusters are
closed every second and flushed as they are written, so a recorder killed
mid-recording leaves a file that plays up to its last second or so (the final
size, duration and cues, written at a clean close, are what a crash loses).

The header needs every track's parameters, and a video track's size is only
known from its first keyframe: until then frames wait here (audio included, so
the file starts in sync).
"""

from __future__ import annotations

import fractions
import struct
from dataclasses import dataclass
from pathlib import Path

import av

from .depacketizer import START_CODE

TIME_BASE = fractions.Fraction(1, 1000)
CLUSTER_MS = 1000
MAX_WAITING = 2000  # frames held for a video track's first keyframe; beyond that, the oldest go
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 48000, 0, 0)


@dataclass
class TrackFormat:
    kind: str  # "audio" | "video"
    codec: str  # "VP8" | "H264" | "opus"


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack("<HH", frame[6:10])
    return width & 0x3FFF, height & 0x3FFF


def h264_parameters(frame: bytes) -> tuple[tuple[int, int], bytes] | None:
    """(size, SPS+PPS as Annex B) from a keyframe, by decoding it once."""
    units = [u for u in frame.split(START_CODE) if u]
    params = b"".join(START_CODE + u for u in units if u[0] & 0x1F in (7, 8))
    if not params:
        return None
    try:
        decoder = av.CodecContext.create("h264", "r")
        for decoded in decoder.decode(av.Packet(frame)) + decoder.decode(None):
            return (decoded.width, decoded.height), params
    except av.FFmpegError:
        return None
    return None


class SegmentWriter:
    def __init__(self, path: Path, tracks: list[TrackFormat]) -> None:
        self.path = path
        self.tracks = tracks
        webm = all(t.codec.lower() in ("vp8", "opus") for t in tracks)
        self.format = "webm" if webm else "matroska"
        self._container: av.container.OutputContainer | None = None
        self._streams: list[av.stream.Stream | None] = [None] * len(tracks)
        self._video_params: dict[int, tuple[tuple[int, int], bytes]] = {}
        self._waiting: list[tuple[int, float, bytes, bool]] = []
        self._last_pts = [-1] * len(tracks)
        self.origin: float | None = None
        self.frames = 0
        self.end_seconds = 0.0
        self.closed = False

    @property
    def started(self) -> bool:
        return self._container is not None

    @property
    def bytes_written(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_seconds - self.origin) if self.origin is not None else 0.0

    def add(self, index: int, seconds: float, data: bytes, keyframe: bool) -> None:
        """One frame of track ``index`` at ``seconds`` on the publisher's timeline."""
        if self.closed:
            return
        if self._container is None:
            track = self.tracks[index]
            if track.kind == "video" and index not in self._video_params and keyframe:
                params = self._parameters(track, data)
                if params is not None:
                    self._video_params[index] = params
            self._waiting.append((index, seconds, data, keyframe))
            if len(self._waiting) > MAX_WAITING:
                del self._waiting[0]
            if all(t.kind != "video" or i in self._video_params for i, t in enumerate(self.tracks)):
                self._open()
            return
        self._mux(index, seconds, data, keyframe)

    @staticmethod
    def _parameters(track: TrackFormat, data: bytes) -> tuple[tuple[int, int], bytes] | None:
        if track.codec.lower() == "vp8":
            size = vp8_size(data)
            return (size, b"") if size else None
        return h264_parameters(data)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), "w", format=self.format, options={
            "cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"})
        for i, track in enumerate(self.tracks):
            if track.kind == "video":
                (width, height), extradata = self._video_params[i]
                stream = container.add_stream(track.codec.lower())
                stream.width, stream.height = width, height
                if extradata:
                    stream.codec_context.extradata = extradata
            else:
                stream = container.add_stream("libopus", rate=48000)
                stream.layout = "stereo"
                stream.codec_context.extradata = OPUS_HEAD
            stream.time_base = TIME_BASE
            self._streams[i] = stream
        self._container = container
        # Video starts at its first keyframe; the file starts there or at the first
        # sound before it, whichever is earlier.
        waiting, self._waiting = self._waiting, []
        firsts = {}
        for index, seconds, _, keyframe in waiting:
            if index not in firsts and (self.tracks[index].kind != "video" or keyframe):
                firsts[index] = seconds
        self.origin = min(firsts.values())
        for index, seconds, data, keyframe in waiting:
            if seconds >= firsts.get(index, float("inf")):
                self._mux(index, seconds, data, keyframe)

    def _mux(self, index: int, seconds: float, data: bytes, keyframe: bool) -> None:
        assert self._container is not None and self.origin is not None
        pts = round((seconds - self.origin) * 1000)
        if pts < 0:
            return  # before the file's start (a late frame of another track)
        pts = max(pts, self._last_pts[index] + 1)  # strictly increasing per track
        self._last_pts[index] = pts
        packet = av.Packet(data)
        packet.stream = self._streams[index]
        packet.pts = packet.dts = pts
        packet.time_base = TIME_BASE
        packet.is_keyframe = keyframe
        self._container.mux(packet)
        self.frames += 1
        self.end_seconds = max(self.end_seconds, seconds)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._container is not None:
            self._container.close()
