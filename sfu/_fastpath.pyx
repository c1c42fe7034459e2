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


cdef inline unsigned int _u16(const unsigned char* p) nogil:
    return (p[0] << 8) | p[1]


cdef inline unsigned int _u32(const unsigned char* p) nogil:
    return (<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3]


cdef inline void _put16(unsigned char* p, unsigned int v) nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void _put32(unsigned char* p, unsigned int v) nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


def parse_rtp(const unsigned char[::1] data, ExtIds ids):
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t pos, end, padding = 0
    cdef const unsigned char* p
    if n < 12:
        raise RtpError("rtp_truncated")
    p = &data[0]
    if p[0] >> 6 != 2:
        raise RtpError("rtp_bad_version")
    cdef int cc = p[0] & 0x0F
    pos = 12 + 4 * cc
    if pos > n:
        raise RtpError("rtp_truncated")
    cdef RtpInfo info = RtpInfo.__new__(RtpInfo)
    info.payload_type = p[1] & 0x7F
    info.marker = p[1] >> 7
    info.sequence = _u16(p + 2)
    info.timestamp = _u32(p + 4)
    info.ssrc = _u32(p + 8)
    info.csrc_count = cc
    if p[0] & 0x10:
        if pos + 4 > n:
            raise RtpError("rtp_truncated")
        end = pos + 4 + 4 * <Py_ssize_t>_u16(p + pos + 2)
        if end > n:
            raise RtpError("rtp_truncated")
        _parse_extensions(p, pos + 4, end, _u16(p + pos), ids, info)
        pos = end
    if p[0] & 0x20:
        if n == pos:
            raise RtpError("rtp_bad_padding")
        padding = p[n - 1]
        if padding == 0 or pos + padding > n:
            raise RtpError("rtp_bad_padding")
    info.payload_offset = pos
    info.payload_length = n - pos - padding
    return info


cdef int _parse_extensions(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                           unsigned int profile, ExtIds ids, RtpInfo info) except -1:
    cdef bint two_byte
    cdef int ext_id
    cdef Py_ssize_t length
    if profile == 0xBEDE:
        two_byte = False
    elif profile & 0xFFF0 == 0x1000:
        two_byte = True
    else:
        return 0
    while pos < end:
        if two_byte:
            ext_id = p[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise RtpError("rtp_bad_extension")
            length = p[pos + 1]
            pos += 2
        else:
            if p[pos] == 0:
                pos += 1
                continue
            ext_id = p[pos] >> 4
            if ext_id == 15:
                return 0
            length = (p[pos] & 0x0F) + 1
            pos += 1
        if pos + length > end:
            raise RtpError("rtp_bad_extension")
        if ext_id == ids.mid:
            info.mid = PyBytes_FromStringAndSize(<const char*>p + pos, length)
        elif ext_id == ids.rid:
            info.rid = PyBytes_FromStringAndSize(<const char*>p + pos, length)
        elif ext_id == ids.repaired_rid:
            info.repaired_rid = PyBytes_FromStringAndSize(<const char*>p + pos, length)
        elif ext_id == ids.abs_send_time and length == 3:
            info.abs_send_time = PyBytes_FromStringAndSize(<const char*>p + pos, length)
        elif ext_id == ids.audio_level and length == 1:
            info.audio_level = PyBytes_FromStringAndSize(<const char*>p + pos, length)
        pos += length
    return 0


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
    cdef Py_ssize_t pos = info.payload_offset
    cdef Py_ssize_t end = pos + info.payload_length
    cdef unsigned char d, x
    cdef int nal
    cdef Py_ssize_t size
    if end > data.shape[0] or pos < 0:
        return False
    if codec == 1:  # VP8
        if pos >= end:
            return False
        d = data[pos]
        if not d & 0x10 or d & 0x07:
            return False
        pos += 1
        if d & 0x80:
            if pos >= end:
                return False
            x = data[pos]
            pos += 1
            if x & 0x80:
                if pos >= end:
                    return False
                pos += 2 if data[pos] & 0x80 else 1
            if x & 0x40:
                pos += 1
            if x & 0x30:
                pos += 1
        return pos < end and not data[pos] & 0x01
    if codec == 2:  # H264
        if pos >= end:
            return False
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
            return pos + 1 < end and (data[pos + 1] & 0x80) != 0 and (data[pos + 1] & 0x1F) in (5, 7)
        return False
    return False
