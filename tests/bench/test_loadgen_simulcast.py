"""The load generator's simulcast publisher, without a server: packets, offer, keyframe requests.

The fanout benchmark uses the same publisher in its single-stream form, so the
first test pins that form's wire format.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.clip import Clip  # noqa: E402
from bench.loadgen import Publisher, _Stream, rtcp_keyframe_ssrcs, rtcp_requests_keyframe  # noqa: E402
from bench.sdp import EXT_RID, EXT_RID_ID, LocalPeer, RemotePeer  # noqa: E402
from sfu.shard.dtls import DtlsCertificate  # noqa: E402
from sfu.signalling.negotiation import answer_publish  # noqa: E402
from sfu.signalling.sdp import parse_offer  # noqa: E402


def one_byte_extensions(block: bytes) -> dict[int, bytes]:
    """RFC 8285 one-byte elements of an extension block (after its 4-byte header)."""
    out, i = {}, 0
    while i < len(block):
        if block[i] == 0:
            i += 1
            continue
        ext_id, length = block[i] >> 4, (block[i] & 0x0F) + 1
        out[ext_id] = block[i + 1:i + 1 + length]
        i += 1 + length
    return out


def test_single_stream_extension_block_is_unchanged() -> None:
    stream = _Stream(96, 1234, "1", 90000)
    block = stream.ext_prefix + b"\xaa\xbb\xcc" + stream.ext_suffix
    # mid "1", abs-send-time, two bytes of padding: what the fanout benchmark always sent.
    assert block == b"\xbe\xde\x00\x02" + b"\x101" + b"\x22\xaa\xbb\xcc" + b"\x00\x00"


def test_simulcast_stream_carries_its_rid() -> None:
    for rid in ("l", "m", "h", "hi"):
        stream = _Stream(96, 1234, "1", 90000, rid)
        block = stream.ext_prefix + b"\xaa\xbb\xcc" + stream.ext_suffix
        words = struct.unpack_from("!H", block, 2)[0]
        assert block[:2] == b"\xbe\xde" and len(block) == 4 + 4 * words
        assert one_byte_extensions(block[4:]) == {1: b"1", 2: b"\xaa\xbb\xcc", EXT_RID_ID: rid.encode()}


def test_simulcast_offer_is_accepted_with_three_layers() -> None:
    local = LocalPeer(direction="sendonly", ice_ufrag="abcd", ice_pwd="0123456789abcdef0123456789abcdef",
                      fingerprint_sha256=":".join(["AB"] * 32), port=40000, audio_ssrc=11, rids=("l", "m", "h"))
    sdp = local.offer()
    assert "a=simulcast:send l;m;h" in sdp and f"a=extmap:{EXT_RID_ID} {EXT_RID}" in sdp
    offer = parse_offer(sdp)
    video = next(m for m in offer.media if m.kind == "video")
    assert video.rids == ["l", "m", "h"] and video.ssrc is None
    answers = answer_publish(offer)
    assert next(a for a in answers if a.offer.kind == "video").recv_rids == ["l", "m", "h"]


def test_answer_simulcast_layers_are_read() -> None:
    answer = "\r\n".join([
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=ice-lite",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=ice-ufrag:u", "a=ice-pwd:p", "a=setup:passive",
        "a=fingerprint:sha-256 AB:CD", "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=rid:l recv", "a=rid:m recv", "a=rid:h recv",
        "a=simulcast:recv l;m;h", ""])
    assert RemotePeer.from_answer(answer).simulcast_rids == ["l", "m", "h"]


def test_keyframe_requests_name_their_layer() -> None:
    pli = struct.pack("!BBHII", 0x81, 206, 2, 1, 0x5555)
    fir = struct.pack("!BBHIIIBBH", 0x84, 206, 6, 1, 0, 0x6666, 1, 0, 0) + struct.pack("!IBBH", 0x7777, 2, 0, 0)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 1)
    assert rtcp_keyframe_ssrcs(rr + pli) == {0x5555}
    assert rtcp_keyframe_ssrcs(fir) == {0x6666, 0x7777}
    assert rtcp_keyframe_ssrcs(rr) == set() and not rtcp_requests_keyframe(rr)
    assert rtcp_requests_keyframe(rr + pli)


def test_simulcast_publisher_queues_every_layer_lowest_first() -> None:
    audio = (b"\x01" * 100,) * 3

    def clip(frame_bytes: int) -> Clip:
        return Clip(tuple(bytes([i]) * frame_bytes for i in range(4)), audio, 16, 16)

    certificate = DtlsCertificate.generate()
    publisher = Publisher(clip(100), certificate, certificate.context(), stamps=True,
                          simulcast=[("l", clip(300)), ("m", clip(1500)), ("h", clip(5000))])
    try:
        assert publisher.rids == ["l", "m", "h"]
        assert publisher.layer_pps() == {"l": 30.0, "m": 60.0, "h": 150.0}
        assert publisher.nominal_pps == 30.0 + 60.0 + 150.0 + 50.0
        publisher._queue_frame()
        streams = [entry[0] for entry in publisher._queue]
        assert [s.rid for s in streams] == ["l", "m", "m", "h", "h", "h", "h", "h"]
        assert len({s.ssrc for s in streams}) == 3
        assert publisher.keyframes_sent == 3
        markers = [entry[2] for entry in publisher._queue]
        assert markers == [True, False, True, False, False, False, False, True]
    finally:
        publisher.close()
