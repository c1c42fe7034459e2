"""Recorder: RTP in from the shards, one file per publisher and segment out.

Each publisher being recorded is a ``PublisherRecording``: per track a jitter
buffer, a depacketizer and a clock, feeding one ``SegmentWriter``. Holes are
asked for again once (generic NACK; the shard answers from its history as for
any viewer), then given up after the buffer's depth; a video track that lost a
frame asks for a keyframe (PLI, at most once a second) and skips to it.

A recording's files live in ``<recordings>/<recording id>/``, described by
``recording.json`` (rewritten every couple of seconds and at the end), so what
a crash leaves is listed too. A restarted recorder writes the next segment.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRtpfbPacket, RtcpSrPacket, RtpPacket

from .. import control
from .depacketizer import Depacketizer, Frame, for_codec
from .jitter_buffer import JitterBuffer
from .timeline import TrackClock
from .writer import SegmentWriter, TrackFormat

JITTER_DEPTH_S = 0.3
SYNC_HOLD_S = 2.0  # frames wait this long for their track's first sender report
KEYFRAME_REQUEST_INTERVAL_S = 1.0
MANIFEST_INTERVAL_S = 2.0
SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(value: str) -> str:
    """A room or peer id as a file name: nothing that could leave the directory."""
    return SAFE_ID.sub("_", value)[:80] or "_"


@dataclass
class Track:
    spec: control.RecordTrack
    buffer: JitterBuffer
    depacketizer: Depacketizer
    clock: TrackClock
    held: list[Frame] = field(default_factory=list)  # waiting for the clock
    nacked: set[int] = field(default_factory=set)
    last_keyframe_request: float = 0.0


class PublisherRecording:
    def __init__(self, start: control.StartRecording, directory: Path, send_rtcp: Callable[[bytes], None],
                 *, depth_s: float = JITTER_DEPTH_S, hold_s: float = SYNC_HOLD_S) -> None:
        self.start = start
        self.directory = directory
        self.send_rtcp = send_rtcp
        self.hold_s = hold_s
        self.tracks = [Track(spec, JitterBuffer(depth_s), for_codec(spec.codec), TrackClock(spec.clock_rate))
                       for spec in start.tracks]
        self.by_ssrc: dict[int, Track] = {t.spec.ssrc: t for t in self.tracks}
        self.rtx: dict[int, Track] = {t.spec.rtx_ssrc: t for t in self.tracks if t.spec.rtx_ssrc}
        self.segment = self._next_segment()
        extension = "webm" if all(t.spec.codec.lower() in ("vp8", "opus") for t in self.tracks) else "mkv"
        self.file = directory / f"{safe_name(start.publisher_id)}-{self.segment:03d}.{extension}"
        self.writer = SegmentWriter(self.file, [TrackFormat(t.spec.kind, t.spec.codec) for t in self.tracks])
        self.started_at = time.time()
        self.first_arrival: float | None = None
        self.max_lag_s = 0.0
        self.ssrc = 0x5EC0DE00 | (self.segment & 0xFF)  # ours, in the RTCP we send
        for track in self.tracks:
            if track.spec.kind == "video":
                self._request_keyframe(track, time.monotonic())

    def _next_segment(self) -> int:
        prefix = safe_name(self.start.publisher_id) + "-"
        taken = [int(p.stem[len(prefix):]) for p in self.directory.glob(prefix + "*")
                 if p.stem[len(prefix):].isdigit()] if self.directory.exists() else []
        return max(taken, default=-1) + 1

    # --- in ------------------------------------------------------------------------------

    def on_rtp(self, packet: RtpPacket, now: float) -> None:
        track = self.by_ssrc.get(packet.ssrc)
        payload = packet.payload
        seq = packet.sequence_number
        if track is None:
            track = self.rtx.get(packet.ssrc)
            if track is None or packet.payload_type != track.spec.rtx_payload_type or len(payload) < 2:
                return
            seq, payload = int.from_bytes(payload[:2], "big"), payload[2:]  # RFC 4588
        elif packet.payload_type != track.spec.payload_type:
            return
        if not payload:
            return  # padding (probes)
        if self.first_arrival is None:
            self.first_arrival = now
        highest = track.buffer._highest_seq
        track.buffer.push(seq, packet.timestamp, bool(packet.marker), payload, now)
        new_highest = track.buffer._highest_seq
        # Video only: shards keep no history of audio (a late Opus frame is no use anyway).
        if (track.spec.kind == "video" and highest is not None and new_highest is not None
                and new_highest > highest + 1):
            self._nack(track, [s & 0xFFFF for s in range(highest + 1, new_highest)])

    def on_sender_report(self, ssrc: int, ntp: int, rtp_ts: int) -> None:
        track = self.by_ssrc.get(ssrc)
        if track is not None:
            track.clock.on_sender_report(ntp, rtp_ts)

    def _nack(self, track: Track, seqs: list[int]) -> None:
        fresh = [s for s in seqs if s not in track.nacked][:64]
        if not fresh:
            return
        track.nacked.update(fresh)
        if len(track.nacked) > 4096:
            track.nacked.clear()
        self.send_rtcp(bytes(RtcpRtpfbPacket(fmt=1, ssrc=self.ssrc, media_ssrc=track.spec.ssrc, lost=fresh)))

    def _request_keyframe(self, track: Track, now: float) -> None:
        if now - track.last_keyframe_request >= KEYFRAME_REQUEST_INTERVAL_S:
            track.last_keyframe_request = now
            self.send_rtcp(bytes(RtcpPsfbPacket(fmt=1, ssrc=self.ssrc, media_ssrc=track.spec.ssrc)))

    # --- out -----------------------------------------------------------------------------

    def tick(self, now: float, *, final: bool = False) -> None:
        """Move what is ready from the buffers into the file."""
        wall_minus_mono = time.time() - time.monotonic()
        for index, track in enumerate(self.tracks):
            packets = track.buffer.flush() if final else track.buffer.pop(now)
            dropped = track.depacketizer.stats.dropped_frames
            for packet in packets:
                track.clock.note_timestamp(packet.timestamp)
                track.held += track.depacketizer.push(packet)
            if final:
                track.held += track.depacketizer.flush()
            if track.spec.kind == "video" and track.depacketizer.stats.dropped_frames > dropped:
                self._request_keyframe(track, now)
            if not track.held:
                continue
            if not track.clock.ready:
                first = track.held[0]
                if not final and now - first.arrival < self.hold_s:
                    continue
                track.clock.on_arrival(first.timestamp, first.arrival + wall_minus_mono)
            for frame in track.held:
                self.writer.add(index, track.clock.seconds(frame.timestamp), frame.data, frame.keyframe)
                self.max_lag_s = max(self.max_lag_s, now - frame.arrival)
            track.held = []

    def close(self) -> None:
        self.tick(time.monotonic(), final=True)
        self.writer.close()

    def stats(self) -> dict[str, Any]:
        return {
            "file": self.file.name, "segment": self.segment, "started_at": self.started_at,
            "duration_s": round(self.writer.duration_s, 3), "bytes": self.writer.bytes_written,
            "frames": self.writer.frames, "complete": self.writer.closed,
            "lost_packets": sum(t.buffer.stats.lost for t in self.tracks),
            "dropped_frames": sum(t.depacketizer.stats.dropped_frames for t in self.tracks),
            "tracks": [{"kind": t.spec.kind, "codec": t.spec.codec} for t in self.tracks],
        }


class Recorder:
    """The recordings one recorder process makes; datagrams in, files out."""

    def __init__(self, root: Path, send: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.root = root
        self.send = send
        self.recordings: dict[tuple[str, str], PublisherRecording] = {}
        self.by_ssrc: dict[int, PublisherRecording] = {}
        self.meta: dict[str, dict[str, Any]] = {}  # recording id -> room, started_at
        self.finished_bytes = 0
        self.finished_lost = 0
        self.malformed = 0
        self._last_manifest = 0.0

    def start(self, start: control.StartRecording) -> str:
        key = (start.recording_id, start.publisher_id)
        if key in self.recordings:
            self.stop(start.recording_id, start.publisher_id)
        directory = self.root / safe_name(start.recording_id)
        addr = (start.shard_host, start.shard_port)
        recording = PublisherRecording(start, directory, lambda data: self.send(data, addr))
        self.recordings[key] = recording
        for track in recording.tracks:
            self.by_ssrc[track.spec.ssrc] = recording
            if track.spec.rtx_ssrc:
                self.by_ssrc[track.spec.rtx_ssrc] = recording
        self.meta.setdefault(start.recording_id, {"room": start.room, "started_at": time.time()})
        self.write_manifest(start.recording_id)
        return recording.file.name

    def stop(self, recording_id: str, publisher_id: str = "") -> int:
        stopped = 0
        for key in [k for k in self.recordings if k[0] == recording_id and (not publisher_id or k[1] == publisher_id)]:
            recording = self.recordings.pop(key)
            for track in recording.tracks:
                self.by_ssrc.pop(track.spec.ssrc, None)
                if track.spec.rtx_ssrc:
                    self.by_ssrc.pop(track.spec.rtx_ssrc, None)
            recording.close()
            self.finished_bytes += recording.writer.bytes_written
            self.finished_lost += sum(t.buffer.stats.lost for t in recording.tracks)
            self.write_manifest(recording_id, ended=[recording])
            stopped += 1
        return stopped

    def on_datagram(self, data: bytes, now: float) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            self.malformed += 1
            return
        if 192 <= data[1] <= 223:  # RTCP (RFC 5761)
            try:
                packets = RtcpPacket.parse(data)
            except ValueError:
                self.malformed += 1
                return
            for packet in packets:
                if isinstance(packet, RtcpSrPacket):
                    recording = self.by_ssrc.get(packet.ssrc)
                    if recording is not None:
                        recording.on_sender_report(packet.ssrc, packet.sender_info.ntp_timestamp,
                                                   packet.sender_info.rtp_timestamp)
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            self.malformed += 1
            return
        recording = self.by_ssrc.get(packet.ssrc)
        if recording is not None:
            recording.on_rtp(packet, now)

    def tick(self, now: float) -> None:
        for recording in self.recordings.values():
            recording.tick(now)
        if now - self._last_manifest >= MANIFEST_INTERVAL_S:
            self._last_manifest = now
            for recording_id in {k[0] for k in self.recordings}:
                self.write_manifest(recording_id)

    def write_manifest(self, recording_id: str, ended: list[PublisherRecording] = ()) -> None:
        """recording.json: what this recording holds so far (read by the replay API)."""
        directory = self.root / safe_name(recording_id)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "recording.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            manifest = {"id": recording_id, **self.meta.get(recording_id, {}), "publishers": {}}
        live = [r for k, r in self.recordings.items() if k[0] == recording_id]
        for recording in [*live, *ended]:
            publisher = manifest["publishers"].setdefault(recording.start.publisher_id, {"segments": []})
            segments = publisher["segments"]
            entry = recording.stats()
            for i, segment in enumerate(segments):
                if segment["file"] == entry["file"]:
                    segments[i] = entry
                    break
            else:
                segments.append(entry)
        manifest["updated_at"] = time.time()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)

    def stats(self) -> dict[str, Any]:
        live = list(self.recordings.values())
        return {
            "recordings": len({k[0] for k in self.recordings}),
            "publishers": len(live),
            "bytes_written": self.finished_bytes + sum(r.writer.bytes_written for r in live),
            "lost_packets": self.finished_lost + sum(t.buffer.stats.lost for r in live for t in r.tracks),
            "lag_seconds": max((r.max_lag_s for r in live), default=0.0),
            "malformed": self.malformed,
        }

    def close(self) -> None:
        for recording_id, publisher_id in list(self.recordings):
            self.stop(recording_id, publisher_id)
