"""Pure-Python twin of ``sfu._fastpath``: the oracle the Cython code is tested against.

Same functions, same results, byte for byte. It is also the path used when the
compiled module is deliberately disabled (``SFU_PURE_PYTHON=1``) so benchmarks
can compare the two.
"""

from __future__ import annotations

import struct

CODEC_OTHER = 0
CODEC_VP8 = 1
CODEC_H264 = 2
CODEC_OPUS = 3

_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A packet we drop; ``args[0]`` is the metric reason."""


class RtpInfo:
    """What the router needs from one RTP packet, parsed once and shared by all consumers."""

    __slots__ = (
        "payload_type", "marker", "sequence", "timestamp", "ssrc",
        "csrc_count", "payload_offset", "payload_length",
        "mid", "rid", "repaired_rid", "abs_send_time", "audio_level",
    )

    def __init__(self) -> None:
        self.mid: bytes | None = None
        self.rid: bytes | None = None
        self.repaired_rid: bytes | None = None
        self.abs_send_time: bytes | None = None
        self.audio_level: bytes | None = None


class ExtIds:
    """Header extension ids negotiated with one peer (0 = not negotiated)."""

    __slots__ = ("mid", "rid", "repaired_rid", "abs_send_time", "audio_level")

    def __init__(self, mid: int = 0, rid: int = 0, repaired_rid: int = 0,
                 abs_send_time: int = 0, audio_level: int = 0) -> None:
        self.mid = mid
        self.rid = rid
        self.repaired_rid = repaired_rid
        self.abs_send_time = abs_send_time
        self.audio_level = audio_level


def parse_rtp(data: bytes, ids: ExtIds) -> RtpInfo:
    n = len(data)
    if n < 12:
        raise RtpError("rtp_truncated")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
    if b0 >> 6 != 2:
        raise RtpError("rtp_bad_version")
    cc = b0 & 0x0F
    pos = 12 + 4 * cc
    if pos > n:
        raise RtpError("rtp_truncated")
    info = RtpInfo()
    info.payload_type = b1 & 0x7F
    info.marker = b1 >> 7
    info.sequence = seq
    info.timestamp = ts
    info.ssrc = ssrc
    info.csrc_count = cc
    if b0 & 0x10:
        if pos + 4 > n:
            raise RtpError("rtp_truncated")
        profile, words = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + 4 * words
        if end > n:
            raise RtpError("rtp_truncated")
        _parse_extensions(data, pos + 4, end, profile, ids, info)
        pos = end
    padding = 0
    if b0 & 0x20:
        if n == pos:
            raise RtpError("rtp_bad_padding")
        padding = data[n - 1]
        if padding == 0 or pos + padding > n:
            raise RtpError("rtp_bad_padding")
    info.payload_offset = pos
    info.payload_length = n - pos - padding
    return info


def _parse_extensions(data: bytes, pos: int, end: int, profile: int, ids: ExtIds, info: RtpInfo) -> None:
    if profile == 0xBEDE:
        two_byte = False
    elif profile & 0xFFF0 == 0x1000:
        two_byte = True
    else:
        return  # an extension profile we do not know: skip it whole
    while pos < end:
        if two_byte:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise RtpError("rtp_bad_extension")
            length = data[pos + 1]
            pos += 2
        else:
            b = data[pos]
            if b == 0:
                pos += 1
                continue
            ext_id = b >> 4
            if ext_id == 15:
                return  # reserved: stop parsing (RFC 8285 §4.2)
            length = (b & 0x0F) + 1
            pos += 1
        if pos + length > end:
            raise RtpError("rtp_bad_extension")
        value = bytes(data[pos:pos + length])
        if ext_id == ids.mid:
            info.mid = value
        elif ext_id == ids.rid:
            info.rid = value
        elif ext_id == ids.repaired_rid:
            info.repaired_rid = value
        elif ext_id == ids.abs_send_time and length == 3:
            info.abs_send_time = value
        elif ext_id == ids.audio_level and length == 1:
            info.audio_level = value
        pos += length


def rewrite_rtp(data: bytes, info: RtpInfo, payload_type: int, sequence: int, timestamp: int,
                ssrc: int, ids: ExtIds, mid: bytes) -> bytes:
    """The packet as one consumer receives it.

    New SSRC, sequence number, timestamp and payload type; the header
    extensions re-encoded (one-byte form) with the *viewer's* ids: mid set to
    the viewer's mid, abs-send-time and audio level carried over, the rest
    dropped, since the viewer never negotiated them. Padding is removed.
    """
    ext = bytearray()
    if ids.mid and 0 < len(mid) <= 16:
        ext.append((ids.mid << 4) | (len(mid) - 1))
        ext += mid
    if ids.abs_send_time and info.abs_send_time is not None:
        ext.append((ids.abs_send_time << 4) | 2)
        ext += info.abs_send_time
    if ids.audio_level and info.audio_level is not None:
        ext.append(ids.audio_level << 4)
        ext += info.audio_level
    cc = info.csrc_count
    b0 = 0x80 | cc
    if ext:
        b0 |= 0x10
        ext += bytes(-len(ext) % 4)
    out = bytearray(_HEADER.pack(b0, (info.marker << 7) | payload_type, sequence & 0xFFFF,
                                 timestamp & 0xFFFFFFFF, ssrc))
    out += data[12:12 + 4 * cc]
    if ext:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4)
        out += ext
    out += data[info.payload_offset:info.payload_offset + info.payload_length]
    return bytes(out)


def wrap_rtx(packet: bytes, payload_offset: int, payload_type: int, sequence: int, ssrc: int) -> bytes:
    """RFC 4588: the packet resent on the RTX stream, original sequence number first."""
    osn = packet[2:4]
    header = bytearray(packet[:payload_offset])
    header[1] = (header[1] & 0x80) | payload_type
    struct.pack_into("!H", header, 2, sequence & 0xFFFF)
    struct.pack_into("!I", header, 8, ssrc)
    return bytes(header) + osn + packet[payload_offset:]


def unwrap_rtx(data: bytes, info: RtpInfo, payload_type: int, ssrc: int) -> bytes:
    """RFC 4588: rebuild the original packet from an RTX one (padding dropped)."""
    if info.payload_length < 2:
        raise RtpError("rtx_no_osn")
    off = info.payload_offset
    header = bytearray(data[:off])
    header[0] &= 0xDF  # the padding, if any, belonged to the RTX packet
    header[1] = (header[1] & 0x80) | payload_type
    header[2:4] = data[off:off + 2]
    struct.pack_into("!I", header, 8, ssrc)
    return bytes(header) + data[off + 2:off + info.payload_length]


def is_keyframe(codec: int, data: bytes, info: RtpInfo) -> bool:
    """Whether this packet starts a keyframe (VP8 RFC 7741, H264 RFC 6184)."""
    pos = info.payload_offset
    end = pos + info.payload_length
    if codec == CODEC_VP8:
        if pos >= end:
            return False
        d = data[pos]
        if not d & 0x10 or d & 0x07:  # S bit, partition 0
            return False
        pos += 1
        if d & 0x80:  # X: extension byte
            if pos >= end:
                return False
            x = data[pos]
            pos += 1
            if x & 0x80:  # I: picture id
                if pos >= end:
                    return False
                pos += 2 if data[pos] & 0x80 else 1
            if x & 0x40:  # L: TL0PICIDX
                pos += 1
            if x & 0x30:  # T or K
                pos += 1
        return pos < end and not data[pos] & 0x01  # P bit 0 = keyframe
    if codec == CODEC_H264:
        if pos >= end:
            return False
        nal = data[pos] & 0x1F
        if nal in (5, 7):
            return True
        if nal == 24:  # STAP-A: walk the aggregated NAL units
            pos += 1
            while pos + 2 < end:
                size = (data[pos] << 8) | data[pos + 1]
                if size == 0 or pos + 2 + size > end:
                    return False
                if data[pos + 2] & 0x1F in (5, 7):
                    return True
                pos += 2 + size
            return False
        if nal == 28:  # FU-A: start fragment of an IDR
            return pos + 1 < end and bool(data[pos + 1] & 0x80) and data[pos + 1] & 0x1F in (5, 7)
        return False
    return False
