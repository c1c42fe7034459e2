"""Depacketizers: in-order RTP payloads back into whole encoded frames.

One per codec: VP8 (RFC 7741), H264 (RFC 6184: single NAL units, STAP-A,
FU-A; out as Annex B access units) and Opus (RFC 7587: one frame per packet).
A frame with a missing packet is dropped, and for video so is everything until
the next keyframe: a decoder fed a frame whose reference it lacks shows garbage,
a recording with a short freeze does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .jitter_buffer import Packet


@dataclass
class Frame:
    timestamp: int  # unwrapped RTP timestamp
    data: bytes
    keyframe: bool
    arrival: float = 0.0  # when its last packet arrived (monotonic seconds)


@dataclass
class DepacketizerStats:
    frames: int = 0
    dropped_frames: int = 0  # incomplete, or waiting for a keyframe
    malformed: int = 0  # payloads that do not parse


class Depacketizer:
    def __init__(self) -> None:
        self.stats = DepacketizerStats()

    def push(self, packet: Packet) -> list[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def flush(self) -> list[Frame]:
        return []


class OpusDepacketizer(Depacketizer):
    def push(self, packet: Packet) -> list[Frame]:
        if not packet.payload:
            self.stats.malformed += 1
            return []
        self.stats.frames += 1
        return [Frame(packet.timestamp, packet.payload, True, packet.arrival)]


@dataclass
class _Pending:
    timestamp: int
    parts: list[bytes] = field(default_factory=list)
    broken: bool = False
    started: bool = False
    arrival: float = 0.0


class _VideoDepacketizer(Depacketizer):
    """Frames are runs of packets with one timestamp, ended by the marker bit."""

    single_start = True  # VP8: one packet starts the frame; H264: every NAL unit starts

    def __init__(self) -> None:
        super().__init__()
        self._pending: _Pending | None = None
        self._need_keyframe = True

    def push(self, packet: Packet) -> list[Frame]:
        out: list[Frame] = []
        if self._pending is not None and (packet.timestamp != self._pending.timestamp or packet.lost_before):
            # A new frame began before the marker (its last packet was lost), or a packet
            # of this frame is missing.
            if packet.timestamp != self._pending.timestamp:
                out += self._finish(complete=False)
            else:
                self._pending.broken = True
        if self._pending is None:
            self._pending = _Pending(packet.timestamp, broken=packet.lost_before)
        try:
            part, starts = self._payload(packet.payload)
        except ValueError:
            self.stats.malformed += 1
            self._pending.broken = True
            part, starts = b"", False
        if not self.single_start:
            if not starts and not self._pending.started:
                self._pending.broken = True  # a fragment whose first part never came
            self._pending.started = self._continues()
        elif starts:
            if self._pending.parts:
                self._pending.broken = True  # a second start in one frame: something is off
            self._pending.started = True
        elif not self._pending.started:
            self._pending.broken = True  # the frame's first packet never came
        self._pending.parts.append(part)
        self._pending.arrival = packet.arrival
        if packet.marker:
            out += self._finish(complete=True)
        return out

    def _finish(self, complete: bool) -> list[Frame]:
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        data = self._assemble(pending.parts) if complete and not pending.broken else b""
        keyframe = bool(data) and self._is_keyframe(data)
        if not data or (self._need_keyframe and not keyframe):
            self.stats.dropped_frames += 1
            if not data:
                self._need_keyframe = True
            return []
        self._need_keyframe = False
        self.stats.frames += 1
        return [Frame(pending.timestamp, data, keyframe, pending.arrival)]

    def flush(self) -> list[Frame]:
        return self._finish(complete=False)

    def _payload(self, payload: bytes) -> tuple[bytes, bool]:  # pragma: no cover - interface
        raise NotImplementedError

    def _continues(self) -> bool:
        """H264: whether the next packet may continue a fragmented NAL unit."""
        return False

    def _assemble(self, parts: list[bytes]) -> bytes:
        return b"".join(parts)

    def _is_keyframe(self, data: bytes) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class Vp8Depacketizer(_VideoDepacketizer):
    def _payload(self, payload: bytes) -> tuple[bytes, bool]:
        """Strip the VP8 payload descriptor; starts = S bit on partition 0."""
        if not payload:
            raise ValueError("empty VP8 payload")
        b0 = payload[0]
        pos = 1
        if b0 & 0x80:  # X: extension byte
            if len(payload) < 2:
                raise ValueError("truncated VP8 descriptor")
            x = payload[1]
            pos = 2
            if x & 0x80:  # I: picture id, 7 or 15 bits
                if len(payload) <= pos:
                    raise ValueError("truncated VP8 picture id")
                pos += 2 if payload[pos] & 0x80 else 1
            if x & 0x40:  # L: TL0PICIDX
                pos += 1
            if x & 0x30:  # T or K: TID/Y/KEYIDX
                pos += 1
        if pos > len(payload):
            raise ValueError("truncated VP8 descriptor")
        starts = bool(b0 & 0x10) and (b0 & 0x07) == 0
        return payload[pos:], starts

    def _is_keyframe(self, data: bytes) -> bool:
        return len(data) >= 10 and not data[0] & 0x01 and data[3:6] == b"\x9d\x01\x2a"


START_CODE = b"\x00\x00\x00\x01"


class H264Depacketizer(_VideoDepacketizer):
    single_start = False

    def __init__(self) -> None:
        super().__init__()
        self._fu_open = False

    def _continues(self) -> bool:
        return self._fu_open

    def _payload(self, payload: bytes) -> tuple[bytes, bool]:
        """NAL units as Annex B; starts = the packet begins a NAL unit (any but an FU-A middle/end)."""
        self._fu_open = False
        if not payload:
            raise ValueError("empty H264 payload")
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:
            return START_CODE + payload, True
        if nal_type == 24:  # STAP-A: 16-bit sizes, then NAL units
            out, pos = bytearray(), 1
            while pos < len(payload):
                if pos + 2 > len(payload):
                    raise ValueError("truncated STAP-A")
                size = int.from_bytes(payload[pos:pos + 2], "big")
                pos += 2
                if size == 0 or pos + size > len(payload):
                    raise ValueError("bad STAP-A unit size")
                out += START_CODE + payload[pos:pos + size]
                pos += size
            return bytes(out), True
        if nal_type == 28:  # FU-A
            if len(payload) < 2:
                raise ValueError("truncated FU-A")
            header = payload[1]
            self._fu_open = not header & 0x40  # until the end bit
            if header & 0x80:  # start: rebuild the NAL header from the FU indicator and header
                return START_CODE + bytes([(payload[0] & 0xE0) | (header & 0x1F)]) + payload[2:], True
            return payload[2:], False
        raise ValueError(f"unsupported H264 packetization (NAL type {nal_type})")

    def _is_keyframe(self, data: bytes) -> bool:
        return any(nal[0] & 0x1F == 5 for nal in _nal_units(data) if nal)


def _nal_units(annex_b: bytes) -> list[bytes]:
    return [unit for unit in annex_b.split(START_CODE) if unit]


def for_codec(name: str) -> Depacketizer:
    name = name.lower()
    if name == "vp8":
        return Vp8Depacketizer()
    if name == "h264":
        return H264Depacketizer()
    if name == "opus":
        return OpusDepacketizer()
    raise ValueError(f"no depacketizer for {name}")
