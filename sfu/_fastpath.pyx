# cython: language_level=3
"""The per-packet path in C: RTP parse, per-consumer rewrite, RTX, keyframe detection.

Its twin in pure Python is ``sfu.fastpath_reference``; both must give the same
bytes for the same input (tests run against both). Every read is checked
against the datagram length before it is made.
"""

from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

CODEC_OTHER = 0
CODEC_VP8 = 1
CODEC_H264 = 2
CODEC_OPUS = 3


class RtpError(ValueError):
    """A packet we drop; ``args[0]`` is the metric reason."""


cdef class RtpInfo:
    def __cinit__(self):
        self.mid = None
        self.rid = None
        self.repaired_rid = None
        self.abs_send_time = None
        self.audio_level = None


cdef class ExtIds:
    def __init__(self, int mid=0, int rid=0, int repaired_rid=0, int abs_send_time=0, int audio_level=0):
        self.mid = mid
        self.rid = rid
        self.repaired_rid = repaired_rid
        self.abs_send_time = abs_send_time
        self.audio_level = audio_level


cdef inline unsigned int _u16(const unsigned char* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline unsigned int _u32(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3]


cdef inline void _put16(unsigned char* p, unsigned int v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void _put32(unsigned char* p, unsigned int v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


def parse_rtp(const unsigned char[::1] data, ExtIds ids):
    """The engine's own header parser (``_parse``), exposed to Python for tests and tools."""
    cdef Hdr h
    cdef int r, n = <int>min(data.shape[0], 0x7FFFFFFF)
    if n < 12:
        raise RtpError("rtp_truncated")
    cdef const uint8_t* p = &data[0]
    r = _parse(p, n, ids.mid, ids.abs_send_time, ids.audio_level, ids.rid, ids.repaired_rid, &h)
    if r < 0:
        raise RtpError(DROP_REASONS[-1 - r])
    cdef RtpInfo info = RtpInfo.__new__(RtpInfo)
    info.payload_type = h.pt
    info.marker = h.marker
    info.sequence = h.seq
    info.timestamp = h.ts
    info.ssrc = h.ssrc
    info.csrc_count = h.cc
    info.payload_offset = h.payload_off
    info.payload_length = h.payload_len
    if h.mid_off >= 0:
        info.mid = PyBytes_FromStringAndSize(<const char*>p + h.mid_off, h.mid_len)
    if h.rid_off >= 0:
        info.rid = PyBytes_FromStringAndSize(<const char*>p + h.rid_off, h.rid_len)
    if h.rrid_off >= 0:
        info.repaired_rid = PyBytes_FromStringAndSize(<const char*>p + h.rrid_off, h.rrid_len)
    if h.abs_off >= 0:
        info.abs_send_time = PyBytes_FromStringAndSize(<const char*>p + h.abs_off, 3)
    if h.level_off >= 0:
        info.audio_level = PyBytes_FromStringAndSize(<const char*>p + h.level_off, 1)
    return info


def rewrite_rtp(const unsigned char[::1] data, RtpInfo info, int payload_type, unsigned int sequence,
                unsigned int timestamp, unsigned int ssrc, ExtIds ids, bytes mid):
    cdef unsigned char ext[64]
    cdef Py_ssize_t elen = 0, mlen = len(mid), cc = info.csrc_count
    cdef Py_ssize_t n = data.shape[0]
    if info.payload_offset + info.payload_length > n or 12 + 4 * cc > n:
        raise RtpError("rtp_truncated")
    if ids.mid and 0 < mlen <= 16:
        ext[elen] = (ids.mid << 4) | (mlen - 1)
        memcpy(ext + elen + 1, PyBytes_AS_STRING(mid), mlen)
        elen += 1 + mlen
    if ids.abs_send_time and info.abs_send_time is not None:
        ext[elen] = (ids.abs_send_time << 4) | 2
        memcpy(ext + elen + 1, PyBytes_AS_STRING(info.abs_send_time), 3)
        elen += 4
    if ids.audio_level and info.audio_level is not None:
        ext[elen] = ids.audio_level << 4
        ext[elen + 1] = (<bytes>info.audio_level)[0]
        elen += 2
    while elen % 4:
        ext[elen] = 0
        elen += 1
    cdef Py_ssize_t total = 12 + 4 * cc + (4 + elen if elen else 0) + info.payload_length
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    o[0] = 0x80 | cc | (0x10 if elen else 0)
    o[1] = (info.marker << 7) | payload_type
    _put16(o + 2, sequence & 0xFFFF)
    _put32(o + 4, timestamp)
    _put32(o + 8, ssrc)
    cdef Py_ssize_t pos = 12
    if cc:
        memcpy(o + pos, &data[12], 4 * cc)
        pos += 4 * cc
    if elen:
        _put16(o + pos, 0xBEDE)
        _put16(o + pos + 2, elen // 4)
        memcpy(o + pos + 4, ext, elen)
        pos += 4 + elen
    if info.payload_length:
        memcpy(o + pos, &data[info.payload_offset], info.payload_length)
    return out


def wrap_rtx(const unsigned char[::1] packet, Py_ssize_t payload_offset, int payload_type,
             unsigned int sequence, unsigned int ssrc):
    cdef Py_ssize_t n = packet.shape[0]
    if payload_offset < 12 or payload_offset > n:
        raise RtpError("rtp_truncated")
    out = PyBytes_FromStringAndSize(NULL, n + 2)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(o, &packet[0], payload_offset)
    o[1] = (o[1] & 0x80) | payload_type
    _put16(o + 2, sequence & 0xFFFF)
    _put32(o + 8, ssrc)
    o[payload_offset] = packet[2]
    o[payload_offset + 1] = packet[3]
    if n > payload_offset:
        memcpy(o + payload_offset + 2, &packet[payload_offset], n - payload_offset)
    return out


def unwrap_rtx(const unsigned char[::1] data, RtpInfo info, int payload_type, unsigned int ssrc):
    cdef Py_ssize_t off = info.payload_offset
    if info.payload_length < 2:
        raise RtpError("rtx_no_osn")
    if off + info.payload_length > data.shape[0]:
        raise RtpError("rtp_truncated")
    cdef Py_ssize_t total = off + info.payload_length - 2
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(o, &data[0], off)
    o[0] &= 0xDF
    o[1] = (o[1] & 0x80) | payload_type
    o[2] = data[off]
    o[3] = data[off + 1]
    _put32(o + 8, ssrc)
    if total > off:
        memcpy(o + off, &data[off + 2], total - off)
    return out


def is_keyframe(int codec, const unsigned char[::1] data, RtpInfo info):
    """Whether this packet starts a keyframe: the engine's ``_keyframe``, for Python callers."""
    cdef Py_ssize_t pos = info.payload_offset
    cdef Py_ssize_t end = pos + info.payload_length
    if pos < 0 or end > data.shape[0] or pos >= end:
        return False
    return _keyframe(codec, &data[0], <int>pos, <int>end)


# =====================================================================================
# The forwarding engine: every media packet of a shard, from recvmmsg to sendmmsg.
#
# Python owns control (which transports, producers and consumers exist, their keys
# and payload types) and hands it to the Engine through add_*/remove_* calls. The
# Engine owns packets: it reads datagrams in batches, passes STUN and DTLS up to
# Python (rare, and not forwarded media), and does everything else in C: SRTP,
# RTP/RTCP parsing, routing, NACK history, keyframe request coalescing, per-consumer
# rewrite and protection, pacing, and batched sends. No Python object is created
# per forwarded packet.
# =====================================================================================

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t, uintptr_t
from libc.string cimport memset, memmove, memcmp
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.errno cimport errno, EINTR
from posix.time cimport clock_gettime, CLOCK_MONOTONIC, timespec

cdef extern from "<sys/uio.h>":
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr* msgs, unsigned int n, int flags, timespec* timeout) nogil
    int sendmmsg(int fd, mmsghdr* msgs, unsigned int n, int flags) nogil
    int MSG_DONTWAIT
    int AF_INET
    int AF_INET6

cdef extern from "<netinet/in.h>":
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

cdef extern from "<arpa/inet.h>":
    uint16_t htons(uint16_t) nogil
    uint16_t ntohs(uint16_t) nogil
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)

# libsrtp 2: srtp_err_status_t fn(srtp_t ctx, void* hdr, int* len_ptr). The function
# addresses come from pylibsrtp's CFFI module (its OpenSSL-backed libsrtp), so each
# call is a plain C call.
ctypedef int (*srtp_fn)(void* ctx, void* hdr, int* length) noexcept nogil
cdef srtp_fn _srtp_protect = NULL
cdef srtp_fn _srtp_unprotect = NULL
cdef srtp_fn _srtp_protect_rtcp = NULL
cdef srtp_fn _srtp_unprotect_rtcp = NULL


def configure_srtp(uintptr_t protect, uintptr_t unprotect, uintptr_t protect_rtcp, uintptr_t unprotect_rtcp):
    """Give the engine libsrtp's entry points (see ``sfu.fastpath``)."""
    global _srtp_protect, _srtp_unprotect, _srtp_protect_rtcp, _srtp_unprotect_rtcp
    _srtp_protect = <srtp_fn>protect
    _srtp_unprotect = <srtp_fn>unprotect
    _srtp_protect_rtcp = <srtp_fn>protect_rtcp
    _srtp_unprotect_rtcp = <srtp_fn>unprotect_rtcp


DEF SLOT = 2048            # bytes per datagram slot: MTU-sized packet + header growth + SRTP trailer
DEF MAX_RTP = 1800         # larger incoming media is dropped (it could not be rewritten into a slot)
DEF IN_BATCH = 64          # datagrams per recvmmsg
DEF OUT_BATCH = 256        # datagrams per sendmmsg
DEF MAX_BATCHES = 16       # recvmmsg calls per readable event, to stay fair to the loop
DEF MAX_SENDS_PER_READABLE = 8192  # and no more packets out than this per readable event
DEF RING = 1024            # NACK history per video producer, in packets
DEF PACER_QUEUE = 1024     # paced packets a consumer may hold: a whole history GOP for a joiner
DEF PROBE_BURST_S = 0.02   # a probing consumer's padding may bunch up to this much of its rate
DEF PACE_BURST_S = 0.04   # a transport paced at its own rate sends bursts of at most this much of it
DEF PACE_MIN_BURST = 2400  # ... and never less than this (one large packet and a small one)
DEF PROBE_SPAN = 8         # probes copy the consumer's newest packets, this many back
DEF TWCC_RING = 1024       # packets sent to a transport-cc viewer whose send time and size we keep
DEF GAP_CLOSE = 64         # more packets than this missing at once: an outage, closed at a keyframe (see _forward)
DEF SWITCH_HORIZON = 0x4000  # a renumbering point this far behind is forgotten (see _forward)
DEF RTT_MAX_S = 10.0       # a round trip longer than this is a stale or forged report, not a measurement
cdef extern from *:
    """
    #define TWCC_UNREPORTED (INT64_MIN + 1)  /* arrival of a packet no feedback mentioned yet */
    #define TWCC_LOST (INT64_MIN + 2)        /* ... of one a feedback reported not received */
    """
    const int64_t TWCC_UNREPORTED
    const int64_t TWCC_LOST

# Drop reasons: index into Engine.drops; names exported for metrics.
DROP_REASONS = (
    "unknown_address", "srtp_not_ready", "srtp_unprotect_failed", "srtcp_unprotect_failed",
    "rtp_truncated", "rtp_bad_version", "rtp_bad_padding", "rtp_bad_extension", "rtp_too_large",
    "rtp_unknown_ssrc", "rtp_unexpected_payload_type", "rtp_padding_only", "rtx_no_osn",
    "rtcp_malformed", "waiting_for_keyframe", "nack_not_in_buffer", "srtp_protect_failed",
    "send_failed", "pacer_queue_full", "pacer_expired", "unknown_protocol", "empty_datagram",
    "nack_over_budget", "pacer_superseded", "red_malformed", "late_before_switch",
    "held_for_switch", "nack_held",
)
cdef enum Drop:
    D_UNKNOWN_ADDRESS, D_SRTP_NOT_READY, D_SRTP_UNPROTECT, D_SRTCP_UNPROTECT,
    D_RTP_TRUNCATED, D_RTP_BAD_VERSION, D_RTP_BAD_PADDING, D_RTP_BAD_EXTENSION, D_RTP_TOO_LARGE,
    D_RTP_UNKNOWN_SSRC, D_RTP_UNEXPECTED_PT, D_RTP_PADDING_ONLY, D_RTX_NO_OSN,
    D_RTCP_MALFORMED, D_WAITING_KEYFRAME, D_NACK_NOT_IN_BUFFER, D_SRTP_PROTECT,
    D_SEND_FAILED, D_PACER_QUEUE_FULL, D_PACER_EXPIRED, D_UNKNOWN_PROTOCOL, D_EMPTY,
    D_NACK_OVER_BUDGET, D_PACER_SUPERSEDED, D_RED_MALFORMED, D_LATE_BEFORE_SWITCH,
    D_HELD_FOR_SWITCH, D_NACK_HELD, D_COUNT


cdef struct Hdr:
    # One parsed RTP header: offsets into the datagram, never copies.
    int pt
    int marker
    uint32_t seq
    uint32_t ts
    uint32_t ssrc
    int cc
    int payload_off
    int payload_len
    int mid_off
    int mid_len
    int rid_off
    int rid_len
    int rrid_off
    int rrid_len
    int abs_off
    int level_off


cdef int _parse(const uint8_t* p, int n, int id_mid, int id_abs, int id_level, int id_rid, int id_rrid,
                Hdr* h) noexcept nogil:
    """Fill ``h``; return -1 - drop reason on error. Every read is bounds-checked."""
    cdef int pos, end, padding = 0, two_byte, ext_id, length
    cdef uint32_t profile
    if n < 12:
        return -1 - D_RTP_TRUNCATED
    if p[0] >> 6 != 2:
        return -1 - D_RTP_BAD_VERSION
    h.cc = p[0] & 0x0F
    pos = 12 + 4 * h.cc
    if pos > n:
        return -1 - D_RTP_TRUNCATED
    h.pt = p[1] & 0x7F
    h.marker = p[1] >> 7
    h.seq = _u16(p + 2)
    h.ts = _u32(p + 4)
    h.ssrc = _u32(p + 8)
    h.mid_off = h.abs_off = h.level_off = h.rid_off = h.rrid_off = -1
    h.mid_len = h.rid_len = h.rrid_len = 0
    if p[0] & 0x10:
        if pos + 4 > n:
            return -1 - D_RTP_TRUNCATED
        profile = _u16(p + pos)
        end = pos + 4 + 4 * <int>_u16(p + pos + 2)
        if end > n:
            return -1 - D_RTP_TRUNCATED
        pos += 4
        if profile == 0xBEDE or (profile & 0xFFF0) == 0x1000:
            two_byte = profile != 0xBEDE
            while pos < end:
                if p[pos] == 0:
                    pos += 1
                    continue
                if two_byte:
                    if pos + 2 > end:
                        return -1 - D_RTP_BAD_EXTENSION
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
                    return -1 - D_RTP_BAD_EXTENSION
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
    if p[0] & 0x20:
        if n == pos:
            return -1 - D_RTP_BAD_PADDING
        padding = p[n - 1]
        if padding == 0 or pos + padding > n:
            return -1 - D_RTP_BAD_PADDING
    h.payload_off = pos
    h.payload_len = n - pos - padding
    return 0


cdef bint _keyframe(int codec, const uint8_t* data, int pos, int end) noexcept nogil:
    cdef uint8_t d, x
    cdef int nal, size
    if pos >= end:
        return False
    if codec == 1:
        d = data[pos]
        if not d & 0x10 or d & 0x07:  # S bit, partition 0
            return False
        pos = _vp8_header(data, pos, end)
        return pos >= 0 and pos < end and not data[pos] & 0x01  # P bit 0 = keyframe
    if codec == 2:
        nal = data[pos] & 0x1F
        if nal == 5 or nal == 7:
            return True
        if nal == 24:
            pos += 1
            while pos + 2 < end:
                size = (data[pos] << 8) | data[pos + 1]
                if size == 0 or pos + 2 + size > end:
                    return False
                if (data[pos + 2] & 0x1F) == 5 or (data[pos + 2] & 0x1F) == 7:
                    return True
                pos += 2 + size
            return False
        if nal == 28:
            return pos + 1 < end and (data[pos + 1] & 0x80) != 0 and \
                ((data[pos + 1] & 0x1F) == 5 or (data[pos + 1] & 0x1F) == 7)
    return False


cdef int _vp8_header(const uint8_t* data, int pos, int end) noexcept nogil:
    """Offset of the VP8 payload header after the RFC 7741 descriptor at pos; -1 if cut short."""
    cdef uint8_t d = data[pos], x
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


cdef int _vp8_tid(const uint8_t* d, int pos, int end) noexcept nogil:
    """The VP8 payload descriptor's TID (RFC 7741 §4.2), or -1 when it has none."""
    cdef uint8_t x
    if pos >= end or not d[pos] & 0x80:
        return -1
    if pos + 1 >= end:
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


cdef int _vp8_keyframe_size(const uint8_t* data, int pos, int end, int* width, int* height) noexcept nogil:
    """Frame size from a VP8 keyframe's first packet (RFC 6386 §9.1); 0 if not readable."""
    if pos >= end:
        return 0
    pos = _vp8_header(data, pos, end)
    if pos < 0 or pos + 10 > end or data[pos + 3] != 0x9D or data[pos + 4] != 0x01 or data[pos + 5] != 0x2A:
        return 0
    width[0] = (data[pos + 6] | (data[pos + 7] << 8)) & 0x3FFF
    height[0] = (data[pos + 8] | (data[pos + 9] << 8)) & 0x3FFF
    return 1


cdef int _red_primary(const uint8_t* p, int pos, int end, int* primary_pt) noexcept nogil:
    """Where the primary block's data starts in the RED payload p[pos:end] (RFC 2198 §3),
    its PT in ``primary_pt``; -1 if malformed. Every read is bounds-checked.

    Block headers of 4 bytes while F is set (F, block PT, 14-bit timestamp offset,
    10-bit length), then one byte (F=0, PT) for the primary; the redundant blocks'
    data follows in order, then the primary's, which runs to the end and may not be
    empty.
    """
    cdef int redundant = 0
    while True:
        if pos >= end:
            return -1  # the headers run past the payload
        if not p[pos] & 0x80:
            break
        if pos + 4 > end:
            return -1
        redundant += ((p[pos + 2] & 0x03) << 8) | p[pos + 3]
        pos += 4
    primary_pt[0] = p[pos] & 0x7F
    pos += 1 + redundant
    if pos >= end:
        return -1  # blocks past the end, or an empty primary
    return pos


cdef void _red_remap(uint8_t* p, int end, int from_pt, int to_pt) noexcept nogil:
    """Renumber the block headers of a (valid) RED payload p[:end] carrying ``from_pt``."""
    cdef int pos = 0
    while pos < end:
        if (p[pos] & 0x7F) == from_pt:
            p[pos] = (p[pos] & 0x80) | to_pt
        if not p[pos] & 0x80:
            return
        pos += 4


# --- a small open-addressing hash map: uint64 key -> int32 value ----------------------

cdef struct MapEntry:
    uint64_t key
    int32_t value
    int32_t state  # 0 empty, 1 full, 2 deleted


cdef struct Map:
    MapEntry* entries
    size_t cap      # power of two
    size_t used     # full
    size_t filled   # full + deleted


cdef inline size_t _hash64(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xff51afd7ed558ccdULL
    k ^= k >> 33
    k *= 0xc4ceb9fe1a85ec53ULL
    k ^= k >> 33
    return <size_t>k


cdef int _map_init(Map* m, size_t cap) except -1:
    m.entries = <MapEntry*>calloc(cap, sizeof(MapEntry))
    if m.entries == NULL:
        raise MemoryError()
    m.cap = cap
    m.used = m.filled = 0
    return 0


cdef int32_t _map_get(Map* m, uint64_t key) noexcept nogil:
    cdef size_t mask = m.cap - 1
    cdef size_t i = _hash64(key) & mask
    while True:
        if m.entries[i].state == 0:
            return -1
        if m.entries[i].state == 1 and m.entries[i].key == key:
            return m.entries[i].value
        i = (i + 1) & mask


cdef int _map_put(Map* m, uint64_t key, int32_t value) except -1:
    cdef size_t mask, i
    cdef MapEntry* old
    cdef size_t old_cap, j
    if (m.filled + 1) * 2 > m.cap:
        old = m.entries
        old_cap = m.cap
        _map_init(m, old_cap * 2 if m.used * 4 > old_cap else old_cap)
        for j in range(old_cap):
            if old[j].state == 1:
                _map_put(m, old[j].key, old[j].value)
        free(old)
    mask = m.cap - 1
    i = _hash64(key) & mask
    while m.entries[i].state == 1:
        if m.entries[i].key == key:
            m.entries[i].value = value
            return 0
        i = (i + 1) & mask
    # Reuse a tombstone only after checking the key is not further along.
    if _map_get(m, key) != -1:
        _map_del(m, key)
        return _map_put(m, key, value)
    if m.entries[i].state == 0:
        m.filled += 1
    m.entries[i].state = 1
    m.entries[i].key = key
    m.entries[i].value = value
    m.used += 1
    return 0


cdef void _map_del(Map* m, uint64_t key) noexcept nogil:
    cdef size_t mask = m.cap - 1
    cdef size_t i = _hash64(key) & mask
    while m.entries[i].state != 0:
        if m.entries[i].state == 1 and m.entries[i].key == key:
            m.entries[i].state = 2
            m.used -= 1
            return
        i = (i + 1) & mask


# --- control-plane records, kept in C arrays indexed by slot ---------------------------

cdef struct TwccRec:
    # Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01)
    # of one viewer: what we sent it, by our transport-wide sequence number, and what its
    # feedback said of each. Packet k (k-th stamped, from 0) is at k % TWCC_RING and
    # carries sequence number k & 0xFFFF; only the last TWCC_RING are kept.
    double sent[TWCC_RING]       # when it left (monotonic seconds)
    int64_t arrival[TWCC_RING]   # receiver clock, 250 us ticks; TWCC_UNREPORTED, TWCC_LOST
    uint16_t size[TWCC_RING]     # bytes on the wire (after SRTP)
    uint64_t count               # packets stamped so far
    uint64_t taken               # first packet take_twcc has not returned
    uint64_t reported_end        # one past the newest packet a feedback reported
    int has_ref
    uint32_t last_ref            # the last feedback's 24-bit reference time
    int64_t ref                  # ... unwrapped, in 64 ms units
    uint64_t feedbacks


cdef struct TransportRec:
    int in_use
    int has_addr
    sockaddr_storage addr
    socklen_t addrlen
    uint64_t addr_key
    void* srtp_rx
    void* srtp_tx
    int secure        # SRTP expected (WebRTC) vs plain RTP (relay, recorder)
    int ready         # keys installed, or plain
    int id_mid
    int id_abs
    int id_level
    int id_rid
    int id_rrid
    double last_seen
    uint32_t rtcp_ssrc
    uint64_t packets_in
    uint64_t bytes_in
    uint64_t rtcp_in
    uint64_t packets_out
    uint64_t bytes_out
    uint32_t remb_bps
    int remb_fell     # the REMB fell by a fifth or more since the shard last looked
    double tokens
    double tokens_at
    double pace_rate   # bytes/s for this viewer, 0: the engine's rate
    double pace_burst
    int n_producers
    int id_twcc       # transport-cc extension id we stamp on all we send (0: none)
    TwccRec* twcc     # allocated only while id_twcc is set
    double rtt        # the newest round trip measured to any of its consumers (s), -1 if none yet


cdef struct ProducerRec:
    int in_use
    int transport
    int is_video
    int codec
    int pt
    int rtx_pt
    int red_pt        # RFC 2198 redundancy wrapping pt (audio), -1 if not negotiated
    int clock_rate
    uint32_t ssrc
    uint32_t rtx_ssrc
    int has_ssrc
    int has_rtx_ssrc
    uint8_t mid[16]
    int mid_len
    uint8_t rid[16]   # simulcast layer (RFC 8852); empty for a single encoding
    int rid_len
    int width         # from the last VP8 keyframe, 0 if unknown
    int height
    int max_tid       # highest VP8 temporal layer id seen, -1 if none
    # RFC 3550 receive statistics
    int started
    uint32_t base_seq
    uint32_t max_seq
    uint32_t cycles
    uint32_t received
    uint32_t expected_prior
    uint32_t received_prior
    double jitter
    double last_transit
    int has_transit
    uint32_t lsr
    double lsr_at
    uint64_t bytes
    # the last outage in the input: more than GAP_CLOSE packets missing between these two
    int has_gap
    uint16_t gap_before  # the newest sequence number received before it
    uint16_t gap_after   # the first after it
    # RFC 6464 audio levels (audio only) since the last take_audio_levels(): the sum of
    # the 7-bit levels (-dBov), packets carrying one, and of those the ones with V set
    uint64_t level_sum
    uint64_t level_count
    uint64_t level_voiced
    # NACK history (video only)
    uint8_t* ring
    uint16_t* ring_len
    int32_t* ring_seq
    # the newest keyframe's first packet in the history: a joining viewer starts there
    int32_t last_key_seq
    uint32_t last_key_ts
    # keyframe request coalescing
    double last_pli
    int pli_pending
    uint64_t pli_sent
    uint64_t pli_coalesced
    # consumers
    int32_t* consumers
    int n_consumers
    int cap_consumers


cdef struct ConsumerRec:
    int in_use
    int transport
    int producer
    int is_video
    int pt
    int rtx_pt
    int red_pt        # RED sent as such with this PT; -1: RED stripped to its primary
    int has_rtx
    int nack
    uint32_t ssrc
    uint32_t rtx_ssrc
    int id_mid
    int id_abs
    int id_level
    uint8_t mid[16]
    int mid_len
    int started
    uint16_t first_seq
    uint32_t first_ts
    uint16_t seq_offset
    uint32_t ts_offset
    uint16_t rtx_seq
    uint64_t packets_sent
    uint64_t bytes_sent
    uint64_t nacks_served
    double keyframe_asked
    # simulcast: the layer (producer) to move to at its next keyframe, and continuity
    int target
    int hold           # nothing of the current layer goes out until the next keyframe (set_consumer_producer)
    int is_vp8
    uint16_t last_seq  # the newest (highest) sequence number sent, in the viewer's numbering
    uint32_t last_ts   # ... its timestamp, and when it went
    double last_at
    int switched
    uint16_t switch_seq
    uint16_t pic_offset
    uint8_t tl0_offset
    int last_pic
    int last_tl0
    int pic_reset
    # the layer before the last switch, to answer NACKs for what it sent
    int prev_producer
    uint16_t prev_start_seq  # the first of our sequence numbers it sent
    uint16_t prev_seq_offset
    uint32_t prev_ts_offset
    uint16_t prev_pic_offset
    uint8_t prev_tl0_offset
    int prev_held      # ... and it was held until the renumbering: what it sent is not repaired
    int late_run       # packets in a row dropped as older than switch_seq
    int fraction_lost  # from the viewer's last receiver report, /256
    uint32_t reports   # receiver reports received about this consumer
    # pacer: producer sequence numbers waiting for tokens
    uint16_t* queue
    int q_head
    int q_len
    # VP8 temporal layers above this TID go out as padding (-1: all are sent)
    int tid_max
    int tid_until_switch  # the cap is lifted at the next layer switch
    int32_t* pad_seq      # our sequence numbers sent as padding (RING of them; NULL until the first)
    uint32_t* pad_ts      # ... and the timestamp each carried
    uint64_t tid_dropped
    # bandwidth probe: RTX copies of recent packets, so the viewer's estimate can grow
    double probe_rate   # bytes/s, 0 when not probing
    double probe_tokens
    double probe_at
    int probe_k
    uint64_t probe_bytes
    # round trip (RFC 3550 §6.4.1): the last SR sent to the viewer, as LSR will echo it
    uint32_t sr_lsr     # middle 32 bits of its NTP time
    double sr_at        # when we sent it (engine clock), 0 before the first
    double rtt          # seconds, -1 until a receiver report echoes an SR


cdef inline double _now() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return t.tv_sec + t.tv_nsec * 1e-9


cdef uint64_t _addr_key(const sockaddr_storage* a) noexcept nogil:
    cdef const sockaddr_in* a4
    cdef const sockaddr_in6* a6
    cdef uint64_t k = 0
    cdef int i
    if a.ss_family == AF_INET:
        a4 = <const sockaddr_in*>a
        return (<uint64_t>a4.sin_addr.s_addr << 16) | a4.sin_port
    a6 = <const sockaddr_in6*>a
    k = 0xcbf29ce484222325ULL
    for i in range(16):
        k = (k ^ a6.sin6_addr.s6_addr[i]) * 0x100000001b3ULL
    return (k ^ a6.sin6_port) | (1ULL << 63)


cdef int _sockaddr(object host, int port, sockaddr_storage* out, socklen_t* outlen) except -1:
    cdef bytes h = host.encode()
    cdef sockaddr_in* a4 = <sockaddr_in*>out
    cdef sockaddr_in6* a6 = <sockaddr_in6*>out
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, h, &a4.sin_addr) == 1:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        outlen[0] = sizeof(sockaddr_in)
        return 0
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET6, h, &a6.sin6_addr) == 1:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        outlen[0] = sizeof(sockaddr_in6)
        return 0
    raise ValueError(f"not an IP address: {host!r}")


cdef object _py_addr(const sockaddr_storage* a):
    cdef char text[64]
    if a.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<const sockaddr_in*>a).sin_addr, text, 64)
        return (text.decode(), ntohs((<const sockaddr_in*>a).sin_port))
    inet_ntop(AF_INET6, &(<const sockaddr_in6*>a).sin6_addr, text, 64)
    return (text.decode(), ntohs((<const sockaddr_in6*>a).sin6_port))


cdef inline uint64_t _ssrc_key(int transport, uint32_t ssrc) noexcept nogil:
    return (<uint64_t>transport << 32) | ssrc


cdef inline uint64_t _consumer_key(int transport, uint32_t ssrc) noexcept nogil:
    return (1ULL << 62) | (<uint64_t>transport << 32) | ssrc


cdef class Engine:
    """The shard's packet engine. See the module section header for the split of work."""

    cdef int fd
    cdef object slow_path
    cdef public double keyframe_min_interval_s
    cdef public bint pacer_enabled
    cdef public double pacer_rate_bytes_s
    cdef public double pacer_burst_bytes
    # records
    cdef TransportRec* transports
    cdef ProducerRec* producers
    cdef ConsumerRec* consumers
    cdef int n_transports, n_producers, n_consumers   # capacities
    cdef Map addr_map       # address key -> transport
    cdef Map ssrc_map       # (transport, ssrc) -> producer << 1 | is_rtx
    cdef Map consumer_map   # (transport, consumer ssrc) -> consumer
    cdef list srtp_refs     # per transport slot: the pylibsrtp sessions whose contexts we hold
    # batches
    cdef uint8_t* in_buf
    cdef mmsghdr in_msgs[IN_BATCH]
    cdef iovec in_iov[IN_BATCH]
    cdef sockaddr_storage in_addr[IN_BATCH]
    cdef uint8_t* out_buf
    cdef mmsghdr out_msgs[OUT_BATCH]
    cdef iovec out_iov[OUT_BATCH]
    cdef sockaddr_storage out_addr[OUT_BATCH]
    cdef int n_out
    cdef uint8_t scratch[SLOT]
    # counters
    cdef uint64_t drops[<int>D_COUNT]
    cdef public uint64_t packets_in, bytes_in, packets_out, bytes_out
    cdef public uint64_t nacks_received, keyframe_requests_received, rtcp_in
    cdef public uint64_t nacks_served, pli_sent, pli_coalesced, keyframe_history_starts
    cdef int paced_consumers
    cdef int live_consumers  # how far one packet can fan out, at most
    cdef int probing_consumers
    cdef public uint64_t remb_falls
    cdef public uint64_t probe_packets, probe_bytes
    cdef public uint64_t twcc_feedbacks

    def __cinit__(self):
        self.transports = NULL
        self.producers = NULL
        self.consumers = NULL
        self.in_buf = NULL
        self.out_buf = NULL
        self.addr_map.entries = NULL
        self.ssrc_map.entries = NULL
        self.consumer_map.entries = NULL

    def __init__(self, int fd, slow_path, *, double keyframe_min_interval_s=0.5,
                 bint pacer_enabled=True, double pacer_rate_bps=20_000_000, double pacer_burst_bytes=30_000):
        """``fd``: the shard's non-blocking UDP socket. ``slow_path(data, addr)`` gets
        every datagram the engine does not forward itself (STUN, DTLS, unknown peers)."""
        cdef int i
        self.fd = fd
        self.slow_path = slow_path
        self.keyframe_min_interval_s = keyframe_min_interval_s
        self.pacer_enabled = pacer_enabled
        self.pacer_rate_bytes_s = pacer_rate_bps / 8.0
        self.pacer_burst_bytes = pacer_burst_bytes
        self.srtp_refs = []
        _map_init(&self.addr_map, 64)
        _map_init(&self.ssrc_map, 64)
        _map_init(&self.consumer_map, 64)
        self.in_buf = <uint8_t*>malloc(IN_BATCH * SLOT)
        self.out_buf = <uint8_t*>malloc(OUT_BATCH * SLOT)
        if self.in_buf == NULL or self.out_buf == NULL:
            raise MemoryError()
        for i in range(IN_BATCH):
            self.in_iov[i].iov_base = self.in_buf + i * SLOT
            self.in_iov[i].iov_len = SLOT
            memset(&self.in_msgs[i], 0, sizeof(mmsghdr))
            self.in_msgs[i].msg_hdr.msg_iov = &self.in_iov[i]
            self.in_msgs[i].msg_hdr.msg_iovlen = 1
            self.in_msgs[i].msg_hdr.msg_name = &self.in_addr[i]
        for i in range(OUT_BATCH):
            self.out_iov[i].iov_base = self.out_buf + i * SLOT
            memset(&self.out_msgs[i], 0, sizeof(mmsghdr))
            self.out_msgs[i].msg_hdr.msg_iov = &self.out_iov[i]
            self.out_msgs[i].msg_hdr.msg_iovlen = 1
            self.out_msgs[i].msg_hdr.msg_name = &self.out_addr[i]
        self.n_out = 0
        memset(self.drops, 0, sizeof(self.drops))

    def __dealloc__(self):
        cdef int i
        for i in range(self.n_transports):
            free(self.transports[i].twcc)
        for i in range(self.n_producers):
            free(self.producers[i].ring)
            free(self.producers[i].ring_len)
            free(self.producers[i].ring_seq)
            free(self.producers[i].consumers)
        for i in range(self.n_consumers):
            free(self.consumers[i].queue)
            free(self.consumers[i].pad_seq)
            free(self.consumers[i].pad_ts)
        free(self.transports)
        free(self.producers)
        free(self.consumers)
        free(self.in_buf)
        free(self.out_buf)
        free(self.addr_map.entries)
        free(self.ssrc_map.entries)
        free(self.consumer_map.entries)

    # --- slots ----------------------------------------------------------------------

    cdef int _slot(self, void** array, int* count, size_t size) except -1:
        """First free slot of a record array (``in_use`` is each record's first field)."""
        cdef int i, n = count[0]
        cdef void* grown
        for i in range(n):
            if not (<int*>(<char*>array[0] + i * size))[0]:
                memset(<char*>array[0] + i * size, 0, size)
                return i
        grown = realloc(array[0], (n * 2 + 8) * size)
        if grown == NULL:
            raise MemoryError()
        memset(<char*>grown + n * size, 0, (n + 8) * size)
        array[0] = grown
        count[0] = n * 2 + 8
        return n

    cdef TransportRec* _transport(self, int t) except NULL:
        if t < 0 or t >= self.n_transports or not self.transports[t].in_use:
            raise KeyError(f"no transport {t}")
        return &self.transports[t]

    cdef ProducerRec* _producer(self, int p) except NULL:
        if p < 0 or p >= self.n_producers or not self.producers[p].in_use:
            raise KeyError(f"no producer {p}")
        return &self.producers[p]

    cdef ConsumerRec* _consumer(self, int c) except NULL:
        if c < 0 or c >= self.n_consumers or not self.consumers[c].in_use:
            raise KeyError(f"no consumer {c}")
        return &self.consumers[c]

    # --- control: transports ----------------------------------------------------------

    def add_transport(self, *, bint secure=True, int mid=0, int abs_send_time=0, int audio_level=0,
                      uint32_t rtcp_ssrc=1) -> int:
        """A peer's association. ``secure``: SRTP once keys arrive; else plain RTP."""
        cdef int t = self._slot(<void**>&self.transports, &self.n_transports, sizeof(TransportRec))
        cdef TransportRec* tr = &self.transports[t]
        tr.in_use = 1
        tr.secure = secure
        tr.ready = not secure
        tr.id_mid = mid
        tr.id_abs = abs_send_time
        tr.id_level = audio_level
        tr.rtcp_ssrc = rtcp_ssrc
        tr.last_seen = _now()
        tr.tokens = self.pacer_burst_bytes
        tr.tokens_at = tr.last_seen
        tr.rtt = -1.0
        while len(self.srtp_refs) <= t:
            self.srtp_refs.append(None)
        self.srtp_refs[t] = None
        return t

    def set_transport_extensions(self, int t, *, int mid=0, int abs_send_time=0, int audio_level=0,
                                 int rid=0, int repaired_rid=0, int transport_cc=0):
        """The ids of what the peer sends us; ``transport_cc``: the transport-wide sequence
        number extension we stamp on all we send it (0: none; see ``add_consumer``)."""
        cdef TransportRec* tr = self._transport(t)
        self._set_twcc(tr, transport_cc)
        tr.id_mid, tr.id_abs, tr.id_level = mid, abs_send_time, audio_level
        tr.id_rid, tr.id_rrid = rid, repaired_rid

    cdef int _set_twcc(self, TransportRec* tr, int ext_id) except -1:
        """Stamp (1-14) or stop stamping (0) transport-wide sequence numbers on transport tr."""
        if ext_id < 0 or ext_id > 14:
            raise ValueError(f"transport_cc must be a one-byte extension id 1-14, or 0: {ext_id}")
        if ext_id == 0:
            free(tr.twcc)
            tr.twcc = NULL
        elif tr.twcc == NULL:
            tr.twcc = <TwccRec*>calloc(1, sizeof(TwccRec))
            if tr.twcc == NULL:
                raise MemoryError()
        tr.id_twcc = ext_id
        return 0

    def set_transport_address(self, int t, str host, int port):
        """Where the peer is (ICE told us): its datagrams are now recognised, ours go there."""
        cdef TransportRec* tr = self._transport(t)
        cdef int32_t other
        cdef sockaddr_storage addr
        cdef socklen_t addrlen
        _sockaddr(host, port, &addr, &addrlen)  # a bad host changes nothing
        if tr.has_addr and _map_get(&self.addr_map, tr.addr_key) == t:
            _map_del(&self.addr_map, tr.addr_key)
        memcpy(&tr.addr, &addr, sizeof(sockaddr_storage))
        tr.addrlen = addrlen
        tr.addr_key = _addr_key(&tr.addr)
        tr.has_addr = 1
        other = _map_get(&self.addr_map, tr.addr_key)
        if other >= 0 and other != t:
            self.transports[other].has_addr = 0  # the newest peer at an address wins
        _map_put(&self.addr_map, tr.addr_key, t)

    def set_transport_srtp(self, int t, rx_session, tx_session):
        """Install libsrtp contexts (pylibsrtp Sessions; we keep them alive)."""
        cdef TransportRec* tr = self._transport(t)
        from pylibsrtp._binding import ffi
        tr.srtp_rx = <void*><uintptr_t>int(ffi.cast("uintptr_t", rx_session._srtp[0]))
        tr.srtp_tx = <void*><uintptr_t>int(ffi.cast("uintptr_t", tx_session._srtp[0]))
        self.srtp_refs[t] = (rx_session, tx_session)
        tr.ready = 1

    def transport_last_seen(self, int t) -> float:
        return self._transport(t).last_seen

    def touch_transport(self, int t):
        """A valid STUN check or DTLS record counts as a sign of life too."""
        self._transport(t).last_seen = _now()

    def transport_received(self, int t) -> int:
        """Authenticated RTP and RTCP packets received from the peer."""
        cdef TransportRec* tr = self._transport(t)
        return tr.packets_in + tr.rtcp_in

    def transport_sent_bytes(self, int t) -> int:
        """Bytes sent to transport t so far (media, RTX, probes, RTCP; after SRTP)."""
        return self._transport(t).bytes_out

    def set_transport_pacing(self, int t, double bps):
        """Pace what goes to transport t at ``bps`` (0: the engine's rate), in bursts of
        at most 40 ms of it: a viewer's narrow link then queues a keyframe in our pacer
        instead of losing most of it to a full router queue."""
        cdef TransportRec* tr = self._transport(t)
        if bps > 0:
            tr.pace_rate = bps / 8.0
            tr.pace_burst = min(self.pacer_burst_bytes, max(PACE_MIN_BURST, tr.pace_rate * PACE_BURST_S))
        else:
            tr.pace_rate = 0
            tr.pace_burst = 0
        if tr.tokens > (tr.pace_burst if tr.pace_rate > 0 else self.pacer_burst_bytes):
            tr.tokens = tr.pace_burst if tr.pace_rate > 0 else self.pacer_burst_bytes

    def take_remb_falls(self) -> list:
        """Transports whose REMB fell by a fifth or more since the last call."""
        cdef int t
        cdef list out = []
        for t in range(self.n_transports):
            if self.transports[t].in_use and self.transports[t].remb_fell:
                self.transports[t].remb_fell = 0
                out.append(t)
        return out

    def transport_remb_bps(self, int t) -> int:
        return self._transport(t).remb_bps

    def transport_rtt(self, int t) -> float:
        """The newest round-trip time (seconds) measured to any consumer of transport t,
        from a receiver report echoing one of our SRs; -1.0 if none yet."""
        return self._transport(t).rtt

    def remove_transport(self, int t):
        cdef TransportRec* tr = self._transport(t)
        cdef int i
        for i in range(self.n_consumers):
            if self.consumers[i].in_use and self.consumers[i].transport == t:
                self.remove_consumer(i)
        for i in range(self.n_producers):
            if self.producers[i].in_use and self.producers[i].transport == t:
                self.remove_producer(i)
        if tr.has_addr and _map_get(&self.addr_map, tr.addr_key) == t:
            _map_del(&self.addr_map, tr.addr_key)
        free(tr.twcc)
        tr.twcc = NULL
        tr.id_twcc = 0
        tr.in_use = 0
        self.srtp_refs[t] = None

    # --- control: producers -----------------------------------------------------------

    def add_producer(self, int t, *, bint video, int codec, int payload_type, int clock_rate,
                     int rtx_payload_type=-1, ssrc=None, rtx_ssrc=None, bytes mid=b"", bytes rid=b"",
                     int red_payload_type=-1) -> int:
        """A track the peer on transport t publishes.

        ``red_payload_type``: RFC 2198 redundant audio wrapping ``payload_type`` (Opus),
        accepted on the media SSRC beside plain packets; each consumer gets it as RED or
        stripped to its primary (``add_consumer``). Audio only: a video packet's payload
        must be readable for keyframes and layers.
        """
        if red_payload_type >= 0 and (video or red_payload_type == payload_type
                                      or red_payload_type == rtx_payload_type):
            raise ValueError(f"red_payload_type {red_payload_type}: RED wraps an audio codec, under its own PT")
        cdef TransportRec* tr = self._transport(t)
        cdef int p = self._slot(<void**>&self.producers, &self.n_producers, sizeof(ProducerRec))
        cdef ProducerRec* pr = &self.producers[p]
        pr.in_use = 1
        pr.transport = t
        pr.is_video = video
        pr.codec = codec
        pr.pt = payload_type
        pr.rtx_pt = rtx_payload_type
        pr.red_pt = red_payload_type if red_payload_type >= 0 else -1
        pr.clock_rate = clock_rate
        pr.mid_len = min(len(mid), 16)
        memcpy(pr.mid, <const char*>mid, pr.mid_len)
        pr.rid_len = min(len(rid), 16)
        memcpy(pr.rid, <const char*>rid, pr.rid_len)
        pr.last_pli = -1e9
        pr.last_key_seq = -1
        pr.max_tid = -1
        if video:
            pr.ring = <uint8_t*>malloc(RING * SLOT)
            pr.ring_len = <uint16_t*>calloc(RING, sizeof(uint16_t))
            pr.ring_seq = <int32_t*>malloc(RING * sizeof(int32_t))
            if pr.ring == NULL or pr.ring_len == NULL or pr.ring_seq == NULL:
                raise MemoryError()
            memset(pr.ring_seq, 0xFF, RING * sizeof(int32_t))
        if ssrc is not None:
            self._bind_ssrc(p, ssrc, False)
        if rtx_ssrc is not None:
            self._bind_ssrc(p, rtx_ssrc, True)
        tr.n_producers += 1
        return p

    cdef int _bind_ssrc(self, int p, uint32_t ssrc, bint rtx) except -1:
        cdef ProducerRec* pr = &self.producers[p]
        if rtx:
            pr.rtx_ssrc = ssrc
            pr.has_rtx_ssrc = 1
        else:
            pr.ssrc = ssrc
            pr.has_ssrc = 1
        _map_put(&self.ssrc_map, _ssrc_key(pr.transport, ssrc), (p << 1) | rtx)
        return 0

    def remove_producer(self, int p):
        """Its consumers stay (Python closes them, sending BYE first) but get nothing more."""
        cdef ProducerRec* pr = self._producer(p)
        cdef int i
        if pr.has_ssrc:
            _map_del(&self.ssrc_map, _ssrc_key(pr.transport, pr.ssrc))
        if pr.has_rtx_ssrc:
            _map_del(&self.ssrc_map, _ssrc_key(pr.transport, pr.rtx_ssrc))
        for i in range(self.n_consumers):
            if self.consumers[i].in_use and self.consumers[i].prev_producer == p:
                self.consumers[i].prev_producer = -1
        for i in range(pr.n_consumers):
            if self.consumers[pr.consumers[i]].producer == p:
                self.consumers[pr.consumers[i]].producer = -1
            else:  # waiting to move here: the move is off
                self.consumers[pr.consumers[i]].target = -1
                if self.consumers[pr.consumers[i]].hold and self.consumers[pr.consumers[i]].producer >= 0:
                    # ... and its held layer resumes at its next keyframe
                    self._keyframe_request(self.consumers[pr.consumers[i]].producer, _now())
        pr.n_consumers = 0
        self.transports[pr.transport].n_producers -= 1
        free(pr.ring)
        free(pr.ring_len)
        free(pr.ring_seq)
        free(pr.consumers)
        pr.ring = NULL
        pr.ring_len = NULL
        pr.ring_seq = NULL
        pr.consumers = NULL
        pr.cap_consumers = 0
        pr.level_sum = pr.level_count = pr.level_voiced = 0
        pr.in_use = 0
        self._flush()

    def producer_ssrc(self, int p):
        cdef ProducerRec* pr = self._producer(p)
        return pr.ssrc if pr.has_ssrc else None

    def producer_stats(self, int p) -> dict:
        cdef ProducerRec* pr = self._producer(p)
        return {
            "received": pr.received, "bytes": pr.bytes,
            "lost": max(0, <int64_t>(pr.cycles + pr.max_seq) - pr.base_seq + 1 - pr.received) if pr.started else 0,
            "jitter": pr.jitter, "jitter_seconds": pr.jitter / pr.clock_rate if pr.clock_rate else 0.0,
            "keyframe_requests_sent": pr.pli_sent, "keyframe_requests_coalesced": pr.pli_coalesced,
            "consumers": pr.n_consumers, "width": pr.width, "height": pr.height,
            "temporal_layers": pr.max_tid + 1 if pr.max_tid >= 0 else 1,
        }

    def take_audio_levels(self) -> list:
        """RFC 6464 audio levels since the last call, for active-speaker detection.

        ``(producer, mean_dbov, voiced_fraction)`` for each audio producer that
        received at least one packet with the audio-level extension since then
        (RTX excluded): the mean level as dBov (0.0 loudest, -127.0 silence) and
        the fraction of those packets with the voice-activity bit set. Their
        accumulators start again from zero; producers without samples are left out.
        """
        cdef int p
        cdef ProducerRec* pr
        cdef list out = []
        for p in range(self.n_producers):
            pr = &self.producers[p]
            if pr.in_use and not pr.is_video and pr.level_count:
                out.append((p, 0.0 - <double>pr.level_sum / <double>pr.level_count,
                            <double>pr.level_voiced / <double>pr.level_count))
                pr.level_sum = pr.level_count = pr.level_voiced = 0
        return out

    # --- control: consumers -----------------------------------------------------------

    def add_consumer(self, int t, int p, *, int payload_type, uint32_t ssrc, int rtx_payload_type=-1,
                     rtx_ssrc=None, bint nack=True, int mid=0, int abs_send_time=0, int audio_level=0,
                     bytes mid_value=b"", uint16_t first_seq=0, uint32_t first_ts=0,
                     uint16_t first_rtx_seq=0, int transport_cc=0, int red_payload_type=-1) -> int:
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
        cdef TransportRec* tr = self._transport(t)
        cdef ProducerRec* pr = self._producer(p)
        if transport_cc:
            self._set_twcc(tr, transport_cc)
        cdef int c = self._slot(<void**>&self.consumers, &self.n_consumers, sizeof(ConsumerRec))
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef void* grown
        pr = &self.producers[p]
        cr.in_use = 1
        self.live_consumers += 1
        cr.transport = t
        cr.producer = p
        cr.is_video = pr.is_video
        cr.pt = payload_type
        cr.red_pt = red_payload_type if red_payload_type >= 0 else -1
        cr.ssrc = ssrc
        cr.has_rtx = rtx_ssrc is not None and rtx_payload_type >= 0
        cr.rtx_pt = rtx_payload_type
        cr.rtx_ssrc = rtx_ssrc if cr.has_rtx else 0
        cr.nack = nack
        cr.id_mid, cr.id_abs, cr.id_level = mid, abs_send_time, audio_level
        cr.mid_len = len(mid_value) if 0 < len(mid_value) <= 16 else 0
        memcpy(cr.mid, <const char*>mid_value, cr.mid_len)
        cr.first_seq = first_seq
        cr.first_ts = first_ts
        cr.rtx_seq = first_rtx_seq
        cr.keyframe_asked = -1e9
        cr.target = -1
        cr.prev_producer = -1
        cr.is_vp8 = pr.codec == 1
        cr.last_pic = cr.last_tl0 = -1
        cr.tid_max = -1
        cr.rtt = -1.0
        if pr.is_video:
            cr.queue = <uint16_t*>malloc(PACER_QUEUE * sizeof(uint16_t))
            if cr.queue == NULL:
                raise MemoryError()
        self._list_add(pr, c)
        _map_put(&self.consumer_map, _consumer_key(t, ssrc), c)
        return c

    cdef int _list_add(self, ProducerRec* pr, int c) except -1:
        cdef void* grown
        if pr.n_consumers == pr.cap_consumers:
            grown = realloc(pr.consumers, (pr.cap_consumers * 2 + 4) * sizeof(int32_t))
            if grown == NULL:
                raise MemoryError()
            pr.consumers = <int32_t*>grown
            pr.cap_consumers = pr.cap_consumers * 2 + 4
        pr.consumers[pr.n_consumers] = c
        pr.n_consumers += 1
        return 0

    cdef void _list_remove(self, ProducerRec* pr, int c) noexcept nogil:
        cdef int i
        for i in range(pr.n_consumers):
            if pr.consumers[i] == c:
                pr.consumers[i] = pr.consumers[pr.n_consumers - 1]
                pr.n_consumers -= 1
                return

    def set_consumer_producer(self, int c, int p, bint hold=False):
        """Move a consumer to another layer (producer) of its track.

        The move happens on that layer's next keyframe, so the viewer's decoder
        never sees a frame that references one it lacks; until then the consumer
        keeps its current layer. Sequence numbers, timestamps and VP8 picture ids
        continue where they were.

        ``hold``: from now until the consumer's next keyframe, send nothing more of
        the current layer (what it sends, what waits in the pacer, repairs of what
        it sent), and after that keyframe repair nothing the layer sent. For a move
        down on a congested link: the old layer is what overfills it, and the queue
        it built up in the network must drain before the new layer's keyframe gets
        there whole. Held packets are never numbered, so the viewer sees no gap. A
        held layer cannot resume mid-stream: a later move without ``hold`` keeps it
        held, and moving back to it (calling the move off) resumes it at its next
        keyframe, asked for.
        """
        cdef ConsumerRec* cr = self._consumer(c)
        cdef ProducerRec* pr = self._producer(p)
        if cr.target >= 0:
            self._list_remove(&self.producers[cr.target], c)
            cr.target = -1
        if p == cr.producer:
            if cr.hold:
                self._keyframe_request(p, _now())
                self._flush()
            return
        if not cr.started or cr.producer < 0:
            if cr.producer >= 0:
                self._list_remove(&self.producers[cr.producer], c)
            cr.producer = p
            cr.is_vp8 = pr.codec == 1
            cr.hold = 0
        else:
            cr.target = p
            if hold and not cr.hold:
                cr.hold = 1
                if cr.q_len:
                    self.drops[<int>D_HELD_FOR_SWITCH] += cr.q_len
                    cr.q_len = 0
                    self.paced_consumers -= 1
        self._list_add(pr, c)
        self._keyframe_request(p, _now())
        self._flush()

    def consumer_producer(self, int c) -> int:
        return self._consumer(c).producer

    def remove_consumer(self, int c):
        cdef ConsumerRec* cr = self._consumer(c)
        cdef ProducerRec* pr
        cdef int i
        if cr.producer >= 0:
            self._list_remove(&self.producers[cr.producer], c)
        if cr.target >= 0:
            self._list_remove(&self.producers[cr.target], c)
        _map_del(&self.consumer_map, _consumer_key(cr.transport, cr.ssrc))
        if cr.q_len:
            self.paced_consumers -= 1
        if cr.probe_rate > 0:
            self.probing_consumers -= 1
        free(cr.pad_seq)
        free(cr.pad_ts)
        cr.pad_seq = NULL
        cr.pad_ts = NULL
        free(cr.queue)
        cr.queue = NULL
        cr.in_use = 0
        self.live_consumers -= 1

    def consumer_stats(self, int c) -> dict:
        cdef ConsumerRec* cr = self._consumer(c)
        return {"packets_sent": cr.packets_sent, "bytes_sent": cr.bytes_sent,
                "nacks_served": cr.nacks_served, "started": bool(cr.started), "paced": cr.q_len,
                "fraction_lost": cr.fraction_lost / 256.0, "reports": cr.reports,
                "probe_bytes": cr.probe_bytes, "tid_max": cr.tid_max, "tid_dropped": cr.tid_dropped,
                "rtt_s": cr.rtt if cr.rtt >= 0 else 0.0, "held": bool(cr.hold)}

    def set_consumer_temporal(self, int c, int tid_max, bint until_switch=False):
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
        cdef ConsumerRec* cr = self._consumer(c)
        cr.tid_max = tid_max if tid_max >= 0 else -1
        cr.tid_until_switch = until_switch and cr.tid_max >= 0

    def set_consumer_probe(self, int c, double bps):
        """Pad the consumer's stream up by ``bps`` with RTX copies of its recent packets.

        A receiver's bandwidth estimate (REMB, transport-cc) cannot exceed much more
        than what it receives, so a viewer on a small layer never shows room for a
        bigger one unless the sender offers more bytes. Copies of packets it already
        has cost the decoder nothing (the jitter buffer drops duplicates). Needs RTX
        (a copy on the media SSRC would be a duplicate sequence number, not padding);
        0 stops. Sent from :meth:`tick`, within the transport's pacer budget.
        """
        cdef ConsumerRec* cr = self._consumer(c)
        cdef double rate = bps / 8.0 if bps > 0 and cr.has_rtx and cr.is_video else 0.0
        if rate > 0 and cr.probe_rate <= 0:
            self.probing_consumers += 1
            cr.probe_tokens = 0
            cr.probe_at = _now()
            cr.probe_k = 0
        elif rate <= 0 and cr.probe_rate > 0:
            self.probing_consumers -= 1
        cr.probe_rate = rate

    def start_consumer(self, int c) -> bool:
        """A viewer is ready: start it from the history if it holds the whole current GOP.

        The newest keyframe and every packet since are replayed through the pacer,
        then live packets follow: the viewer decodes at once and the publisher gets
        no PLI. Otherwise (no complete GOP in the history) one coalesced PLI asks for
        a keyframe. Returns whether the history served.
        """
        cdef ConsumerRec* cr = self._consumer(c)
        cdef double now = _now()
        cdef bint served = False
        if cr.producer >= 0 and not cr.started:
            served = self._start_from_history(c, now)
            if not served:
                self._keyframe_request(cr.producer, now)
        self._flush()
        return served

    cdef bint _start_from_history(self, int c, double now) except -1:
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef ProducerRec* pr = &self.producers[cr.producer]
        cdef TransportRec* pt = &self.transports[pr.transport]
        cdef TransportRec* tr = &self.transports[cr.transport]
        cdef int count, k, i
        cdef uint16_t seq
        cdef Hdr h
        if not pr.is_video or pr.ring == NULL or pr.last_key_seq < 0 or not tr.has_addr or not tr.ready:
            return False
        count = ((pr.max_seq - pr.last_key_seq) & 0xFFFF) + 1
        if count > PACER_QUEUE or count > RING:
            return False
        for k in range(count):
            seq = (pr.last_key_seq + k) & 0xFFFF
            if pr.ring_seq[seq % RING] != seq:
                return False
        i = pr.last_key_seq % RING
        if _parse(pr.ring + i * SLOT, pr.ring_len[i], pt.id_mid, pt.id_abs, pt.id_level, 0, 0, &h) < 0:
            return False
        self._start(cr, &h)
        self.keyframe_history_starts += 1
        for k in range(count):
            seq = (pr.last_key_seq + k) & 0xFFFF
            if self.pacer_enabled:
                self._enqueue(cr, seq)
            else:
                i = seq % RING
                if _parse(pr.ring + i * SLOT, pr.ring_len[i], pt.id_mid, pt.id_abs, pt.id_level, 0, 0, &h) >= 0:
                    self._forward(c, cr.producer, pr.ring + i * SLOT, &h, k == 0, now, True)
        if self.pacer_enabled:
            self._drain(c, now)
        return True

    def request_keyframe(self, int p):
        """A viewer asked: one coalesced PLI to the publisher."""
        self._producer(p)
        self._keyframe_request(p, _now())
        self._flush()

    # --- stats --------------------------------------------------------------------------

    def drop_counts(self) -> dict:
        return {DROP_REASONS[i]: self.drops[i] for i in range(<int>D_COUNT) if self.drops[i]}

    def count_drop(self, str reason):
        self.drops[DROP_REASONS.index(reason)] += 1

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

    def on_readable(self):
        """Registered with ``loop.add_reader``: drain the socket in batches, forward, flush.

        Bounded by batches and by packets sent: one incoming packet of a big room fans
        out to thousands, and a backlog left by a moment without CPU must not become a
        second-long call during which control (pings, joins) waits. What is left stays
        in the socket's buffer for the next turn of the loop.
        """
        cdef int n, i, batches = 0
        cdef double now
        cdef uint64_t sent_before = self.packets_out
        # Read fewer datagrams at a time when one of them may fan out widely.
        cdef int want = min(IN_BATCH, max(1, MAX_SENDS_PER_READABLE // (self.live_consumers + 1)))
        while batches < MAX_BATCHES and self.packets_out - sent_before < MAX_SENDS_PER_READABLE:
            for i in range(want):
                self.in_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                self.in_msgs[i].msg_hdr.msg_flags = 0
            n = recvmmsg(self.fd, self.in_msgs, want, MSG_DONTWAIT, NULL)
            if n <= 0:
                break
            now = _now()
            for i in range(n):
                self._datagram(self.in_buf + i * SLOT, <int>self.in_msgs[i].msg_len, &self.in_addr[i], now)
            self._flush()
            batches += 1
            if n < want:
                break

    def feed(self, const unsigned char[::1] data, str host, int port):
        """Process one datagram as if it had arrived from (host, port): tests and benchmarks."""
        cdef sockaddr_storage addr
        cdef socklen_t addrlen
        cdef int n = data.shape[0]
        cdef uint8_t* buf
        if n > SLOT:
            n = SLOT
        _sockaddr(host, port, &addr, &addrlen)
        # An exactly sized copy, so a sanitizer build catches any read past the datagram.
        buf = <uint8_t*>malloc(n if n else 1)
        if buf == NULL:
            raise MemoryError()
        if n:
            memcpy(buf, &data[0], n)
        try:
            self._datagram(buf, n, &addr, _now())
        finally:
            free(buf)
        self._flush()

    cdef void _datagram(self, uint8_t* buf, int n, sockaddr_storage* addr, double now) except *:
        cdef int32_t t
        cdef uint8_t first
        cdef TransportRec* tr
        if n <= 0:
            self.drops[<int>D_EMPTY] += 1
            return
        first = buf[0]
        if 128 <= first < 192:
            t = _map_get(&self.addr_map, _addr_key(addr))
            if t < 0:
                self.drops[<int>D_UNKNOWN_ADDRESS] += 1
                return
            tr = &self.transports[t]
            if not tr.ready:
                self.drops[<int>D_SRTP_NOT_READY] += 1
                return
            if n >= 2 and 192 <= buf[1] <= 223:
                self._on_rtcp(t, buf, n, now)
            else:
                self._on_rtp(t, buf, n, now)
        elif first < 4 or 20 <= first < 64:
            # STUN and DTLS: control, handled in Python.
            self.slow_path(PyBytes_FromStringAndSize(<char*>buf, n), _py_addr(addr))
        else:
            self.drops[<int>D_UNKNOWN_PROTOCOL] += 1

    # --- RTP ----------------------------------------------------------------------------

    cdef void _on_rtp(self, int t, uint8_t* buf, int n, double now) except *:
        cdef TransportRec* tr = &self.transports[t]
        cdef Hdr h
        cdef int r, p, i, is_rtx, primary_pt
        cdef int32_t v
        cdef ProducerRec* pr
        cdef bint key, red = False
        if n > MAX_RTP:
            self.drops[<int>D_RTP_TOO_LARGE] += 1
            return
        if tr.srtp_rx != NULL:
            if _srtp_unprotect(tr.srtp_rx, buf, &n) != 0:
                self.drops[<int>D_SRTP_UNPROTECT] += 1
                return
        tr.last_seen = now
        r = _parse(buf, n, tr.id_mid, tr.id_abs, tr.id_level, tr.id_rid, tr.id_rrid, &h)
        if r < 0:
            self.drops[-1 - r] += 1
            return
        v = _map_get(&self.ssrc_map, _ssrc_key(t, h.ssrc))
        if v < 0:
            v = self._learn_ssrc(t, buf, &h)
            if v < 0:
                self.drops[<int>D_RTP_UNKNOWN_SSRC] += 1
                return
        p = v >> 1
        is_rtx = v & 1
        pr = &self.producers[p]
        if is_rtx:
            if h.payload_len <= 2:
                if h.payload_len < 2:
                    self.drops[<int>D_RTX_NO_OSN] += 1
                else:
                    self.drops[<int>D_RTP_PADDING_ONLY] += 1
                return
            # RFC 4588: the original sequence number leads the payload; rebuild in place.
            buf[2] = buf[h.payload_off]
            buf[3] = buf[h.payload_off + 1]
            memmove(buf + h.payload_off, buf + h.payload_off + 2, h.payload_len - 2)
            buf[0] &= 0xDF
            buf[1] = (buf[1] & 0x80) | pr.pt
            _put32(buf + 8, pr.ssrc)
            h.payload_len -= 2
            n = h.payload_off + h.payload_len
            h.seq = _u16(buf + 2)
            h.pt = pr.pt
            h.ssrc = pr.ssrc
        elif h.pt != pr.pt:
            if h.pt != pr.red_pt:
                self.drops[<int>D_RTP_UNEXPECTED_PT] += 1
                return
            red = True
        if h.payload_len == 0:
            self.drops[<int>D_RTP_PADDING_ONLY] += 1
            return
        if red:
            # Checked once here, so each consumer's rewrite can trust the block structure.
            if _red_primary(buf, h.payload_off, h.payload_off + h.payload_len, &primary_pt) < 0:
                self.drops[<int>D_RED_MALFORMED] += 1
                return
            if primary_pt != pr.pt:  # a primary in another codec than negotiated (pt/pt)
                self.drops[<int>D_RTP_UNEXPECTED_PT] += 1
                return
        n = h.payload_off + h.payload_len  # padding is not forwarded
        buf[0] &= 0xDF  # nor its flag: the copy in the NACK ring is parsed again
        if pr.started and GAP_CLOSE + 1 < ((h.seq - pr.max_seq) & 0xFFFF) < 0x8000:
            # The input resumes after an outage: consumers close the gap (see _forward).
            pr.has_gap = 1
            pr.gap_before = pr.max_seq
            pr.gap_after = h.seq
        self.packets_in += 1
        self.bytes_in += n
        tr.packets_in += 1
        tr.bytes_in += n
        self._receive_stats(pr, &h, now, n)
        if h.level_off >= 0 and not is_rtx and not pr.is_video:
            # RFC 6464: V bit, then the level in -dBov; a retransmission was counted already.
            pr.level_sum += buf[h.level_off] & 0x7F
            pr.level_voiced += buf[h.level_off] >> 7
            pr.level_count += 1
        if pr.ring != NULL:
            i = h.seq % RING
            memcpy(pr.ring + i * SLOT, buf, n)
            pr.ring_len[i] = n
            pr.ring_seq[i] = h.seq
        if pr.codec == 1:
            i = _vp8_tid(buf, h.payload_off, h.payload_off + h.payload_len)
            if i > pr.max_tid:
                pr.max_tid = i
        key = pr.is_video and _keyframe(pr.codec, buf, h.payload_off, h.payload_off + h.payload_len)
        if key:
            if pr.codec == 1:
                _vp8_keyframe_size(buf, h.payload_off, h.payload_off + h.payload_len, &pr.width, &pr.height)
            if h.seq == pr.max_seq and (pr.last_key_seq < 0 or h.ts != pr.last_key_ts):
                pr.last_key_seq = h.seq
                pr.last_key_ts = h.ts
        for i in range(pr.n_consumers):
            self._forward(pr.consumers[i], p, buf, &h, key, now, False)

    cdef int32_t _learn_ssrc(self, int t, const uint8_t* buf, Hdr* h) except -2:
        """Bind an unsignalled SSRC to the producer whose mid (and rid) it carries.

        RFC 8843 §9.2 for the mid; RFC 8852 for simulcast, where the layers share
        a mid and the rid (or, on RTX, the repaired rid) tells them apart.
        """
        cdef int p
        cdef ProducerRec* pr
        cdef bint rtx
        if h.mid_off < 0:
            return -1
        for p in range(self.n_producers):
            pr = &self.producers[p]
            if not pr.in_use or pr.transport != t or pr.mid_len != h.mid_len:
                continue
            if memcmp(pr.mid, buf + h.mid_off, h.mid_len) != 0:
                continue
            rtx = h.pt == pr.rtx_pt and h.pt != pr.pt
            if pr.rid_len:
                if rtx:
                    if h.rrid_len != pr.rid_len or memcmp(pr.rid, buf + h.rrid_off, h.rrid_len) != 0:
                        continue
                elif h.rid_len != pr.rid_len or memcmp(pr.rid, buf + h.rid_off, h.rid_len) != 0:
                    continue
            if (h.pt == pr.pt or h.pt == pr.red_pt) and not pr.has_ssrc:
                self._bind_ssrc(p, h.ssrc, False)
                return p << 1
            if rtx and not pr.has_rtx_ssrc and pr.has_ssrc:
                self._bind_ssrc(p, h.ssrc, True)
                return (p << 1) | 1
            return -1
        return -1

    cdef void _receive_stats(self, ProducerRec* pr, Hdr* h, double now, int n) noexcept nogil:
        cdef uint32_t delta
        cdef double transit, d
        if not pr.started:
            pr.started = 1
            pr.base_seq = pr.max_seq = h.seq
        else:
            delta = (h.seq - pr.max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if h.seq < pr.max_seq:
                    pr.cycles += 0x10000
                pr.max_seq = h.seq
        pr.received += 1
        pr.bytes += n
        transit = now * pr.clock_rate - h.ts
        if pr.has_transit:
            d = transit - pr.last_transit
            if d < 0:
                d = -d
            if d < pr.clock_rate * 10.0:
                pr.jitter += (d - pr.jitter) / 16.0
        pr.last_transit = transit
        pr.has_transit = 1

    cdef void _forward(self, int c, int p, const uint8_t* buf, Hdr* h, bint key, double now,
                       bint from_queue) except *:
        """One packet to one consumer: start on a keyframe, pace, number, rewrite, protect, queue.

        Numbering: the packet's number in the viewer's sequence is its own plus the
        consumer's offset, which changes only where the stream is continued from the
        newest number sent + 1: a layer switch, or a long gap in the producer's input.
        A gap of more than GAP_CLOSE (64) missing packets is an outage upstream (a relay
        cut for seconds), not loss to repair: for audio that is 1.3 s, far past what RED
        (1-2 blocks back) or Opus FEC (one packet back) restore, and past aiortc's 16-packet
        audio buffer; for video it takes whole frames that nothing repairs (the engine
        never NACKs upstream), so the viewer needs a keyframe whichever way. Shown to the
        viewer, such a hole stalls its jitter buffer until it gives up on it (aiortc: until
        its buffer has moved past the hole) before it even asks. So the gap is closed:
        audio at once (every Opus packet decodes on its own), video at the next keyframe,
        asked for at once. Below that, the hole stays visible: loss concealment, NACK, RED
        and FEC work from sequence gaps. A packet from before a renumbering point (one of
        the gap's, late; the new layer's, older than its keyframe) is dropped: its number
        went to another packet.
        """
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef TransportRec* tr = &self.transports[cr.transport]
        cdef uint8_t* out
        cdef int n, i, plen
        cdef uint16_t seq, ahead, back
        cdef ProducerRec* pr
        cdef bint resume = False
        if not tr.has_addr or not tr.ready:
            return
        if cr.producer != p:
            # A packet of the layer this consumer waits to move to.
            if p != cr.target:
                return
            if not key:
                if now - cr.keyframe_asked > 1.0:
                    cr.keyframe_asked = now
                    self._keyframe_request(p, now)
                return
            if cr.q_len:
                # What the old layer still has waiting is stale next to this keyframe (a
                # down-switch is usually why it waits); it was never numbered, so
                # dropping it leaves the viewer no gap.
                self.drops[<int>D_PACER_SUPERSEDED] += cr.q_len
                cr.q_len = 0
                self.paced_consumers -= 1
            self._switch(c, p, h, now)
        elif cr.hold:
            if cr.target >= 0 or not key:
                self.drops[<int>D_HELD_FOR_SWITCH] += 1
                return
            # The move was called off: the held layer resumes at its keyframe, numbered
            # on from the newest packet sent (its held packets never got numbers).
            cr.hold = 0
            self._renumber(cr, p, h, now, True)
            cr.prev_held = 1
        if not cr.started:
            if cr.is_video and not key:
                self._wait_keyframe(cr, p, now)
                return
            self._start(cr, h)
        if self.pacer_enabled and cr.is_video and not from_queue:
            self._refill(tr, now)
            if cr.q_len or tr.tokens <= 0:
                self._enqueue(cr, <uint16_t>h.seq)
                return
        # Sent now: its number in the viewer's sequence.
        seq = (h.seq + cr.seq_offset) & 0xFFFF
        ahead = (seq - cr.last_seq) & 0xFFFF
        if ahead >= 0x8000:
            if cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000:
                cr.late_run += 1
                if cr.late_run <= GAP_CLOSE:
                    self.drops[<int>D_LATE_BEFORE_SWITCH] += 1
                    return
                # Nothing else for that long: not stragglers, the input went back (a
                # sender restarted its numbering). A discontinuity, closed like a gap.
                resume = True
        elif ahead > GAP_CLOSE + 1:
            # A hole that long: closed if the producer's last outage is inside it. (One our
            # pacer made, of packets the history still has for NACKs, stays.)
            pr = &self.producers[p]
            back = (cr.last_seq - cr.seq_offset) & 0xFFFF  # the newest input sent
            resume = pr.has_gap and ((pr.gap_before - back) & 0xFFFF) < ahead \
                and ((h.seq - pr.gap_after) & 0xFFFF) < ahead
        if resume:
            if cr.is_video and not key:
                key = _keyframe(self.producers[p].codec, buf, h.payload_off, h.payload_off + h.payload_len)
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
                # Long past the last renumbering: nothing before it is answerable any more
                # (the histories hold 1,024 packets). Trailing it keeps every comparison
                # with it within half the sequence space.
                cr.switch_seq = seq - SWITCH_HORIZON
                cr.prev_producer = -1
        out = self._out_slot()
        if cr.tid_max >= 0 and cr.is_vp8 and _vp8_tid(buf, h.payload_off, h.payload_off + h.payload_len) > cr.tid_max:
            n = self._padding(cr, out, seq, cr.last_ts)
            if cr.pad_seq == NULL:
                cr.pad_seq = <int32_t*>malloc(RING * sizeof(int32_t))
                cr.pad_ts = <uint32_t*>malloc(RING * sizeof(uint32_t))
                if cr.pad_seq == NULL or cr.pad_ts == NULL:
                    raise MemoryError()
                for i in range(RING):
                    cr.pad_seq[i] = -1
            cr.pad_seq[seq % RING] = seq
            cr.pad_ts[seq % RING] = cr.last_ts
            cr.tid_dropped += 1
            tr.tokens -= n
            self._emit(cr.transport, n, False)
            return
        if cr.pad_seq != NULL:
            cr.pad_seq[seq % RING] = -1
        if ahead < 0x8000:
            cr.last_ts = h.ts + cr.ts_offset
            cr.last_at = now
        n = self._rewrite(cr, &self.producers[p], buf, h, out, seq, True, now, &plen)
        if n < 0:  # cannot happen: RED is checked on arrival
            self.drops[<int>D_RED_MALFORMED] += 1
            return
        cr.packets_sent += 1
        cr.bytes_sent += plen
        tr.tokens -= n
        self._emit(cr.transport, n, False)

    cdef void _start(self, ConsumerRec* cr, Hdr* h) noexcept nogil:
        """The consumer's first packet (a keyframe for video) gets its first_seq and first_ts."""
        cr.started = 1
        cr.seq_offset = (cr.first_seq - h.seq) & 0xFFFF
        cr.ts_offset = cr.first_ts - h.ts
        cr.last_seq = cr.first_seq - 1

    cdef void _wait_keyframe(self, ConsumerRec* cr, int p, double now) except *:
        """Drop a video packet the consumer cannot start (or resume) on; ask for a keyframe,
        at most once a second per consumer (the producer coalesces the requests)."""
        self.drops[<int>D_WAITING_KEYFRAME] += 1
        if now - cr.keyframe_asked > 1.0:
            cr.keyframe_asked = now
            self._keyframe_request(p, now)

    cdef void _switch(self, int c, int p, Hdr* h, double now) noexcept nogil:
        """Move consumer c to producer p at this keyframe, continuing its numbering."""
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef ProducerRec* pr = &self.producers[p]
        cdef int old = cr.producer
        cdef int held = cr.hold
        if cr.producer >= 0:
            self._list_remove(&self.producers[cr.producer], c)
        cr.producer = p
        cr.target = -1
        cr.hold = 0
        cr.is_vp8 = pr.codec == 1
        if cr.tid_until_switch:
            cr.tid_max = -1
            cr.tid_until_switch = 0
        if cr.started:
            # Layers have unrelated timestamp bases: carry on from ours by the time elapsed.
            self._renumber(cr, old, h, now, False)
            cr.prev_held = held
        if held and self.pacer_enabled:
            # The link is congested and the hold saved up a full bucket: the keyframe leaves
            # at the pacing rate instead of as one burst into the queue it waits behind.
            self._refill(&self.transports[cr.transport], now)
            if self.transports[cr.transport].tokens > 0:
                self.transports[cr.transport].tokens = 0

    cdef void _renumber(self, ConsumerRec* cr, int old, Hdr* h, double now, bint keep_ts) noexcept nogil:
        """Continue the viewer's numbering at this packet (a keyframe for video) from the
        newest sent + 1: sequence number, VP8 picture id and TL0PICIDX; the timestamp too
        unless ``keep_ts`` (the same producer's clock, which the viewer's SR mapping follows).
        What producer ``old`` sent before stays answerable to NACKs, with its offsets."""
        cdef double ticks
        cr.prev_producer = old
        cr.prev_start_seq = cr.switch_seq if cr.switched else cr.first_seq
        cr.prev_seq_offset = cr.seq_offset
        cr.prev_ts_offset = cr.ts_offset
        cr.prev_pic_offset = cr.pic_offset
        cr.prev_tl0_offset = cr.tl0_offset
        cr.prev_held = 0
        cr.switched = 1
        cr.switch_seq = (cr.last_seq + 1) & 0xFFFF
        cr.seq_offset = (cr.switch_seq - h.seq) & 0xFFFF
        if not keep_ts:
            ticks = (now - cr.last_at) * self.producers[cr.producer].clock_rate
            cr.ts_offset = cr.last_ts + (<uint32_t>ticks if ticks >= 1 else 1) - h.ts
        cr.pic_reset = 1

    cdef void _vp8(self, ConsumerRec* cr, uint8_t* d, int n, bint track) noexcept nogil:
        """Picture id and TL0PICIDX (RFC 7741 §4.2) continued across layer switches."""
        cdef int pos = 2, pic, out
        if n < 2 or not d[0] & 0x80:
            return
        if d[1] & 0x80:
            if pos >= n:
                return
            if d[pos] & 0x80:
                if pos + 1 >= n:
                    return
                pic = ((d[pos] & 0x7F) << 8) | d[pos + 1]
                if track and cr.pic_reset:
                    cr.pic_offset = (cr.last_pic + 1 - pic) & 0x7FFF if cr.last_pic >= 0 else 0
                out = (pic + cr.pic_offset) & 0x7FFF
                d[pos] = 0x80 | (out >> 8)
                d[pos + 1] = out & 0xFF
                pos += 2
            else:
                pic = d[pos] & 0x7F
                if track and cr.pic_reset:
                    cr.pic_offset = (cr.last_pic + 1 - pic) & 0x7FFF if cr.last_pic >= 0 else 0
                out = (pic + cr.pic_offset) & 0x7F
                d[pos] = out
                pos += 1
            if track:
                cr.last_pic = out
        if d[1] & 0x40:
            if pos >= n:
                return
            if track and cr.pic_reset:
                cr.tl0_offset = (cr.last_tl0 + 1 - d[pos]) & 0xFF if cr.last_tl0 >= 0 else 0
            d[pos] = (d[pos] + cr.tl0_offset) & 0xFF
            if track:
                cr.last_tl0 = d[pos]
        if track:
            cr.pic_reset = 0

    cdef int _rewrite(self, ConsumerRec* cr, ProducerRec* src, const uint8_t* buf, Hdr* h, uint8_t* o,
                      uint32_t seq, bint track, double now, int* payload_len) noexcept nogil:
        """The viewer's copy of a packet of producer ``src``: its SSRC, seq, ts, PT;
        extensions in its ids; no padding. Returns its length, the payload's in
        ``payload_len``; -1 for a RED payload that does not parse (checked on arrival).

        abs-send-time is stamped now, whether or not the publisher sent one: the
        viewer's delay-based estimate is about the path from us, and a timestamp from
        the publisher would count our queueing (pacer, probes, history replays) as
        congestion on the viewer's link. A transport-cc viewer gets the next
        transport-wide sequence number (``_emit`` counts it as sent).

        RED (RFC 2198) goes out as RED under the viewer's RED PT, the blocks of the
        codec renumbered to the viewer's codec PT; or, to a viewer without RED, as its
        primary block alone: the same timestamp (the primary's offset is 0) and number.
        """
        cdef int elen = 0, pos, primary_pt
        cdef int pt = cr.pt, poff = h.payload_off, plen = h.payload_len
        cdef bint red = h.pt == src.red_pt
        cdef uint32_t abs24
        cdef uint8_t* ext = o + 12 + 4 * h.cc + 4
        cdef TransportRec* tr = &self.transports[cr.transport]
        if red:
            if cr.red_pt >= 0:
                pt = cr.red_pt
            else:
                poff = _red_primary(buf, h.payload_off, h.payload_off + h.payload_len, &primary_pt)
                if poff < 0:
                    return -1
                plen = h.payload_off + h.payload_len - poff
        if cr.id_mid and cr.mid_len:
            ext[0] = (cr.id_mid << 4) | (cr.mid_len - 1)
            memcpy(ext + 1, cr.mid, cr.mid_len)
            elen = 1 + cr.mid_len
        if cr.id_abs:
            ext[elen] = (cr.id_abs << 4) | 2
            abs24 = <uint32_t>(<uint64_t>(now * 262144.0) & 0xFFFFFF)  # 6.18 fixed-point seconds
            ext[elen + 1] = (abs24 >> 16) & 0xFF
            ext[elen + 2] = (abs24 >> 8) & 0xFF
            ext[elen + 3] = abs24 & 0xFF
            elen += 4
        if tr.twcc != NULL:
            ext[elen] = (tr.id_twcc << 4) | 1
            _put16(ext + elen + 1, tr.twcc.count & 0xFFFF)
            elen += 3
        if cr.id_level and h.level_off >= 0:
            ext[elen] = cr.id_level << 4
            ext[elen + 1] = buf[h.level_off]
            elen += 2
        while elen % 4:
            ext[elen] = 0
            elen += 1
        o[0] = 0x80 | h.cc | (0x10 if elen else 0)
        o[1] = (h.marker << 7) | pt
        _put16(o + 2, seq)
        _put32(o + 4, h.ts + cr.ts_offset)
        _put32(o + 8, cr.ssrc)
        pos = 12
        if h.cc:
            memcpy(o + 12, buf + 12, 4 * h.cc)
            pos += 4 * h.cc
        if elen:
            _put16(o + pos, 0xBEDE)
            _put16(o + pos + 2, elen // 4)
            pos += 4 + elen
        memcpy(o + pos, buf + poff, plen)
        if red and cr.red_pt >= 0:
            _red_remap(o + pos, plen, src.pt, cr.pt)
        if cr.is_vp8:
            self._vp8(cr, o + pos, plen, track)
        payload_len[0] = plen
        return pos + plen

    cdef int _padding(self, ConsumerRec* cr, uint8_t* o, uint16_t seq, uint32_t ts) noexcept nogil:
        """A padding-only packet (RFC 3550 §5.1) in the consumer's numbering; with the
        transport-wide sequence number for a transport-cc viewer."""
        cdef TransportRec* tr = &self.transports[cr.transport]
        o[1] = cr.pt
        _put16(o + 2, seq)
        _put32(o + 4, ts)
        _put32(o + 8, cr.ssrc)
        if tr.twcc != NULL:
            o[0] = 0xB0
            _put32(o + 12, 0xBEDE0001)
            o[16] = (tr.id_twcc << 4) | 1
            _put16(o + 17, tr.twcc.count & 0xFFFF)
            o[19] = 0
            _put32(o + 20, 4)
            return 24
        o[0] = 0xA0
        _put32(o + 12, 4)
        return 16

    # --- egress -------------------------------------------------------------------------

    cdef uint8_t* _out_slot(self) except NULL:
        if self.n_out == OUT_BATCH:
            self._flush()
        return self.out_buf + self.n_out * SLOT

    cdef void _emit(self, int t, int n, bint rtcp) except *:
        """Protect the packet in the current out slot and queue it to transport t."""
        cdef TransportRec* tr = &self.transports[t]
        cdef uint8_t* out = self.out_buf + self.n_out * SLOT
        cdef int status, i
        if tr.srtp_tx != NULL:
            status = _srtp_protect_rtcp(tr.srtp_tx, out, &n) if rtcp else _srtp_protect(tr.srtp_tx, out, &n)
            if status != 0:
                self.drops[<int>D_SRTP_PROTECT] += 1
                return
        if tr.twcc != NULL and not rtcp:
            # Stamped with this number by _rewrite or _padding: it is sent now.
            i = tr.twcc.count % TWCC_RING
            tr.twcc.sent[i] = _now()
            tr.twcc.size[i] = n
            tr.twcc.arrival[i] = TWCC_UNREPORTED
            tr.twcc.count += 1
        self.out_iov[self.n_out].iov_len = n
        memcpy(&self.out_addr[self.n_out], &tr.addr, tr.addrlen)
        self.out_msgs[self.n_out].msg_hdr.msg_namelen = tr.addrlen
        self.n_out += 1
        tr.packets_out += 1
        tr.bytes_out += n
        if not rtcp:
            self.packets_out += 1
            self.bytes_out += n

    cdef void _flush(self) noexcept:
        cdef int sent, start = 0
        while start < self.n_out:
            sent = sendmmsg(self.fd, self.out_msgs + start, self.n_out - start, MSG_DONTWAIT)
            if sent < 0:
                if errno == EINTR:
                    continue
                # Full socket buffer or an unreachable peer: drop the rest of this batch
                # (its first datagram is the one the kernel refused).
                self.drops[<int>D_SEND_FAILED] += 1
                start += 1
                continue
            start += sent
        self.n_out = 0

    # --- pacing -------------------------------------------------------------------------

    cdef inline void _refill(self, TransportRec* tr, double now) noexcept nogil:
        if tr.pace_rate > 0:
            tr.tokens += (now - tr.tokens_at) * tr.pace_rate
            if tr.tokens > tr.pace_burst:
                tr.tokens = tr.pace_burst
        else:
            tr.tokens += (now - tr.tokens_at) * self.pacer_rate_bytes_s
            if tr.tokens > self.pacer_burst_bytes:
                tr.tokens = self.pacer_burst_bytes
        tr.tokens_at = now

    cdef void _enqueue(self, ConsumerRec* cr, uint16_t seq) noexcept nogil:
        if cr.q_len == PACER_QUEUE:
            # Hopelessly behind: lose the oldest rather than grow without bound.
            cr.q_head = (cr.q_head + 1) % PACER_QUEUE
            cr.q_len -= 1
            self.drops[<int>D_PACER_QUEUE_FULL] += 1
        if cr.q_len == 0:
            self.paced_consumers += 1
        cr.queue[(cr.q_head + cr.q_len) % PACER_QUEUE] = seq
        cr.q_len += 1

    cdef void _drain(self, int c, double now) except *:
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef TransportRec* tr = &self.transports[cr.transport]
        cdef ProducerRec* pr
        cdef uint16_t seq
        cdef int i
        cdef Hdr h
        self._refill(tr, now)
        while cr.q_len and tr.tokens > 0:
            seq = cr.queue[cr.q_head]
            cr.q_head = (cr.q_head + 1) % PACER_QUEUE
            cr.q_len -= 1
            if cr.q_len == 0:
                self.paced_consumers -= 1
            if cr.producer < 0:
                continue
            pr = &self.producers[cr.producer]
            i = seq % RING
            if pr.ring_seq[i] != seq or _parse(pr.ring + i * SLOT, pr.ring_len[i], self.transports[pr.transport].id_mid,
                                               self.transports[pr.transport].id_abs,
                                               self.transports[pr.transport].id_level, 0, 0, &h) < 0:
                self.drops[<int>D_PACER_EXPIRED] += 1
                continue
            self._forward(c, cr.producer, pr.ring + i * SLOT, &h, False, now, True)

    cdef void _probe(self, int c, double now) except *:
        """Spend the consumer's probe budget on RTX copies of the packets it got last."""
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef TransportRec* tr = &self.transports[cr.transport]
        cdef double cap = cr.probe_rate * PROBE_BURST_S
        cdef uint16_t seq
        cdef int n, skipped = 0
        cr.probe_tokens += (now - cr.probe_at) * cr.probe_rate
        cr.probe_at = now
        if cap < 1500:
            cap = 1500
        if cr.probe_tokens > cap:
            cr.probe_tokens = cap
        if not cr.started or cr.producer < 0 or cr.q_len or cr.hold or not tr.has_addr or not tr.ready:
            return  # nothing sent yet to copy, the pacer is behind already, or the link is congested
        if self.pacer_enabled:
            self._refill(tr, now)
        while cr.probe_tokens > 0 and (not self.pacer_enabled or tr.tokens > 0):
            seq = (cr.last_seq - cr.probe_k) & 0xFFFF
            if cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000:
                # Only copies of the current layer: its offsets would misnumber older ones.
                cr.probe_k = 0
                seq = cr.last_seq
            cr.probe_k = (cr.probe_k + 1) % PROBE_SPAN
            if cr.pad_seq != NULL and cr.pad_seq[seq % RING] == seq:
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
        cdef double now = _now()
        cdef int i
        cdef double wait = 0.05
        cdef ProducerRec* pr
        if self.paced_consumers:
            for i in range(self.n_consumers):
                if self.consumers[i].in_use and self.consumers[i].q_len:
                    self._drain(i, now)
        for i in range(self.n_producers):
            pr = &self.producers[i]
            if pr.in_use and pr.pli_pending:
                if now - pr.last_pli >= self.keyframe_min_interval_s:
                    self._send_pli(i, now)
                else:
                    wait = min(wait, pr.last_pli + self.keyframe_min_interval_s - now)
        if self.probing_consumers:
            for i in range(self.n_consumers):
                if self.consumers[i].in_use and self.consumers[i].probe_rate > 0:
                    self._probe(i, now)
            wait = min(wait, 0.01)
        self._flush()
        if self.paced_consumers:
            wait = min(wait, 0.005)
        return max(wait, 0.001)

    # --- RTCP ---------------------------------------------------------------------------

    cdef void _on_rtcp(self, int t, uint8_t* buf, int n, double now) except *:
        cdef TransportRec* tr = &self.transports[t]
        cdef int pos = 0, length, pt, fmt, end, i, shift
        cdef uint32_t sender, media, mantissa
        if tr.srtp_rx != NULL:
            if _srtp_unprotect_rtcp(tr.srtp_rx, buf, &n) != 0:
                self.drops[<int>D_SRTCP_UNPROTECT] += 1
                return
        tr.last_seen = now
        tr.rtcp_in += 1
        self.rtcp_in += 1
        while pos + 4 <= n:
            if buf[pos] >> 6 != 2:
                self.drops[<int>D_RTCP_MALFORMED] += 1
                return
            fmt = buf[pos] & 0x1F
            pt = buf[pos + 1]
            length = 4 * (<int>_u16(buf + pos + 2) + 1)
            end = pos + length
            if end > n or length < 8:
                self.drops[<int>D_RTCP_MALFORMED] += 1
                return
            sender = _u32(buf + pos + 4)
            if pt == 200 and length >= 28:
                self._on_sender_report(t, sender, buf + pos + 8, now)
                self._report_blocks(t, buf + pos + 28, min(fmt, (length - 28) // 24), now)
            elif pt == 201:
                self._report_blocks(t, buf + pos + 8, min(fmt, (length - 8) // 24), now)
            elif pt == 205 and fmt == 1 and length >= 12:
                media = _u32(buf + pos + 8)
                i = pos + 12
                while i + 4 <= end:
                    self._on_nack(t, media, _u16(buf + i), _u16(buf + i + 2), now)
                    i += 4
            elif pt == 205 and fmt == 15:
                if tr.twcc != NULL:
                    self._on_twcc(tr.twcc, buf + pos, length)
            elif pt == 206 and length >= 12:
                media = _u32(buf + pos + 8)
                if fmt == 1:
                    self._on_keyframe_request(t, media, now)
                elif fmt == 4:
                    i = pos + 12
                    while i + 8 <= end:
                        self._on_keyframe_request(t, _u32(buf + i), now)
                        i += 8
                elif fmt == 15 and length >= 20 and memcmp(buf + pos + 12, b"REMB", 4) == 0:
                    # bitrate = mantissa (18 bits) << exponent (6 bits)
                    # (18 + 31 bits fit in 64; any larger exponent saturates unless mantissa is 0)
                    mantissa = ((buf[pos + 17] & 0x03) << 16) | (buf[pos + 18] << 8) | buf[pos + 19]
                    shift = buf[pos + 17] >> 2
                    sender = tr.remb_bps  # the previous one
                    if mantissa == 0:
                        tr.remb_bps = 0
                    elif shift > 31:
                        tr.remb_bps = 0xFFFFFFFF
                    else:
                        tr.remb_bps = <uint32_t>min(<uint64_t>mantissa << shift, <uint64_t>0xFFFFFFFF)
                    if <uint64_t>tr.remb_bps * 5 < <uint64_t>sender * 4 and not tr.remb_fell:
                        # Congestion: worth a layer decision now rather than at the next tick.
                        tr.remb_fell = 1
                        self.remb_falls += 1
            pos = end
        if pos != n:
            self.drops[<int>D_RTCP_MALFORMED] += 1

    cdef void _on_twcc(self, TwccRec* tw, const uint8_t* b, int n) noexcept nogil:
        """Transport-wide feedback (RTPFB 15), ``n`` bytes at ``b``: mark what it says
        arrived, when, and what was lost. Checked whole before anything is applied:
        a malformed one is counted and changes nothing.

        Fixed part: base sequence number, packet status count, 24-bit reference time
        (64 ms), feedback packet count. Then status chunks, two bytes each: run length
        (T=0: a 2-bit symbol repeated up to 8191 times) or status vector (T=1: fourteen
        1-bit or seven 2-bit symbols), until the count is covered; then one receive
        delta per received packet, in 250 us ticks: one unsigned byte for symbol 1
        ("small"), two signed bytes for symbol 2 ("large or negative"). A symbol's value
        is the size of its delta.
        """
        cdef int end = n, pos = 20, dpos, k = 0, i, sym, take, count, dlen = 0
        cdef uint32_t chunk, raw
        cdef int64_t ticks, diff
        if n < 20:
            self.drops[<int>D_RTCP_MALFORMED] += 1
            return
        if b[0] & 0x20:  # RTCP padding: its last byte counts it
            if b[n - 1] == 0 or b[n - 1] > n - 20:
                self.drops[<int>D_RTCP_MALFORMED] += 1
                return
            end = n - b[n - 1]
        count = _u16(b + 14)
        if count == 0:
            self.drops[<int>D_RTCP_MALFORMED] += 1
            return
        while k < count:
            if pos + 2 > end:
                self.drops[<int>D_RTCP_MALFORMED] += 1
                return
            chunk = _u16(b + pos)
            pos += 2
            if not chunk & 0x8000:
                sym = (chunk >> 13) & 3
                take = min(<int>(chunk & 0x1FFF), count - k)
                if take and sym == 3:
                    self.drops[<int>D_RTCP_MALFORMED] += 1
                    return
                dlen += take * sym
                k += take
            elif not chunk & 0x4000:
                i = 0
                while i < 14 and k < count:
                    dlen += (chunk >> (13 - i)) & 1
                    k += 1
                    i += 1
            else:
                i = 0
                while i < 7 and k < count:
                    sym = (chunk >> (12 - 2 * i)) & 3
                    if sym == 3:
                        self.drops[<int>D_RTCP_MALFORMED] += 1
                        return
                    dlen += sym
                    k += 1
                    i += 1
        if pos + dlen > end:
            self.drops[<int>D_RTCP_MALFORMED] += 1
            return
        # Valid: apply. The reference time is unwrapped by the shorter way round.
        raw = (<uint32_t>b[16] << 16) | (<uint32_t>b[17] << 8) | b[18]
        if tw.has_ref:
            diff = (raw - tw.last_ref) & 0xFFFFFF
            if diff >= 0x800000:
                diff -= 0x1000000
            tw.ref += diff
        else:
            # Offset by one wrap, so an arrival stays positive even if the receiver's
            # clock starts near zero and its first deltas are negative: -1.0 is "lost".
            tw.ref = raw + 0x1000000
            tw.has_ref = 1
        tw.last_ref = raw
        tw.feedbacks += 1
        self.twcc_feedbacks += 1
        ticks = tw.ref * 256
        dpos = pos
        pos = 20
        k = 0
        while k < count:
            chunk = _u16(b + pos)
            pos += 2
            if not chunk & 0x8000:
                sym = (chunk >> 13) & 3
                take = min(<int>(chunk & 0x1FFF), count - k)
                for i in range(take):
                    ticks = self._twcc_status(tw, (_u16(b + 12) + k) & 0xFFFF, sym, b, &dpos, ticks)
                    k += 1
            else:
                i = 0
                while i < (14 if not chunk & 0x4000 else 7) and k < count:
                    if chunk & 0x4000:
                        sym = (chunk >> (12 - 2 * i)) & 3
                    else:
                        sym = (chunk >> (13 - i)) & 1
                    ticks = self._twcc_status(tw, (_u16(b + 12) + k) & 0xFFFF, sym, b, &dpos, ticks)
                    k += 1
                    i += 1

    cdef inline int64_t _twcc_status(self, TwccRec* tw, uint32_t seq, int sym, const uint8_t* b, int* dpos,
                                     int64_t ticks) noexcept nogil:
        """One packet's status: its arrival (a delta read at dpos, moving it) or its loss."""
        cdef uint64_t back, k
        cdef int i
        if sym == 1:
            ticks += b[dpos[0]]
            dpos[0] += 1
        elif sym == 2:
            ticks += <int16_t>_u16(b + dpos[0])
            dpos[0] += 2
        # Our packet with this number, if it is among the last TWCC_RING sent.
        back = (tw.count - seq) & 0xFFFF
        if back == 0 or back > TWCC_RING or back > tw.count:
            return ticks
        k = tw.count - back
        i = k % TWCC_RING
        if sym:
            if tw.arrival[i] == TWCC_UNREPORTED or tw.arrival[i] == TWCC_LOST:
                tw.arrival[i] = ticks
        elif tw.arrival[i] == TWCC_UNREPORTED:
            tw.arrival[i] = TWCC_LOST
        if k + 1 > tw.reported_end:
            tw.reported_end = k + 1
        return ticks

    def take_twcc(self, int t) -> list:
        """What the viewer's transport-wide feedback reported since the last call.

        ``(send_time_s, arrival_time_s, size_bytes)`` per packet, in sending order,
        up to the newest one any feedback mentioned; ``arrival_time_s`` is -1.0 for a
        lost packet and otherwise on the receiver's clock (only differences mean
        anything). Packets no feedback mentioned are left out. At most the last
        1,024 packets sent; empty for a transport without transport-cc.
        """
        cdef TransportRec* tr = self._transport(t)
        cdef TwccRec* tw = tr.twcc
        cdef list out = []
        cdef uint64_t k, start
        cdef int i
        cdef int64_t a
        if tw == NULL:
            return out
        start = tw.taken
        if tw.count > TWCC_RING and start < tw.count - TWCC_RING:
            start = tw.count - TWCC_RING
        k = start
        while k < tw.reported_end:
            i = k % TWCC_RING
            a = tw.arrival[i]
            if a != TWCC_UNREPORTED:
                out.append((tw.sent[i], -1.0 if a == TWCC_LOST else a * 0.00025, tw.size[i]))
            k += 1
        if tw.reported_end > tw.taken:
            tw.taken = tw.reported_end
        return out

    def transport_twcc(self, int t) -> dict:
        """A transport's transport-cc state: the extension id (0: none), packets
        stamped, feedback packets applied."""
        cdef TransportRec* tr = self._transport(t)
        if tr.twcc == NULL:
            return {"id": 0, "sent": 0, "feedbacks": 0}
        return {"id": tr.id_twcc, "sent": tr.twcc.count, "feedbacks": tr.twcc.feedbacks}

    cdef void _report_blocks(self, int t, const uint8_t* b, int count, double now) noexcept nogil:
        """``count`` report blocks (RFC 3550 §6.4.1) at b, from an RR or after an SR's sender
        info, about streams we send on transport t: the viewer's loss feeds the layer
        policy, and an LSR echoing the last SR we sent that consumer times the round trip
        (now - when we sent it - DLSR). LSR 0 (no SR received yet) and results below 0 or
        above RTT_MAX_S are not measurements."""
        cdef int k
        cdef int32_t c
        cdef ConsumerRec* cr
        cdef uint32_t lsr
        cdef double rtt
        for k in range(count):
            c = _map_get(&self.consumer_map, _consumer_key(t, _u32(b + 24 * k)))
            if c < 0:
                continue
            cr = &self.consumers[c]
            cr.fraction_lost = b[24 * k + 4]
            cr.reports += 1
            lsr = _u32(b + 24 * k + 16)
            if lsr == 0 or lsr != cr.sr_lsr or cr.sr_at <= 0:
                continue
            rtt = now - cr.sr_at - _u32(b + 24 * k + 20) / 65536.0
            if 0 <= rtt <= RTT_MAX_S:
                cr.rtt = rtt
                self.transports[t].rtt = rtt

    cdef void _on_sender_report(self, int t, uint32_t ssrc, const uint8_t* info, double now) except *:
        """Keep LSR for our RR; send each consumer an SR in its own numbering (lip-sync)."""
        cdef int32_t v = _map_get(&self.ssrc_map, _ssrc_key(t, ssrc))
        cdef ProducerRec* pr
        cdef ConsumerRec* cr
        cdef TransportRec* ct
        cdef uint8_t* o
        cdef int i
        if v < 0 or v & 1:
            return
        pr = &self.producers[v >> 1]
        pr.lsr = (_u32(info) << 16) | (_u32(info + 4) >> 16)
        pr.lsr_at = now
        for i in range(pr.n_consumers):
            cr = &self.consumers[pr.consumers[i]]
            ct = &self.transports[cr.transport]
            if not cr.started or cr.producer != v >> 1 or not ct.has_addr or not ct.ready:
                continue
            o = self._out_slot()
            o[0] = 0x80
            o[1] = 200
            _put16(o + 2, 6)
            _put32(o + 4, cr.ssrc)
            memcpy(o + 8, info, 8)                        # NTP time
            _put32(o + 16, _u32(info + 8) + cr.ts_offset)  # RTP time in our base
            _put32(o + 20, <uint32_t>cr.packets_sent)
            _put32(o + 24, <uint32_t>cr.bytes_sent)
            self._emit(cr.transport, 28, True)
            cr.sr_lsr = pr.lsr  # what the viewer's LSR will echo
            cr.sr_at = now

    cdef void _on_nack(self, int t, uint32_t media, uint16_t pid, uint16_t blp, double now) except *:
        cdef int32_t c = _map_get(&self.consumer_map, _consumer_key(t, media))
        cdef int b
        if c < 0:
            return
        self.nacks_received += 1
        self._retransmit(c, pid, now)
        for b in range(16):
            if blp & (1 << b):
                self._retransmit(c, (pid + b + 1) & 0xFFFF, now)

    cdef void _retransmit(self, int c, uint16_t seq, double now) except *:
        """From the history of the layer that sent it, as RTX when negotiated (RFC 4588)."""
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef int p = cr.producer
        cdef uint16_t seq_offset = cr.seq_offset, pic_offset = cr.pic_offset
        cdef uint32_t ts_offset = cr.ts_offset
        cdef uint8_t tl0_offset = cr.tl0_offset
        cdef int n
        if cr.producer < 0 or not cr.started or not cr.nack:
            return
        if cr.hold or (cr.prev_held and cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000):
            # Held for a move down (set_consumer_producer): repairs would only add to the
            # queue the new layer's keyframe waits behind; the viewer skips to that keyframe.
            self.drops[<int>D_NACK_HELD] += 1
            return
        if cr.pad_seq != NULL and cr.pad_seq[seq % RING] == seq:
            # It went out as padding (a dropped temporal layer): the same padding again.
            n = self._padding(cr, self._out_slot(), seq, cr.pad_ts[seq % RING])
            cr.nacks_served += 1
            self.nacks_served += 1
            self._emit(cr.transport, n, False)
            return
        if cr.switched and ((seq - cr.switch_seq) & 0xFFFF) >= 0x8000:
            # Sent before the last layer switch: the previous layer's history, numbering.
            if self.pacer_enabled:
                self._refill(&self.transports[cr.transport], now)
                if self.transports[cr.transport].tokens <= 0:
                    # ... unless the viewer's link is spent: after a down-switch those are
                    # what congested it, and the new layer's keyframe needs the room.
                    self.drops[<int>D_NACK_OVER_BUDGET] += 1
                    return
            p = cr.prev_producer
            if p < 0 or ((seq - cr.prev_start_seq) & 0xFFFF) >= 0x8000:  # older still: gone
                self.drops[<int>D_NACK_NOT_IN_BUFFER] += 1
                return
            cr.seq_offset, cr.ts_offset = cr.prev_seq_offset, cr.prev_ts_offset
            cr.pic_offset, cr.tl0_offset = cr.prev_pic_offset, cr.prev_tl0_offset
        try:
            self._resend(c, p, seq, now, False)
        finally:
            cr.seq_offset, cr.ts_offset, cr.pic_offset, cr.tl0_offset = seq_offset, ts_offset, pic_offset, tl0_offset

    cdef int _resend(self, int c, int p, uint16_t seq, double now, bint probe) except -1:
        """Our packet ``seq`` again, from producer p's history; returns the bytes sent (0: gone)."""
        cdef ConsumerRec* cr = &self.consumers[c]
        cdef ProducerRec* pr = &self.producers[p]
        cdef TransportRec* pt
        cdef uint16_t src = (seq - cr.seq_offset) & 0xFFFF
        cdef int i, n, off, plen
        cdef Hdr h
        cdef uint8_t* o
        if pr.ring == NULL:
            return 0
        i = src % RING
        pt = &self.transports[pr.transport]
        if pr.ring_seq[i] != src or _parse(pr.ring + i * SLOT, pr.ring_len[i], pt.id_mid, pt.id_abs, pt.id_level, 0, 0,
                                           &h) < 0:
            if not probe:
                self.drops[<int>D_NACK_NOT_IN_BUFFER] += 1
            return 0
        o = self._out_slot()
        if cr.has_rtx:
            n = self._rewrite(cr, pr, pr.ring + i * SLOT, &h, self.scratch, seq, False, now, &plen)
            if n < 0:
                self.drops[<int>D_RED_MALFORMED] += 1
                return 0
            off = n - plen
            memcpy(o, self.scratch, off)
            o[1] = (o[1] & 0x80) | cr.rtx_pt
            _put16(o + 2, cr.rtx_seq)
            _put32(o + 8, cr.rtx_ssrc)
            cr.rtx_seq += 1
            _put16(o + off, seq)
            memcpy(o + off + 2, self.scratch + off, plen)
            n += 2
        else:
            n = self._rewrite(cr, pr, pr.ring + i * SLOT, &h, o, seq, False, now, &plen)
            if n < 0:
                self.drops[<int>D_RED_MALFORMED] += 1
                return 0
        if not probe:
            cr.nacks_served += 1
            self.nacks_served += 1
        if self.pacer_enabled:
            # Repairs and probes are not queued, but they spend the viewer's budget:
            # the media after them waits its turn instead of piling onto a full link.
            self.transports[cr.transport].tokens -= n
        self._emit(cr.transport, n, False)
        return n

    cdef void _on_keyframe_request(self, int t, uint32_t media, double now) except *:
        cdef int32_t c = _map_get(&self.consumer_map, _consumer_key(t, media))
        if c < 0 or self.consumers[c].producer < 0:
            return
        self.keyframe_requests_received += 1
        if self.consumers[c].hold and self.consumers[c].target >= 0:
            # Its current layer is held: the keyframe that helps is the one it waits for.
            self._keyframe_request(self.consumers[c].target, now)
        else:
            self._keyframe_request(self.consumers[c].producer, now)

    cdef void _keyframe_request(self, int p, double now) except *:
        """At most one PLI per interval; requests inside it ride on one sent at its end."""
        cdef ProducerRec* pr = &self.producers[p]
        if not pr.is_video:
            return
        if pr.pli_pending or now - pr.last_pli < self.keyframe_min_interval_s:
            pr.pli_pending = 1
            pr.pli_coalesced += 1
            self.pli_coalesced += 1
            return
        self._send_pli(p, now)

    cdef void _send_pli(self, int p, double now) except *:
        cdef ProducerRec* pr = &self.producers[p]
        cdef TransportRec* tr = &self.transports[pr.transport]
        cdef uint8_t* o
        pr.pli_pending = 0
        if not pr.has_ssrc or not tr.has_addr or not tr.ready:
            return
        pr.last_pli = now
        pr.pli_sent += 1
        self.pli_sent += 1
        o = self._out_slot()
        o[0] = 0x81
        o[1] = 206
        _put16(o + 2, 2)
        _put32(o + 4, tr.rtcp_ssrc)
        _put32(o + 8, pr.ssrc)
        self._emit(pr.transport, 12, True)

    def send_receiver_reports(self, int t, uint32_t remb_bps=0):
        """RR for each producer stream of transport t (RFC 3550 §6.4.2), plus a REMB."""
        cdef TransportRec* tr = self._transport(t)
        cdef ProducerRec* pr
        cdef uint8_t* o
        cdef int i, count = 0, pos = 8, remb_at, nv = 0, exp = 0
        cdef int64_t expected, lost, expected_interval, received_interval, lost_interval
        cdef uint32_t fraction, dlsr, mantissa
        cdef double now = _now()
        if not tr.has_addr or not tr.ready:
            return
        o = self._out_slot()
        for i in range(self.n_producers):
            pr = &self.producers[i]
            if not pr.in_use or pr.transport != t or not pr.started or count == 31:
                continue
            expected = <int64_t>(pr.cycles + pr.max_seq) - pr.base_seq + 1
            lost = expected - pr.received
            expected_interval = expected - pr.expected_prior
            received_interval = <int64_t>pr.received - pr.received_prior
            pr.expected_prior = <uint32_t>expected
            pr.received_prior = pr.received
            lost_interval = expected_interval - received_interval
            fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else <uint32_t>((lost_interval << 8) // expected_interval)
            if fraction > 255:
                fraction = 255
            lost = max(0, min(lost, 0x7FFFFF))
            dlsr = <uint32_t>((now - pr.lsr_at) * 65536) if pr.lsr_at else 0
            _put32(o + pos, pr.ssrc)
            _put32(o + pos + 4, (fraction << 24) | <uint32_t>lost)
            _put32(o + pos + 8, (pr.cycles + pr.max_seq) & 0xFFFFFFFF)
            _put32(o + pos + 12, <uint32_t>pr.jitter)
            _put32(o + pos + 16, pr.lsr)
            _put32(o + pos + 20, dlsr)
            pos += 24
            count += 1
        if count == 0:
            return
        o[0] = 0x80 | count
        o[1] = 201
        _put16(o + 2, pos // 4 - 1)
        _put32(o + 4, tr.rtcp_ssrc)
        if remb_bps:
            remb_at = pos
            pos += 20
            for i in range(self.n_producers):
                pr = &self.producers[i]
                if pr.in_use and pr.transport == t and pr.is_video and pr.has_ssrc and nv < 8:
                    _put32(o + pos, pr.ssrc)
                    pos += 4
                    nv += 1
            if nv == 0:
                pos = remb_at
            else:
                mantissa = remb_bps
                while mantissa >= (1 << 18):
                    mantissa >>= 1
                    exp += 1
                o[remb_at] = 0x8F
                o[remb_at + 1] = 206
                _put16(o + remb_at + 2, (pos - remb_at) // 4 - 1)
                _put32(o + remb_at + 4, tr.rtcp_ssrc)
                _put32(o + remb_at + 8, 0)
                memcpy(o + remb_at + 12, b"REMB", 4)
                o[remb_at + 16] = nv
                o[remb_at + 17] = (exp << 2) | ((mantissa >> 16) & 0x03)
                _put16(o + remb_at + 18, mantissa & 0xFFFF)
        self._emit(t, pos, True)
        self._flush()

    def send_rtcp(self, int t, const unsigned char[::1] packet):
        """An RTCP packet built in Python (BYE, ...), protected and sent on transport t."""
        cdef TransportRec* tr = self._transport(t)
        cdef uint8_t* o
        cdef int n = packet.shape[0]
        if not tr.has_addr or not tr.ready or n < 8 or n > MAX_RTP:
            return
        o = self._out_slot()
        memcpy(o, &packet[0], n)
        self._emit(t, n, True)
        self._flush()
