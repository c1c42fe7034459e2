"""answer_publish / answer_subscribe decisions on captured offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu.signalling.negotiation import TrackInfo, answer_publish, answer_subscribe
from sfu.signalling.sdp import (
    EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC, MediaAnswer, SdpError,
    build_answer, parse_offer,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "sdp"
CHROME_VIDEO_FORMATS = "96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 46 98 99 100 101 112 113 116 117 118"


def load(name: str) -> str:
    with open(DATA / name, newline="") as f:
        return f.read()


def chrome(kind: str = "publish", *, video_formats: str = CHROME_VIDEO_FORMATS, audio_port: int = 9,
           drop: tuple[str, ...] = ()) -> str:
    """The captured Chrome offer with its video format list reordered/trimmed or lines dropped."""
    text = load("chrome_publish.sdp" if kind == "publish" else "chrome_whep_recvonly.sdp")
    text = text.replace(f"SAVPF {CHROME_VIDEO_FORMATS}", f"SAVPF {video_formats}")
    text = text.replace("m=audio 9 ", f"m=audio {audio_port} ")
    return "\r\n".join(line for line in text.split("\r\n") if not (line and line in drop))


def vp8_track(ssrc: int = 1000, rtx: int | None = 1001, msid: str = "room cam") -> TrackInfo:
    return TrackInfo("video", "VP8", 90000, ssrc, rtx, "sfu-cname", msid)


def h264_track(ssrc: int = 2000, rtx: int | None = 2001) -> TrackInfo:
    return TrackInfo("video", "H264", 90000, ssrc, rtx, "sfu-cname", "room screen")


OPUS = TrackInfo("audio", "opus", 48000, 3000, None, "sfu-cname", "room mic")


def chosen(a: MediaAnswer) -> tuple:
    """(direction, codec name, PT, RTX PT) of one answered m-line."""
    return (a.direction, None) if a.codec is None else (a.direction, a.codec.name, a.codec.payload_type, a.codec.rtx_payload_type)


# ---------------------------------------------------------------- publish


def test_publish_chrome_takes_first_codecs_with_rtx_and_extensions() -> None:
    audio, video = answer_publish(parse_offer(chrome()))
    assert chosen(audio) == ("recvonly", "opus", 111, None)
    assert audio.extensions == {EXT_AUDIO_LEVEL: 1, EXT_ABS_SEND_TIME: 2, EXT_MID: 4}
    assert chosen(video) == ("recvonly", "VP8", 96, 97)
    assert video.extensions == {EXT_ABS_SEND_TIME: 2, EXT_MID: 4, EXT_RID: 10, EXT_REPAIRED_RID: 11}
    assert video.send_ssrc is None and video.cname is None


def test_publish_follows_the_publishers_order() -> None:
    video = answer_publish(parse_offer(chrome(video_formats="45 46 106 107 96 97")))[1]
    assert chosen(video) == ("recvonly", "H264", 106, 107)


def test_publish_drops_rtx_without_nack() -> None:
    video = answer_publish(parse_offer(chrome(drop=("a=rtcp-fb:96 nack",))))[1]
    assert video.codec.payload_type == 96 and "nack pli" in video.codec.rtcp_fb
    assert video.codec.rtx_payload_type is None


def test_publish_obs_h264_without_rtx() -> None:
    audio, video = answer_publish(parse_offer(load("obs_whip.sdp")))
    assert [chosen(audio), chosen(video)] == [("recvonly", "opus", 111, None), ("recvonly", "H264", 96, None)]
    assert video.extensions == {}


def test_publish_firefox_sendrecv_is_received_only() -> None:
    answers = answer_publish(parse_offer(load("firefox_sendrecv.sdp")))
    assert [chosen(a) for a in answers] == [("recvonly", "opus", 109, None), ("recvonly", "VP8", 120, 124)]


def test_publish_rejects_only_the_m_line_it_cannot_use() -> None:
    audio, video = answer_publish(parse_offer(chrome(video_formats="98 99 45 46")))
    assert audio.codec.name == "opus"
    assert chosen(video) == ("inactive", None) and video.extensions == {}


def test_publish_recvonly_offer_is_422() -> None:
    with pytest.raises(SdpError) as info:
        answer_publish(parse_offer(chrome("whep")))
    assert info.value.status == 422 and "sends no media" in info.value.reason


def test_publish_unsupported_codecs_are_named() -> None:
    with pytest.raises(SdpError) as info:
        answer_publish(parse_offer(chrome(audio_port=0, video_formats="98 99 45 46 127 125")))
    assert info.value.status == 422
    assert info.value.reason == ("No supported codec in the offer: it offers VP9, AV1, H264; we accept opus for audio, "
                                 "and VP8 or H264 (packetization-mode=1, constrained baseline) for video.")


# ---------------------------------------------------------------- subscribe


def test_subscribe_chrome_uses_viewer_payload_types_and_our_ssrcs() -> None:
    offer = parse_offer(chrome("whep"))
    video_track = vp8_track()
    answers, matches = answer_subscribe(offer, [video_track, OPUS])
    audio, video = answers
    assert chosen(audio) == ("sendonly", "opus", 111, None)
    assert (audio.send_ssrc, audio.send_rtx_ssrc, audio.msid) == (3000, None, "room mic")
    assert chosen(video) == ("sendonly", "VP8", 96, 97)
    assert (video.send_ssrc, video.send_rtx_ssrc, video.cname, video.msid) == (1000, 1001, "sfu-cname", "room cam")
    # No RIDs downstream; transport-cc kept (the viewer offered it, with its feedback).
    assert video.extensions == {EXT_ABS_SEND_TIME: 2, EXT_MID: 4, EXT_TRANSPORT_CC: 3}
    assert matches == [(0, OPUS, audio.codec), (1, video_track, video.codec)]


def test_subscribe_h264_picks_the_viewers_constrained_baseline_pt() -> None:
    answers, matches = answer_subscribe(parse_offer(chrome("whep")), [h264_track()])
    assert answers[0].direction == "inactive"  # no audio track: audio m-line idle
    assert answers[0].send_ssrc is None
    video = answers[1]
    assert chosen(video) == ("sendonly", "H264", 106, 107) and video.send_rtx_ssrc == 2001
    assert [i for i, _, _ in matches] == [1]


def test_subscribe_drops_rtx_when_the_track_has_none() -> None:
    video = answer_subscribe(parse_offer(chrome("whep")), [vp8_track(rtx=None)])[0][1]
    assert video.codec.payload_type == 96 and video.codec.rtx_payload_type is None and video.send_rtx_ssrc is None


def test_subscribe_fills_m_lines_in_order_and_skips_undecodable_tracks() -> None:
    text = chrome("whep")
    video_section = "m=video" + text.split("m=video", 1)[1]
    text = text.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + video_section.replace("a=mid:1", "a=mid:2")
    cam, screen = vp8_track(1000, 1001, "room cam"), vp8_track(4000, 4001, "room screen")
    answers, matches = answer_subscribe(parse_offer(text), [cam, screen, OPUS])
    assert [(i, t.msid) for i, t, _ in matches] == [(0, "room mic"), (1, "room cam"), (2, "room screen")]
    assert answers[2].send_ssrc == 4000
    # One video m-line, two video tracks: the second stays unsent.
    answers, matches = answer_subscribe(parse_offer(chrome("whep")), [cam, screen])
    assert [t for _, t, _ in matches] == [cam]


def test_subscribe_viewer_with_only_h264_and_vp8_stream_is_422() -> None:
    offer = parse_offer(chrome("whep", audio_port=0, video_formats="106 107"))
    with pytest.raises(SdpError) as info:
        answer_subscribe(offer, [vp8_track()])
    assert info.value.status == 422
    assert info.value.reason == (
        "No track can be sent: the stream sends video as VP8 but the viewer offered only H264 (offered: H264).")


def test_subscribe_baseline_only_h264_viewer_is_explained() -> None:
    offer = parse_offer(chrome("whep", video_formats="102 103"))
    with pytest.raises(SdpError) as info:
        answer_subscribe(offer, [h264_track()])
    assert "the viewer offered only codecs we do not support (offered: H264)" in info.value.reason


def test_subscribe_without_tracks_or_receivers_is_422() -> None:
    with pytest.raises(SdpError, match="Nothing is being published"):
        answer_subscribe(parse_offer(chrome("whep")), [])
    with pytest.raises(SdpError, match="receives no media"):
        answer_subscribe(parse_offer(load("obs_whip.sdp")), [OPUS])
    with pytest.raises(SdpError, match="the stream has video \\(VP8\\) but the viewer has no video m-line"):
        answer_subscribe(parse_offer(chrome("whep").replace("m=video 9", "m=video 0")), [vp8_track()])


def test_subscribe_firefox_sendrecv_viewer() -> None:
    answers, _ = answer_subscribe(parse_offer(load("firefox_sendrecv.sdp")), [OPUS, h264_track()])
    assert [chosen(a) for a in answers] == [("sendonly", "opus", 109, None), ("sendonly", "H264", 126, 127)]


def _with_simulcast(sdp: str, rids: list[str], *, keep_rid_extension: bool = True) -> str:
    lines = sdp.replace("\r\n", "\n").split("\n")
    if not keep_rid_extension:
        lines = [line for line in lines if "rtp-stream-id" not in line]
    at = max(i for i, line in enumerate(lines) if line.startswith("a=")) + 1  # end of the video m-section
    extra = [f"a=rid:{rid} send" for rid in rids] + ["a=simulcast:send " + ";".join(rids)]
    return "\r\n".join(lines[:at] + extra + lines[at:])


def test_publish_simulcast_layers_are_accepted_and_echoed() -> None:
    offer = parse_offer(_with_simulcast(chrome("publish"), ["q", "h", "f"]))
    answers = answer_publish(offer)
    video = next(a for a in answers if a.offer.kind == "video")
    assert video.recv_rids == ["q", "h", "f"]
    sdp = build_answer(offer, answers, ice_ufrag="abcd", ice_pwd="0123456789abcdef012345",
                       fingerprint_sha256=":".join(["AB"] * 32), setup="passive",
                       candidate_host="127.0.0.1", candidate_port=5000)
    section = sdp.split("m=video")[1]
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n" in section
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in section
    audio = sdp.split("m=video")[0]
    assert "a=simulcast" not in audio


def test_simulcast_without_the_rid_extension_falls_back_to_one_encoding() -> None:
    offer = parse_offer(_with_simulcast(chrome("publish"), ["l", "h"], keep_rid_extension=False))
    video = next(a for a in answer_publish(offer) if a.offer.kind == "video")
    assert video.recv_rids == []


def test_at_most_three_simulcast_layers() -> None:
    offer = parse_offer(_with_simulcast(chrome("publish"), ["a", "b", "c", "d"]))
    video = next(a for a in answer_publish(offer) if a.offer.kind == "video")
    assert video.recv_rids == ["a", "b", "c"]


# ---------------------------------------------------------------- transport-wide congestion control


def _answer_text(offer, answers) -> str:
    return build_answer(offer, answers, ice_ufrag="abcd", ice_pwd="0123456789abcdef012345",
                        fingerprint_sha256=":".join(["AB"] * 32), setup="passive",
                        candidate_host="127.0.0.1", candidate_port=5000)


def test_subscribe_keeps_transport_cc_for_a_viewer_that_offers_it() -> None:
    offer = parse_offer(chrome("whep"))
    answers, matches = answer_subscribe(offer, [vp8_track(), OPUS])
    audio, video = answers
    assert audio.extensions[EXT_TRANSPORT_CC] == video.extensions[EXT_TRANSPORT_CC] == 3
    assert "transport-cc" in video.codec.rtcp_fb and "transport-cc" in audio.codec.rtcp_fb
    assert [c for _, _, c in matches] == [audio.codec, video.codec]
    text = _answer_text(offer, answers)
    audio_text, video_text = text.split("m=video")
    for section, pt in ((audio_text, 111), (video_text, 96)):
        assert f"a=extmap:3 {EXT_TRANSPORT_CC}\r\n" in section
        assert f"a=rtcp-fb:{pt} transport-cc\r\n" in section
    assert "a=rtcp-fb:96 goog-remb" in video_text  # REMB stays offered; Chrome picks transport-cc
    # The answer parses back with it, as the viewer will read it.
    back = parse_offer(text.replace("a=sendonly", "a=recvonly"))
    assert back.media[1].extensions[EXT_TRANSPORT_CC] == 3 and "transport-cc" in back.media[1].codecs[0].rtcp_fb


@pytest.mark.parametrize("drop", [
    # The extension without the feedback on the video codec, or the feedback without the extension.
    ("a=rtcp-fb:96 transport-cc", "a=rtcp-fb:102 transport-cc", "a=rtcp-fb:104 transport-cc",
     "a=rtcp-fb:106 transport-cc", "a=rtcp-fb:108 transport-cc", "a=rtcp-fb:127 transport-cc",
     "a=rtcp-fb:39 transport-cc", "a=rtcp-fb:45 transport-cc", "a=rtcp-fb:98 transport-cc",
     "a=rtcp-fb:100 transport-cc", "a=rtcp-fb:112 transport-cc", "a=rtcp-fb:116 transport-cc"),
    (f"a=extmap:3 {EXT_TRANSPORT_CC}",),
])
def test_subscribe_without_both_halves_answers_no_transport_cc(drop: tuple[str, ...]) -> None:
    offer = parse_offer(chrome("whep", drop=drop))
    answers, matches = answer_subscribe(offer, [vp8_track(), OPUS])
    for a in answers:
        assert EXT_TRANSPORT_CC not in a.extensions and "transport-cc" not in a.codec.rtcp_fb
    assert all("transport-cc" not in c.rtcp_fb for _, _, c in matches)
    assert "transport-cc" not in _answer_text(offer, answers)


def test_subscribe_audio_only_viewer_gets_no_transport_cc() -> None:
    # transport-cc on the audio line alone: no video we send would be estimated by it.
    offer = parse_offer(chrome("whep"))
    answers, _ = answer_subscribe(offer, [OPUS])
    assert answers[0].direction == "sendonly" and answers[1].direction == "inactive"
    assert "transport-cc" not in _answer_text(offer, answers)


def test_publish_never_answers_transport_cc() -> None:
    for offer in (parse_offer(chrome()), parse_offer(_with_simulcast(chrome("publish"), ["q", "h", "f"])),
                  parse_offer(chrome(video_formats="98 99 45 46"))):
        answers = answer_publish(offer)
        for a in answers:
            assert EXT_TRANSPORT_CC not in a.extensions
            assert a.codec is None or "transport-cc" not in a.codec.rtcp_fb
        assert "transport-cc" not in _answer_text(offer, answers)


# ---------------------------------------------------------------- RED (co-performance rooms)


def test_chrome_audio_red_is_parsed_onto_opus() -> None:
    audio = parse_offer(chrome()).media[0]
    assert [(c.name, c.payload_type, c.red_payload_type) for c in audio.codecs][:1] == [("opus", 111, 63)]


def test_publish_asks_for_red_only_when_wanted() -> None:
    offer = parse_offer(chrome())
    plain, _ = answer_publish(offer)
    assert plain.codec.red_payload_type is None
    assert "red/" not in _answer_text(offer, answer_publish(offer)).split("m=video")[0]
    red, _ = answer_publish(offer, red=True)
    assert red.codec.red_payload_type == 63 and red.codec.payload_type == 111
    audio_text = _answer_text(offer, answer_publish(offer, red=True)).split("m=video")[0]
    # RED first on the m-line and among the rtpmaps: the publisher sends its first codec.
    assert " UDP/TLS/RTP/SAVPF 63 111\r\n" in audio_text
    assert audio_text.index("a=rtpmap:63 red/48000/2") < audio_text.index("a=rtpmap:111 opus/48000/2")
    assert "a=fmtp:63 111/111\r\n" in audio_text
    # Opus in-band FEC stays on: its repair data rides inside the payload we pass through.
    assert "a=fmtp:111 minptime=10;useinbandfec=1\r\n" in audio_text


def test_subscribe_keeps_red_only_for_red_tracks() -> None:
    offer = parse_offer(chrome("whep"))
    red_opus = TrackInfo("audio", "opus", 48000, 3000, None, "sfu-cname", "room mic", red=True)
    (audio, _), matches = answer_subscribe(offer, [red_opus])
    assert audio.codec.red_payload_type == 63 and matches[0][2].red_payload_type == 63
    (audio, _), _ = answer_subscribe(offer, [OPUS])
    assert audio.codec.red_payload_type is None


@pytest.mark.parametrize("fmtp", ["111/96", "111", "x/y", "111/111/111/7"])
def test_red_of_another_or_mixed_codec_is_not_offered_red(fmtp: str) -> None:
    text = chrome().replace("a=fmtp:63 111/111", f"a=fmtp:63 {fmtp}")
    red = parse_offer(text).media[0].codecs[0].red_payload_type
    assert red == (63 if fmtp in ("111",) else None)
