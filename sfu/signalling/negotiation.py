"""Decide what we answer to a publisher (WHIP) or a viewer (WHEP).

Pure policy over parsed offers: no I/O, no SDP text. ``sdp.build_answer``
turns the decisions into text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sfu.signalling.sdp import (
    EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC, FB_TRANSPORT_CC, Codec, MediaAnswer, MediaOffer, Offer, SdpError,
)

AUDIO_PREFERENCE = ("opus",)
VIDEO_PREFERENCE = ("VP8", "H264")
_PREFERENCE = {"audio": AUDIO_PREFERENCE, "video": VIDEO_PREFERENCE}
_WE_ACCEPT = "we accept opus for audio, and VP8 or H264 (packetization-mode=1, constrained baseline) for video"
# We send viewers one plain stream per m-line, so RID extensions mean nothing downstream.
_NOT_DOWNSTREAM = (EXT_RID, EXT_REPAIRED_RID)


@dataclass(frozen=True)
class TrackInfo:
    """One producer as a viewer will receive it."""

    kind: str  # "audio" | "video"
    codec_name: str  # "opus" | "VP8" | "H264"
    clock_rate: int
    send_ssrc: int  # the consumer's own SSRC
    send_rtx_ssrc: int | None
    cname: str
    msid: str  # "streamid trackid"
    red: bool = False  # the publisher sends RFC 2198 redundancy (a co-performance room's audio)


def _without_transport_cc(answer: MediaAnswer) -> MediaAnswer:
    """The answer with transport-wide congestion control left out (extension and feedback)."""
    codec = answer.codec
    if codec is not None and FB_TRANSPORT_CC in codec.rtcp_fb:
        codec = replace(codec, rtcp_fb=tuple(fb for fb in codec.rtcp_fb if fb != FB_TRANSPORT_CC))
    extensions = {uri: i for uri, i in answer.extensions.items() if uri != EXT_TRANSPORT_CC}
    return replace(answer, codec=codec, extensions=extensions)


def _viewer_transport_cc(answers: list[MediaAnswer]) -> list[MediaAnswer]:
    """Keep transport-cc for a viewer only when its offer made it usable for video.

    The extension on the m-line and ``a=rtcp-fb:<pt> transport-cc`` on a video codec
    we send: then the viewer (Chrome, Firefox) sends transport-wide feedback for the
    sequence numbers the engine stamps on everything it sends to that transport, and
    Chrome stops sending REMB. With only one of the two, neither is answered, and
    the viewer's estimate stays REMB plus loss.
    """
    usable = any(a.direction == "sendonly" and a.offer.kind == "video" and a.codec is not None
                 and FB_TRANSPORT_CC in a.codec.rtcp_fb and EXT_TRANSPORT_CC in a.extensions for a in answers)
    if usable:
        return answers
    return [_without_transport_cc(a) for a in answers]


def _usable(m: MediaOffer) -> bool:
    return not m.rejected and m.kind in _PREFERENCE


def _reject(m: MediaOffer) -> MediaAnswer:
    return MediaAnswer(offer=m, direction="inactive", codec=None, extensions={})


def _idle(m: MediaOffer) -> MediaAnswer:
    """An m-line we carry nothing on: inactive but kept in the BUNDLE where it can be.

    Port-0 rejection is what RFC 8843 suggests, but aiortc refuses answers with
    rejected m-lines, and an inactive line costs nothing.
    """
    codecs = [c for c in m.codecs if c.name in _PREFERENCE.get(m.kind, ())]
    if not _usable(m) or not codecs:
        return _reject(m)
    codec = replace(codecs[0], rtx_payload_type=None, red_payload_type=None)
    return MediaAnswer(offer=m, direction="inactive", codec=codec, extensions=dict(m.extensions))


def _with_red(codec: Codec, allowed: bool) -> Codec:
    """Keep an offered RED wrapping only where it carries something: a publisher in a
    co-performance room (the answer then asks it to send RED), or a viewer of a RED track
    (it gets RED as sent; without it the shard strips packets to their primary)."""
    if codec.red_payload_type is not None and not allowed:
        return replace(codec, red_payload_type=None)
    return codec


def _with_rtx_if_nack(codec: Codec, allowed: bool = True) -> Codec:
    """RTX only helps where NACK asks for it; without nack we would never retransmit."""
    if codec.rtx_payload_type is not None and not (allowed and "nack" in codec.rtcp_fb):
        return replace(codec, rtx_payload_type=None)
    return codec


MAX_SIMULCAST_LAYERS = 3


def _simulcast_rids(m: MediaOffer) -> list[str]:
    """The rids we accept: video only, and only when packets will say which is which.

    Layers are told apart by the rid header extension (RFC 8852); without it
    the publisher must fall back to a single encoding, which it does when the
    answer carries no a=simulcast.
    """
    if m.kind != "video" or len(m.rids) < 2 or EXT_RID not in m.extensions:
        return []
    return m.rids[:MAX_SIMULCAST_LAYERS]


def answer_publish(offer: Offer, *, red: bool = False) -> list[MediaAnswer]:
    """Receive every audio/video m-line the publisher sends, with its first supported codec.

    The publisher's offer order is its preference, so we take the first codec
    we support rather than imposing ours. ``red``: ask for RFC 2198 redundant audio
    where offered (co-performance rooms: a lost packet is repaired by the next one,
    with no retransmission round trip).
    """
    answers: list[MediaAnswer] = []
    for m in offer.media:
        codecs = [c for c in m.codecs if c.name in _PREFERENCE.get(m.kind, ())]
        if _usable(m) and m.direction in ("sendonly", "sendrecv") and codecs:
            answer = MediaAnswer(offer=m, direction="recvonly", codec=_with_red(_with_rtx_if_nack(codecs[0]), red),
                                 extensions=dict(m.extensions), recv_rids=_simulcast_rids(m))
        else:
            answer = _idle(m)
        # We send publishers no transport-wide feedback (they get REMB and receiver
        # reports), so their send-side estimator must not wait for any.
        answers.append(_without_transport_cc(answer))
    if any(a.direction == "recvonly" for a in answers):
        return answers

    sending = [m for m in offer.media if _usable(m) and m.direction in ("sendonly", "sendrecv")]
    if not any(_usable(m) for m in offer.media):
        raise SdpError(422, "The offer has no audio or video m-line we could receive.")
    if not sending:
        raise SdpError(422, "The offer sends no media: every audio/video m-line is recvonly or inactive.")
    offered = list(dict.fromkeys(name for m in sending for name in m.offered_codecs))
    raise SdpError(422, f"No supported codec in the offer: it offers {', '.join(offered) or 'none'}; {_WE_ACCEPT}.")


def _matching_codec(m: MediaOffer, track: TrackInfo) -> Codec | None:
    """The viewer's first codec that can carry the track (same name and clock rate).

    The parser only keeps packetization-mode=1 constrained-baseline H264, so
    any H264 the viewer offered can carry any H264 track we forward.
    """
    return next((c for c in m.codecs if c.name == track.codec_name and c.clock_rate == track.clock_rate), None)


def answer_subscribe(
    offer: Offer, tracks: list[TrackInfo]
) -> tuple[list[MediaAnswer], list[tuple[int, TrackInfo, Codec]]]:
    """Fill the viewer's receiving m-lines, in order, with the tracks it can decode.

    Each m-line takes the first not yet placed track of its kind whose codec the
    viewer offered; the answer uses the viewer's payload types. Returns the
    answers and (m-line index, track, viewer codec) per placed track.
    """
    answers: list[MediaAnswer] = []
    matches: list[tuple[int, TrackInfo, Codec]] = []
    waiting = list(tracks)
    for m in offer.media:
        found = None
        if _usable(m) and m.direction in ("recvonly", "sendrecv"):
            found = next(((t, c) for t in waiting if t.kind == m.kind and (c := _matching_codec(m, t))), None)
        if found is None:
            answers.append(_idle(m))
            continue
        track, codec = found
        waiting.remove(track)
        codec = _with_red(_with_rtx_if_nack(codec, allowed=track.send_rtx_ssrc is not None), track.red)
        answers.append(MediaAnswer(
            offer=m,
            direction="sendonly",
            codec=codec,
            extensions={uri: i for uri, i in m.extensions.items() if uri not in _NOT_DOWNSTREAM},
            send_ssrc=track.send_ssrc,
            send_rtx_ssrc=track.send_rtx_ssrc if codec.rtx_payload_type is not None else None,
            cname=track.cname,
            msid=track.msid,
        ))
        matches.append((m.index, track, codec))
    if matches:
        answers = _viewer_transport_cc(answers)
        # The codec each placed track goes out with, as answered.
        return answers, [(i, track, answers[i].codec or codec) for i, track, codec in matches]
    raise SdpError(422, _no_match_reason(offer, tracks))


def _no_match_reason(offer: Offer, tracks: list[TrackInfo]) -> str:
    receiving = [m for m in offer.media if _usable(m) and m.direction in ("recvonly", "sendrecv")]
    if not receiving:
        return "The offer receives no media: every audio/video m-line is sendonly, inactive or rejected."
    if not tracks:
        return "Nothing is being published here yet."
    problems = []
    for kind in ("audio", "video"):
        sent = list(dict.fromkeys(t.codec_name for t in tracks if t.kind == kind))
        if not sent:
            continue
        lines = [m for m in receiving if m.kind == kind]
        if not lines:
            problems.append(f"the stream has {kind} ({', '.join(sent)}) but the viewer has no {kind} m-line")
            continue
        usable = list(dict.fromkeys(c.name for m in lines for c in m.codecs))
        offered = list(dict.fromkeys(n for m in lines for n in m.offered_codecs))
        problems.append(
            f"the stream sends {kind} as {', '.join(sent)} but the viewer offered only "
            f"{', '.join(usable) or 'codecs we do not support'} (offered: {', '.join(offered) or 'none'})"
        )
    if not problems:  # tracks of one kind, viewer m-lines of the other
        problems.append("the viewer's m-lines and the published tracks have no kind in common")
    return "No track can be sent: " + "; ".join(problems) + "."
