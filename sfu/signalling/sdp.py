"""SDP for WHIP/WHEP: parse offers, build answers, parse trickle sdpfrags.

We write the line parser ourselves instead of calling
``aiortc.sdp.SessionDescription.parse``: that parser asserts or raises
KeyError/StopIteration/ValueError on input it does not expect (a fmtp for a PT
without rtpmap, ``a=setup:holdconn``, an odd candidate), cannot tell
"unparsable" (400) from "we cannot serve this" (422), and drops what we need
(``a=rid``, ``a=rtcp-rsize``, ``a=bundle-only``, the offered setup value).
From aiortc we only borrow the H.264 profile table, which mirrors libwebrtc and
RFC 6184 Table 5.

Every value we copy into an answer is checked here against a strict ASCII
grammar, so a hostile offer can never inject lines into our answers.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field

from aiortc.sdp import H264Profile, parse_h264_profile_level_id


class SdpError(Exception):
    """status 400 = unparsable, 422 = parsable but we cannot serve it; reason is a plain sentence for the HTTP body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
SUPPORTED_EXTENSIONS = (EXT_MID, EXT_RID, EXT_REPAIRED_RID, EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_TRANSPORT_CC)
FB_TRANSPORT_CC = "transport-cc"
SUPPORTED_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb", FB_TRANSPORT_CC)
"""Parsed from offers; whether an answer keeps transport-wide congestion control (the
extension and ``transport-cc``) is ``negotiation``'s decision: viewers only."""

PROFILE = "UDP/TLS/RTP/SAVPF"
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# (canonical name, kind, clock rate, channels in the rtpmap)
_CODECS = {"opus": ("opus", "audio", 48000, 2), "vp8": ("VP8", "video", 90000, 1), "h264": ("H264", "video", 90000, 1)}
# Digest sizes in bytes for the fingerprint algorithms we can verify (RFC 8122).
_FINGERPRINT_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64, "sha-1": 20}
# One-byte header extensions (RFC 8285) have ids 1-14; we only negotiate those.
_MAX_EXTENSION_ID = 14

# Grammar pieces (ASCII only: ``str.isdigit`` and ``\d`` would accept other scripts).
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # RFC 8866 token
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # RFC 8839 ice-char
_RE_TOKEN = re.compile(_TOKEN)
_RE_MSID = re.compile(rf"({_TOKEN})(?: ({_TOKEN}))?")
_RE_CNAME = re.compile(r"[\x21-\x7e]+")
_RE_MLINE = re.compile(r"([a-z]+) ([0-9]{1,5})(?:/[0-9]{1,5})? ([A-Za-z0-9/_.-]+)((?: [\x21-\x7e]+)+)")
_RE_RTPMAP = re.compile(r"([0-9]{1,3}) ([A-Za-z0-9_.-]+)/([0-9]{1,6})(?:/([0-9]{1,2}))?")
_RE_FMTP = re.compile(r"([0-9]{1,3})(?: ([\x20-\x7e]*))?")
_RE_RTCP_FB = re.compile(r"([0-9]{1,3}|\*) ([\x21-\x7e]+(?: +[\x21-\x7e]+)*)")
_RE_EXTMAP = re.compile(r"([0-9]{1,5})(?:/(?:sendrecv|sendonly|recvonly|inactive))? ([\x21-\x7e]+)(?: .*)?")
_RE_SSRC = re.compile(r"([0-9]{1,10}) ([A-Za-z0-9_-]+)(?::(.*))?")
_RE_SSRC_GROUP = re.compile(r"([A-Za-z0-9_-]+)((?: [0-9]{1,10})*)")
_RE_RID = re.compile(r"([A-Za-z0-9_-]{1,255}) (send|recv)(?: .*)?")
_RE_FINGERPRINT = re.compile(r"([A-Za-z0-9-]+) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*)")
_RE_CANDIDATE = re.compile(  # foundation component transport priority address port typ type [extensions]
    r"[A-Za-z0-9+/]{1,32} [0-9]{1,3} [A-Za-z]+ [0-9]{1,10} [\x21-\x7e]+ ([0-9]{1,5}) typ [a-z]+(?: [\x21-\x7e]+)*")
_RE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Codec:
    name: str  # canonical: "opus", "VP8", "H264"
    payload_type: int
    clock_rate: int
    channels: int = 1  # 2 for opus
    fmtp: str = ""  # fmtp parameters as offered, e.g. "minptime=10;useinbandfec=1"
    rtcp_fb: tuple[str, ...] = ()  # only SUPPORTED_FEEDBACK entries that were offered for this PT
    rtx_payload_type: int | None = None  # from a=fmtp:<rtx> apt=<pt>
    # RFC 2198 redundancy wrapping this codec (opus only): a=rtpmap:<red> red/48000/2 with
    # a=fmtp:<red> <pt>/<pt>. Offered, it is only kept where negotiation wants RED.
    red_payload_type: int | None = None


@dataclass
class MediaOffer:
    index: int
    mid: str  # "" when the m-line has no a=mid (only allowed on m-lines we reject)
    kind: str  # "audio" | "video" (or "application" etc., which we always reject)
    direction: str  # "sendrecv" | "sendonly" | "recvonly" | "inactive"
    codecs: list[Codec]  # supported codecs only, offer order
    extensions: dict[str, int]  # uri -> id, supported ones only
    ssrc: int | None = None
    rtx_ssrc: int | None = None  # from a=ssrc-group:FID
    cname: str | None = None
    msid: str | None = None  # "stream track" as in a=msid (or from a=ssrc msid)
    rids: list[str] = field(default_factory=list)  # a=rid:<id> send
    rejected: bool = False  # port 0 (and not bundle-only)
    # Additions beyond the brief: what a rejecting answer must echo, and what error messages quote.
    protocol: str = PROFILE
    formats: list[str] = field(default_factory=list)  # m-line formats as offered
    rtcp_rsize: bool = False
    offered_codecs: list[str] = field(default_factory=list)  # every rtpmap name except rtx, deduplicated


@dataclass
class Offer:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: tuple[str, str]  # ("sha-256", "AA:BB:...")
    setup: str  # "actpass" | "active" | "passive"
    media: list[MediaOffer]
    bundle: list[str]  # mids in a=group:BUNDLE (empty if none)


@dataclass
class MediaAnswer:
    offer: MediaOffer
    direction: str  # "recvonly" (we receive from publisher), "sendonly" (we send to viewer), "inactive"
    codec: Codec | None  # None → m-line rejected (port 0, no attributes beyond mid)
    extensions: dict[str, int]  # echoes offer's ids
    send_ssrc: int | None = None
    send_rtx_ssrc: int | None = None
    cname: str | None = None
    msid: str | None = None  # "streamid trackid"
    recv_rids: list[str] = field(default_factory=list)  # simulcast layers we accept (RFC 8853)


@dataclass
class TrickleFragment:
    ice_ufrag: str | None
    ice_pwd: str | None
    candidates: list[str]  # "candidate:" values without the prefix, as aioice's Candidate.from_sdp takes them
    end_of_candidates: bool


# --------------------------------------------------------------------------- lines


@dataclass
class _Attr:
    name: str
    value: str | None
    line_no: int


@dataclass
class _Section:
    """One m-section (or the session part) as raw lines, before interpretation."""

    line_no: int
    first: str  # the m= value (for the session: its first line)
    lines: dict[str, int] = field(default_factory=dict)  # line type -> first line number
    attrs: list[_Attr] = field(default_factory=list)

    def values(self, name: str) -> list[_Attr]:
        return [a for a in self.attrs if a.name == name]

    def has(self, name: str) -> bool:
        return any(a.name == name for a in self.attrs)


def _fail(line_no: int, what: str) -> SdpError:
    return SdpError(400, f"Line {line_no}: {what}.")


def _split_sections(text: str, max_bytes: int, what: str) -> list[_Section]:
    """Split into the session section and one section per m= line, checking only the line grammar."""
    if len(text) > max_bytes or len(text.encode("utf-8", "replace")) > max_bytes:
        raise SdpError(400, f"The {what} is larger than {max_bytes} bytes.")
    sections = [_Section(0, "")]
    for line_no, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r\t ")
        if not line:
            continue
        if _RE_CONTROL.search(line):
            raise _fail(line_no, "contains control characters")
        if len(line) < 2 or line[1] != "=" or not "a" <= line[0] <= "z":
            raise _fail(line_no, f"is not an SDP line ({line[:20]!r})")
        kind, value = line[0], line[2:]
        if not sections[0].first:
            sections[0].first = line  # the session keeps its first line: an offer must start with v=0
        if kind == "m":
            sections.append(_Section(line_no, value))
            continue
        section = sections[-1]
        section.lines.setdefault(kind, line_no)
        if kind == "a":
            name, sep, attr_value = value.partition(":")
            section.attrs.append(_Attr(name, attr_value.strip() if sep else None, line_no))
    return sections


def _value(attr: _Attr) -> str:
    if not attr.value:
        raise _fail(attr.line_no, f"a={attr.name} needs a value")
    return attr.value


def _match(pattern: re.Pattern[str], attr: _Attr) -> re.Match[str]:
    m = pattern.fullmatch(_value(attr))
    if m is None:
        raise _fail(attr.line_no, f"malformed a={attr.name}")
    return m


def _ice_credential(attr: _Attr, min_len: int) -> str:
    value = _value(attr)
    if not min_len <= len(value) <= 256 or not _ICE_CHARS.fullmatch(value):
        raise _fail(attr.line_no, f"a={attr.name} must be {min_len}-256 of A-Z a-z 0-9 + /")
    return value


# --------------------------------------------------------------------------- codecs


def _fmtp_params(fmtp: str) -> dict[str, str]:
    params = {}
    for item in fmtp.split(";"):
        key, _, value = item.partition("=")
        params[key.strip().lower()] = value.strip()
    return params


def h264_supported(fmtp: str) -> bool:
    """True for packetization-mode=1 and a constrained-baseline profile-level-id.

    Constrained baseline per RFC 6184 Table 5 (the table libwebrtc and aiortc use):
    profile_idc 0x42 with constraint_set1, 0x4D with constraint_set0, or 0x58 with
    constraint_set0 and constraint_set1, reserved bits zero. So 42e01f, 42c01f and
    4de01f pass; 42001f and 42a01f (plain baseline), 4d001f (main) and any 0x64
    (high) do not. A missing profile-level-id means baseline level 1 (RFC 6184
    8.1), so it does not pass; the level itself is not checked.
    """
    params = _fmtp_params(fmtp)
    if params.get("packetization-mode") != "1":
        return False
    profile = params.get("profile-level-id", "")
    if not re.fullmatch(r"[0-9A-Fa-f]{6}", profile):
        return False
    try:
        return parse_h264_profile_level_id(profile)[0] is H264Profile.PROFILE_CONSTRAINED_BASELINE
    except ValueError:  # unknown level or profile
        return False


def _codecs(section: _Section, kind: str, formats: list[int]) -> tuple[list[Codec], list[str]]:
    """Supported codecs in format order, and the names of everything offered (for error messages)."""
    rtpmap: dict[int, tuple[str, int, int | None]] = {}
    for attr in section.values("rtpmap"):
        m = _match(_RE_RTPMAP, attr)
        rtpmap.setdefault(int(m[1]), (m[2], int(m[3]), int(m[4]) if m[4] else None))
    fmtp: dict[int, str] = {}
    for attr in section.values("fmtp"):
        m = _match(_RE_FMTP, attr)
        fmtp.setdefault(int(m[1]), (m[2] or "").strip())
    feedback: list[tuple[str, str]] = []
    for attr in section.values("rtcp-fb"):
        m = _match(_RE_RTCP_FB, attr)
        feedback.append((m[1], " ".join(m[2].split())))
    rtx_for: dict[int, int] = {}  # apt -> first rtx PT in format order
    for pt in formats:
        name, clock, _ = rtpmap.get(pt, ("", 0, None))
        apt = _fmtp_params(fmtp.get(pt, "")).get("apt", "")
        if name.lower() == "rtx" and re.fullmatch(r"[0-9]{1,3}", apt):
            rtx_for.setdefault(int(apt), pt)
    red_for: dict[int, int] = {}  # primary PT -> first RED PT whose blocks are all that codec
    for pt in formats:
        name, clock, _ = rtpmap.get(pt, ("", 0, None))
        blocks = fmtp.get(pt, "").split("/")
        if name.lower() == "red" and kind == "audio" and all(re.fullmatch(r"[0-9]{1,3}", b) for b in blocks) \
                and len(set(blocks)) == 1:
            red_for.setdefault(int(blocks[0]), pt)

    codecs: list[Codec] = []
    offered: list[str] = []
    for pt in formats:
        if pt not in rtpmap:
            continue
        name, clock, channels = rtpmap[pt]
        if name.lower() == "rtx":
            continue
        if name not in offered:
            offered.append(name)
        spec = _CODECS.get(name.lower())
        if spec is None or spec[1] != kind or spec[2] != clock or channels not in (None, spec[3]):
            continue
        if spec[0] == "H264" and not h264_supported(fmtp.get(pt, "")):
            continue
        fbs: list[str] = []
        for fb_pt, fb in feedback:
            if fb_pt in ("*", str(pt)) and fb in SUPPORTED_FEEDBACK and fb not in fbs:
                fbs.append(fb)
        rtx = rtx_for.get(pt)
        if rtx is not None and rtpmap[rtx][1] != clock:
            rtx = None
        red = red_for.get(pt) if spec[0] == "opus" else None
        if red is not None and rtpmap[red][1] != clock:
            red = None
        codecs.append(Codec(spec[0], pt, clock, spec[3], fmtp.get(pt, ""), tuple(fbs), rtx, red))
    return codecs, offered


# --------------------------------------------------------------------------- offers


def _media(section: _Section, index: int, session_direction: str) -> MediaOffer:
    m = _RE_MLINE.fullmatch(section.first)
    if m is None:
        raise _fail(section.line_no, "malformed m= line")
    kind, port, proto, formats = m[1], int(m[2]), m[3], m[4].split()
    if port > 65535:
        raise _fail(section.line_no, "m= port is out of range")
    media = MediaOffer(index=index, mid="", kind=kind, direction=session_direction, codecs=[], extensions={},
                       rejected=port == 0 and not section.has("bundle-only"), protocol=proto, formats=formats)
    for attr in section.attrs:
        if attr.name in DIRECTIONS:
            media.direction = attr.name
    mids = section.values("mid")
    if mids:
        media.mid = _match(_RE_TOKEN, mids[0])[0]
    if kind not in ("audio", "video") or "RTP/" not in proto:
        return media  # data channels and the like: recorded so the answer can reject them in place

    if not all(re.fullmatch(r"[0-9]{1,3}", f) and int(f) <= 127 for f in formats):
        raise _fail(section.line_no, "RTP payload types must be numbers 0-127")
    media.codecs, media.offered_codecs = _codecs(section, kind, [int(f) for f in formats])
    media.rtcp_rsize = section.has("rtcp-rsize")
    seen_ids: set[int] = set()
    for attr in section.values("extmap"):
        em = _match(_RE_EXTMAP, attr)
        ext_id, uri = int(em[1]), em[2]
        if not 1 <= ext_id <= 255 or ext_id in seen_ids:
            raise _fail(attr.line_no, "extmap ids must be 1-255 and unique in an m-section")
        seen_ids.add(ext_id)
        if uri in SUPPORTED_EXTENSIONS and ext_id <= _MAX_EXTENSION_ID:
            media.extensions.setdefault(uri, ext_id)
    for attr in section.values("rid"):
        rm = _match(_RE_RID, attr)
        if rm[2] == "send" and rm[1] not in media.rids:
            media.rids.append(rm[1])
    _ssrcs(section, media)
    return media


def _ssrcs(section: _Section, media: MediaOffer) -> None:
    """Primary SSRC (first FID group, else first a=ssrc), its RTX pair, cname and msid."""
    info: dict[int, dict[str, str]] = {}
    for attr in section.values("ssrc"):
        m = _match(_RE_SSRC, attr)
        ssrc = int(m[1])
        if ssrc > 0xFFFFFFFF:
            raise _fail(attr.line_no, "SSRC out of range")
        info.setdefault(ssrc, {}).setdefault(m[2].lower(), (m[3] or "").strip())
    for attr in section.values("ssrc-group"):
        m = _match(_RE_SSRC_GROUP, attr)
        ssrcs = [int(s) for s in m[2].split()]
        if any(s > 0xFFFFFFFF for s in ssrcs):
            raise _fail(attr.line_no, "SSRC out of range")
        if m[1] == "FID" and len(ssrcs) == 2 and media.ssrc is None:
            media.ssrc, media.rtx_ssrc = ssrcs
    if media.ssrc is None and info:
        media.ssrc = next(iter(info))
    attrs = info.get(media.ssrc, {}) if media.ssrc is not None else {}
    if attrs.get("cname"):
        if not _RE_CNAME.fullmatch(attrs["cname"]):
            raise _fail(section.line_no, "a=ssrc cname has invalid characters")
        media.cname = attrs["cname"]
    msid = next((a.value for a in section.values("msid")), None) or attrs.get("msid")
    if msid:
        m = _RE_MSID.fullmatch(" ".join(msid.split()))
        if m is None:
            raise _fail(section.line_no, "malformed msid in this m-section")
        media.msid = m[0]


def _fingerprint(attrs: list[_Attr]) -> tuple[str, str] | None:
    """Prefer sha-256; otherwise the first fingerprint with an algorithm we can verify."""
    found: list[tuple[str, str]] = []
    for attr in attrs:
        m = _match(_RE_FINGERPRINT, attr)
        algorithm, value = m[1].lower(), m[2].upper()
        size = _FINGERPRINT_BYTES.get(algorithm)
        if size is None:
            continue
        if len(value) != 3 * size - 1:
            raise _fail(attr.line_no, f"a fingerprint {algorithm} has {size} bytes")
        found.append((algorithm, value))
    found.sort(key=lambda fp: fp[0] != "sha-256")
    return found[0] if found else None


def parse_offer(text: str, *, max_bytes: int = 32768) -> Offer:
    """Parse a WHIP/WHEP offer; raise SdpError(400) if it is not SDP, SdpError(422) if we cannot serve it.

    "Used" m-lines are the non-rejected audio/video ones: only those must be
    UDP/TLS/RTP/SAVPF with rtcp-mux and a mid, and share one BUNDLE group.
    Data channels and other kinds are kept (so the answer can reject them in
    place) but never served.
    """
    sections = _split_sections(text, max_bytes, "offer")
    session = sections[0]
    if session.first != "v=0":
        raise SdpError(400, "Not an SDP offer: it must begin with v=0.")
    for kind in "ost":
        if kind not in session.lines:
            raise SdpError(400, f"Not an SDP offer: the session has no {kind}= line.")
    if len(sections) == 1:
        raise SdpError(422, "The offer has no m= lines.")

    session_direction = "sendrecv"
    for attr in session.attrs:
        if attr.name in DIRECTIONS:
            session_direction = attr.name
    media = [_media(s, i, session_direction) for i, s in enumerate(sections[1:])]
    mids = [m.mid for m in media if m.mid]
    if len(mids) != len(set(mids)):
        raise SdpError(400, "Two m-lines have the same mid.")

    used = [m for m in media if not m.rejected and m.kind in ("audio", "video")]
    for m in used:
        what = f"The {m.kind} m-line #{m.index}"
        if m.protocol != PROFILE:
            raise SdpError(422, f"{what} uses {m.protocol}; we only serve {PROFILE}.")
        if not sections[m.index + 1].has("rtcp-mux"):
            raise SdpError(422, f"{what} does not use rtcp-mux, which we require.")
        if not m.mid:
            raise SdpError(422, f"{what} has no a=mid, which BUNDLE requires.")

    groups = [a for a in session.values("group") if (a.value or "").split()[:1] == ["BUNDLE"]]
    bundles = [(a.value or "").split()[1:] for a in groups]
    bundle = next((b for b in bundles if used and used[0].mid in b), bundles[0] if bundles else [])
    if len(used) > 1 and not all(m.mid in bundle for m in used):
        raise SdpError(422, "Several m-lines are used but they are not all in one BUNDLE group; "
                            "we serve only bundled media.")

    transport = next((m for m in media if not m.rejected), None)
    if transport is None:
        raise SdpError(422, "Every m-line in the offer is rejected (port 0).")
    section = sections[transport.index + 1]

    def pick(name: str) -> list[_Attr]:
        return section.values(name) or session.values(name)

    ufrag, pwd = pick("ice-ufrag"), pick("ice-pwd")
    if not ufrag or not pwd:
        raise SdpError(422, "The offer has no a=ice-ufrag and a=ice-pwd.")
    fingerprint = _fingerprint(pick("fingerprint"))
    if fingerprint is None:
        raise SdpError(422, "The offer has no a=fingerprint with sha-256, sha-384, sha-512 or sha-1.")
    setup = pick("setup")
    if not setup:
        raise SdpError(422, "The offer has no a=setup.")
    setup_value = _value(setup[0])
    if setup_value == "holdconn":
        raise SdpError(422, "The offer says a=setup:holdconn; we need actpass, active or passive.")
    if setup_value not in ("actpass", "active", "passive"):
        raise _fail(setup[0].line_no, "a=setup must be actpass, active, passive or holdconn")
    return Offer(
        ice_ufrag=_ice_credential(ufrag[0], 4),
        ice_pwd=_ice_credential(pwd[0], 22),
        fingerprint=fingerprint,
        setup=setup_value,
        media=media,
        bundle=bundle,
    )


# --------------------------------------------------------------------------- answers


def answer_setup(offer_setup: str) -> str:
    """Our a=setup: passive (we are the DTLS server) unless the offerer insists on being passive."""
    return "active" if offer_setup == "passive" else "passive"


def _codec_lines(codec: Codec) -> list[str]:
    pt = codec.payload_type
    rtpmap = f"{codec.name}/{codec.clock_rate}" + (f"/{codec.channels}" if codec.name == "opus" else "")
    lines = []
    if codec.red_payload_type is not None:
        # Listed first: a publisher sends its first answered codec, so this asks for RED.
        lines.append(f"a=rtpmap:{codec.red_payload_type} red/{codec.clock_rate}/{codec.channels}")
        lines.append(f"a=fmtp:{codec.red_payload_type} {pt}/{pt}")
    lines.append(f"a=rtpmap:{pt} {rtpmap}")
    lines += [f"a=rtcp-fb:{pt} {fb}" for fb in codec.rtcp_fb if fb in SUPPORTED_FEEDBACK]
    if codec.fmtp:
        lines.append(f"a=fmtp:{pt} {codec.fmtp}")
    if codec.rtx_payload_type is not None:
        lines.append(f"a=rtpmap:{codec.rtx_payload_type} rtx/{codec.clock_rate}")
        lines.append(f"a=fmtp:{codec.rtx_payload_type} apt={pt}")
    return lines


def _ssrc_lines(answer: MediaAnswer) -> list[str]:
    if answer.send_ssrc is None:
        return []
    if answer.cname is None or not _RE_CNAME.fullmatch(answer.cname):
        raise ValueError("a sending m-line needs a printable cname")
    if answer.msid is not None and not _RE_MSID.fullmatch(answer.msid):
        raise ValueError(f"bad msid {answer.msid!r}")
    ssrcs = [answer.send_ssrc]
    lines = []
    if answer.send_rtx_ssrc is not None and answer.codec is not None and answer.codec.rtx_payload_type is not None:
        ssrcs.append(answer.send_rtx_ssrc)
        lines.append(f"a=ssrc-group:FID {answer.send_ssrc} {answer.send_rtx_ssrc}")
    for ssrc in ssrcs:
        lines.append(f"a=ssrc:{ssrc} cname:{answer.cname}")
        if answer.msid:
            lines.append(f"a=ssrc:{ssrc} msid:{answer.msid}")
    if answer.msid:
        lines.append(f"a=msid:{answer.msid}")
    return lines


_ANSWERABLE = {"recvonly": ("sendonly", "sendrecv"), "sendonly": ("recvonly", "sendrecv"), "inactive": DIRECTIONS}


def build_answer(offer: Offer, media: list[MediaAnswer], *, ice_ufrag: str, ice_pwd: str,
                 fingerprint_sha256: str, setup: str, candidate_host: str, candidate_port: int,
                 session_id: int | None = None) -> str:
    """Write our ice-lite answer, one m-line per offered m-line in offer order.

    Raises ValueError for caller mistakes (answers not in offer order, a setup
    or direction the offer does not allow, malformed credentials); those are
    bugs on our side, not the client's, so they are not SdpErrors.
    """
    if [a.offer.index for a in media] != list(range(len(offer.media))):
        raise ValueError("need exactly one MediaAnswer per offered m-line, in offer order")
    if setup not in ("active", "passive") or (setup, offer.setup) in (("active", "active"), ("passive", "passive")):
        raise ValueError(f"a=setup:{setup} is not a valid answer to a=setup:{offer.setup}")
    if not (_ICE_CHARS.fullmatch(ice_ufrag) and 4 <= len(ice_ufrag) <= 256 and _ICE_CHARS.fullmatch(ice_pwd)
            and 22 <= len(ice_pwd) <= 256):
        raise ValueError("ICE credentials must be ice-chars: ufrag 4-256, pwd 22-256")
    if not re.fullmatch(r"[0-9A-F]{2}(?::[0-9A-F]{2}){31}", fingerprint_sha256):
        raise ValueError("fingerprint_sha256 must be 32 upper-case hex bytes separated by colons")
    host = ipaddress.ip_address(candidate_host)  # raises ValueError on hostnames and garbage
    if not 1 <= candidate_port <= 65535:
        raise ValueError("candidate_port out of range")

    accepted = [a for a in media if a.codec is not None]
    lines = [
        "v=0",
        f"o=- {secrets.randbits(62) if session_id is None else session_id} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=ice-lite",
    ]
    if accepted:
        lines.append("a=group:BUNDLE " + " ".join(a.offer.mid for a in accepted))
    lines.append("a=msid-semantic: WMS *")
    for answer in media:
        m = answer.offer
        codec = answer.codec
        if codec is None:
            lines += [f"m={m.kind} 0 {m.protocol} {m.formats[0]}", "c=IN IP4 0.0.0.0"]
            lines += [f"a=mid:{m.mid}"] if m.mid else []
            continue
        if answer.direction not in _ANSWERABLE or m.direction not in _ANSWERABLE[answer.direction]:
            raise ValueError(f"cannot answer {m.direction} with {answer.direction} on m-line #{m.index}")
        if codec.payload_type not in [c.payload_type for c in m.codecs]:
            raise ValueError(f"codec {codec.name}/{codec.payload_type} was not offered on m-line #{m.index}")
        pts = ([codec.red_payload_type] if codec.red_payload_type is not None else []) + [codec.payload_type] \
            + ([codec.rtx_payload_type] if codec.rtx_payload_type is not None else [])
        lines += [
            f"m={m.kind} 9 {PROFILE} {' '.join(map(str, pts))}",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{m.mid}",
            f"a=ice-ufrag:{ice_ufrag}",
            f"a=ice-pwd:{ice_pwd}",
            f"a=fingerprint:sha-256 {fingerprint_sha256}",
            f"a=setup:{setup}",
            "a=rtcp-mux",
        ]
        lines += ["a=rtcp-rsize"] if m.rtcp_rsize else []
        lines.append(f"a={answer.direction}")
        lines += _codec_lines(codec)
        for uri, ext_id in answer.extensions.items():
            if uri in SUPPORTED_EXTENSIONS and m.extensions.get(uri) == ext_id:
                lines.append(f"a=extmap:{ext_id} {uri}")
        lines += _ssrc_lines(answer)
        if answer.recv_rids and answer.direction == "recvonly":
            lines += [f"a=rid:{rid} recv" for rid in answer.recv_rids]
            lines.append("a=simulcast:recv " + ";".join(answer.recv_rids))
        lines += [f"a=candidate:1 1 udp 2130706431 {host} {candidate_port} typ host", "a=end-of-candidates"]
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------------- trickle


def parse_sdpfrag(text: str, *, max_bytes: int = 16384) -> TrickleFragment:
    """Parse an RFC 8840 application/trickle-ice-sdpfrag body (WHIP/WHEP PATCH).

    Credentials may sit at session or media level; candidates from every
    m-section are collected (all are bundled on one transport). An empty body
    yields an empty fragment.
    """
    sections = _split_sections(text, max_bytes, "sdpfrag")
    fragment = TrickleFragment(None, None, [], False)
    for section in sections:
        for attr in section.attrs:
            if attr.name in ("ice-ufrag", "ice-pwd"):
                value = _ice_credential(attr, 4 if attr.name == "ice-ufrag" else 22)
                slot = "ice_ufrag" if attr.name == "ice-ufrag" else "ice_pwd"
                if getattr(fragment, slot) not in (None, value):
                    raise _fail(attr.line_no, f"a second, different a={attr.name}")
                setattr(fragment, slot, value)
            elif attr.name == "candidate":
                m = _match(_RE_CANDIDATE, attr)
                if int(m[1]) > 65535:
                    raise _fail(attr.line_no, "candidate port out of range")
                fragment.candidates.append(_value(attr))
            elif attr.name == "end-of-candidates":
                fragment.end_of_candidates = True
    return fragment
