"""The load generator's side of the SDP: hand-built offers, and what it needs from answers.

The load generator never runs a full WebRTC stack, so it writes its offer by
hand (what a browser would send, minus what the server ignores) and reads back
only the handful of facts its raw peers need: ICE credentials and candidate,
DTLS fingerprint and role, payload types, SSRCs. Keeping those facts in two
small dataclasses is also the seam for servers that negotiate differently
(Janus makes the offer to its subscribers): such a target builds its own
exchange from :class:`LocalPeer` and hands back a :class:`RemotePeer`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Our payload types and extension ids. WHIP/WHEP servers answer with the
# offerer's numbers, so these are also what goes on the wire.
AUDIO_PT = 111
VIDEO_PT = 96
RTX_PT = 97
AUDIO_RED_PT = 63  # RFC 2198 RED wrapping opus, Chrome's number (offered with ``red=True``)
EXT_MID_ID = 1
EXT_ABS_SEND_TIME_ID = 2
EXT_RID_ID = 3  # simulcast publishers only (RFC 8852)
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
AUDIO_MID = "0"
VIDEO_MID = "1"
CNAME = "fanout-bench"


@dataclass(frozen=True)
class LocalPeer:
    """One raw peer of the load generator, as it presents itself in SDP."""

    direction: str  # "sendonly" (publisher) | "recvonly" (viewer)
    ice_ufrag: str
    ice_pwd: str
    fingerprint_sha256: str
    port: int  # our UDP socket
    host: str = "127.0.0.1"  # its address (Janus, in its namespace, is reached over a veth)
    audio_ssrc: int = 0  # publisher only
    video_ssrc: int = 0
    rtx_ssrc: int = 0
    rids: tuple[str, ...] = ()  # a simulcast publisher's layers, lowest first (video_ssrc unused)
    red: bool = False  # also offer RFC 2198 RED wrapping opus, after it (as Chrome does)

    def offer(self) -> str:
        """A WHIP/WHEP offer: BUNDLEd opus + VP8 (with RTX), rtcp-mux, mid and abs-send-time.

        We offer ``a=setup:active`` (we are the DTLS client), which every
        server we measure accepts, and a host candidate so that full-ICE
        servers (aiortc) have a pair to check. A publisher with ``rids``
        offers rid simulcast as Chrome does (RFC 8853): the rid extension,
        ``a=rid:<id> send`` per layer, ``a=simulcast:send l;m;h``, and no
        video SSRCs (the server learns them from the rid on the packets).
        ``red``: the audio m-line also offers ``red/48000/2`` with ``a=fmtp:63 111/111``
        after opus, as Chrome does; a server that wants RED lists it first in its answer.
        """
        common = [
            f"c=IN IP4 {self.host}",
            f"a=ice-ufrag:{self.ice_ufrag}",
            f"a=ice-pwd:{self.ice_pwd}",
            f"a=fingerprint:sha-256 {self.fingerprint_sha256}",
            "a=setup:active",
            "a=rtcp-mux",
            f"a={self.direction}",
            f"a=extmap:{EXT_MID_ID} urn:ietf:params:rtp-hdrext:sdes:mid",
            f"a=extmap:{EXT_ABS_SEND_TIME_ID} http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        ]
        candidate = self._candidate()
        sending = self.direction == "sendonly"
        audio_formats = f"{AUDIO_PT} {AUDIO_RED_PT}" if self.red else f"{AUDIO_PT}"
        audio = [f"m=audio 9 UDP/TLS/RTP/SAVPF {audio_formats}", f"a=mid:{AUDIO_MID}", *common,
                 f"a=rtpmap:{AUDIO_PT} opus/48000/2", f"a=fmtp:{AUDIO_PT} minptime=10;useinbandfec=1"]
        if self.red:
            audio += [f"a=rtpmap:{AUDIO_RED_PT} red/48000/2", f"a=fmtp:{AUDIO_RED_PT} {AUDIO_PT}/{AUDIO_PT}"]
        if sending:
            audio += [f"a=msid:{CNAME} audio", f"a=ssrc:{self.audio_ssrc} cname:{CNAME}"]
        video = [f"m=video 9 UDP/TLS/RTP/SAVPF {VIDEO_PT} {RTX_PT}", f"a=mid:{VIDEO_MID}", *common,
                 f"a=rtcp-fb:{VIDEO_PT} nack", f"a=rtcp-fb:{VIDEO_PT} nack pli",
                 f"a=rtcp-fb:{VIDEO_PT} ccm fir", f"a=rtcp-fb:{VIDEO_PT} goog-remb",
                 f"a=rtpmap:{VIDEO_PT} VP8/90000", f"a=rtpmap:{RTX_PT} rtx/90000", f"a=fmtp:{RTX_PT} apt={VIDEO_PT}"]
        if sending and self.rids:
            video += [f"a=extmap:{EXT_RID_ID} {EXT_RID}", f"a=msid:{CNAME} video",
                      *(f"a=rid:{rid} send" for rid in self.rids), "a=simulcast:send " + ";".join(self.rids)]
        elif sending:
            video += [f"a=msid:{CNAME} video", f"a=ssrc-group:FID {self.video_ssrc} {self.rtx_ssrc}",
                      f"a=ssrc:{self.video_ssrc} cname:{CNAME}", f"a=ssrc:{self.rtx_ssrc} cname:{CNAME}"]
        lines = [
            "v=0",
            f"o=- {random.getrandbits(62)} 2 IN IP4 {self.host}",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {AUDIO_MID} {VIDEO_MID}",
            "a=msid-semantic: WMS *",
            *audio, *candidate,
            *video, *candidate,
        ]
        return "\r\n".join(lines) + "\r\n"

    def _candidate(self) -> list[str]:
        return [f"a=candidate:1 1 udp 2130706431 {self.host} {self.port} typ host", "a=end-of-candidates"]

    def answer(self, offer: str) -> str:
        """Our recvonly answer to a server's offer (Janus offers to its subscribers).

        Each audio/video m-line gets the offer's first non-RTX codec (RTX is
        left out: our viewers never NACK), its mid and abs-send-time
        extensions, and our ICE, DTLS (``a=setup:active``) and candidate.
        """
        sections: list[list[str]] = [[]]
        for line in offer.splitlines():
            line = line.strip()
            if line.startswith("m="):
                sections.append([])
            if line:
                sections[-1].append(line)
        mids: list[str] = []
        media: list[str] = []
        for section in sections[1:]:
            kind, _port, proto, *formats = section[0][2:].split()
            attrs = [line[2:] for line in section if line.startswith("a=")]
            mid = next((a[4:] for a in attrs if a.startswith("mid:")), str(len(mids)))
            rtpmap = {a[7:].split()[0]: a for a in attrs if a.startswith("rtpmap:")}
            pt = next((f for f in formats if f in rtpmap and " rtx/" not in rtpmap[f]), None)
            if kind not in ("audio", "video") or pt is None:
                media += [f"m={kind} 0 {proto} {formats[0] if formats else 0}", f"a=mid:{mid}"]
                continue
            mids.append(mid)
            media += [f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}", f"c=IN IP4 {self.host}", f"a=mid:{mid}",
                      f"a=ice-ufrag:{self.ice_ufrag}", f"a=ice-pwd:{self.ice_pwd}",
                      f"a=fingerprint:sha-256 {self.fingerprint_sha256}", "a=setup:active", "a=rtcp-mux",
                      "a=recvonly", "a=" + rtpmap[pt]]
            media += ["a=" + a for a in attrs if a.startswith((f"fmtp:{pt} ", f"rtcp-fb:{pt} "))]
            media += ["a=" + a for a in attrs if a.startswith("extmap:")
                      and a.endswith(("sdes:mid", "abs-send-time"))]
            media += self._candidate()
        lines = ["v=0", f"o=- {random.getrandbits(62)} 2 IN IP4 {self.host}", "s=-", "t=0 0",
                 f"a=group:BUNDLE {' '.join(mids)}", *media]
        return "\r\n".join(lines) + "\r\n"


@dataclass
class RemotePeer:
    """What a raw peer needs from the server's answer (or from a target's own negotiation)."""

    ice_ufrag: str
    ice_pwd: str
    ice_lite: bool  # False: the server also sends checks, which we must answer
    fingerprint: tuple[str, str]  # (algorithm, "AA:BB:...")
    address: tuple[str, int]  # the server's UDP candidate
    dtls_role: str  # OUR role: "client" | "server"
    audio_pt: int | None = None  # the audio codec's PT (never RED's)
    video_pt: int | None = None
    rtx_pt: int | None = None
    ssrcs: dict[str, list[int]] = field(default_factory=dict)  # kind -> SSRCs the server sends
    location: str = ""  # resource URL to DELETE (WHIP/WHEP)
    simulcast_rids: list[str] = field(default_factory=list)  # the answer's a=simulcast:recv layers
    audio_red_pt: int | None = None  # RFC 2198 RED on the audio m-line, if answered
    audio_red_first: bool = False  # ... and listed first: the server asks the publisher to send RED

    @classmethod
    def from_answer(cls, sdp: str, location: str = "") -> "RemotePeer":
        """Pick the facts out of an answer; raise ValueError if one we need is missing."""
        ufrag = pwd = setup = None
        fingerprint: tuple[str, str] | None = None
        address: tuple[str, int] | None = None
        pts: dict[str, list[int]] = {}
        rtx: int | None = None
        red: int | None = None
        ssrcs: dict[str, list[int]] = {}
        simulcast: list[str] = []
        kind = ""
        for line in sdp.splitlines():
            line = line.strip()
            if line.startswith("m="):
                parts = line[2:].split()
                kind = parts[0]
                if parts[1] != "0":
                    pts.setdefault(kind, [int(p) for p in parts[3:] if p.isdigit()])
            elif line.startswith("a=ice-ufrag:") and ufrag is None:
                ufrag = line.split(":", 1)[1]
            elif line.startswith("a=ice-pwd:") and pwd is None:
                pwd = line.split(":", 1)[1]
            elif line.startswith("a=fingerprint:") and fingerprint is None:
                algorithm, value = line.split(":", 1)[1].split()
                fingerprint = (algorithm.lower(), value.upper())
            elif line.startswith("a=setup:") and setup is None:
                setup = line.split(":", 1)[1]
            elif line.startswith("a=candidate:") and address is None:
                c = line.split(":", 1)[1].split()
                if c[2].lower() == "udp" and c[1] == "1" and "." in c[4]:
                    address = (c[4], int(c[5]))
            elif line.startswith("a=rtpmap:") and kind == "audio" and red is None \
                    and line.split(None, 1)[-1].lower().startswith("red/"):
                red = int(line[9:].split()[0])
            elif line.startswith("a=fmtp:") and "apt=" in line and kind == "video":
                rtx = int(line[7:].split()[0])
            elif line.startswith("a=simulcast:recv ") and kind == "video":
                simulcast = [alt.split(",")[0].lstrip("~") for alt in line.split(" ", 1)[1].strip().split(";")]
            elif line.startswith("a=ssrc:") and kind:
                ssrc = int(line[7:].split()[0])
                if ssrc not in ssrcs.setdefault(kind, []):
                    ssrcs[kind].append(ssrc)
        if not (ufrag and pwd and fingerprint and setup and address):
            raise ValueError("answer lacks ICE credentials, fingerprint, setup or a UDP candidate")
        audio_pts = pts.get("audio", [])
        if red not in audio_pts:
            red = None
        red_first = bool(audio_pts) and red is not None and audio_pts[0] == red
        audio_pts = [p for p in audio_pts if p != red]
        video_pts = [p for p in pts.get("video", []) if p != rtx]
        return cls(
            ice_ufrag=ufrag, ice_pwd=pwd, ice_lite="a=ice-lite" in sdp, fingerprint=fingerprint,
            address=address, dtls_role="server" if setup == "active" else "client",
            audio_pt=audio_pts[0] if audio_pts else None, video_pt=video_pts[0] if video_pts else None, rtx_pt=rtx,
            ssrcs=ssrcs, location=location, simulcast_rids=simulcast, audio_red_pt=red, audio_red_first=red_first,
        )
