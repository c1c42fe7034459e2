"""Pure-Python twin of ``sfu._fastpath``: the oracle the Cython code is tested against.

Same functions, same results, byte for byte. It is also the path used when the
compiled module is deliberately disabled (``SFU_PURE_PYTHON=1``) so benchmarks
can compare the two.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import deque
from typing import Any, Callable

from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from .shard.retransmission_buffer import RetransmissionBuffer
from .shard.rtp_stream_stats import RtpStreamStats

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
    """Whether this packet starts a keyframe (VP8 RFC 7741, H264 RFC 6184): the engine's ``_keyframe``."""
    pos = info.payload_offset
    end = pos + info.payload_length
    if pos < 0 or end > len(data) or pos >= end:
        return False
    return _keyframe(codec, data, pos, end)


# =====================================================================================
# The forwarding engine, in Python: the twin of ``sfu._fastpath.Engine``.
#
# Same constructor, methods and results; the same datagrams leave for the same
# input, byte for byte before SRTP; the same drops are counted for the same
# reasons. It reads with ``recvfrom`` and sends with ``sendto`` on a duplicate
# of the engine's socket, and calls libsrtp through pylibsrtp's CFFI binding.
# Records mirror the C structs; slots are allocated the same way (lowest free
# index), so callers see the same numbers and iteration orders match.
# =====================================================================================

SLOT = 2048            # bytes per datagram slot (longer datagrams are truncated to it)
MAX_RTP = 1800         # larger incoming media is dropped
IN_BATCH = 64          # datagrams per batch read
MAX_BATCHES = 16       # batches per readable event
MAX_SENDS_PER_READABLE = 8192  # and no more packets out than this per readable event
RING = 1024            # NACK history per video producer, in packets
PACER_QUEUE = 1024     # paced packets a consumer may hold: a whole history GOP for a joiner
PROBE_BURST_S = 0.02   # a probing consumer's padding may bunch up to this much of its rate
PACE_BURST_S = 0.04   # a transport paced at its own rate sends bursts of at most this much of it
PACE_MIN_BURST = 2400  # ... and never less than this (one large packet and a small one)
PROBE_SPAN = 8         # probes copy the consumer's newest packets, this many back
TWCC_RING = 1024       # packets sent to a transport-cc viewer whose send time and size we keep
TWCC_UNREPORTED = -(1 << 63) + 1  # arrival of a packet no feedback mentioned yet
TWCC_LOST = -(1 << 63) + 2        # ... of one a feedback reported not received
KEYFRAME_ASK_INTERVAL_S = 1.0  # a waiting consumer asks for a keyframe at most this often
GAP_CLOSE = 64         # more packets than this missing at once: an outage, closed at a keyframe (see _forward)
SWITCH_HORIZON = 0x4000  # a renumbering point this far behind is forgotten (see _forward)
RTT_MAX_S = 10.0       # a round trip longer than this is a stale or forged report, not a measurement

DROP_REASONS = (
    "unknown_address", "srtp_not_ready", "srtp_unprotect_failed", "srtcp_unprotect_failed",
    "rtp_truncated", "rtp_bad_version", "rtp_bad_padding", "rtp_bad_extension", "rtp_too_large",
    "rtp_unknown_ssrc", "rtp_unexpected_payload_type", "rtp_padding_only", "rtx_no_osn",
    "rtcp_malformed", "waiting_for_keyframe", "nack_not_in_buffer", "srtp_protect_failed",
    "send_failed", "pacer_queue_full", "pacer_expired", "unknown_protocol", "empty_datagram",
    "nack_over_budget", "pacer_superseded", "red_malformed", "late_before_switch",
    "held_for_switch", "nack_held",
)
(D_UNKNOWN_ADDRESS, D_SRTP_NOT_READY, D_SRTP_UNPROTECT, D_SRTCP_UNPROTECT,
 D_RTP_TRUNCATED, D_RTP_BAD_VERSION, D_RTP_BAD_PADDING, D_RTP_BAD_EXTENSION, D_RTP_TOO_LARGE,
 D_RTP_UNKNOWN_SSRC, D_RTP_UNEXPECTED_PT, D_RTP_PADDING_ONLY, D_RTX_NO_OSN,
 D_RTCP_MALFORMED, D_WAITING_KEYFRAME, D_NACK_NOT_IN_BUFFER, D_SRTP_PROTECT,
 D_SEND_FAILED, D_PACER_QUEUE_FULL, D_PACER_EXPIRED, D_UNKNOWN_PROTOCOL, D_EMPTY,
 D_NACK_OVER_BUDGET, D_PACER_SUPERSEDED, D_RED_MALFORMED, D_LATE_BEFORE_SWITCH,
 D_HELD_FOR_SWITCH, D_NACK_HELD) = range(len(DROP_REASONS))

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_SEQ_TS_SSRC = struct.Struct("!HII")
_SR_INFO = struct.Struct("!III")
_RR_BLOCK = struct.Struct("!IIIIII")
_RTCP_HEAD = struct.Struct("!BBHI")
_PLI = struct.Struct("!BBHII")
_TWCC_PADDING = struct.Struct("!BBHIIIBHBI")  # padding-only packet with the transport-wide sequence number


class _Hdr:
    """One parsed RTP header: offsets into the datagram (the C ``Hdr``)."""

    __slots__ = ("pt", "marker", "seq", "ts", "ssrc", "cc", "payload_off", "payload_len",
                 "mid_off", "mid_len", "rid_off", "rid_len", "rrid_off", "rrid_len", "abs_off", "level_off")


def _parse(p: bytes | bytearray, n: int, id_mid: int, id_abs: int, id_level: int,
           id_rid: int = 0, id_rrid: int = 0) -> _Hdr | int:
    """The header of ``p[:n]``, or the index of the drop reason."""
    if n < 12:
        return D_RTP_TRUNCATED
    b0 = p[0]
    if b0 >> 6 != 2:
        return D_RTP_BAD_VERSION
    h = _Hdr()
    h.cc = b0 & 0x0F
    pos = 12 + 4 * h.cc
    if pos > n:
        return D_RTP_TRUNCATED
    h.pt = p[1] & 0x7F
    h.marker = p[1] >> 7
    h.seq, h.ts, h.ssrc = _SEQ_TS_SSRC.unpack_from(p, 2)
    h.mid_off = h.abs_off = h.level_off = h.rid_off = h.rrid_off = -1
    h.mid_len = h.rid_len = h.rrid_len = 0
    if b0 & 0x10:
        if pos + 4 > n:
            return D_RTP_TRUNCATED
        profile = (p[pos] << 8) | p[pos + 1]
        end = pos + 4 + 4 * ((p[pos + 2] << 8) | p[pos + 3])
        if end > n:
            return D_RTP_TRUNCATED
        pos += 4
        if profile == 0xBEDE or (profile & 0xFFF0) == 0x1000:
            two_byte = profile != 0xBEDE
            while pos < end:
                if p[pos] == 0:
                    pos += 1
                    continue
                if two_byte:
                    if pos + 2 > end:
                        return D_RTP_BAD_EXTENSION
                    ext_id = p[pos]
                    length = p[pos + 1]
                    pos += 2
                else:
                    ext_id = p[pos] >> 4
                    if ext_id == 15:
                        break
                    length = (p[pos] & 0x0F) + 1
                    pos += 1
                if pos + length > end:
                    return D_RTP_BAD_EXTENSION
                if ext_id == id_mid and id_mid:
                    h.mid_off = pos
                    h.mid_len = length
                elif ext_id == id_rid and id_rid:
                    h.rid_off = pos
                    h.rid_len = length
                elif ext_id == id_rrid and id_rrid:
                    h.rrid_off = pos
                    h.rrid_len = length
                elif ext_id == id_abs and id_abs and length == 3:
                    h.abs_off = pos
                elif ext_id == id_level and id_level and length == 1:
                    h.level_off = pos
                pos += length
        pos = end
    padding = 0
    if b0 & 0x20:
        if n == pos:
            return D_RTP_BAD_PADDING
        padding = p[n - 1]
        if padding == 0 or pos + padding > n:
            return D_RTP_BAD_PADDING
    h.payload_off = pos
    h.payload_len = n - pos - padding
    return h


def _vp8_header(data: bytes | bytearray, pos: int, end: int) -> int:
    """Offset of the VP8 payload header after the RFC 7741 descriptor at pos; -1 if cut short."""
    d = data[pos]
    pos += 1
    if d & 0x80:  # X: extension byte
        if pos >= end:
            return -1
        x = data[pos]
        pos += 1
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= end:
                return -1
            pos += 2 if data[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX byte
            pos += 1
    return pos


def _vp8_tid(d: bytes | bytearray, pos: int, end: int) -> int:
    """The VP8 payload descriptor's TID (RFC 7741 §4.2), or -1 when it has none."""
    if pos >= end or not d[pos] & 0x80 or pos + 1 >= end:
        return -1
    x = d[pos + 1]
    pos += 2
    if x & 0x80:  # picture id, 7 or 15 bits
        if pos >= end:
            return -1
        pos += 2 if d[pos] & 0x80 else 1
    if x & 0x40:  # TL0PICIDX
        pos += 1
    if not x & 0x20 or pos >= end:
        return -1
    return d[pos] >> 6


def _vp8_keyframe_size(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Frame size from a VP8 keyframe's first packet (RFC 6386 §9.1); None if not readable."""
    if pos >= end:
        return None
    pos = _vp8_header(data, pos, end)
    if pos < 0 or pos + 10 > end or data[pos + 3:pos + 6] != b"\x9d\x01\x2a":
        return None
    return (data[pos + 6] | (data[pos + 7] << 8)) & 0x3FFF, (data[pos + 8] | (data[pos + 9] << 8)) & 0x3FFF


def _keyframe(codec: int, data: bytes | bytearray, pos: int, end: int) -> bool:
    if pos >= end:
        return False
    if codec == CODEC_VP8:
        d = data[pos]
        if not d & 0x10 or d & 0x07:  # S bit, partition 0
            return False
        pos = _vp8_header(data, pos, end)
        return 0 <= pos < end and not data[pos] & 0x01  # P bit 0 = keyframe
    if codec == CODEC_H264:
        nal = data[pos] & 0x1F
        if nal == 5 or nal == 7:
            return True
        if nal == 24:
            pos += 1
            while pos + 2 < end:
                size = (data[pos] << 8) | data[pos + 1]
                if size == 0 or pos + 2 + size > end:
                    return False
                if data[pos + 2] & 0x1F in (5, 7):
                    return True
                pos += 2 + size
            return False
        if nal == 28:
            return pos + 1 < end and bool(data[pos + 1] & 0x80) and data[pos + 1] & 0x1F in (5, 7)
    return False


def _red_primary(p: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """Where the primary block's data starts in the RED payload p[pos:end] (RFC 2198 §3),
    and its PT; (-1, 0) if malformed.

    Block headers of 4 bytes while F is set (F, block PT, 14-bit timestamp offset,
    10-bit length), then one byte (F=0, PT) for the primary; the redundant blocks'
    data follows in order, then the primary's, which runs to the end and may not be
    empty.
    """
    redundant = 0
    while True:
        if pos >= end:
            return -1, 0  # the headers run past the payload
        if not p[pos] & 0x80:
            break
        if pos + 4 > end:
            return -1, 0
        redundant += ((p[pos + 2] & 0x03) << 8) | p[pos + 3]
        pos += 4
    primary_pt = p[pos] & 0x7F
    pos += 1 + redundant
    if pos >= end:
        return -1, 0  # blocks past the end, or an empty primary
    return pos, primary_pt


def _red_remap(p: bytearray, start: int, end: int, from_pt: int, to_pt: int) -> None:
    """Renumber the block headers of the (valid) RED payload p[start:end] carrying ``from_pt``."""
    pos = start
    while pos < end:
        if p[pos] & 0x7F == from_pt:
            p[pos] = ((p[pos] & 0x80) | to_pt) & 0xFF
        if not p[pos] & 0x80:
            return
        pos += 4


def _check_uint(value: int, bits: int) -> int:
    """What Cython's conversion to an unsigned C integer accepts."""
    value = int(value)
    if value < 0:
        raise OverflowError("can't convert negative value to unsigned int")
    if value >> bits:
        raise OverflowError(f"value too large to convert to uint{bits}_t")
    return value


def _sockaddr(host: str, port: int) -> tuple[str, int]:
    """The address in the form the kernel reports it: a key for the address map."""
    if not isinstance(host, str):
        raise TypeError(f"host must be str, not {type(host).__name__}")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return socket.inet_ntop(family, packed), port & 0xFFFF
    raise ValueError(f"not an IP address: {host!r}")


class _Transport:
    __slots__ = ("has_addr", "addr", "srtp_rx", "srtp_tx", "sessions", "secure", "ready",
                 "id_mid", "id_abs", "id_level", "id_rid", "id_rrid", "last_seen", "rtcp_ssrc", "packets_in", "rtcp_in",
                 "bytes_in", "packets_out", "bytes_out", "remb_bps", "tokens", "tokens_at", "pace_rate", "pace_burst", "remb_fell",
                 "n_producers", "id_twcc", "twcc", "rtt")

    def __init__(self) -> None:
        self.has_addr = False
        self.addr: tuple[str, int] | None = None
        self.srtp_rx: Any = None  # srtp_t of libsrtp, through CFFI
        self.srtp_tx: Any = None
        self.sessions: tuple[Any, Any] | None = None  # the pylibsrtp Sessions we keep alive
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.rtcp_in = 0
        self.remb_bps = 0
        self.pace_rate = self.pace_burst = 0.0
        self.remb_fell = False
        self.n_producers = 0
        self.id_twcc = 0  # transport-cc extension id we stamp on all we send (0: none)
        self.twcc: _Twcc | None = None  # only while id_twcc is set
        self.rtt = -1.0  # the newest round trip measured to any of its consumers (s), -1 if none yet


class _Twcc:
    """Transport-wide congestion control of one viewer (the C ``TwccRec``): what we sent
    it by transport-wide sequence number, and what its feedback said of each. Packet k
    (k-th stamped, from 0) is at k % TWCC_RING and carries sequence number k & 0xFFFF."""

    __slots__ = ("sent", "arrival", "size", "count", "taken", "reported_end", "has_ref", "last_ref", "ref",
                 "feedbacks")

    def __init__(self) -> None:
        self.sent = [0.0] * TWCC_RING      # when it left (monotonic seconds)
        self.arrival = [0] * TWCC_RING     # receiver clock, 250 us ticks; TWCC_UNREPORTED, TWCC_LOST
        self.size = [0] * TWCC_RING        # bytes on the wire (after SRTP)
        self.count = 0                     # packets stamped so far
        self.taken = 0                     # first packet take_twcc has not returned
        self.reported_end = 0              # one past the newest packet a feedback reported
        self.has_ref = False
        self.last_ref = 0                  # the last feedback's 24-bit reference time
        self.ref = 0                       # ... unwrapped, in 64 ms units
        self.feedbacks = 0


class _Producer:
    __slots__ = ("transport", "is_video", "codec", "pt", "rtx_pt", "red_pt", "clock_rate", "ssrc",
                 "rtx_ssrc", "has_ssrc", "has_rtx_ssrc", "mid", "rid", "width", "height", "stats", "ring", "last_pli",
                 "last_key_seq", "last_key_ts", "max_tid", "level_sum", "level_count", "level_voiced",
                 "pli_pending", "pli_sent", "pli_coalesced", "consumers", "has_gap", "gap_before",
                 "gap_after")


class _Consumer:
    __slots__ = ("transport", "producer", "is_video", "pt", "rtx_pt", "red_pt", "has_rtx", "nack", "ssrc",
                 "rtx_ssrc", "id_mid", "id_abs", "id_level", "mid", "started", "first_seq",
                 "first_ts", "seq_offset", "ts_offset", "rtx_seq", "packets_sent", "bytes_sent",
                 "nacks_served", "keyframe_asked", "queue", "target", "is_vp8", "last_seq", "last_ts",
                 "last_at", "switched", "switch_seq", "pic_offset", "tl0_offset", "last_pic", "last_tl0",
                 "pic_reset", "fraction_lost", "reports", "prev_producer", "prev_start_seq", "prev_seq_offset",
                 "prev_ts_offset", "prev_pic_offset", "prev_tl0_offset", "probe_rate", "probe_tokens", "probe_at",
                 "probe_k", "probe_bytes", "tid_max", "tid_dropped", "tid_until_switch", "pad", "late_run",
                 "sr_lsr", "sr_at", "rtt", "hold", "prev_held")


def _slot(records: list, record: object) -> int:
    for i, r in enumerate(records):
        if r is None:
            records[i] = record
            return i
    records.append(record)
    return len(records) - 1


class Engine:
    """The shard's packet engine (see ``sfu._fastpath.Engine``), one packet at a time in Python."""

    def __init__(self, fd: int, slow_path: Callable[[bytes, tuple[str, int]], Any], *,
                 keyframe_min_interval_s: float = 0.5, pacer_enabled: bool = True,
                 pacer_rate_bps: float = 20_000_000, pacer_burst_bytes: float = 30_000) -> None:
        """``fd``: the shard's non-blocking UDP socket. ``slow_path(data, addr)`` gets
        every datagram the engine does not forward itself (STUN, DTLS)."""
        self._sock = socket.socket(fileno=os.dup(int(fd)))
        self._sock.setblocking(False)
        self._slow_path = slow_path
        self.keyframe_min_interval_s = float(keyframe_min_interval_s)
        self.pacer_enabled = bool(pacer_enabled)
        self.pacer_rate_bytes_s = pacer_rate_bps / 8.0
        self.pacer_burst_bytes = float(pacer_burst_bytes)
        self._transports: list[_Transport | None] = []
        self._producers: list[_Producer | None] = []
        self._consumers: list[_Consumer | None] = []
        self._addr_map: dict[tuple[str, int], int] = {}
        self._ssrc_map: dict[tuple[int, int], int] = {}       # (transport, ssrc) -> producer << 1 | is_rtx
        self._consumer_map: dict[tuple[int, int], int] = {}   # (transport, consumer ssrc) -> consumer
        self._srtp_buf = _srtp_ffi.new("unsigned char[]", SLOT)
        self._srtp_len = _srtp_ffi.new("int *")
        self._drops = [0] * len(DROP_REASONS)
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.nacks_received = self.keyframe_requests_received = self.rtcp_in = 0
        self.nacks_served = self.pli_sent = self.pli_coalesced = 0
        self.keyframe_history_starts = 0
        self._paced_consumers = 0
        self._live_consumers = 0  # how far one packet can fan out, at most
        self._probing_consumers = 0
        self.remb_falls = 0
        self.probe_packets = self.probe_bytes = 0
        self.twcc_feedbacks = 0

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    # --- slots ----------------------------------------------------------------------

    def _transport(self, t: int) -> _Transport:
        if t < 0 or t >= len(self._transports) or self._transports[t] is None:
            raise KeyError(f"no transport {t}")
        return self._transports[t]

    def _producer(self, p: int) -> _Producer:
        if p < 0 or p >= len(self._producers) or self._producers[p] is None:
            raise KeyError(f"no producer {p}")
        return self._producers[p]

    def _consumer(self, c: int) -> _Consumer:
        if c < 0 or c >= len(self._consumers) or self._consumers[c] is None:
            raise KeyError(f"no consumer {c}")
        return self._consumers[c]

    # --- control: transports ----------------------------------------------------------

    def add_transport(self, *, secure: bool = True, mid: int = 0, abs_send_time: int = 0,
                      audio_level: int = 0, rtcp_ssrc: int = 1) -> int:
        """A peer's association. ``secure``: SRTP once keys arrive; else plain RTP."""
        rtcp_ssrc = _check_uint(rtcp_ssrc, 32)
        tr = _Transport()
        tr.secure = bool(secure)
        tr.ready = not secure
        tr.id_mid, tr.id_abs, tr.id_level = int(mid), int(abs_send_time), int(audio_level)
        tr.id_rid = tr.id_rrid = 0
        tr.rtcp_ssrc = rtcp_ssrc
        tr.last_seen = time.monotonic()
        tr.tokens = self.pacer_burst_bytes
        tr.tokens_at = tr.last_seen
        return _slot(self._transports, tr)

    def set_transport_extensions(self, t: int, *, mid: int = 0, abs_send_time: int = 0,
                                 audio_level: int = 0, rid: int = 0, repaired_rid: int = 0,
                                 transport_cc: int = 0) -> None:
        """The ids of what the peer sends us; ``transport_cc``: the transport-wide sequence
        number extension we stamp on all we send it (0: none; see ``add_consumer``)."""
        tr = self._transport(t)
        self._set_twcc(tr, int(transport_cc))
        tr.id_mid, tr.id_abs, tr.id_level = int(mid), int(abs_send_time), int(audio_level)
        tr.id_rid, tr.id_rrid = int(rid), int(repaired_rid)

    @staticmethod
    def _set_twcc(tr: _Transport, ext_id: int) -> None:
        """Stamp (1-14) or stop stamping (0) transport-wide sequence numbers on transport tr."""
        if not 0 <= ext_id <= 14:
            raise ValueError(f"transport_cc must be a one-byte extension id 1-14, or 0: {ext_id}")
        if ext_id == 0:
            tr.twcc = None
        elif tr.twcc is None:
            tr.twcc = _Twcc()
        tr.id_twcc = ext_id

    def set_transport_address(self, t: int, host: str, port: int) -> None:
        """Where the peer is (ICE told us): its datagrams are now recognised, ours go there."""
        tr = self._transport(t)
        addr = _sockaddr(host, port)  # a bad host changes nothing
        if tr.has_addr and self._addr_map.get(tr.addr) == t:
            del self._addr_map[tr.addr]
        tr.addr = addr
        tr.has_addr = True
        other = self._addr_map.get(tr.addr, -1)
        if other >= 0 and other != t:
            self._transports[other].has_addr = False  # the newest peer at an address wins
        self._addr_map[tr.addr] = t

    def set_transport_srtp(self, t: int, rx_session: Any, tx_session: Any) -> None:
        """Install libsrtp contexts (pylibsrtp Sessions; we keep them alive)."""
        tr = self._transport(t)
        tr.srtp_rx = rx_session._srtp[0]
        tr.srtp_tx = tx_session._srtp[0]
        tr.sessions = (rx_session, tx_session)
        tr.ready = True

    def transport_last_seen(self, t: int) -> float:
        return self._transport(t).last_seen

    def touch_transport(self, t: int) -> None:
        """A valid STUN check or DTLS record counts as a sign of life too."""
        self._transport(t).last_seen = time.monotonic()

    def transport_received(self, t: int) -> int:
        """Authenticated RTP and RTCP packets received from the peer."""
        tr = self._transport(t)
        return tr.packets_in + tr.rtcp_in

    def transport_sent_bytes(self, t: int) -> int:
        """Bytes sent to transport t so far (media, RTX, probes, RTCP; after SRTP)."""
        return self._transport(t).bytes_out

    def set_transport_pacing(self, t: int, bps: float) -> None:
        """Pace what goes to transport t at ``bps`` (0: the engine's rate), in bursts of
        at most 40 ms of it: a viewer's narrow link then queues a keyframe in our pacer
        instead of losing most of it to a full router queue."""
        tr = self._transport(t)
        if bps > 0:
            tr.pace_rate = bps / 8.0
            tr.pace_burst = min(self.pacer_burst_bytes, max(PACE_MIN_BURST, tr.pace_rate * PACE_BURST_S))
        else:
            tr.pace_rate = tr.pace_burst = 0.0
        tr.tokens = min(tr.tokens, tr.pace_burst if tr.pace_rate > 0 else self.pacer_burst_bytes)

    def take_remb_falls(self) -> list[int]:
        """Transports whose REMB fell by a fifth or more since the last call."""
        out = []
        for t, tr in enumerate(self._transports):
            if tr is not None and tr.remb_fell:
                tr.remb_fell = False
                out.append(t)
        return out

    def transport_remb_bps(self, t: int) -> int:
        return self._transport(t).remb_bps

    def transport_rtt(self, t: int) -> float:
        """The newest round-trip time (seconds) measured to any consumer of transport t,
        from a receiver report echoing one of our SRs; -1.0 if none yet."""
        return self._transport(t).rtt

    def remove_transport(self, t: int) -> None:
        tr = self._transport(t)
        for i, cr in enumerate(self._consumers):
            if cr is not None and cr.transport == t:
                self.remove_consumer(i)
        for i, pr in enumerate(self._producers):
            if pr is not None and pr.transport == t:
                self.remove_producer(i)
        if tr.has_addr and self._addr_map.get(tr.addr) == t:
            del self._addr_map[tr.addr]
        tr.twcc = None
        self._transports[t] = None

    # --- control: producers -----------------------------------------------------------

    def add_producer(self, t: int, *, video: bool, codec: int, payload_type: int, clock_rate: int,
                     rtx_payload_type: int = -1, ssrc: int | None = None, rtx_ssrc: int | None = None,
                     mid: bytes = b"", rid: bytes = b"", red_payload_type: int = -1) -> int:
        """A track the peer on transport t publishes.

        ``red_payload_type``: RFC 2198 redundant audio wrapping ``payload_type`` (Opus),
        accepted on the media SSRC beside plain packets; each consumer gets it as RED or
        stripped to its primary (``add_consumer``). Audio only: a video packet's payload
        must be readable for keyframes and layers.
        """
        red_payload_type = int(red_payload_type)
        if red_payload_type >= 0 and (video or red_payload_type == payload_type
                                      or red_payload_type == rtx_payload_type):
            raise ValueError(f"red_payload_type {red_payload_type}: RED wraps an audio codec, under its own PT")
        tr = self._transport(t)
        if not isinstance(mid, bytes) or not isinstance(rid, bytes):
            raise TypeError("mid and rid must be bytes")
        pr = _Producer()
        pr.transport = t
        pr.is_video = bool(video)
        pr.codec = int(codec)
        pr.pt = int(payload_type)
        pr.rtx_pt = int(rtx_payload_type)
        pr.red_pt = red_payload_type if red_payload_type >= 0 else -1
        pr.clock_rate = int(clock_rate)
        pr.ssrc = pr.rtx_ssrc = 0
        pr.has_ssrc = pr.has_rtx_ssrc = False
        pr.mid = mid[:16]
        pr.rid = rid[:16]
        pr.width = pr.height = 0
        pr.stats = RtpStreamStats(pr.clock_rate)
        pr.ring = RetransmissionBuffer(RING) if pr.is_video else None
        pr.last_pli = -1e9
        pr.last_key_seq = -1
        pr.max_tid = -1
        pr.last_key_ts = 0
        pr.pli_pending = False
        pr.pli_sent = pr.pli_coalesced = 0
        pr.level_sum = pr.level_count = pr.level_voiced = 0  # RFC 6464, since take_audio_levels()
        # The last outage in the input: more than GAP_CLOSE packets missing between the
        # newest received before it and the first after it.
        pr.has_gap = False
        pr.gap_before = pr.gap_after = 0
        pr.consumers = []
        p = _slot(self._producers, pr)
        if ssrc is not None:
            self._bind_ssrc(p, ssrc, False)
        if rtx_ssrc is not None:
            self._bind_ssrc(p, rtx_ssrc, True)
        tr.n_producers += 1
        return p

    def _bind_ssrc(self, p: int, ssrc: int, rtx: bool) -> None:
        pr = self._producers[p]
        ssrc = _check_uint(ssrc, 32)
        if rtx:
            pr.rtx_ssrc = ssrc
            pr.has_rtx_ssrc = True
        else:
            pr.ssrc = ssrc
            pr.has_ssrc = True
        self._ssrc_map[(pr.transport, ssrc)] = (p << 1) | rtx

    def remove_producer(self, p: int) -> None:
        """Its consumers stay (Python closes them, sending BYE first) but get nothing more."""
        pr = self._producer(p)
        if pr.has_ssrc:
            self._ssrc_map.pop((pr.transport, pr.ssrc), None)
        if pr.has_rtx_ssrc:
            self._ssrc_map.pop((pr.transport, pr.rtx_ssrc), None)
        for other in self._consumers:
            if other is not None and other.prev_producer == p:
                other.prev_producer = -1
        for c in pr.consumers:
            if self._consumers[c].producer == p:
                self._consumers[c].producer = -1
            else:  # waiting to move here: the move is off
                self._consumers[c].target = -1
                if self._consumers[c].hold and self._consumers[c].producer >= 0:
                    # ... and its held layer resumes at its next keyframe
                    self._keyframe_request(self._consumers[c].producer, time.monotonic())
        pr.consumers.clear()
        self._transports[pr.transport].n_producers -= 1
        pr.ring = None
        self._producers[p] = None

    def producer_ssrc(self, p: int) -> int | None:
        pr = self._producer(p)
        return pr.ssrc if pr.has_ssrc else None

    def producer_stats(self, p: int) -> dict:
        pr = self._producer(p)
        s = pr.stats
        return {
            "received": s.received, "bytes": s.bytes,
            "lost": s.lost if s.started else 0,
            "jitter": s.jitter, "jitter_seconds": s.jitter / pr.clock_rate if pr.clock_rate else 0.0,
            "keyframe_requests_sent": pr.pli_sent, "keyframe_requests_coalesced": pr.pli_coalesced,
            "consumers": len(pr.consumers), "width": pr.width, "height": pr.height,
            "temporal_layers": pr.max_tid + 1 if pr.max_tid >= 0 else 1,
        }

    def take_audio_levels(self) -> list[tuple[int, float, float]]:
        """RFC 6464 audio levels since the last call, for active-speaker detection.

        ``(producer, mean_dbov, voiced_fraction)`` for each audio producer that
        received at least one packet with the audio-level extension since then
        (RTX excluded): the mean level as dBov (0.0 loudest, -127.0 silence) and
        the fraction of those packets with the voice-activity bit set. Their
        accumulators start again from zero; producers without samples are left out.
        """
        out = []
        for p, pr in enumerate(self._producers):
            if pr is not None and not pr.is_video and pr.level_count:
                out.append((p, 0.0 - pr.level_sum / pr.level_count, pr.level_voiced / pr.level_count))
                pr.level_sum = pr.level_count = pr.level_voiced = 0
        return out

    # --- control: consumers -----------------------------------------------------------

    def add_consumer(self, t: int, p: int, *, payload_type: int, ssrc: int, rtx_payload_type: int = -1,
                     rtx_ssrc: int | None = None, nack: bool = True, mid: int = 0, abs_send_time: int = 0,
                     audio_level: int = 0, mid_value: bytes = b"", first_seq: int = 0, first_ts: int = 0,
                     first_rtx_seq: int = 0, transport_cc: int = 0, red_payload_type: int = -1) -> int:
        """One producer delivered on transport ``t`` with the viewer's numbering.

        ``red_payload_type``: the viewer takes RFC 2198 RED under this PT; a RED packet
        of the producer goes out as RED, its blocks of the producer's codec renumbered to
        ``payload_type``. -1 (a viewer that did not negotiate RED, the recorder): each
        RED packet goes out as its primary block alone, under ``payload_type``.

        ``transport_cc``: the viewer's transport-cc extension id (0: not negotiated). It
        applies to the whole transport: from then on every packet sent there (media,
        RTX, probes, padding of any consumer) carries the next transport-wide sequence
        number, and the viewer's feedback about them is read (``take_twcc``).
        """
        ssrc = _check_uint(ssrc, 32)
        first_seq = _check_uint(first_seq, 16)
        first_ts = _check_uint(first_ts, 32)
        first_rtx_seq = _check_uint(first_rtx_seq, 16)
        if not isinstance(mid_value, bytes):
            raise TypeError(f"mid_value must be bytes, not {type(mid_value).__name__}")
        tr = self._transport(t)
        pr = self._producer(p)
        if transport_cc:
            self._set_twcc(tr, int(transport_cc))
        cr = _Consumer()
        cr.transport = t
        cr.producer = p
        cr.is_video = pr.is_video
        cr.pt = int(payload_type)
        cr.red_pt = int(red_payload_type) if red_payload_type >= 0 else -1
        cr.ssrc = ssrc
        cr.has_rtx = rtx_ssrc is not None and rtx_payload_type >= 0
        cr.rtx_pt = int(rtx_payload_type)
        cr.rtx_ssrc = _check_uint(rtx_ssrc, 32) if cr.has_rtx else 0
        cr.nack = bool(nack)
        cr.id_mid, cr.id_abs, cr.id_level = int(mid), int(abs_send_time), int(audio_level)
        cr.mid = mid_value if 0 < len(mid_value) <= 16 else b""
        cr.started = False
        cr.first_seq = first_seq
        cr.first_ts = first_ts
        cr.seq_offset = cr.ts_offset = 0
        cr.rtx_seq = first_rtx_seq
        cr.packets_sent = cr.bytes_sent = cr.nacks_served = 0
        cr.keyframe_asked = -1e9
        cr.queue = deque()
        cr.target = -1
        cr.hold = False   # nothing of the current layer goes out until the next keyframe (set_consumer_producer)
        cr.prev_held = False  # ... and what went out before the last renumbering was held: not repaired
        cr.is_vp8 = pr.codec == CODEC_VP8
        cr.last_seq = cr.last_ts = 0
        cr.last_at = 0.0
        cr.switched = False
        cr.switch_seq = cr.pic_offset = cr.tl0_offset = 0
        cr.last_pic = cr.last_tl0 = -1
        cr.tid_max = -1
        cr.tid_dropped = 0
        cr.tid_until_switch = False
        cr.pad: list[tuple[int, int]] | None = None  # our seqs sent as padding, RING of them, with their ts
        cr.pic_reset = False
        cr.fraction_lost = 0
        cr.reports = 0
        cr.prev_producer = -1
        cr.prev_start_seq = cr.prev_seq_offset = cr.prev_ts_offset = cr.prev_pic_offset = cr.prev_tl0_offset = 0
        cr.probe_rate = cr.probe_tokens = cr.probe_at = 0.0
        cr.probe_k = cr.probe_bytes = 0
        cr.late_run = 0   # packets in a row dropped as older than switch_seq
        cr.sr_lsr = 0     # the last SR sent to the viewer: middle 32 bits of its NTP time,
        cr.sr_at = 0.0    # ... and when (engine clock), 0 before the first
        cr.rtt = -1.0     # seconds, -1 until a receiver report echoes an SR
        c = _slot(self._consumers, cr)
        pr.consumers.append(c)
        self._consumer_map[(t, ssrc)] = c
        self._live_consumers += 1
        return c

    @staticmethod
    def _list_remove(consumers: list[int], c: int) -> None:
        for i, other in enumerate(consumers):
            if other == c:
                consumers[i] = consumers[-1]  # the C code's swap-remove: same order after it
                consumers.pop()
                return

    def set_consumer_producer(self, c: int, p: int, hold: bool = False) -> None:
        """Move a consumer to another layer (producer) of its track, at that layer's next keyframe.

        ``hold``: nothing more of the current layer until the consumer's next keyframe
        (media, pacer queue, repairs), and no repairs of it after; a held layer resumes
        only at a keyframe of its own (see the compiled engine)."""
        cr = self._consumer(c)
        pr = self._producer(p)
        if cr.target >= 0:
            self._list_remove(self._producers[cr.target].consumers, c)
            cr.target = -1
        if p == cr.producer:
            if cr.hold:
                self._keyframe_request(p, time.monotonic())
            return
        if not cr.started or cr.producer < 0:
            if cr.producer >= 0:
                self._list_remove(self._producers[cr.producer].consumers, c)
            cr.producer = p
            cr.is_vp8 = pr.codec == CODEC_VP8
            cr.hold = False
        else:
            cr.target = p
            if hold and not cr.hold:
                cr.hold = True
                if cr.queue:
                    self._drops[D_HELD_FOR_SWITCH] += len(cr.queue)
                    cr.queue.clear()
                    self._paced_consumers -= 1
        pr.consumers.append(c)
        self._keyframe_request(p, time.monotonic())

    def consumer_producer(self, c: int) -> int:
        return self._consumer(c).producer

    def remove_consumer(self, c: int) -> None:
        cr = self._consumer(c)
        if cr.producer >= 0:
            self._list_remove(self._producers[cr.producer].consumers, c)
        if cr.target >= 0:
            self._list_remove(self._producers[cr.target].consumers, c)
        self._consumer_map.pop((cr.transport, cr.ssrc), None)
        if cr.queue:
            self._paced_consumers -= 1
        if cr.probe_rate > 0:
            self._probing_consumers -= 1
        self._consumers[c] = None
        self._live_consumers -= 1

    def consumer_stats(self, c: int) -> dict:
        cr = self._consumer(c)
        return {"packets_sent": cr.packets_sent, "bytes_sent": cr.bytes_sent,
                "nacks_served": cr.nacks_served, "started": bool(cr.started), "paced": len(cr.queue),
                "fraction_lost": cr.fraction_lost / 256.0, "reports": cr.reports,
                "probe_bytes": cr.probe_bytes, "tid_max": cr.tid_max, "tid_dropped": cr.tid_dropped,
                "rtt_s": cr.rtt if cr.rtt >= 0 else 0.0, "held": cr.hold}

    def set_consumer_temporal(self, c: int, tid_max: int, until_switch: bool = False) -> None:
        """Send VP8 temporal layers up to ``tid_max`` only (-1: all of them).

        A frame of a higher layer goes out as a padding-only packet in its place:
        the viewer's sequence numbers stay gap-free (no NACKs, no jitter-buffer
        holes) and nothing references the missing frames, since a temporal layer
        only ever predicts from its own or lower layers. The padding carries the
        timestamp of the last frame sent, so a receiver that groups packets by
        timestamp (aiortc) sees no empty frame. Takes effect at once: no keyframe
        is needed to change temporal layers.

        ``until_switch``: lift the cap when the consumer next moves to another layer.
        Cutting the current layer to its base temporal layer while the next layer's
        keyframe is on its way takes most of the load off a link that just narrowed,
        so the viewer keeps decoding (at a lower frame rate) instead of freezing.
        """
        cr = self._consumer(c)
        cr.tid_max = int(tid_max) if tid_max >= 0 else -1
        cr.tid_until_switch = bool(until_switch) and cr.tid_max >= 0

    def set_consumer_probe(self, c: int, bps: float) -> None:
        """Pad the consumer's stream up by ``bps`` with RTX copies of its recent packets.

        A receiver's bandwidth estimate (REMB, transport-cc) cannot exceed much more
        than what it receives, so a viewer on a small layer never shows room for a
        bigger one unless the sender offers more bytes. Copies of packets it already
        has cost the decoder nothing (the jitter buffer drops duplicates). Needs RTX
        (a copy on the media SSRC would be a duplicate sequence number, not padding);
        0 stops. Sent from :meth:`tick`, within the transport's pacer budget.
        """
        cr = self._consumer(c)
        rate = bps / 8.0 if bps > 0 and cr.has_rtx and cr.is_video else 0.0
        if rate > 0 and cr.probe_rate <= 0:
            self._probing_consumers += 1
            cr.probe_tokens = 0.0
            cr.probe_at = time.monotonic()
            cr.probe_k = 0
        elif rate <= 0 and cr.probe_rate > 0:
            self._probing_consumers -= 1
        cr.probe_rate = rate

    def start_consumer(self, c: int) -> bool:
        """A viewer is ready: start it from the history if it holds the whole current GOP,
        else ask for a keyframe (one coalesced PLI). Returns whether the history served."""
        cr = self._consumer(c)
        now = time.monotonic()
        served = False
        if cr.producer >= 0 and not cr.started:
            served = self._start_from_history(c, now)
            if not served:
                self._keyframe_request(cr.producer, now)
        return served

    def _start_from_history(self, c: int, now: float) -> bool:
        cr = self._consumers[c]
        pr = self._producers[cr.producer]
        pt = self._transports[pr.transport]
        tr = self._transports[cr.transport]
        if not pr.is_video or pr.ring is None or pr.last_key_seq < 0 or not tr.has_addr or not tr.ready:
            return False
        count = ((pr.stats.max_seq - pr.last_key_seq) & 0xFFFF) + 1
        if count > PACER_QUEUE or count > RING:
            return False
        seqs = [(pr.last_key_seq + k) & 0xFFFF for k in range(count)]
        if any(pr.ring.get(seq) is None for seq in seqs):
            return False
        key = pr.ring.get(pr.last_key_seq)
        h = _parse(key, len(key), pt.id_mid, pt.id_abs, pt.id_level)
        if h.__class__ is int:
            return False
        self._start(cr, h)
        self.keyframe_history_starts += 1
        for k, seq in enumerate(seqs):
            if self.pacer_enabled:
                self._enqueue(cr, seq)
            else:
                packet = pr.ring.get(seq)
                h = _parse(packet, len(packet), pt.id_mid, pt.id_abs, pt.id_level)
                if h.__class__ is not int:
                    self._forward(c, cr.producer, packet, h, k == 0, now, True)
        if self.pacer_enabled:
            self._drain(c, now)
        return True

    def request_keyframe(self, p: int) -> None:
        """A viewer asked: one coalesced PLI to the publisher."""
        self._producer(p)
        self._keyframe_request(p, time.monotonic())

    # --- stats --------------------------------------------------------------------------

    def drop_counts(self) -> dict:
        return {DROP_REASONS[i]: n for i, n in enumerate(self._drops) if n}

    def count_drop(self, reason: str) -> None:
        if not isinstance(reason, str):
            raise TypeError(f"reason must be str, not {type(reason).__name__}")
        self._drops[DROP_REASONS.index(reason)] += 1

    def totals(self) -> dict:
        return {
            "packets_in": self.packets_in, "bytes_in": self.bytes_in,
            "packets_out": self.packets_out, "bytes_out": self.bytes_out,
            "nacks_received": self.nacks_received, "nacks_served": self.nacks_served,
            "keyframe_requests_received": self.keyframe_requests_received,
            "keyframe_requests_sent": self.pli_sent, "keyframe_requests_coalesced": self.pli_coalesced,
            "keyframe_history_starts": self.keyframe_history_starts,
            "probe_packets": self.probe_packets, "probe_bytes": self.probe_bytes,
            "twcc_feedbacks": self.twcc_feedbacks,
        }

    # --- I/O ----------------------------------------------------------------------------

    def on_readable(self) -> None:
        """Registered with ``loop.add_reader``: drain the socket in batches and forward."""
        recvfrom = self._sock.recvfrom
        sent_before = self.packets_out
        want = min(IN_BATCH, max(1, MAX_SENDS_PER_READABLE // (self._live_consumers + 1)))
        for _ in range(MAX_BATCHES):
            if self.packets_out - sent_before >= MAX_SENDS_PER_READABLE:
                break  # the rest waits in the socket buffer: control gets its turn
            batch = []
            while len(batch) < want:
                try:
                    batch.append(recvfrom(SLOT))
                except OSError:  # BlockingIOError: drained; anything else: next time
                    break
            if not batch:
                break
            now = time.monotonic()
            for data, addr in batch:
                host = addr[0]
                if "%" in host:  # an IPv6 scope: the C key has none
                    host = host.partition("%")[0]
                self._datagram(data, (host, addr[1]), now)
            if len(batch) < want:
                break

    def feed(self, data: bytes, host: str, port: int) -> None:
        """Process one datagram as if it had arrived from (host, port): tests and benchmarks."""
        buf = bytes(memoryview(data)[:SLOT])
        if not isinstance(host, str):
            raise TypeError(f"host must be str, not {type(host).__name__}")
        self._datagram(buf, _sockaddr(host, port), time.monotonic())

    def _datagram(self, buf: bytes, addr: tuple[str, int], now: float) -> None:
        if not buf:
            self._drops[D_EMPTY] += 1
            return
        first = buf[0]
        if 128 <= first < 192:
            t = self._addr_map.get(addr, -1)
            if t < 0:
                self._drops[D_UNKNOWN_ADDRESS] += 1
                return
            if not self._transports[t].ready:
                self._drops[D_SRTP_NOT_READY] += 1
                return
            if len(buf) >= 2 and 192 <= buf[1] <= 223:
                self._on_rtcp(t, buf, now)
            else:
                self._on_rtp(t, buf, now)
        elif first < 4 or 20 <= first < 64:
            # STUN and DTLS: control, handled in Python.
            self._slow_path(buf, addr)
        else:
            self._drops[D_UNKNOWN_PROTOCOL] += 1

    def _srtp(self, fn: Any, ctx: Any, data: bytes) -> bytes | None:
        """One libsrtp call, as ``pylibsrtp.Session.protect`` & co. make it, on a slot-sized
        buffer (pylibsrtp's own holds 1,500 bytes; the engine takes up to a slot)."""
        n = len(data)
        _srtp_ffi.memmove(self._srtp_buf, data, n)
        self._srtp_len[0] = n
        if fn(ctx, self._srtp_buf, self._srtp_len) != 0:
            return None
        return _srtp_ffi.buffer(self._srtp_buf, self._srtp_len[0])[:]

    # --- RTP ----------------------------------------------------------------------------

    def _on_rtp(self, t: int, buf: bytes, now: float) -> None:
        tr = self._transports[t]
        if len(buf) > MAX_RTP:
            self._drops[D_RTP_TOO_LARGE] += 1
            return
        if tr.srtp_rx is not None:
            buf = self._srtp(_srtp_lib.srtp_unprotect, tr.srtp_rx, buf)
            if buf is None:
                self._drops[D_SRTP_UNPROTECT] += 1
                return
        tr.last_seen = now
        h = _parse(buf, len(buf), tr.id_mid, tr.id_abs, tr.id_level, tr.id_rid, tr.id_rrid)
        if h.__class__ is int:
            self._drops[h] += 1
            return
        v = self._ssrc_map.get((t, h.ssrc), -1)
        if v < 0:
            v = self._learn_ssrc(t, buf, h)
            if v < 0:
                self._drops[D_RTP_UNKNOWN_SSRC] += 1
                return
        p = v >> 1
        pr = self._producers[p]
        buf = bytearray(buf)
        red = False
        if v & 1:
            if h.payload_len <= 2:
                self._drops[D_RTX_NO_OSN if h.payload_len < 2 else D_RTP_PADDING_ONLY] += 1
                return
            # RFC 4588: the original sequence number leads the payload; rebuild in place.
            off = h.payload_off
            buf[2] = buf[off]
            buf[3] = buf[off + 1]
            buf[off:off + h.payload_len - 2] = buf[off + 2:off + h.payload_len]
            buf[0] &= 0xDF
            buf[1] = ((buf[1] & 0x80) | pr.pt) & 0xFF
            _U32.pack_into(buf, 8, pr.ssrc)
            h.payload_len -= 2
            h.seq = (buf[2] << 8) | buf[3]
            h.pt = pr.pt
            h.ssrc = pr.ssrc
        elif h.pt != pr.pt:
            if h.pt != pr.red_pt:
                self._drops[D_RTP_UNEXPECTED_PT] += 1
                return
            red = True
        if h.payload_len == 0:
            self._drops[D_RTP_PADDING_ONLY] += 1
            return
        if red:
            # Checked once here, so each consumer's rewrite can trust the block structure.
            primary, primary_pt = _red_primary(buf, h.payload_off, h.payload_off + h.payload_len)
            if primary < 0:
                self._drops[D_RED_MALFORMED] += 1
                return
            if primary_pt != pr.pt:  # a primary in another codec than negotiated (pt/pt)
                self._drops[D_RTP_UNEXPECTED_PT] += 1
                return
        n = h.payload_off + h.payload_len  # padding is not forwarded
        del buf[n:]
        buf[0] &= 0xDF  # nor its flag (the copy in the NACK ring is re-parsed)
        if pr.stats.started and GAP_CLOSE + 1 < ((h.seq - pr.stats.max_seq) & 0xFFFF) < 0x8000:
            # The input resumes after an outage: consumers close the gap (see _forward).
            pr.has_gap = True
            pr.gap_before = pr.stats.max_seq
            pr.gap_after = h.seq
        self.packets_in += 1
        self.bytes_in += n
        tr.packets_in += 1
        tr.bytes_in += n
        pr.stats.update(h.seq, h.ts, now, n)
        if h.level_off >= 0 and not v & 1 and not pr.is_video:
            # RFC 6464: V bit, then the level in -dBov; a retransmission was counted already.
            level = buf[h.level_off]
            pr.level_sum += level & 0x7F
            pr.level_voiced += level >> 7
            pr.level_count += 1
        packet = bytes(buf)
        if pr.ring is not None:
            pr.ring.store(h.seq, packet)
        if pr.codec == CODEC_VP8:
            pr.max_tid = max(pr.max_tid, _vp8_tid(packet, h.payload_off, n))
        key = pr.is_video and _keyframe(pr.codec, packet, h.payload_off, n)
        if key:
            if pr.codec == CODEC_VP8:
                size = _vp8_keyframe_size(packet, h.payload_off, n)
                if size is not None:
                    pr.width, pr.height = size
            if h.seq == pr.stats.max_seq and (pr.last_key_seq < 0 or h.ts != pr.last_key_ts):
                pr.last_key_seq, pr.last_key_ts = h.seq, h.ts
        for c in tuple(pr.consumers):
            self._forward(c, p, packet, h, key, now, False)

    def _learn_ssrc(self, t: int, buf: bytes, h: _Hdr) -> int:
        """Bind an unsignalled SSRC to the producer whose mid (and rid) it carries.

        RFC 8843 §9.2 for the mid; RFC 8852 for simulcast, where the layers share
        a mid and the rid (or, on RTX, the repaired rid) tells them apart.
        """
        if h.mid_off < 0:
            return -1
        mid = buf[h.mid_off:h.mid_off + h.mid_len]
        for p, pr in enumerate(self._producers):
            if pr is None or pr.transport != t or len(pr.mid) != h.mid_len or pr.mid != mid:
                continue
            rtx = h.pt == pr.rtx_pt and h.pt != pr.pt
            if pr.rid:
                off, length = (h.rrid_off, h.rrid_len) if rtx else (h.rid_off, h.rid_len)
                if length != len(pr.rid) or buf[off:off + length] != pr.rid:
                    continue
            if (h.pt == pr.pt or h.pt == pr.red_pt) and not pr.has_ssrc:
                self._bind_ssrc(p, h.ssrc, False)
                return p << 1
            if rtx and not pr.has_rtx_ssrc and pr.has_ssrc:
                self._bind_ssrc(p, h.ssrc, True)
                return (p << 1) | 1
            return -1
        return -1

    def _forward(self, c: int, p: int, buf: bytes, h: _Hdr, key: bool, now: float, from_queue: bool) -> None:
        """One packet to one consumer: start on a keyframe, pace, number, rewrite, protect, send.

        Numbering (see the compiled ``_forward`` for why): the packet's own number plus
        the consumer's offset, continued from the newest number sent + 1 at a layer
        switch or across a gap of more than GAP_CLOSE missing packets (audio at once,
        video at the next keyframe, asked for at once); a packet from before such a
        point is dropped.
        """
        cr = self._consumers[c]
        tr = self._transports[cr.transport]
        if not tr.has_addr or not tr.ready:
            return
        if cr.producer != p:
            # A packet of the layer this consumer waits to move to.
            if p != cr.target:
                return
            if not key:
                if now - cr.keyframe_asked > KEYFRAME_ASK_INTERVAL_S:
                    cr.keyframe_asked = now
                    self._keyframe_request(p, now)
                return
            if cr.queue:
                # What the old layer still has waiting is stale next to this keyframe (a
                # down-switch is usually why it waits); it was never numbered, so
                # dropping it leaves the viewer no gap.
                self._drops[D_PACER_SUPERSEDED] += len(cr.queue)
                cr.queue.clear()
                self._paced_consumers -= 1
            self._switch(c, p, h, now)
        elif cr.hold:
            if cr.target >= 0 or not key:
                self._drops[D_HELD_FOR_SWITCH] += 1
                return
            # The move was called off: the held layer resumes at its keyframe.
            cr.hold = False
            self._renumber(cr, p, h, now, True)
            cr.prev_held = True
        if not cr.started:
            if cr.is_video and not key:
                self._wait_keyframe(cr, p, now)
                return
            self._start(cr, h)
        if self.pacer_enabled and cr.is_video and not from_queue:
            self._refill(tr, now)
            if cr.queue or tr.tokens <= 0:
                self._enqueue(cr, h.seq)
                return
        # Sent now: its number in the viewer's sequence.
        seq = (h.seq + cr.seq_offset) & 0xFFFF
        ahead = (seq - cr.last_seq) & 0xFFFF
        resume = False
        if ahead >= 0x8000:
            if cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000:
                cr.late_run += 1
                if cr.late_run <= GAP_CLOSE:
                    self._drops[D_LATE_BEFORE_SWITCH] += 1
                    return
                # Nothing else for that long: not stragglers, the input went back (a
                # sender restarted its numbering). A discontinuity, closed like a gap.
                resume = True
        elif ahead > GAP_CLOSE + 1:
            # A hole that long: closed if the producer's last outage is inside it. (One our
            # pacer made, of packets the history still has for NACKs, stays.)
            pr = self._producers[p]
            back = (cr.last_seq - cr.seq_offset) & 0xFFFF  # the newest input sent
            resume = pr.has_gap and ((pr.gap_before - back) & 0xFFFF) < ahead \
                and ((h.seq - pr.gap_after) & 0xFFFF) < ahead
        if resume:
            if cr.is_video and not key:
                key = _keyframe(self._producers[p].codec, buf, h.payload_off, h.payload_off + h.payload_len)
                if not key:
                    self._wait_keyframe(cr, p, now)
                    return
            self._renumber(cr, p, h, now, ahead < 0x8000)
            seq = cr.switch_seq
            ahead = 1
        cr.late_run = 0
        if ahead < 0x8000:
            cr.last_seq = seq
            if cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= SWITCH_HORIZON:
                # Long past the last renumbering: nothing before it is answerable any more.
                # Trailing it keeps every comparison with it within half the sequence space.
                cr.switch_seq = (seq - SWITCH_HORIZON) & 0xFFFF
                cr.prev_producer = -1
        if cr.tid_max >= 0 and cr.is_vp8 and _vp8_tid(buf, h.payload_off, h.payload_off + h.payload_len) > cr.tid_max:
            out = self._padding(cr, seq, cr.last_ts)
            if cr.pad is None:
                cr.pad = [(-1, 0)] * RING
            cr.pad[seq % RING] = (seq, cr.last_ts)
            cr.tid_dropped += 1
            tr.tokens -= len(out)
            self._emit(cr.transport, out, False)
            return
        if cr.pad is not None:
            cr.pad[seq % RING] = (-1, 0)
        if ahead < 0x8000:
            cr.last_ts = (h.ts + cr.ts_offset) & 0xFFFFFFFF
            cr.last_at = now
        rewritten = self._rewrite(cr, self._producers[p], buf, h, seq, True, now)
        if rewritten is None:  # cannot happen: RED is checked on arrival
            self._drops[D_RED_MALFORMED] += 1
            return
        out, plen = rewritten
        cr.packets_sent += 1
        cr.bytes_sent += plen
        tr.tokens -= len(out)
        self._emit(cr.transport, out, False)

    @staticmethod
    def _start(cr: _Consumer, h: _Hdr) -> None:
        """The consumer's first packet (a keyframe for video) gets its first_seq and first_ts."""
        cr.started = True
        cr.seq_offset = (cr.first_seq - h.seq) & 0xFFFF
        cr.ts_offset = (cr.first_ts - h.ts) & 0xFFFFFFFF
        cr.last_seq = (cr.first_seq - 1) & 0xFFFF

    def _wait_keyframe(self, cr: _Consumer, p: int, now: float) -> None:
        """Drop a video packet the consumer cannot start (or resume) on; ask for a keyframe,
        at most once a second per consumer (the producer coalesces the requests)."""
        self._drops[D_WAITING_KEYFRAME] += 1
        if now - cr.keyframe_asked > KEYFRAME_ASK_INTERVAL_S:
            cr.keyframe_asked = now
            self._keyframe_request(p, now)

    def _switch(self, c: int, p: int, h: _Hdr, now: float) -> None:
        """Move consumer c to producer p at this keyframe, continuing its numbering."""
        cr = self._consumers[c]
        pr = self._producers[p]
        old = cr.producer
        held = cr.hold
        if cr.producer >= 0:
            self._list_remove(self._producers[cr.producer].consumers, c)
        cr.producer = p
        cr.target = -1
        cr.hold = False
        cr.is_vp8 = pr.codec == CODEC_VP8
        if cr.tid_until_switch:
            cr.tid_max = -1
            cr.tid_until_switch = False
        if cr.started:
            # Layers have unrelated timestamp bases: carry on from ours by the time elapsed.
            self._renumber(cr, old, h, now, False)
            cr.prev_held = held
        if held and self.pacer_enabled:
            # The keyframe leaves at the pacing rate, not as a burst of what the hold saved up.
            tr = self._transports[cr.transport]
            self._refill(tr, now)
            tr.tokens = min(tr.tokens, 0.0)

    def _renumber(self, cr: _Consumer, old: int, h: _Hdr, now: float, keep_ts: bool) -> None:
        """Continue the viewer's numbering at this packet (a keyframe for video) from the
        newest sent + 1: sequence number, VP8 picture id and TL0PICIDX; the timestamp too
        unless ``keep_ts`` (the same producer's clock, which the viewer's SR mapping follows).
        What producer ``old`` sent before stays answerable to NACKs, with its offsets."""
        cr.prev_producer = old
        cr.prev_start_seq = cr.switch_seq if cr.switched else cr.first_seq
        cr.prev_seq_offset, cr.prev_ts_offset = cr.seq_offset, cr.ts_offset
        cr.prev_pic_offset, cr.prev_tl0_offset = cr.pic_offset, cr.tl0_offset
        cr.prev_held = False
        cr.switched = True
        cr.switch_seq = (cr.last_seq + 1) & 0xFFFF
        cr.seq_offset = (cr.switch_seq - h.seq) & 0xFFFF
        if not keep_ts:
            ticks = (now - cr.last_at) * self._producers[cr.producer].clock_rate
            cr.ts_offset = (cr.last_ts + (int(ticks) & 0xFFFFFFFF if ticks >= 1 else 1) - h.ts) & 0xFFFFFFFF
        cr.pic_reset = True

    @staticmethod
    def _vp8(cr: _Consumer, d: bytearray, pos0: int, n: int, track: bool) -> None:
        """Picture id and TL0PICIDX (RFC 7741 §4.2) continued across layer switches."""
        if n < 2 or not d[pos0] & 0x80:
            return
        x = d[pos0 + 1]
        pos = 2
        if x & 0x80:
            if pos >= n:
                return
            if d[pos0 + pos] & 0x80:
                if pos + 1 >= n:
                    return
                pic = ((d[pos0 + pos] & 0x7F) << 8) | d[pos0 + pos + 1]
                if track and cr.pic_reset:
                    cr.pic_offset = (cr.last_pic + 1 - pic) & 0x7FFF if cr.last_pic >= 0 else 0
                out = (pic + cr.pic_offset) & 0x7FFF
                d[pos0 + pos] = 0x80 | (out >> 8)
                d[pos0 + pos + 1] = out & 0xFF
                pos += 2
            else:
                pic = d[pos0 + pos] & 0x7F
                if track and cr.pic_reset:
                    cr.pic_offset = (cr.last_pic + 1 - pic) & 0x7FFF if cr.last_pic >= 0 else 0
                out = (pic + cr.pic_offset) & 0x7F
                d[pos0 + pos] = out
                pos += 1
            if track:
                cr.last_pic = out
        if x & 0x40:
            if pos >= n:
                return
            if track and cr.pic_reset:
                cr.tl0_offset = (cr.last_tl0 + 1 - d[pos0 + pos]) & 0xFF if cr.last_tl0 >= 0 else 0
            d[pos0 + pos] = (d[pos0 + pos] + cr.tl0_offset) & 0xFF
            if track:
                cr.last_tl0 = d[pos0 + pos]
        if track:
            cr.pic_reset = False

    def _rewrite(self, cr: _Consumer, src: _Producer, buf: bytes, h: _Hdr, seq: int, track: bool,
                 now: float) -> tuple[bytes, int] | None:
        """The viewer's copy of a packet of producer ``src``, and its payload's length:
        its SSRC, seq, ts, PT; extensions in its ids; no padding. None for a RED payload
        that does not parse (checked on arrival).

        abs-send-time is stamped now, whether or not the publisher sent one: the
        viewer's delay-based estimate is about the path from us, and a timestamp from
        the publisher would count our queueing (pacer, probes, history replays) as
        congestion on the viewer's link. A transport-cc viewer gets the next
        transport-wide sequence number (``_emit`` counts it as sent).

        RED (RFC 2198) goes out as RED under the viewer's RED PT, the blocks of the
        codec renumbered to the viewer's codec PT; or, to a viewer without RED, as its
        primary block alone: the same timestamp (the primary's offset is 0) and number.
        """
        pt, poff, plen = cr.pt, h.payload_off, h.payload_len
        red = h.pt == src.red_pt
        if red:
            if cr.red_pt >= 0:
                pt = cr.red_pt
            else:
                poff = _red_primary(buf, h.payload_off, h.payload_off + h.payload_len)[0]
                if poff < 0:
                    return None
                plen = h.payload_off + h.payload_len - poff
        ext = bytearray()
        tr = self._transports[cr.transport]
        if cr.id_mid and cr.mid:
            ext.append(((cr.id_mid << 4) | (len(cr.mid) - 1)) & 0xFF)
            ext += cr.mid
        if cr.id_abs:
            ext.append(((cr.id_abs << 4) | 2) & 0xFF)
            ext += (int(now * 262144.0) & 0xFFFFFF).to_bytes(3, "big")  # 6.18 fixed-point seconds
        if tr.twcc is not None:
            ext.append(((tr.id_twcc << 4) | 1) & 0xFF)
            ext += _U16.pack(tr.twcc.count & 0xFFFF)
        if cr.id_level and h.level_off >= 0:
            ext.append((cr.id_level << 4) & 0xFF)
            ext.append(buf[h.level_off])
        ext += bytes(-len(ext) % 4)
        out = bytearray(_HEADER.pack(0x80 | h.cc | (0x10 if ext else 0), ((h.marker << 7) | pt) & 0xFF,
                                     seq, (h.ts + cr.ts_offset) & 0xFFFFFFFF, cr.ssrc))
        if h.cc:
            out += buf[12:12 + 4 * h.cc]
        if ext:
            out += struct.pack("!HH", 0xBEDE, len(ext) // 4)
            out += ext
        start = len(out)
        out += buf[poff:poff + plen]
        if red and cr.red_pt >= 0:
            _red_remap(out, start, start + plen, src.pt, cr.pt)
        if cr.is_vp8:
            self._vp8(cr, out, start, plen, track)
        return bytes(out), plen

    def _padding(self, cr: _Consumer, seq: int, ts: int) -> bytes:
        """A padding-only packet (RFC 3550 §5.1) in the consumer's numbering; with the
        transport-wide sequence number for a transport-cc viewer."""
        tr = self._transports[cr.transport]
        if tr.twcc is not None:
            return _TWCC_PADDING.pack(0xB0, cr.pt & 0x7F, seq, ts, cr.ssrc, 0xBEDE0001, ((tr.id_twcc << 4) | 1) & 0xFF,
                                      tr.twcc.count & 0xFFFF, 0, 4)
        return _HEADER.pack(0xA0, cr.pt & 0x7F, seq, ts, cr.ssrc) + b"\x00\x00\x00\x04"

    # --- egress -------------------------------------------------------------------------

    def _emit(self, t: int, out: bytes, rtcp: bool) -> None:
        """Protect a packet and send it to transport t."""
        tr = self._transports[t]
        if tr.srtp_tx is not None:
            out = self._srtp(_srtp_lib.srtp_protect_rtcp if rtcp else _srtp_lib.srtp_protect, tr.srtp_tx, out)
            if out is None:
                self._drops[D_SRTP_PROTECT] += 1
                return
        tw = tr.twcc
        if tw is not None and not rtcp:
            # Stamped with this number by _rewrite or _padding: it is sent now.
            i = tw.count % TWCC_RING
            tw.sent[i] = time.monotonic()
            tw.size[i] = len(out)
            tw.arrival[i] = TWCC_UNREPORTED
            tw.count += 1
        try:
            self._sock.sendto(out, tr.addr)
        except OSError:
            # Full socket buffer or an unreachable peer: this datagram is lost.
            self._drops[D_SEND_FAILED] += 1
        n = len(out)
        tr.packets_out += 1
        tr.bytes_out += n
        if not rtcp:
            self.packets_out += 1
            self.bytes_out += n

    # --- pacing -------------------------------------------------------------------------

    def _refill(self, tr: _Transport, now: float) -> None:
        if tr.pace_rate > 0:
            tr.tokens = min(tr.tokens + (now - tr.tokens_at) * tr.pace_rate, tr.pace_burst)
        else:
            tr.tokens = min(tr.tokens + (now - tr.tokens_at) * self.pacer_rate_bytes_s, self.pacer_burst_bytes)
        tr.tokens_at = now

    def _enqueue(self, cr: _Consumer, seq: int) -> None:
        if len(cr.queue) == PACER_QUEUE:
            # Hopelessly behind: lose the oldest rather than grow without bound.
            cr.queue.popleft()
            self._drops[D_PACER_QUEUE_FULL] += 1
        if not cr.queue:
            self._paced_consumers += 1
        cr.queue.append(seq)

    def _drain(self, c: int, now: float) -> None:
        cr = self._consumers[c]
        tr = self._transports[cr.transport]
        self._refill(tr, now)
        while cr.queue and tr.tokens > 0:
            seq = cr.queue.popleft()
            if not cr.queue:
                self._paced_consumers -= 1
            if cr.producer < 0:
                continue
            pr = self._producers[cr.producer]
            pt = self._transports[pr.transport]
            packet = pr.ring.get(seq)
            h = D_PACER_EXPIRED if packet is None else _parse(packet, len(packet), pt.id_mid, pt.id_abs, pt.id_level)
            if h.__class__ is int:
                self._drops[D_PACER_EXPIRED] += 1
                continue
            self._forward(c, cr.producer, packet, h, False, now, True)

    def _probe(self, c: int, now: float) -> None:
        """Spend the consumer's probe budget on RTX copies of the packets it got last."""
        cr = self._consumers[c]
        tr = self._transports[cr.transport]
        cr.probe_tokens += (now - cr.probe_at) * cr.probe_rate
        cr.probe_at = now
        cr.probe_tokens = min(cr.probe_tokens, max(cr.probe_rate * PROBE_BURST_S, 1500.0))
        if not cr.started or cr.producer < 0 or cr.queue or cr.hold or not tr.has_addr or not tr.ready:
            return  # nothing sent yet to copy, the pacer is behind already, or the link is congested
        skipped = 0
        if self.pacer_enabled:
            self._refill(tr, now)
        while cr.probe_tokens > 0 and (not self.pacer_enabled or tr.tokens > 0):
            seq = (cr.last_seq - cr.probe_k) & 0xFFFF
            if cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000:
                # Only copies of the current layer: its offsets would misnumber older ones.
                cr.probe_k = 0
                seq = cr.last_seq
            cr.probe_k = (cr.probe_k + 1) % PROBE_SPAN
            if cr.pad is not None and cr.pad[seq % RING][0] == seq:
                # Went out as padding: a copy of the frame the viewer never got would break it.
                skipped += 1
                if skipped > PROBE_SPAN:
                    return
                continue
            n = self._resend(c, cr.producer, seq, now, True)
            if n <= 0:
                cr.probe_k = 0
                return
            cr.probe_tokens -= n
            cr.probe_bytes += n
            self.probe_packets += 1
            self.probe_bytes += n

    def tick(self) -> float:
        """Timer work: paced packets and coalesced keyframe requests. Returns the delay
        (seconds) after which it wants to run again."""
        now = time.monotonic()
        wait = 0.05
        if self._paced_consumers:
            for i, cr in enumerate(self._consumers):
                if cr is not None and cr.queue:
                    self._drain(i, now)
        for i, pr in enumerate(self._producers):
            if pr is not None and pr.pli_pending:
                if now - pr.last_pli >= self.keyframe_min_interval_s:
                    self._send_pli(i, now)
                else:
                    wait = min(wait, pr.last_pli + self.keyframe_min_interval_s - now)
        if self._probing_consumers:
            for i, cr in enumerate(self._consumers):
                if cr is not None and cr.probe_rate > 0:
                    self._probe(i, now)
            wait = min(wait, 0.01)
        if self._paced_consumers:
            wait = min(wait, 0.005)
        return max(wait, 0.001)

    # --- RTCP ---------------------------------------------------------------------------

    def _on_rtcp(self, t: int, buf: bytes, now: float) -> None:
        tr = self._transports[t]
        if tr.srtp_rx is not None:
            buf = self._srtp(_srtp_lib.srtp_unprotect_rtcp, tr.srtp_rx, buf)
            if buf is None:
                self._drops[D_SRTCP_UNPROTECT] += 1
                return
        tr.last_seen = now
        tr.rtcp_in += 1
        self.rtcp_in += 1
        n = len(buf)
        pos = 0
        while pos + 4 <= n:
            if buf[pos] >> 6 != 2:
                self._drops[D_RTCP_MALFORMED] += 1
                return
            fmt = buf[pos] & 0x1F
            pt = buf[pos + 1]
            length = 4 * (((buf[pos + 2] << 8) | buf[pos + 3]) + 1)
            end = pos + length
            if end > n or length < 8:
                self._drops[D_RTCP_MALFORMED] += 1
                return
            sender = _U32.unpack_from(buf, pos + 4)[0]
            if pt == 200 and length >= 28:
                self._on_sender_report(t, sender, buf, pos + 8, now)
                self._report_blocks(t, buf, pos + 28, min(fmt, (length - 28) // 24), now)
            elif pt == 201:
                self._report_blocks(t, buf, pos + 8, min(fmt, (length - 8) // 24), now)
            elif pt == 205 and fmt == 1 and length >= 12:
                media = _U32.unpack_from(buf, pos + 8)[0]
                i = pos + 12
                while i + 4 <= end:
                    pid, blp = struct.unpack_from("!HH", buf, i)
                    self._on_nack(t, media, pid, blp, now)
                    i += 4
            elif pt == 205 and fmt == 15:
                if tr.twcc is not None:
                    self._on_twcc(tr.twcc, buf[pos:end])
            elif pt == 206 and length >= 12:
                media = _U32.unpack_from(buf, pos + 8)[0]
                if fmt == 1:
                    self._on_keyframe_request(t, media, now)
                elif fmt == 4:
                    i = pos + 12
                    while i + 8 <= end:
                        self._on_keyframe_request(t, _U32.unpack_from(buf, i)[0], now)
                        i += 8
                elif fmt == 15 and length >= 20 and buf[pos + 12:pos + 16] == b"REMB":
                    # bitrate = mantissa (18 bits) << exponent (6 bits)
                    mantissa = ((buf[pos + 17] & 0x03) << 16) | (buf[pos + 18] << 8) | buf[pos + 19]
                    previous = tr.remb_bps
                    tr.remb_bps = min(mantissa << (buf[pos + 17] >> 2), 0xFFFFFFFF)
                    if tr.remb_bps * 5 < previous * 4 and not tr.remb_fell:
                        # Congestion: worth a layer decision now rather than at the next tick.
                        tr.remb_fell = True
                        self.remb_falls += 1
            pos = end
        if pos != n:
            self._drops[D_RTCP_MALFORMED] += 1

    def _on_twcc(self, tw: _Twcc, b: bytes) -> None:
        """Transport-wide feedback (RTPFB 15): mark what it says arrived, when, and what
        was lost. Checked whole before anything is applied: a malformed one is counted
        and changes nothing.

        Fixed part: base sequence number, packet status count, 24-bit reference time
        (64 ms), feedback packet count. Then status chunks, two bytes each: run length
        (T=0: a 2-bit symbol repeated up to 8191 times) or status vector (T=1: fourteen
        1-bit or seven 2-bit symbols), until the count is covered; then one receive
        delta per received packet, in 250 us ticks: one unsigned byte for symbol 1
        ("small"), two signed bytes for symbol 2 ("large or negative"). A symbol's value
        is the size of its delta.
        """
        n = end = len(b)
        if n < 20:
            self._drops[D_RTCP_MALFORMED] += 1
            return
        if b[0] & 0x20:  # RTCP padding: its last byte counts it
            if b[n - 1] == 0 or b[n - 1] > n - 20:
                self._drops[D_RTCP_MALFORMED] += 1
                return
            end = n - b[n - 1]
        base, count = struct.unpack_from("!HH", b, 12)
        if count == 0:
            self._drops[D_RTCP_MALFORMED] += 1
            return
        symbols: list[int] = []  # one per packet status, in order
        pos = 20
        while len(symbols) < count:
            if pos + 2 > end:
                self._drops[D_RTCP_MALFORMED] += 1
                return
            chunk = (b[pos] << 8) | b[pos + 1]
            pos += 2
            left = count - len(symbols)
            if not chunk & 0x8000:  # run length
                take = min(chunk & 0x1FFF, left)
                if take and (chunk >> 13) & 3 == 3:
                    self._drops[D_RTCP_MALFORMED] += 1
                    return
                symbols += [(chunk >> 13) & 3] * take
            elif not chunk & 0x4000:  # status vector, fourteen 1-bit symbols
                symbols += [(chunk >> (13 - i)) & 1 for i in range(min(14, left))]
            else:  # status vector, seven 2-bit symbols
                taken = [(chunk >> (12 - 2 * i)) & 3 for i in range(min(7, left))]
                if 3 in taken:
                    self._drops[D_RTCP_MALFORMED] += 1
                    return
                symbols += taken
        if pos + sum(symbols) > end:
            self._drops[D_RTCP_MALFORMED] += 1
            return
        # Valid: apply. The reference time is unwrapped by the shorter way round.
        raw = (b[16] << 16) | (b[17] << 8) | b[18]
        if tw.has_ref:
            diff = (raw - tw.last_ref) & 0xFFFFFF
            tw.ref += diff - 0x1000000 if diff >= 0x800000 else diff
        else:
            # Offset by one wrap, so an arrival stays positive even if the receiver's
            # clock starts near zero and its first deltas are negative: -1.0 is "lost".
            tw.ref = raw + 0x1000000
            tw.has_ref = True
        tw.last_ref = raw
        tw.feedbacks += 1
        self.twcc_feedbacks += 1
        ticks = tw.ref * 256
        for k, sym in enumerate(symbols):
            if sym == 1:
                ticks += b[pos]
                pos += 1
            elif sym == 2:
                ticks += struct.unpack_from("!h", b, pos)[0]
                pos += 2
            # Our packet with this number, if it is among the last TWCC_RING sent.
            back = (tw.count - base - k) & 0xFFFF
            if back == 0 or back > TWCC_RING or back > tw.count:
                continue
            sent = tw.count - back
            i = sent % TWCC_RING
            if sym:
                if tw.arrival[i] in (TWCC_UNREPORTED, TWCC_LOST):
                    tw.arrival[i] = ticks
            elif tw.arrival[i] == TWCC_UNREPORTED:
                tw.arrival[i] = TWCC_LOST
            tw.reported_end = max(tw.reported_end, sent + 1)

    def take_twcc(self, t: int) -> list[tuple[float, float, int]]:
        """What the viewer's transport-wide feedback reported since the last call.

        ``(send_time_s, arrival_time_s, size_bytes)`` per packet, in sending order,
        up to the newest one any feedback mentioned; ``arrival_time_s`` is -1.0 for a
        lost packet and otherwise on the receiver's clock (only differences mean
        anything). Packets no feedback mentioned are left out. At most the last
        1,024 packets sent; empty for a transport without transport-cc.
        """
        tw = self._transport(t).twcc
        if tw is None:
            return []
        out = []
        for k in range(max(tw.taken, tw.count - TWCC_RING), tw.reported_end):
            i = k % TWCC_RING
            a = tw.arrival[i]
            if a != TWCC_UNREPORTED:
                out.append((tw.sent[i], -1.0 if a == TWCC_LOST else a * 0.00025, tw.size[i]))
        tw.taken = max(tw.taken, tw.reported_end)
        return out

    def transport_twcc(self, t: int) -> dict:
        """A transport's transport-cc state: the extension id (0: none), packets
        stamped, feedback packets applied."""
        tr = self._transport(t)
        if tr.twcc is None:
            return {"id": 0, "sent": 0, "feedbacks": 0}
        return {"id": tr.id_twcc, "sent": tr.twcc.count, "feedbacks": tr.twcc.feedbacks}

    def _report_blocks(self, t: int, b: bytes, pos: int, count: int, now: float) -> None:
        """``count`` report blocks (RFC 3550 §6.4.1) at b[pos:], from an RR or after an SR's
        sender info, about streams we send on transport t: the viewer's loss feeds the layer
        policy, and an LSR echoing the last SR we sent that consumer times the round trip
        (now - when we sent it - DLSR). LSR 0 (no SR received yet) and results below 0 or
        above RTT_MAX_S are not measurements."""
        for k in range(count):
            ssrc, lost, _, _, lsr, dlsr = _RR_BLOCK.unpack_from(b, pos + 24 * k)
            c = self._consumer_map.get((t, ssrc), -1)
            if c < 0:
                continue
            cr = self._consumers[c]
            cr.fraction_lost = lost >> 24
            cr.reports += 1
            if lsr == 0 or lsr != cr.sr_lsr or cr.sr_at <= 0:
                continue
            rtt = now - cr.sr_at - dlsr / 65536.0
            if 0 <= rtt <= RTT_MAX_S:
                cr.rtt = rtt
                self._transports[t].rtt = rtt

    def _on_sender_report(self, t: int, ssrc: int, buf: bytes, info: int, now: float) -> None:
        """Keep LSR for our RR; send each consumer an SR in its own numbering (lip-sync)."""
        v = self._ssrc_map.get((t, ssrc), -1)
        if v < 0 or v & 1:
            return
        pr = self._producers[v >> 1]
        ntp_seconds, ntp_fraction, rtp_ts = _SR_INFO.unpack_from(buf, info)
        pr.stats.last_sr_ntp_middle = ((ntp_seconds << 16) | (ntp_fraction >> 16)) & 0xFFFFFFFF
        pr.stats.last_sr_arrival = now
        ntp = buf[info:info + 8]
        for c in tuple(pr.consumers):
            cr = self._consumers[c]
            ct = self._transports[cr.transport]
            if not cr.started or cr.producer != v >> 1 or not ct.has_addr or not ct.ready:
                continue
            out = (_RTCP_HEAD.pack(0x80, 200, 6, cr.ssrc) + ntp
                   + _SR_INFO.pack((rtp_ts + cr.ts_offset) & 0xFFFFFFFF,  # RTP time in our base
                                   cr.packets_sent & 0xFFFFFFFF, cr.bytes_sent & 0xFFFFFFFF))
            self._emit(cr.transport, out, True)
            cr.sr_lsr = pr.stats.last_sr_ntp_middle  # what the viewer's LSR will echo
            cr.sr_at = now

    def _on_nack(self, t: int, media: int, pid: int, blp: int, now: float) -> None:
        c = self._consumer_map.get((t, media), -1)
        if c < 0:
            return
        self.nacks_received += 1
        self._retransmit(c, pid, now)
        for b in range(16):
            if blp & (1 << b):
                self._retransmit(c, (pid + b + 1) & 0xFFFF, now)

    def _retransmit(self, c: int, seq: int, now: float) -> None:
        """From the history of the layer that sent it, as RTX when negotiated (RFC 4588)."""
        cr = self._consumers[c]
        if cr.producer < 0 or not cr.started or not cr.nack:
            return
        if cr.hold or (cr.prev_held and cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000):
            # Held for a move down: repairs would only add to the queue the new layer's
            # keyframe waits behind; the viewer skips to that keyframe.
            self._drops[D_NACK_HELD] += 1
            return
        if cr.pad is not None and cr.pad[seq % RING][0] == seq:
            # It went out as padding (a dropped temporal layer): the same padding again.
            out = self._padding(cr, seq, cr.pad[seq % RING][1])
            cr.nacks_served += 1
            self.nacks_served += 1
            self._emit(cr.transport, out, False)
            return
        p = cr.producer
        saved = (cr.seq_offset, cr.ts_offset, cr.pic_offset, cr.tl0_offset)
        if cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000:
            # Sent before the last layer switch: the previous layer's history, numbering.
            if self.pacer_enabled:
                self._refill(self._transports[cr.transport], now)
                if self._transports[cr.transport].tokens <= 0:
                    # ... unless the viewer's link is spent: after a down-switch those are
                    # what congested it, and the new layer's keyframe needs the room.
                    self._drops[D_NACK_OVER_BUDGET] += 1
                    return
            p = cr.prev_producer
            if p < 0 or ((seq - cr.prev_start_seq) & 0xFFFF) >= 0x8000:  # older still: gone
                self._drops[D_NACK_NOT_IN_BUFFER] += 1
                return
            cr.seq_offset, cr.ts_offset, cr.pic_offset, cr.tl0_offset = (
                cr.prev_seq_offset, cr.prev_ts_offset, cr.prev_pic_offset, cr.prev_tl0_offset)
        try:
            self._resend(c, p, seq, now, False)
        finally:
            cr.seq_offset, cr.ts_offset, cr.pic_offset, cr.tl0_offset = saved

    def _resend(self, c: int, p: int, seq: int, now: float, probe: bool) -> int:
        """Our packet ``seq`` again, from producer p's history; returns the bytes sent (0: gone)."""
        cr = self._consumers[c]
        pr = self._producers[p]
        src = (seq - cr.seq_offset) & 0xFFFF
        if pr.ring is None:
            return 0
        pt = self._transports[pr.transport]
        packet = pr.ring.get(src)
        h = D_NACK_NOT_IN_BUFFER if packet is None else _parse(packet, len(packet), pt.id_mid, pt.id_abs, pt.id_level)
        if h.__class__ is int:
            if not probe:
                self._drops[D_NACK_NOT_IN_BUFFER] += 1
            return 0
        rewritten = self._rewrite(cr, pr, packet, h, seq, False, now)
        if rewritten is None:
            self._drops[D_RED_MALFORMED] += 1
            return 0
        out, plen = rewritten
        if cr.has_rtx:
            off = len(out) - plen
            rtx = bytearray(out[:off])
            rtx[1] = ((rtx[1] & 0x80) | cr.rtx_pt) & 0xFF
            _U16.pack_into(rtx, 2, cr.rtx_seq)
            _U32.pack_into(rtx, 8, cr.rtx_ssrc)
            cr.rtx_seq = (cr.rtx_seq + 1) & 0xFFFF
            rtx += _U16.pack(seq)
            rtx += out[off:]
            out = bytes(rtx)
        if not probe:
            cr.nacks_served += 1
            self.nacks_served += 1
        if self.pacer_enabled:
            # Repairs and probes are not queued, but they spend the viewer's budget:
            # the media after them waits its turn instead of piling onto a full link.
            self._transports[cr.transport].tokens -= len(out)
        self._emit(cr.transport, out, False)
        return len(out)

    def _on_keyframe_request(self, t: int, media: int, now: float) -> None:
        c = self._consumer_map.get((t, media), -1)
        if c < 0 or self._consumers[c].producer < 0:
            return
        self.keyframe_requests_received += 1
        cr = self._consumers[c]
        # A held layer's keyframe would not be sent: ask for the one the consumer waits for.
        self._keyframe_request(cr.target if cr.hold and cr.target >= 0 else cr.producer, now)

    def _keyframe_request(self, p: int, now: float) -> None:
        """At most one PLI per interval; requests inside it ride on one sent at its end."""
        pr = self._producers[p]
        if not pr.is_video:
            return
        if pr.pli_pending or now - pr.last_pli < self.keyframe_min_interval_s:
            pr.pli_pending = True
            pr.pli_coalesced += 1
            self.pli_coalesced += 1
            return
        self._send_pli(p, now)

    def _send_pli(self, p: int, now: float) -> None:
        pr = self._producers[p]
        tr = self._transports[pr.transport]
        pr.pli_pending = False
        if not pr.has_ssrc or not tr.has_addr or not tr.ready:
            return
        pr.last_pli = now
        pr.pli_sent += 1
        self.pli_sent += 1
        self._emit(pr.transport, _PLI.pack(0x81, 206, 2, tr.rtcp_ssrc, pr.ssrc), True)

    def send_receiver_reports(self, t: int, remb_bps: int = 0) -> None:
        """RR for each producer stream of transport t (RFC 3550 §6.4.2), plus a REMB."""
        remb_bps = _check_uint(remb_bps, 32)
        tr = self._transport(t)
        now = time.monotonic()
        if not tr.has_addr or not tr.ready:
            return
        blocks = bytearray()
        count = 0
        for pr in self._producers:
            if pr is None or pr.transport != t or not pr.stats.started or count == 31:
                continue
            fraction, lost, extended_max, jitter, lsr, dlsr = pr.stats.report_block(now)
            blocks += _RR_BLOCK.pack(pr.ssrc, (fraction << 24) | lost, extended_max,
                                     jitter & 0xFFFFFFFF, lsr, dlsr)
            count += 1
        if count == 0:
            return
        out = bytearray(_RTCP_HEAD.pack(0x80 | count, 201, (8 + len(blocks)) // 4 - 1, tr.rtcp_ssrc))
        out += blocks
        if remb_bps:
            ssrcs = [pr.ssrc for pr in self._producers
                     if pr is not None and pr.transport == t and pr.is_video and pr.has_ssrc][:8]
            if ssrcs:
                mantissa, exp = remb_bps, 0
                while mantissa >= 1 << 18:
                    mantissa >>= 1
                    exp += 1
                out += _RTCP_HEAD.pack(0x8F, 206, 4 + len(ssrcs), tr.rtcp_ssrc)
                out += _U32.pack(0) + b"REMB"
                out += bytes([len(ssrcs), (exp << 2) | ((mantissa >> 16) & 0x03)]) + _U16.pack(mantissa & 0xFFFF)
                out += b"".join(_U32.pack(s) for s in ssrcs)
        self._emit(t, bytes(out), True)

    def send_rtcp(self, t: int, packet: bytes) -> None:
        """An RTCP packet built in Python (BYE, ...), protected and sent on transport t."""
        data = bytes(memoryview(packet))
        tr = self._transport(t)
        n = len(data)
        if not tr.has_addr or not tr.ready or n < 8 or n > MAX_RTP:
            return
        self._emit(t, data, True)
