"""The RTP fast path, one suite run on both implementations.

Every test taking ``impl`` runs once on the compiled ``sfu._fastpath`` and once
on its pure-Python twin ``sfu.fastpath_reference``; the differential tests at
the end feed both the same random input and require identical results.
"""

from __future__ import annotations

import importlib
import struct
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import make_h264_payload, make_rtp, make_vp8_payload, read_rtp

import sfu._fastpath as cython_impl
import sfu.fastpath_reference as python_impl

IMPLEMENTATIONS = {"cython": "sfu._fastpath", "python": "sfu.fastpath_reference"}

# Chrome's usual header extension ids; 3 is transport-cc, which the SFU ignores.
AUDIO_LEVEL_ID, ABS_SEND_TIME_ID, TRANSPORT_CC_ID, MID_ID, RID_ID, RRID_ID = 1, 2, 3, 4, 10, 11

INFO_FIELDS = (
    "payload_type", "marker", "sequence", "timestamp", "ssrc", "csrc_count",
    "payload_offset", "payload_length", "mid", "rid", "repaired_rid",
    "abs_send_time", "audio_level",
)


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(IMPLEMENTATIONS[request.param])


def chrome_ids(impl: ModuleType) -> object:
    return impl.ExtIds(mid=MID_ID, rid=RID_ID, repaired_rid=RRID_ID,
                       abs_send_time=ABS_SEND_TIME_ID, audio_level=AUDIO_LEVEL_ID)


def payload_of(data: bytes, info: object) -> bytes:
    return data[info.payload_offset:info.payload_offset + info.payload_length]


def test_cython_implementation_is_compiled() -> None:
    # Otherwise the "cython" half of this suite would silently test Python twice.
    assert cython_impl.__file__.endswith((".so", ".pyd"))
    assert cython_impl.parse_rtp is not python_impl.parse_rtp


# --- parse_rtp: header --------------------------------------------------------------


def test_parse_header_fields(impl: ModuleType) -> None:
    data = make_rtp(seq=0xBEEF, ts=0xDEADBEEF, ssrc=0xCAFEBABE, pt=111, marker=True, payload=b"hello")
    info = impl.parse_rtp(data, impl.ExtIds())
    assert (info.payload_type, info.marker, info.sequence, info.timestamp, info.ssrc) == (
        111, 1, 0xBEEF, 0xDEADBEEF, 0xCAFEBABE)
    assert (info.csrc_count, info.payload_offset, info.payload_length) == (0, 12, 5)
    assert payload_of(data, info) == b"hello"
    assert (info.mid, info.rid, info.repaired_rid, info.abs_send_time, info.audio_level) == (None,) * 5


def test_parse_marker_clear_and_extreme_values(impl: ModuleType) -> None:
    info = impl.parse_rtp(make_rtp(seq=0xFFFF, ts=0xFFFFFFFF, ssrc=0xFFFFFFFF, pt=127), impl.ExtIds())
    assert not info.marker
    assert (info.payload_type, info.sequence, info.timestamp, info.ssrc) == (127, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def test_parse_csrcs(impl: ModuleType) -> None:
    data = make_rtp(csrcs=(1, 2, 0xFFFFFFFF), payload=b"abc")
    info = impl.parse_rtp(data, impl.ExtIds())
    assert info.csrc_count == 3
    assert info.payload_offset == 12 + 3 * 4
    assert payload_of(data, info) == b"abc"


def test_parse_empty_payload(impl: ModuleType) -> None:
    info = impl.parse_rtp(make_rtp(payload=b""), impl.ExtIds())
    assert (info.payload_offset, info.payload_length) == (12, 0)


# --- parse_rtp: header extensions ---------------------------------------------------

ALL_EXTENSIONS = {
    AUDIO_LEVEL_ID: b"\x85",
    ABS_SEND_TIME_ID: b"\x12\x34\x56",
    TRANSPORT_CC_ID: b"\x00\x07",
    MID_ID: b"0",
    RID_ID: b"hi",
    RRID_ID: b"lo",
}


@pytest.mark.parametrize("two_byte", [False, True], ids=["one-byte", "two-byte"])
def test_parse_extensions_by_negotiated_ids(impl: ModuleType, two_byte: bool) -> None:
    data = make_rtp(extensions=ALL_EXTENSIONS, two_byte=two_byte, csrcs=(9,), payload=b"media")
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert info.mid == b"0"
    assert info.rid == b"hi"
    assert info.repaired_rid == b"lo"
    assert info.abs_send_time == b"\x12\x34\x56"
    assert info.audio_level == b"\x85"
    assert payload_of(data, info) == b"media"


def test_parse_extensions_only_negotiated_ids_are_read(impl: ModuleType) -> None:
    # The same wire ids mean nothing unless negotiated; other ids are skipped, not misread.
    data = make_rtp(extensions=ALL_EXTENSIONS, payload=b"media")
    info = impl.parse_rtp(data, impl.ExtIds(mid=MID_ID))
    assert info.mid == b"0"
    assert (info.rid, info.repaired_rid, info.abs_send_time, info.audio_level) == (None,) * 4
    info = impl.parse_rtp(data, impl.ExtIds(mid=RID_ID, rid=MID_ID))  # ids swapped
    assert (info.mid, info.rid) == (b"hi", b"0")
    assert payload_of(data, info) == b"media"


def test_parse_extension_longest_one_byte_values(impl: ModuleType) -> None:
    data = make_rtp(extensions={MID_ID: b"m" * 16, RID_ID: b"r"})
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert (info.mid, info.rid) == (b"m" * 16, b"r")


def test_parse_two_byte_ids_above_14_and_empty_values(impl: ModuleType) -> None:
    data = make_rtp(extensions=[(200, b""), (20, b"video-mid"), (30, b"x" * 40)], two_byte=True,
                    payload=b"p")
    info = impl.parse_rtp(data, impl.ExtIds(mid=20, rid=200, repaired_rid=30))
    assert (info.mid, info.rid, info.repaired_rid) == (b"video-mid", b"", b"x" * 40)
    assert payload_of(data, info) == b"p"


def test_parse_two_byte_profile_app_bits_are_accepted(impl: ModuleType) -> None:
    # RFC 8285 §4.3: 0x100 followed by 4 "appbits" that the receiver ignores.
    body = struct.pack("!BB", MID_ID, 2) + b"ab"
    data = make_rtp(extension_profile=0x100A, extension_body=body, payload=b"p")
    assert impl.parse_rtp(data, chrome_ids(impl)).mid == b"ab"


def test_parse_extension_id_15_stops_parsing(impl: ModuleType) -> None:
    data = make_rtp(extensions=[(MID_ID, b"a"), (15, b"\x00"), (RID_ID, b"h")], payload=b"after")
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert info.mid == b"a"
    assert info.rid is None  # after the reserved id nothing is read (RFC 8285 §4.2)
    assert payload_of(data, info) == b"after"  # but the block is still skipped whole


def test_parse_extension_padding_bytes_between_elements(impl: ModuleType) -> None:
    body = b"\x00\x00" + bytes([(MID_ID << 4) | 0]) + b"7" + b"\x00" + bytes([(RID_ID << 4) | 1]) + b"lo" + bytes(4)
    data = make_rtp(extension_body=body, payload=b"p")
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert (info.mid, info.rid) == (b"7", b"lo")


def test_parse_extension_with_unexpected_lengths_ignored(impl: ModuleType) -> None:
    # abs-send-time is 3 bytes, audio level 1 byte; other sizes are not trusted.
    data = make_rtp(extensions={ABS_SEND_TIME_ID: b"\x01\x02", AUDIO_LEVEL_ID: b"\x01\x02"})
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert (info.abs_send_time, info.audio_level) == (None, None)


def test_parse_unknown_extension_profile_is_skipped_whole(impl: ModuleType) -> None:
    body = bytes([(MID_ID << 4) | 0]) + b"X" + b"\x00\x00"
    data = make_rtp(extension_profile=0xABAC, extension_body=body, payload=b"media")
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert info.mid is None
    assert info.payload_offset == 12 + 4 + 4
    assert payload_of(data, info) == b"media"


def test_parse_empty_extension_block(impl: ModuleType) -> None:
    data = make_rtp(extension_body=b"", payload=b"media")
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert info.payload_offset == 16
    assert payload_of(data, info) == b"media"


# --- parse_rtp: padding -------------------------------------------------------------


@pytest.mark.parametrize("padding", [1, 4, 255])
def test_parse_padding_is_removed(impl: ModuleType, padding: int) -> None:
    data = make_rtp(payload=b"media", padding=padding, extensions={MID_ID: b"1"})
    info = impl.parse_rtp(data, chrome_ids(impl))
    assert payload_of(data, info) == b"media"
    assert info.payload_offset + info.payload_length + padding == len(data)


def test_parse_padding_only_packet(impl: ModuleType) -> None:
    # Bandwidth probes: all padding, no media.
    data = make_rtp(payload=b"", padding=200)
    assert impl.parse_rtp(data, impl.ExtIds()).payload_length == 0


# --- parse_rtp: malformed -----------------------------------------------------------


def _replace(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


MALFORMED = [
    ("empty", b"", "rtp_truncated"),
    ("11 bytes", make_rtp(payload=b"")[:11], "rtp_truncated"),
    ("version 0", _replace(make_rtp(), 0, b"\x00"), "rtp_bad_version"),
    ("version 1", _replace(make_rtp(), 0, b"\x40"), "rtp_bad_version"),
    ("version 3", _replace(make_rtp(), 0, b"\xc0"), "rtp_bad_version"),
    ("csrcs past the end", make_rtp(csrcs=(1, 2, 3), payload=b"")[:20], "rtp_truncated"),
    ("cc 15, 12 bytes", _replace(make_rtp(payload=b""), 0, b"\x8f"), "rtp_truncated"),
    ("X bit, no extension header", _replace(make_rtp(payload=b"ab"), 0, b"\x90"), "rtp_truncated"),
    ("extension longer than packet",
     make_rtp(extension_body=bytes(8), payload=b"")[:-1], "rtp_truncated"),
    ("extension length field too big",
     _replace(make_rtp(extension_body=bytes(4), payload=b"ab"), 14, b"\x00\x09"), "rtp_truncated"),
    ("one-byte element past the block",
     make_rtp(extension_body=bytes([(MID_ID << 4) | 5]) + b"abc", payload=b"payload"),
     "rtp_bad_extension"),
    ("two-byte element past the block",
     make_rtp(extension_profile=0x1000, extension_body=bytes([MID_ID, 9]) + b"ab", payload=b"payload"),
     "rtp_bad_extension"),
    ("two-byte element header cut",
     make_rtp(extension_profile=0x1000, extension_body=b"\x00\x00\x00" + bytes([MID_ID]), payload=b"p"),
     "rtp_bad_extension"),
    ("P bit, nothing after header", _replace(make_rtp(payload=b""), 0, b"\xa0"), "rtp_bad_padding"),
    ("padding count 0", make_rtp(payload=b"media", padding=1)[:-1] + b"\x00", "rtp_bad_padding"),
    ("padding count past header", make_rtp(payload=b"ab", padding=3)[:-1] + b"\x06", "rtp_bad_padding"),
    ("padding over csrcs", make_rtp(csrcs=(1,), payload=b"", padding=2)[:-1] + b"\x05", "rtp_bad_padding"),
]


@pytest.mark.parametrize(("data", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_parse_malformed_raises_with_reason(impl: ModuleType, data: bytes, reason: str) -> None:
    with pytest.raises(impl.RtpError) as excinfo:
        impl.parse_rtp(data, chrome_ids(impl))
    assert excinfo.value.args == (reason,)
    assert isinstance(excinfo.value, ValueError)


def test_parse_accepts_padding_exactly_to_payload_start(impl: ModuleType) -> None:
    # The boundary next to "padding count past header": all bytes after the header are padding.
    data = make_rtp(payload=b"ab", padding=3)[:-1] + b"\x05"
    assert impl.parse_rtp(data, impl.ExtIds()).payload_length == 0


# --- rewrite_rtp --------------------------------------------------------------------


def test_rewrite_fields_extensions_and_payload(impl: ModuleType) -> None:
    source = make_rtp(seq=100, ts=5000, ssrc=0x11111111, pt=96, marker=True, csrcs=(77, 88),
                      extensions=ALL_EXTENSIONS, padding=8, payload=b"\x9d\x01\x2a media")
    info = impl.parse_rtp(source, chrome_ids(impl))
    viewer = impl.ExtIds(mid=9, rid=5, repaired_rid=6, abs_send_time=13, audio_level=7)
    out = impl.rewrite_rtp(source, info, 102, 40000, 0xFEDCBA98, 0x22222222, viewer, b"v1")
    h = read_rtp(out)
    assert (h["version"], h["padding"], h["extension"], h["marker"]) == (2, False, True, True)
    assert (h["pt"], h["seq"], h["ts"], h["ssrc"]) == (102, 40000, 0xFEDCBA98, 0x22222222)
    assert h["csrcs"] == (77, 88)
    assert h["profile"] == 0xBEDE
    # mid is the viewer's, abs-send-time and audio level carried over; rid,
    # repaired rid and transport-cc are dropped.
    assert h["elements"] == [(9, b"v1"), (13, b"\x12\x34\x56"), (7, b"\x85")]
    assert h["payload"] == b"\x9d\x01\x2a media"  # and the padding is gone
    # 3 + 4 + 2 element bytes, zero-padded to 12 after the 4-byte block header.
    assert len(out) == 12 + 8 + 4 + 12 + len(b"\x9d\x01\x2a media")
    # The viewer, with its own ids, reads it back.
    again = impl.parse_rtp(out, viewer)
    assert (again.mid, again.abs_send_time, again.audio_level, again.rid) == (
        b"v1", b"\x12\x34\x56", b"\x85", None)


def test_rewrite_marker_clear_is_kept(impl: ModuleType) -> None:
    source = make_rtp(marker=False, payload=b"x")
    out = impl.rewrite_rtp(source, impl.parse_rtp(source, impl.ExtIds()), 100, 1, 2, 3, impl.ExtIds(), b"")
    assert not read_rtp(out)["marker"]


def test_rewrite_without_viewer_extensions_has_no_block(impl: ModuleType) -> None:
    source = make_rtp(extensions=ALL_EXTENSIONS, csrcs=(5,), payload=b"media", marker=True)
    info = impl.parse_rtp(source, chrome_ids(impl))
    out = impl.rewrite_rtp(source, info, 97, 7, 8, 9, impl.ExtIds(), b"0")
    assert out == struct.pack("!BBHIII", 0x81, 0x80 | 97, 7, 8, 9, 5) + b"media"


def test_rewrite_source_values_missing_are_not_invented(impl: ModuleType) -> None:
    source = make_rtp(payload=b"media")  # no extensions at all
    info = impl.parse_rtp(source, chrome_ids(impl))
    out = impl.rewrite_rtp(source, info, 96, 1, 2, 3, chrome_ids(impl), b"audio")
    assert read_rtp(out)["elements"] == [(MID_ID, b"audio")]


@pytest.mark.parametrize("mid", [b"", b"m" * 17], ids=["empty", "17 bytes"])
def test_rewrite_mid_that_does_not_fit_is_left_out(impl: ModuleType, mid: bytes) -> None:
    source = make_rtp(payload=b"media")
    out = impl.rewrite_rtp(source, impl.parse_rtp(source, impl.ExtIds()), 96, 1, 2, 3,
                           impl.ExtIds(mid=MID_ID), mid)
    assert not read_rtp(out)["extension"]
    assert read_rtp(out)["payload"] == b"media"


def test_rewrite_mid_of_16_bytes_fits(impl: ModuleType) -> None:
    source = make_rtp(payload=b"media")
    out = impl.rewrite_rtp(source, impl.parse_rtp(source, impl.ExtIds()), 96, 1, 2, 3,
                           impl.ExtIds(mid=MID_ID), b"m" * 16)
    assert read_rtp(out)["elements"] == [(MID_ID, b"m" * 16)]


@pytest.mark.parametrize(("mid", "block_words"), [(b"abc", 1), (b"abcd", 2), (b"a" * 7, 2), (b"a" * 8, 3)])
def test_rewrite_extension_block_padding(impl: ModuleType, mid: bytes, block_words: int) -> None:
    source = make_rtp(payload=b"media")
    out = impl.rewrite_rtp(source, impl.parse_rtp(source, impl.ExtIds()), 96, 1, 2, 3,
                           impl.ExtIds(mid=MID_ID), mid)
    assert struct.unpack_from("!HH", out, 12) == (0xBEDE, block_words)
    assert out[16 + 1 + len(mid):16 + 4 * block_words] == bytes(4 * block_words - 1 - len(mid))
    assert out[16 + 4 * block_words:] == b"media"


def test_rewrite_sequence_is_16_bits(impl: ModuleType) -> None:
    source = make_rtp(payload=b"x")
    out = impl.rewrite_rtp(source, impl.parse_rtp(source, impl.ExtIds()), 96, 0x10005, 0, 1,
                           impl.ExtIds(), b"")
    assert read_rtp(out)["seq"] == 5


# --- RTX (RFC 4588) -----------------------------------------------------------------


def test_wrap_rtx_puts_original_sequence_first(impl: ModuleType) -> None:
    original = make_rtp(seq=0x1234, ts=999, ssrc=111, pt=96, marker=True,
                        extensions={MID_ID: b"0"}, payload=b"media")
    info = impl.parse_rtp(original, chrome_ids(impl))
    rtx = impl.wrap_rtx(original, info.payload_offset, 97, 7, 222)
    h = read_rtp(rtx)
    assert (h["pt"], h["seq"], h["ts"], h["ssrc"], h["marker"]) == (97, 7, 999, 222, True)
    assert h["elements"] == [(MID_ID, b"0")]
    assert h["payload"] == b"\x12\x34" + b"media"
    rtx_info = impl.parse_rtp(rtx, chrome_ids(impl))
    assert rtx_info.payload_length == len(b"media") + 2


def test_rtx_round_trip(impl: ModuleType) -> None:
    original = make_rtp(seq=65535, ts=0xFFFFFFFF, ssrc=111, pt=96, csrcs=(4,),
                        extensions={MID_ID: b"0", RRID_ID: b"h"}, payload=b"media")
    info = impl.parse_rtp(original, chrome_ids(impl))
    rtx = impl.wrap_rtx(original, info.payload_offset, 97, 3, 222)
    rtx_info = impl.parse_rtp(rtx, chrome_ids(impl))
    assert impl.unwrap_rtx(rtx, rtx_info, 96, 111) == original


def test_unwrap_rtx_drops_rtx_padding(impl: ModuleType) -> None:
    # A sender may pad the RTX packet; the padding belongs to it, not to the original.
    rtx = make_rtp(seq=3, ts=50, ssrc=222, pt=97, marker=True, payload=b"\x00\x2a" + b"media", padding=12)
    rtx_info = impl.parse_rtp(rtx, impl.ExtIds())
    restored = impl.unwrap_rtx(rtx, rtx_info, 96, 111)
    assert restored == make_rtp(seq=42, ts=50, ssrc=111, pt=96, marker=True, payload=b"media")


def test_unwrap_rtx_of_just_an_osn(impl: ModuleType) -> None:
    rtx = make_rtp(seq=3, ssrc=222, pt=97, payload=b"\x00\x2a")
    out = impl.unwrap_rtx(rtx, impl.parse_rtp(rtx, impl.ExtIds()), 96, 111)
    assert out == make_rtp(seq=42, ssrc=111, pt=96, payload=b"")


@pytest.mark.parametrize("payload", [b"", b"\x01"])
def test_unwrap_rtx_without_osn_raises(impl: ModuleType, payload: bytes) -> None:
    rtx = make_rtp(pt=97, payload=payload, padding=4)
    with pytest.raises(impl.RtpError) as excinfo:
        impl.unwrap_rtx(rtx, impl.parse_rtp(rtx, impl.ExtIds()), 96, 111)
    assert excinfo.value.args == ("rtx_no_osn",)


# --- is_keyframe --------------------------------------------------------------------

VP8_CASES = [
    ("key, bare descriptor", dict(keyframe=True), True),
    ("delta, bare descriptor", dict(keyframe=False), False),
    ("key, 7-bit picture id", dict(keyframe=True, picture_id=0x11), True),
    ("delta, 7-bit picture id", dict(keyframe=False, picture_id=0x10), False),
    ("key, 15-bit picture id", dict(keyframe=True, picture_id=0x1235), True),
    # Low byte of the picture id is even: a reader taking it for 7 bits would see P = 0.
    ("delta, 15-bit picture id", dict(keyframe=False, picture_id=0x1234), False),
    ("key, 15-bit small picture id", dict(keyframe=True, picture_id=5, picture_id_bits=15), True),
    ("key, TL0PICIDX", dict(keyframe=True, tl0picidx=1), True),
    ("delta, TL0PICIDX", dict(keyframe=False, tl0picidx=0), False),
    ("key, TID", dict(keyframe=True, tid=1), True),
    ("delta, TID", dict(keyframe=False, tid=0), False),
    ("key, KEYIDX", dict(keyframe=True, keyidx=3), True),
    ("delta, KEYIDX", dict(keyframe=False, keyidx=0), False),
    ("key, I L T K", dict(keyframe=True, picture_id=0x7FFF, tl0picidx=255, tid=2, keyidx=31), True),
    ("delta, I L T K", dict(keyframe=False, picture_id=0x1000, tl0picidx=0, tid=0, keyidx=0), False),
    ("key, not start of partition", dict(keyframe=True, start=False), False),
    ("key, partition 1", dict(keyframe=True, partition=1), False),
    ("key, non-reference flag", dict(keyframe=True, non_reference=True), True),
]


@pytest.mark.parametrize(("kwargs", "expected"), [c[1:] for c in VP8_CASES], ids=[c[0] for c in VP8_CASES])
def test_is_keyframe_vp8(impl: ModuleType, kwargs: dict, expected: bool) -> None:
    data = make_rtp(payload=make_vp8_payload(**kwargs))
    assert impl.is_keyframe(impl.CODEC_VP8, data, impl.parse_rtp(data, impl.ExtIds())) is expected


@pytest.mark.parametrize("payload", [
    b"",
    b"\x90",  # X set, extension byte missing
    b"\x90\x80",  # I set, picture id missing
    b"\x90\x80\x81",  # 15-bit picture id cut, no payload header
    b"\x10",  # descriptor only
], ids=["empty", "no X byte", "no picture id", "half picture id", "no payload header"])
def test_is_keyframe_vp8_truncated_is_false(impl: ModuleType, payload: bytes) -> None:
    # Padding after the cut must not be read as the payload header.
    data = make_rtp(payload=payload, padding=4)
    assert impl.is_keyframe(impl.CODEC_VP8, data, impl.parse_rtp(data, impl.ExtIds())) is False


def test_is_keyframe_vp8_behind_csrcs_extensions_and_padding(impl: ModuleType) -> None:
    data = make_rtp(csrcs=(1, 2), extensions=ALL_EXTENSIONS, padding=5,
                    payload=make_vp8_payload(keyframe=True, picture_id=300, tl0picidx=3))
    assert impl.is_keyframe(impl.CODEC_VP8, data, impl.parse_rtp(data, chrome_ids(impl))) is True


H264_CASES = [
    ("IDR", dict(nal_type=5), True),
    ("SPS", dict(nal_type=7), True),
    ("PPS", dict(nal_type=8), False),
    ("SEI", dict(nal_type=6), False),
    ("non-IDR slice", dict(nal_type=1), False),
    ("non-IDR slice, NRI 0", dict(nal_type=1, nri=0), False),
    ("STAP-A SPS PPS IDR", dict(stap_a=(7, 8, 5)), True),
    ("STAP-A PPS IDR", dict(stap_a=(8, 5)), True),
    ("STAP-A SEI PPS", dict(stap_a=(6, 8)), False),
    ("STAP-A non-IDR", dict(stap_a=(1, 1)), False),
    ("FU-A start of IDR", dict(fu_a=5, fu_start=True), True),
    ("FU-A middle of IDR", dict(fu_a=5, fu_start=False), False),
    ("FU-A end of IDR", dict(fu_a=5, fu_start=False, fu_end=True), False),
    ("FU-A start of non-IDR", dict(fu_a=1, fu_start=True), False),
]


@pytest.mark.parametrize(("kwargs", "expected"), [c[1:] for c in H264_CASES], ids=[c[0] for c in H264_CASES])
def test_is_keyframe_h264(impl: ModuleType, kwargs: dict, expected: bool) -> None:
    data = make_rtp(payload=make_h264_payload(**kwargs), extensions={MID_ID: b"1"}, padding=3)
    assert impl.is_keyframe(impl.CODEC_H264, data, impl.parse_rtp(data, chrome_ids(impl))) is expected


@pytest.mark.parametrize("payload", [
    b"",
    b"\x78",  # STAP-A with nothing in it
    b"\x78\x00\x09\x65",  # STAP-A unit claims 9 bytes, has 1
    b"\x78\x00\x00\x65\x88",  # STAP-A unit of size 0
    b"\x7c",  # FU-A without its header
], ids=["empty", "empty STAP-A", "STAP-A overrun", "STAP-A zero size", "FU-A cut"])
def test_is_keyframe_h264_truncated_is_false(impl: ModuleType, payload: bytes) -> None:
    data = make_rtp(payload=payload, padding=4)
    assert impl.is_keyframe(impl.CODEC_H264, data, impl.parse_rtp(data, impl.ExtIds())) is False


def test_is_keyframe_other_codecs_are_never_keyframes(impl: ModuleType) -> None:
    for payload in (make_vp8_payload(keyframe=True), make_h264_payload(nal_type=5)):
        data = make_rtp(payload=payload)
        info = impl.parse_rtp(data, impl.ExtIds())
        assert impl.is_keyframe(impl.CODEC_OPUS, data, info) is False
        assert impl.is_keyframe(impl.CODEC_OTHER, data, info) is False


# --- differential: both implementations, same answers -------------------------------


def _outcome(call, *args):
    try:
        return "ok", call(*args)
    except Exception as exc:  # noqa: BLE001 - the point is to compare any failure
        return "error", type(exc).__name__, exc.args


def _info_fields(outcome):
    if outcome[0] != "ok":
        return outcome
    return "ok", tuple(getattr(outcome[1], f) for f in INFO_FIELDS)


ext_id_kwargs = st.fixed_dictionaries({
    name: st.integers(0, 15)
    for name in ("mid", "rid", "repaired_rid", "abs_send_time", "audio_level")
})


@st.composite
def real_packets(draw) -> bytes:
    two_byte = draw(st.booleans())
    if two_byte:
        elements = st.lists(st.tuples(st.integers(1, 20), st.binary(max_size=18)), max_size=6)
    else:
        elements = st.lists(st.tuples(st.integers(1, 15), st.binary(min_size=1, max_size=16)), max_size=6)
    payload = draw(st.one_of(
        st.binary(max_size=40),
        st.builds(make_vp8_payload, keyframe=st.booleans(), start=st.booleans(),
                  picture_id=st.none() | st.integers(0, 0x7FFF), tl0picidx=st.none() | st.integers(0, 255),
                  tid=st.none() | st.integers(0, 3), keyidx=st.none() | st.integers(0, 31)),
        st.builds(make_h264_payload, nal_type=st.integers(0, 31)),
        st.builds(make_h264_payload, stap_a=st.lists(st.integers(0, 31), max_size=4)),
        st.builds(make_h264_payload, fu_a=st.integers(0, 31), fu_start=st.booleans()),
    ))
    return make_rtp(
        seq=draw(st.integers(0, 0xFFFF)), ts=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)), pt=draw(st.integers(0, 127)), marker=draw(st.booleans()),
        payload=payload, extensions=draw(st.none() | elements), two_byte=two_byte,
        csrcs=draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=3)), padding=draw(st.integers(0, 12)),
    )


@st.composite
def mutated(draw, packets) -> bytes:
    data = bytearray(draw(packets))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "append"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


datagrams = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda first, rest: bytes([first]) + rest, st.integers(0x80, 0xBF), st.binary(max_size=64)),
    real_packets(),
    mutated(real_packets()),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=datagrams,
    source_ids=ext_id_kwargs,
    viewer_ids=ext_id_kwargs.map(lambda d: {k: min(v, 14) for k, v in d.items()}),
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    mid=st.binary(max_size=20),
)
def test_differential_both_implementations_agree(
    data: bytes, source_ids: dict, viewer_ids: dict, payload_type: int, sequence: int,
    timestamp: int, ssrc: int, mid: bytes,
) -> None:
    c, p = cython_impl, python_impl
    c_parsed = _outcome(c.parse_rtp, data, c.ExtIds(**source_ids))
    p_parsed = _outcome(p.parse_rtp, data, p.ExtIds(**source_ids))
    assert _info_fields(c_parsed) == _info_fields(p_parsed)
    if p_parsed[0] != "ok":
        assert p_parsed[1] == "RtpError"  # garbage is dropped with a reason, never a crash
        return
    c_info, p_info = c_parsed[1], p_parsed[1]

    c_out = _outcome(c.rewrite_rtp, data, c_info, payload_type, sequence, timestamp, ssrc,
                     c.ExtIds(**viewer_ids), mid)
    p_out = _outcome(p.rewrite_rtp, data, p_info, payload_type, sequence, timestamp, ssrc,
                     p.ExtIds(**viewer_ids), mid)
    assert c_out == p_out
    assert p_out[0] == "ok"
    reparsed = p.parse_rtp(p_out[1], p.ExtIds(**viewer_ids))
    assert payload_of(p_out[1], reparsed) == payload_of(data, p_info)

    assert _outcome(c.unwrap_rtx, data, c_info, payload_type, ssrc) == _outcome(
        p.unwrap_rtx, data, p_info, payload_type, ssrc)
    assert _outcome(c.wrap_rtx, data, c_info.payload_offset, payload_type, sequence, ssrc) == _outcome(
        p.wrap_rtx, data, p_info.payload_offset, payload_type, sequence, ssrc)
    for codec in (p.CODEC_OTHER, p.CODEC_VP8, p.CODEC_H264, p.CODEC_OPUS):
        assert c.is_keyframe(codec, data, c_info) is p.is_keyframe(codec, data, p_info)


@settings(max_examples=300, deadline=None)
@given(packet=real_packets(), source_ids=ext_id_kwargs, rtx_pt=st.integers(0, 127),
       rtx_seq=st.integers(0, 0xFFFF), rtx_ssrc=st.integers(0, 0xFFFFFFFF))
def test_differential_rtx_round_trip(
    packet: bytes, source_ids: dict, rtx_pt: int, rtx_seq: int, rtx_ssrc: int
) -> None:
    for impl in (cython_impl, python_impl):
        ids = impl.ExtIds(**source_ids)
        info = impl.parse_rtp(packet, ids)
        # RTX carries the original without its padding (what the buffer resends).
        b0 = packet[0] & 0xDF
        unpadded = bytes([b0]) + packet[1:info.payload_offset + info.payload_length]
        rtx = impl.wrap_rtx(unpadded, info.payload_offset, rtx_pt, rtx_seq, rtx_ssrc)
        assert rtx == cython_impl.wrap_rtx(unpadded, info.payload_offset, rtx_pt, rtx_seq, rtx_ssrc)
        restored = impl.unwrap_rtx(rtx, impl.parse_rtp(rtx, ids), info.payload_type, info.ssrc)
        assert restored == unpadded
