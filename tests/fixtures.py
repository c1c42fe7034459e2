"""Keyword factories for real packets, built with ``struct`` only.

They are deliberately independent of ``sfu`` so the code under test is checked
against an encoder written straight from the RFCs (RTP: RFC 3550 §5.1,
header extensions: RFC 8285, VP8: RFC 7741 §4.2, H264: RFC 6184 §5).
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Mapping

ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000


def encode_extensions(
    extensions: Mapping[int, bytes] | Iterable[tuple[int, bytes]], two_byte: bool = False
) -> bytes:
    """The body of an RFC 8285 extension block (elements, then zero padding to 32 bits)."""
    items = extensions.items() if isinstance(extensions, Mapping) else extensions
    body = bytearray()
    for ext_id, value in items:
        if two_byte:
            if not 1 <= ext_id <= 255 or len(value) > 255:
                raise ValueError(f"two-byte element {ext_id} with {len(value)} bytes")
            body += struct.pack("!BB", ext_id, len(value)) + value
        else:
            if not 1 <= ext_id <= 15 or not 1 <= len(value) <= 16:
                raise ValueError(f"one-byte element {ext_id} with {len(value)} bytes")
            body += struct.pack("!B", (ext_id << 4) | (len(value) - 1)) + value
    body += bytes(-len(body) % 4)
    return bytes(body)


def make_rtp(
    seq: int = 0,
    ts: int = 0,
    ssrc: int = 1234,
    pt: int = 96,
    marker: bool = False,
    payload: bytes = b"\x10\x02payload",
    extensions: Mapping[int, bytes] | Iterable[tuple[int, bytes]] | None = None,
    two_byte: bool = False,
    csrcs: Iterable[int] = (),
    padding: int = 0,
    extension_profile: int | None = None,
    extension_body: bytes | None = None,
    version: int = 2,
) -> bytes:
    """An RTP packet.

    ``extensions`` maps id → value, encoded in the one-byte (or ``two_byte``)
    form; ``extension_profile``/``extension_body`` give a raw block instead
    (the body must be a multiple of 4 bytes). ``padding`` is the total number
    of padding bytes, the last of which holds the count (RFC 3550 §5.1).
    """
    csrcs = tuple(csrcs)
    if extensions is not None and extension_body is None:
        extension_body = encode_extensions(extensions, two_byte)
        if extension_profile is None:
            extension_profile = TWO_BYTE_PROFILE if two_byte else ONE_BYTE_PROFILE
    has_extension = extension_body is not None
    if has_extension and len(extension_body) % 4:
        raise ValueError("extension body must be a multiple of 4 bytes")
    b0 = (version << 6) | (0x20 if padding else 0) | (0x10 if has_extension else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | pt
    packet = bytearray(struct.pack("!BBHII", b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc))
    for csrc in csrcs:
        packet += struct.pack("!I", csrc)
    if has_extension:
        profile = ONE_BYTE_PROFILE if extension_profile is None else extension_profile
        packet += struct.pack("!HH", profile, len(extension_body) // 4) + extension_body
    packet += payload
    if padding:
        packet += bytes(padding - 1) + struct.pack("!B", padding)
    return bytes(packet)


def make_report_block(source: int, fraction: int = 0, lsr: int = 0, dlsr: int = 0) -> bytes:
    """One 24-byte report block (RFC 3550 §6.4.1): source SSRC, fraction lost /256, LSR (the
    middle 32 bits of the last SR's NTP time) and DLSR (the delay since it, 1/65536 s)."""
    return struct.pack("!IB3sIIII", source, fraction, bytes(3), 0, 0, lsr, dlsr)


def make_rtcp_rr(ssrc: int = 1234, blocks: Iterable[tuple[int, int]] = (),
                 report_blocks: Iterable[bytes] = ()) -> bytes:
    """An RTCP receiver report (RFC 3550 §6.4.2); ``blocks``: (source SSRC, fraction lost /256),
    then ``report_blocks`` (24-byte blocks, see ``make_report_block``) as they are."""
    body = b"".join(make_report_block(source, fraction) for source, fraction in blocks)
    body += b"".join(report_blocks)
    return struct.pack("!BBHI", 0x80 | (len(body) // 24), 201, 1 + len(body) // 4, ssrc) + body


def make_vp8_payload(
    keyframe: bool = True,
    *,
    start: bool = True,
    partition: int = 0,
    picture_id: int | None = None,
    picture_id_bits: int | None = None,
    tl0picidx: int | None = None,
    tid: int | None = None,
    keyidx: int | None = None,
    non_reference: bool = False,
    width: int = 640,
    height: int = 480,
    frame: bytes = b"\x00\x11\x22\x33",
) -> bytes:
    """A VP8 RTP payload: descriptor (RFC 7741 §4.2), then the frame bytes.

    A packet that starts partition 0 carries the VP8 payload header (frame tag,
    RFC 6386 §9.1), with the key frame start code and size when ``keyframe``.
    Any other packet carries ``frame`` as a continuation, which begins with an
    even byte so a reader that forgets the S bit would see "P = 0".
    """
    extended = any(v is not None for v in (picture_id, tl0picidx, tid, keyidx))
    b0 = (0x80 if extended else 0) | (0x20 if non_reference else 0) | (0x10 if start else 0) | partition
    out = bytearray(struct.pack("!B", b0))
    if extended:
        x = (0x80 if picture_id is not None else 0) | (0x40 if tl0picidx is not None else 0)
        x |= (0x20 if tid is not None else 0) | (0x10 if keyidx is not None else 0)
        out += struct.pack("!B", x)
        if picture_id is not None:
            bits = picture_id_bits or (7 if picture_id < 0x80 else 15)
            if bits == 7:
                out += struct.pack("!B", picture_id & 0x7F)
            else:
                out += struct.pack("!H", 0x8000 | (picture_id & 0x7FFF))
        if tl0picidx is not None:
            out += struct.pack("!B", tl0picidx)
        if tid is not None or keyidx is not None:
            out += struct.pack("!B", ((tid or 0) << 6) | (keyidx or 0))
    if start and partition == 0:
        first_partition_size = 100
        tag = (first_partition_size << 5) | 0x10 | (0 if keyframe else 1)  # show_frame, P
        out += struct.pack("<I", tag)[:3]
        if keyframe:
            out += b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
        out += frame
    else:
        out += b"\x00" + frame
    return bytes(out)


def make_red_payload(primary_pt: int, primary: bytes,
                     redundant: Iterable[tuple[int, int, bytes]] = ()) -> bytes:
    """An RFC 2198 RED payload: ``redundant`` blocks (PT, timestamp offset, data), oldest
    first, each with a 4-byte header (F=1, PT, 14-bit offset, 10-bit length); then the
    primary's 1-byte header (F=0, PT); then the blocks' data in order, the primary last."""
    redundant = tuple(redundant)
    headers = b"".join(struct.pack("!BBBB", 0x80 | pt, (offset >> 6) & 0xFF, ((offset & 0x3F) << 2) | (len(data) >> 8),
                                   len(data) & 0xFF) for pt, offset, data in redundant)
    return headers + struct.pack("!B", primary_pt) + b"".join(data for _, _, data in redundant) + primary


def read_red_payload(payload: bytes) -> tuple[list[tuple[int, int, bytes]], int, bytes]:
    """The blocks of a RED payload as ``make_red_payload`` takes them: (redundant, primary PT, primary)."""
    heads, pos = [], 0
    while payload[pos] & 0x80:
        pt, b1, b2, b3 = payload[pos] & 0x7F, payload[pos + 1], payload[pos + 2], payload[pos + 3]
        heads.append((pt, (b1 << 6) | (b2 >> 2), ((b2 & 0x03) << 8) | b3))
        pos += 4
    primary_pt = payload[pos]
    pos += 1
    blocks = []
    for pt, offset, length in heads:
        blocks.append((pt, offset, payload[pos:pos + length]))
        pos += length
    return blocks, primary_pt, payload[pos:]


def _nal(nal_type: int, nri: int, body: bytes) -> bytes:
    return struct.pack("!B", (nri << 5) | nal_type) + body


def make_h264_payload(
    nal_type: int | None = 5,
    *,
    stap_a: Iterable[int] | None = None,
    fu_a: int | None = None,
    fu_start: bool = True,
    fu_end: bool = False,
    nri: int = 3,
    body: bytes = b"\x88\x84\x21\xa0",
) -> bytes:
    """An H264 RTP payload (RFC 6184): a single NAL unit of ``nal_type``, or
    a STAP-A aggregating NAL units of the ``stap_a`` types, or an FU-A fragment
    of a NAL unit of type ``fu_a``."""
    if stap_a is not None:
        out = bytearray(struct.pack("!B", (nri << 5) | 24))
        for t in stap_a:
            unit = _nal(t, nri, body)
            out += struct.pack("!H", len(unit)) + unit
        return bytes(out)
    if fu_a is not None:
        indicator = (nri << 5) | 28
        header = (0x80 if fu_start else 0) | (0x40 if fu_end else 0) | fu_a
        return struct.pack("!BB", indicator, header) + body
    assert nal_type is not None
    return _nal(nal_type, nri, body)


# --- RTCP (RFC 3550 §6.4, RFC 4585 §6.2-6.3, RFC 5104 §4.3.1, draft-alvestrand-rmcat-remb) ---


def _rtcp(count_or_fmt: int, packet_type: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError("RTCP body must be a multiple of 4 bytes")
    return struct.pack("!BBH", 0x80 | count_or_fmt, packet_type, (4 + len(body)) // 4 - 1) + body


def make_rtcp_sr(
    ssrc: int = 1234,
    ntp_seconds: int = 0xE1234567,
    ntp_fraction: int = 0x89ABCDEF,
    rtp_ts: int = 0,
    packets: int = 0,
    octets: int = 0,
    report_blocks: Iterable[bytes] = (),
) -> bytes:
    """A sender report; ``report_blocks`` are 24-byte blocks appended as-is."""
    blocks = tuple(report_blocks)
    body = struct.pack("!IIIIII", ssrc, ntp_seconds, ntp_fraction, rtp_ts, packets, octets) + b"".join(blocks)
    return _rtcp(len(blocks), 200, body)


def make_rtcp_nack(sender_ssrc: int, media_ssrc: int, items: Iterable[tuple[int, int]]) -> bytes:
    """A generic NACK (RTPFB FMT 1): one FCI per (packet id, bitmask of the 16 following)."""
    fci = b"".join(struct.pack("!HH", pid & 0xFFFF, blp) for pid, blp in items)
    return _rtcp(1, 205, struct.pack("!II", sender_ssrc, media_ssrc) + fci)


def nack_items(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """The (pid, blp) pairs a receiver would send for these sequence numbers."""
    items: list[tuple[int, int]] = []
    for seq in seqs:
        seq &= 0xFFFF
        if items:
            pid, blp = items[-1]
            delta = (seq - pid) & 0xFFFF
            if 1 <= delta <= 16:
                items[-1] = (pid, blp | (1 << (delta - 1)))
                continue
        items.append((seq, 0))
    return items


def make_rtcp_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """A picture loss indication (PSFB FMT 1)."""
    return _rtcp(1, 206, struct.pack("!II", sender_ssrc, media_ssrc))


def make_rtcp_fir(sender_ssrc: int, entries: Iterable[tuple[int, int]]) -> bytes:
    """A full intra request (PSFB FMT 4): media SSRC 0, one FCI per (ssrc, command seq)."""
    fci = b"".join(struct.pack("!IB3x", ssrc, seq & 0xFF) for ssrc, seq in entries)
    return _rtcp(4, 206, struct.pack("!II", sender_ssrc, 0) + fci)


def make_rtcp_remb(sender_ssrc: int, mantissa: int, exponent: int, ssrcs: Iterable[int] = ()) -> bytes:
    """Receiver estimated max bitrate (PSFB FMT 15): bitrate = mantissa << exponent."""
    if not 0 <= mantissa < 1 << 18 or not 0 <= exponent < 64:
        raise ValueError("mantissa is 18 bits, exponent 6")
    ssrcs = tuple(ssrcs)
    body = struct.pack("!II4sBBH", sender_ssrc, 0, b"REMB", len(ssrcs),
                       (exponent << 2) | (mantissa >> 16), mantissa & 0xFFFF)
    body += b"".join(struct.pack("!I", s) for s in ssrcs)
    return _rtcp(15, 206, body)


def rtp_payload_offset(packet: bytes) -> int:
    """Where the payload of an RTP packet starts (after CSRCs and the extension block)."""
    cc = packet[0] & 0x0F
    pos = 12 + 4 * cc
    if packet[0] & 0x10:
        pos += 4 + 4 * struct.unpack_from("!H", packet, pos + 2)[0]
    return pos


def make_rtx(packet: bytes, *, seq: int, ssrc: int, pt: int, padding: int = 0) -> bytes:
    """RFC 4588 §4: ``packet`` resent on an RTX stream, its sequence number leading the payload."""
    off = rtp_payload_offset(packet)
    header = bytearray(packet[:off])
    header[0] &= 0xDF
    header[1] = (header[1] & 0x80) | pt
    struct.pack_into("!H", header, 2, seq & 0xFFFF)
    struct.pack_into("!I", header, 8, ssrc)
    end = len(packet) - (packet[-1] if packet[0] & 0x20 else 0)  # the original's padding stays behind
    body = packet[2:4] + packet[off:end]
    if padding:
        header[0] |= 0x20
        body += bytes(padding - 1) + struct.pack("!B", padding)
    return bytes(header) + body


def make_stun_binding_request(transaction_id: bytes = b"\x01" * 12) -> bytes:
    """A STUN binding request header with no attributes (RFC 8489 §5): first byte 0."""
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction_id


def make_dtls_record(content_type: int = 22, body: bytes = b"\x01\x00\x00\x00") -> bytes:
    """A DTLS 1.2 record header and body (RFC 6347 §4.1): first byte 20..63."""
    return struct.pack("!BHHIHH", content_type, 0xFEFD, 0, 0, 0, len(body)) + body


def read_rtp(data: bytes) -> dict:
    """An RTP packet's fields, decoded independently of the code under test.

    One-byte extension elements only: all the SFU writes.
    """
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    cc = b0 & 0x0F
    pos = 12 + 4 * cc
    fields = {
        "version": b0 >> 6, "padding": bool(b0 & 0x20), "extension": bool(b0 & 0x10),
        "marker": bool(b1 & 0x80), "pt": b1 & 0x7F, "seq": seq, "ts": ts, "ssrc": ssrc,
        "csrcs": struct.unpack_from(f"!{cc}I", data, 12), "profile": None, "elements": [],
    }
    if b0 & 0x10:
        fields["profile"], words = struct.unpack_from("!HH", data, pos)
        block, pos = data[pos + 4:pos + 4 + 4 * words], pos + 4 + 4 * words
        i = 0
        while i < len(block):
            if block[i] == 0:
                i += 1
                continue
            ext_id, length = block[i] >> 4, (block[i] & 0x0F) + 1
            fields["elements"].append((ext_id, block[i + 1:i + 1 + length]))
            i += 1 + length
    fields["payload"] = data[pos:]
    return fields


async def shard_transport(shard: Any, n: int, **options: Any) -> str:
    """A WebRTC transport ``t<n>`` made on a real in-process shard, as signalling would ask
    for it (no peer behind it: tests feed its engine directly); ``options`` go into the
    request (``report_rtt=True``)."""
    from sfu import control

    transport_id = f"t{n}"
    await shard.on_request(control.CreateWebRtcTransport(
        transport_id=transport_id, room="r", peer_id=transport_id, local_ufrag=f"u{n}", local_pwd="p" * 22,
        remote_ufrag=f"r{n}", remote_pwd="q" * 22, dtls_role="server", remote_fingerprint=("sha-256", "00"),
        **options))
    return transport_id
