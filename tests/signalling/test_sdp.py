"""sfu.signalling.sdp against captured offers, hostile input and a live aiortc peer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.signalling.negotiation import TrackInfo, answer_publish, answer_subscribe
from sfu.signalling.sdp import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TRANSPORT_CC,
    Codec,
    MediaAnswer,
    Offer,
    SdpError,
    answer_setup,
    build_answer,
    h264_supported,
    parse_offer,
    parse_sdpfrag,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "sdp"
FIXTURES = sorted(p.name for p in DATA.glob("*.sdp"))
OUR_FINGERPRINT = ":".join(f"{b:02X}" for b in range(0xA0, 0xC0))
OUR_ICE = {"ice_ufrag": "SfU1", "ice_pwd": "sfuPasswordSfuPassword1"}


def load(name: str) -> str:
    with open(DATA / name, newline="") as f:
        return f.read()


def edit(text: str, *, drop: tuple[str, ...] = (), sub: dict[str, str] | None = None) -> str:
    """Drop lines starting with any of ``drop``; replace whole lines per ``sub``."""
    out = []
    for line in text.split("\r\n"):
        if line and line.startswith(drop):
            continue
        out.append((sub or {}).get(line, line))
    return "\r\n".join(out)


def answer_for(offer: Offer, media: list[MediaAnswer], **kw) -> str:
    args = dict(OUR_ICE, fingerprint_sha256=OUR_FINGERPRINT, setup=answer_setup(offer.setup),
                candidate_host="192.0.2.10", candidate_port=40000, session_id=1234)
    args.update(kw)
    return build_answer(offer, media, **args)


# ---------------------------------------------------------------- captured offers


def test_chrome_publish_offer() -> None:
    offer = parse_offer(load("chrome_publish.sdp"))
    assert (offer.ice_ufrag, offer.ice_pwd, offer.setup, offer.bundle) == ("Xq3v", "Jd8Hk2pLq9Rv4Tx7Wz1Yb5Nc", "actpass", ["0", "1"])
    assert offer.fingerprint == ("sha-256", "5F:C2:56:1B:AE:6D:21:14:32:19:2C:D4:AD:38:B3:4E:70:4A:8F:49:26:E9:82:90:8C:F3:72:39:95:BC:AF:96")
    audio, video = offer.media
    assert (audio.mid, audio.kind, audio.direction, audio.rtcp_rsize) == ("0", "audio", "sendonly", True)
    # transport-cc is parsed; negotiation decides who gets it (viewers only).
    assert audio.codecs == [Codec("opus", 111, 48000, 2, "minptime=10;useinbandfec=1", ("transport-cc",), None, 63)]
    assert audio.extensions == {EXT_AUDIO_LEVEL: 1, EXT_ABS_SEND_TIME: 2, EXT_MID: 4, EXT_TRANSPORT_CC: 3}
    assert (audio.ssrc, audio.rtx_ssrc, audio.cname) == (1811213004, None, "Zk8pQ2mV5xR9tL3w")
    assert audio.msid == "3f0c7a2e-6b4e-4b0a-9d43-2f5a8c1b7e10 9b1e4d2c-58a7-4f3e-a1c6-0d7e2b9f4a35"
    # VP8, then the only packetization-mode=1 constrained-baseline H264 (42001f is baseline, 4d001f main, 64001f high).
    fb = ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
    assert [(c.name, c.payload_type, c.rtx_payload_type, c.rtcp_fb) for c in video.codecs] == [
        ("VP8", 96, 97, fb), ("H264", 106, 107, fb)]
    assert video.extensions == {EXT_ABS_SEND_TIME: 2, EXT_MID: 4, EXT_RID: 10, EXT_REPAIRED_RID: 11,
                                EXT_TRANSPORT_CC: 3}
    assert (video.ssrc, video.rtx_ssrc) == (2870392457, 1539290530)
    assert video.offered_codecs == ["VP8", "H264", "AV1", "VP9", "red", "ulpfec"]
    assert not video.rejected and video.rids == []


def test_chrome_whep_offer_has_no_ssrcs() -> None:
    offer = parse_offer(load("chrome_whep_recvonly.sdp"))
    assert [(m.kind, m.direction, m.ssrc, m.msid) for m in offer.media] == [
        ("audio", "recvonly", None, None), ("video", "recvonly", None, None)]
    assert [c.payload_type for c in offer.media[1].codecs] == [96, 106]


def test_firefox_offer_mixes_session_and_media_level_attributes() -> None:
    offer = parse_offer(load("firefox_sendrecv.sdp"))
    assert offer.fingerprint[1].startswith("D5:53:7B")  # session level
    assert (offer.ice_ufrag, offer.ice_pwd) == ("8e2f1c7a", "3a0b5f4cd7e1f62c9a8e04d1b7c3f590")  # media level
    audio, video = offer.media
    assert audio.direction == video.direction == "sendrecv"
    assert audio.extensions == {EXT_AUDIO_LEVEL: 1, EXT_MID: 3}
    # H264 97 lacks packetization-mode, so it is mode 0 and dropped; rtx 119 belongs to red.
    assert [(c.name, c.payload_type, c.rtx_payload_type) for c in video.codecs] == [("VP8", 120, 124), ("H264", 126, 127)]
    assert (video.ssrc, video.rtx_ssrc, video.cname) == (4228361209, 3386187263, "{e1c0a7f3-5b92-4d18-9f6e-27a4c8d0b319}")


def test_obs_offer_with_session_level_transport() -> None:
    offer = parse_offer(load("obs_whip.sdp"))
    assert (offer.ice_ufrag, offer.ice_pwd, offer.setup) == ("Gc7X", "w0Hc8F1qKz2vR9sLp4Tn7b", "actpass")
    assert offer.fingerprint[1].startswith("58:28:77")
    assert offer.bundle == ["0", "1"]  # a=group:LS is ignored
    audio, video = offer.media
    assert audio.codecs[0].fmtp == "minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1"
    assert video.codecs == [Codec("H264", 96, 90000, 1, "profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1",
                                  ("nack", "nack pli", "goog-remb"), None)]
    assert (video.ssrc, video.cname, video.msid) == (3155452386, "Yo1ofRNOE2F4B6Rn", "Yo1ofRNOE2F4B6Rn Yo1ofRNOE2F4B6Rn-video")
    assert audio.extensions == video.extensions == {}


def test_aiortc_offer_fixture() -> None:
    offer = parse_offer(load("aiortc_sendrecv.sdp"))
    audio, video = offer.media
    assert [c.name for c in audio.codecs] == ["opus"] and audio.offered_codecs == ["opus", "G722", "PCMU", "PCMA"]
    assert [(c.name, c.payload_type, c.rtx_payload_type) for c in video.codecs] == [("VP8", 97, 98), ("H264", 101, 102)]
    assert video.rtx_ssrc is not None and offer.fingerprint[0] == "sha-256"  # sha-256 chosen among three


def test_line_endings_blank_lines_and_trailing_space_do_not_matter() -> None:
    crlf = load("chrome_publish.sdp")
    lf = crlf.replace("\r\n", "\n")
    messy = "\n" + crlf.replace("a=mid:0\r\n", "a=mid:0  \r\n\r\n\r\n")
    assert parse_offer(crlf) == parse_offer(lf) == parse_offer(messy)


def test_media_level_transport_wins_and_first_used_m_line_counts() -> None:
    session_level = "t=0 0\r\na=ice-ufrag:sEsS\r\na=ice-pwd:sessionLevelPassword00\r\n"
    assert parse_offer(load("chrome_publish.sdp").replace("t=0 0\r\n", session_level)).ice_ufrag == "Xq3v"
    # OBS keeps the transport at session level; a media-level value counts only on the first used m-line.
    obs = load("obs_whip.sdp").replace("a=mid:1\r\n", "a=mid:1\r\na=ice-ufrag:ViDe\r\na=setup:active\r\n")
    assert (parse_offer(obs).ice_ufrag, parse_offer(obs).setup) == ("Gc7X", "actpass")
    offer = parse_offer(obs.replace("m=audio 9 ", "m=audio 0 "))
    assert offer.media[0].rejected
    assert (offer.ice_ufrag, offer.ice_pwd, offer.setup) == ("ViDe", "w0Hc8F1qKz2vR9sLp4Tn7b", "active")


def test_bundle_only_port_zero_is_not_rejected_and_bundle_is_optional_for_one_used_m_line() -> None:
    text = load("chrome_publish.sdp").replace("m=video 9 ", "m=video 0 ").replace("a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n")
    assert not parse_offer(text).media[1].rejected
    text = edit(load("chrome_publish.sdp"), drop=("a=group:BUNDLE",)).replace("m=video 9 ", "m=video 0 ")
    offer = parse_offer(text)
    assert offer.bundle == [] and offer.media[1].rejected


def test_data_channel_m_line_is_kept_for_rejection() -> None:
    text = load("chrome_publish.sdp").replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + (
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n"
        "a=sctp-port:5000\r\na=max-message-size:262144\r\n")
    offer = parse_offer(text)
    app = offer.media[2]
    assert (app.kind, app.protocol, app.formats, app.codecs) == ("application", "UDP/DTLS/SCTP", ["webrtc-datachannel"], [])
    answer = answer_for(offer, answer_publish(offer))
    assert "a=group:BUNDLE 0 1\r\n" in answer
    assert answer.endswith("m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n")


def test_rid_and_extmap_direction() -> None:
    text = load("chrome_publish.sdp").replace(
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:10/sendonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
        "a=rid:q send\r\na=rid:h send max-width=1280\r\na=rid:f recv\r\na=simulcast:send q;h")
    video = parse_offer(text).media[1]
    assert video.rids == ["q", "h"] and video.extensions[EXT_RID] == 10


def test_two_byte_extension_ids_are_not_negotiated() -> None:
    text = load("chrome_publish.sdp").replace("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=extmap:16 urn:ietf:params:rtp-hdrext:sdes:mid")
    assert EXT_MID not in parse_offer(text).media[0].extensions


@pytest.mark.parametrize("fmtp, ok", [
    ("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", True),
    ("profile-level-id=42C01F;packetization-mode=1", True),   # hex is case-insensitive
    ("packetization-mode=1;profile-level-id=4de01f", True),   # main with constraint_set0 = constrained baseline
    ("packetization-mode=1;profile-level-id=42e034", True),   # level 5.2: level is not checked
    ("packetization-mode=1;profile-level-id=42001f", False),  # baseline
    ("packetization-mode=1;profile-level-id=42a01f", False),  # baseline (set0+set2, no set1)
    ("packetization-mode=1;profile-level-id=4d001f", False),  # main
    ("packetization-mode=1;profile-level-id=64001f", False),  # high
    ("packetization-mode=1;profile-level-id=640c1f", False),  # constrained high
    ("packetization-mode=0;profile-level-id=42e01f", False),
    ("profile-level-id=42e01f", False),                       # mode 0 by default
    ("packetization-mode=1", False),                          # default profile is baseline
    ("packetization-mode=1;profile-level-id=42e0ff", False),  # no such level
    ("packetization-mode=1;profile-level-id=42e01fzz", False),
    ("", False),
])
def test_h264_profile_rules(fmtp: str, ok: bool) -> None:
    assert h264_supported(fmtp) is ok


# ---------------------------------------------------------------- errors

CHROME = load("chrome_publish.sdp")
ERRORS = [
    ("", 400, "must begin with v=0"),
    ("hello world", 400, "not an SDP line"),
    ("<html><body>nope</body></html>", 400, "not an SDP line"),
    (edit(CHROME, drop=("v=",)), 400, "must begin with v=0"),
    (edit(CHROME, drop=("s=",)), 400, "no s= line"),
    (CHROME + "a=x-padding:" + "x" * 40000 + "\r\n", 400, "larger than 32768 bytes"),
    (CHROME.replace("a=mid:0", "a=mid:0\x00"), 400, "control characters"),
    (CHROME.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus"), 400, "Line 25: malformed a=rtpmap"),
    (CHROME.replace("UDP/TLS/RTP/SAVPF 111 63", "UDP/TLS/RTP/SAVPF 311 63"), 400, "payload types must be numbers 0-127"),
    (CHROME.replace("a=ice-pwd:Jd8Hk2pLq9Rv4Tx7Wz1Yb5Nc", "a=ice-pwd:short"), 400, "a=ice-pwd must be 22-256"),
    (CHROME.replace("a=ice-ufrag:Xq3v", "a=ice-ufrag:Xq:v"), 400, "a=ice-ufrag must be 4-256"),
    (CHROME.replace("5F:C2:56:1B:", "5F:C2:56:"), 400, "sha-256 has 32 bytes"),
    (CHROME.replace("a=setup:actpass", "a=setup:whatever"), 400, "a=setup must be"),
    (CHROME.replace("a=mid:1", "a=mid:0"), 400, "same mid"),
    (CHROME.replace("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset", "a=extmap:4 urn:ietf:params:rtp-hdrext:toffset"), 400, "unique"),
    (CHROME.replace("a=ssrc:1811213004 cname", "a=ssrc:4294967296 cname"), 400, "SSRC out of range"),
    (CHROME.split("m=audio")[0], 422, "no m= lines"),
    (CHROME.replace(" 9 UDP/TLS/RTP/SAVPF", " 0 UDP/TLS/RTP/SAVPF"), 422, "Every m-line in the offer is rejected"),
    (edit(CHROME, drop=("a=ice-ufrag",)), 422, "no a=ice-ufrag"),
    (edit(CHROME, drop=("a=fingerprint",)), 422, "no a=fingerprint"),
    (CHROME.replace("a=fingerprint:sha-256", "a=fingerprint:md5"), 422, "no a=fingerprint with sha-256"),
    (edit(CHROME, drop=("a=setup",)), 422, "no a=setup"),
    (CHROME.replace("a=setup:actpass", "a=setup:holdconn"), 422, "holdconn"),
    (edit(CHROME, drop=("a=rtcp-mux",)), 422, "does not use rtcp-mux"),
    (CHROME.replace("m=video 9 UDP/TLS/RTP/SAVPF", "m=video 9 RTP/AVP"), 422, "uses RTP/AVP; we only serve UDP/TLS/RTP/SAVPF"),
    (edit(CHROME, drop=("a=group:BUNDLE",)), 422, "not all in one BUNDLE group"),
    (CHROME.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"), 422, "not all in one BUNDLE group"),
    (edit(CHROME, drop=("a=mid:1",)), 422, "has no a=mid"),
]


@pytest.mark.parametrize("text, status, reason", ERRORS, ids=range(len(ERRORS)))
def test_errors(text: str, status: int, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_offer(text)
    assert info.value.status == status
    assert reason in info.value.reason and info.value.reason.endswith(".")


def test_size_limit_is_configurable() -> None:
    with pytest.raises(SdpError, match="larger than 1000 bytes"):
        parse_offer(CHROME, max_bytes=1000)


# ---------------------------------------------------------------- answers


def test_obs_answer_is_byte_exact() -> None:
    offer = parse_offer(load("obs_whip.sdp"))
    assert answer_for(offer, answer_publish(offer)) == "\r\n".join([
        "v=0", "o=- 1234 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=ice-lite", "a=group:BUNDLE 0 1", "a=msid-semantic: WMS *",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=ice-ufrag:SfU1",
        "a=ice-pwd:sfuPasswordSfuPassword1", f"a=fingerprint:sha-256 {OUR_FINGERPRINT}", "a=setup:passive", "a=rtcp-mux",
        "a=recvonly", "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
        "a=candidate:1 1 udp 2130706431 192.0.2.10 40000 typ host", "a=end-of-candidates",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:1", "a=ice-ufrag:SfU1",
        "a=ice-pwd:sfuPasswordSfuPassword1", f"a=fingerprint:sha-256 {OUR_FINGERPRINT}", "a=setup:passive", "a=rtcp-mux",
        "a=recvonly", "a=rtpmap:96 H264/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli", "a=rtcp-fb:96 goog-remb",
        "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1",
        "a=candidate:1 1 udp 2130706431 192.0.2.10 40000 typ host", "a=end-of-candidates", "",
    ])


def test_chrome_answer_parses_back_with_our_choices() -> None:
    offer = parse_offer(CHROME)
    answer = answer_for(offer, answer_publish(offer))
    # transport-cc is not echoed to a publisher: we send it no transport-wide feedback.
    assert "a=rtcp-rsize" in answer and "a=extmap:3 " not in answer and "transport-cc" not in answer
    back = parse_offer(answer)
    assert back.setup == "passive" and back.ice_ufrag == "SfU1" and back.bundle == ["0", "1"]
    assert [(m.direction, [(c.payload_type, c.rtx_payload_type) for c in m.codecs]) for m in back.media] == [
        ("recvonly", [(111, None)]), ("recvonly", [(96, 97)])]
    assert back.media[1].extensions == {uri: i for uri, i in offer.media[1].extensions.items()
                                        if uri != EXT_TRANSPORT_CC}


def test_build_answer_refuses_caller_mistakes() -> None:
    offer = parse_offer(CHROME)
    media = answer_publish(offer)
    with pytest.raises(ValueError, match="setup"):
        answer_for(offer, media, setup="actpass")
    with pytest.raises(ValueError, match="offer order"):
        answer_for(offer, media[::-1])
    with pytest.raises(ValueError):
        answer_for(offer, media, candidate_host="sfu.example.com")
    with pytest.raises(ValueError, match="cannot answer sendonly with sendonly"):
        answer_for(offer, [MediaAnswer(m.offer, "sendonly", m.codec, {}) for m in media])
    passive = parse_offer(CHROME.replace("a=setup:actpass", "a=setup:passive"))
    assert answer_setup(passive.setup) == "active"
    with pytest.raises(ValueError, match="a=setup:passive is not a valid answer"):
        answer_for(passive, answer_publish(passive), setup="passive")


async def _aiortc_exchange(make_peer, decide) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    make_peer(pc)
    await pc.setLocalDescription(await pc.createOffer())
    offer = parse_offer(pc.localDescription.sdp)
    text = answer_for(offer, decide(offer), candidate_host="127.0.0.1")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return pc


def test_aiortc_accepts_our_publish_answer() -> None:
    def make_peer(pc: RTCPeerConnection) -> None:
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(VideoStreamTrack())

    async def main() -> None:
        pc = await _aiortc_exchange(make_peer, answer_publish)
        try:
            assert pc.signalingState == "stable"
            assert [t.currentDirection for t in pc.getTransceivers()] == ["sendonly", "sendonly"]
        finally:
            await pc.close()

    asyncio.run(main())


def test_aiortc_accepts_our_subscribe_answer() -> None:
    tracks = [TrackInfo("video", "VP8", 90000, 1111, 2222, "sfu", "room cam"),
              TrackInfo("audio", "opus", 48000, 3333, None, "sfu", "room mic")]

    def make_peer(pc: RTCPeerConnection) -> None:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")

    async def main() -> None:
        pc = await _aiortc_exchange(make_peer, lambda offer: answer_subscribe(offer, tracks)[0])
        try:
            audio, video = pc.getTransceivers()
            assert (audio.currentDirection, video.currentDirection) == ("recvonly", "recvonly")
            assert video.receiver.track is not None and video.receiver.track.kind == "video"
        finally:
            await pc.close()

    asyncio.run(main())


def test_live_aiortc_offer_parses_like_the_fixture() -> None:
    async def main() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return pc.localDescription.sdp

    live, fixture = parse_offer(asyncio.run(main())), parse_offer(load("aiortc_sendrecv.sdp"))
    shape = lambda o: [(m.kind, m.direction, [(c.name, c.payload_type, c.rtx_payload_type) for c in m.codecs], m.extensions)
                       for m in o.media]
    assert shape(live) == shape(fixture)


# ---------------------------------------------------------------- trickle


def test_sdpfrag_rfc8840_example() -> None:
    frag = parse_sdpfrag(
        "a=ice-options:trickle ice2\r\na=group:BUNDLE 0 1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
        "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
        "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n"
        "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\n"
        "a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0 ufrag EsAw network-id 1\r\n"
        "a=end-of-candidates\r\n")
    assert (frag.ice_ufrag, frag.ice_pwd, frag.end_of_candidates) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1", True)
    assert frag.candidates[0] == "1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1"
    assert len(frag.candidates) == 3


def test_sdpfrag_session_level_credentials_mdns_and_empty_body() -> None:
    frag = parse_sdpfrag("a=ice-ufrag:abcd\na=ice-pwd:0123456789abcdefghijkl\n"
                         "a=candidate:1 1 UDP 2113937151 3f1c9a2e-0d4b-4e77-8a1f-6c2b5d9e0f13.local 54321 typ host\n")
    assert frag.ice_ufrag == "abcd" and frag.candidates[0].endswith(".local 54321 typ host")
    assert parse_sdpfrag("") == parse_sdpfrag("\r\n")


@pytest.mark.parametrize("text", [
    "candidate:1 1 udp 1 192.0.2.1 5000 typ host",       # not an a= line
    "a=candidate:1 1 udp 1 192.0.2.1 5000 host",          # no typ
    "a=candidate:1 1 udp 1 192.0.2.1 99999 typ host",     # port
    "a=ice-ufrag:ab",                                     # too short
    "a=ice-ufrag:abcd\r\nm=audio 9 RTP/AVP 0\r\na=ice-ufrag:efgh",
    "a=x-big:" + "y" * 20000,
])
def test_sdpfrag_garbage_is_400(text: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdpfrag(text)
    assert info.value.status == 400


# ---------------------------------------------------------------- properties


def _outcome(parse, text: str) -> object:
    try:
        return parse(text)
    except SdpError as e:
        assert e.status in (400, 422) and e.reason
        return e


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_arbitrary_text_gives_offer_or_sdp_error(text: str) -> None:
    _outcome(parse_offer, text)
    _outcome(parse_sdpfrag, text)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from("vosmtca=:0123456789 /\r\n-_.;*")))
def test_sdp_shaped_noise_gives_offer_or_sdp_error(text: str) -> None:
    _outcome(parse_offer, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + text)
    _outcome(parse_sdpfrag, text)


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    lines = load(draw(st.sampled_from(FIXTURES))).split("\r\n")
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "cut", "char", "insert", "swap"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        elif op == "char" and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + draw(st.characters()) + lines[i][j + 1:]
        elif op == "insert":
            lines.insert(i, draw(st.text(max_size=40)))
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            break
    return "\r\n".join(lines)


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_offers())
def test_mutated_real_offers_give_offer_or_sdp_error(text: str) -> None:
    result = _outcome(parse_offer, text)
    if isinstance(result, Offer):  # whatever parses can be answered or refused with a 422, never crash
        try:
            media = answer_publish(result)
        except SdpError as e:
            assert e.status == 422
        else:
            back = parse_offer(answer_for(result, media))
            assert len(back.media) == len(result.media)
