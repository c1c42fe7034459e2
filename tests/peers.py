"""Real WebRTC peers for tests: aiortc publishers and viewers speaking WHIP/WHEP."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import time
from dataclasses import dataclass, field

import aiohttp
import aioice.ice
import numpy as np
from aiortc import (
    MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

# Gather on loopback only: the server's candidate is 127.0.0.1, and tests must
# never put traffic on any other interface.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

VIDEO_WIDTH, VIDEO_HEIGHT = 320, 240


def new_peer_connection() -> RTCPeerConnection:
    """No ICE servers (nothing leaves the machine), and max-bundle: with aiortc's default
    ("balanced") an offer with audio and several video m-lines starts one transport per
    kind, and its receivers stay registered on the video one after our BUNDLE answer
    moves everything to the first: packets of every video m-line then go to one decoder
    (or none). The server bundles everything anyway."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


class MovingSquareTrack(VideoStreamTrack):
    """Real moving content: a bright square sliding over a gradient, so every frame differs."""

    def __init__(self, width: int = VIDEO_WIDTH, height: int = VIDEO_HEIGHT) -> None:
        super().__init__()
        self.width, self.height = width, height
        y = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
        self._background = np.repeat(np.repeat(y, width, axis=1)[:, :, None], 3, axis=2)
        self.frames = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = self._background.copy()
        x = (self.frames * 7) % max(1, self.width - 40)
        image[self.height // 3: self.height // 3 + 40, x:x + 40] = (255, 40, 40)
        self.frames += 1
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, amplitude: int = 8000) -> None:
        super().__init__()
        self.amplitude = amplitude  # 0: silence (-127 dBov); change it to start or stop "speaking"
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        rate, n = 48000, 960
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._samples / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(n) + self._samples) / rate
        data = (np.sin(2 * math.pi * 440 * t) * self.amplitude).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, rate)
        self._samples += n
        return frame


def absolute(base_url: str, url: str) -> str:
    """A resource or events URL from a response: relative to the server, or (a cluster) absolute."""
    return url if url.startswith(("http://", "https://")) else base_url + url


async def _post(base_url: str, path: str, sdp: str, token: str | None) -> tuple[int, str, dict[str, str]]:
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(base_url + path, data=sdp, headers=headers) as r:
            return r.status, await r.text(), dict(r.headers)


class WhipError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text}")
        self.status = status
        self.text = text


@dataclass
class Publisher:
    pc: RTCPeerConnection
    location: str
    base_url: str
    video: MovingSquareTrack | None
    audio: ToneTrack | None = None

    async def delete(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(absolute(self.base_url, self.location)) as r:
                return r.status

    async def close(self) -> None:
        await self.pc.close()


async def publish(base_url: str, room: str, *, video: bool = True, audio: bool = True,
                  token: str | None = None, size: tuple[int, int] = (VIDEO_WIDTH, VIDEO_HEIGHT),
                  amplitude: int = 8000, query: str = "", tracks: list[MediaStreamTrack] | None = None
                  ) -> Publisher:
    """A WHIP publisher of a moving square and a tone (or of ``tracks``, audio then video)."""
    pc = new_peer_connection()
    track = None
    tone = None
    if tracks is not None:
        for t in tracks:
            pc.addTransceiver(t, direction="sendonly")
    else:
        if audio:
            tone = ToneTrack(amplitude)
            pc.addTransceiver(tone, direction="sendonly")
        if video:
            track = MovingSquareTrack(*size)
            pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    path = f"/whip/{room}" + (f"?{query}" if query else "")
    status, text, headers = await _post(base_url, path, pc.localDescription.sdp, token)
    if status != 201:
        await pc.close()
        raise WhipError(status, text)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return Publisher(pc, headers["Location"], base_url, track, tone)


@dataclass
class Viewer:
    pc: RTCPeerConnection
    location: str
    base_url: str
    frame_sizes: list[tuple[int, int]] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)
    audio_frames: int = 0
    ended: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Following the session's server-sent events (``watch(..., follow=True)``):
    events: list[tuple[float, str, dict]] = field(default_factory=list)
    moves: list[tuple[float, float]] = field(default_factory=list)  # (reconnect asked, new session's first frame)
    token: str | None = None
    query: str = ""
    room: str = ""
    video: bool = True
    frames_by_pc: dict[int, int] = field(default_factory=dict)  # id(pc) -> video frames it decoded
    frames_by_track: dict[int, int] = field(default_factory=dict)  # id(receiver track) -> frames, both kinds

    @property
    def video_frames(self) -> int:
        return len(self.frame_sizes)

    async def wait_frames(self, count: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.video_frames < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.video_frames} video frames after {timeout_s} s")
            await asyncio.sleep(0.05)

    async def delete(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(absolute(self.base_url, self.location)) as r:
                return r.status

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.pc.close()

    def longest_gap(self, since: float) -> float:
        times = [t for t in sorted(self.frame_times) if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))

    def count_frames(self, pc: RTCPeerConnection) -> None:
        """Decode every track ``pc`` receives, counting its frames into this viewer."""

        async def consume(track: MediaStreamTrack) -> None:
            try:
                while True:
                    frame = await track.recv()
                    self.frames_by_track[id(track)] = self.frames_by_track.get(id(track), 0) + 1
                    if track.kind == "video":
                        self.frame_sizes.append((frame.width, frame.height))
                        self.frame_times.append(time.monotonic())
                        self.frames_by_pc[id(pc)] = self.frames_by_pc.get(id(pc), 0) + 1
                    else:
                        self.audio_frames += 1
            except MediaStreamError:
                self.ended[track.kind].set()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.ended[track.kind] = asyncio.Event()
            self.tasks.append(asyncio.ensure_future(consume(track)))

    async def _connect(self, path: str) -> tuple[RTCPeerConnection, str, str]:
        """One WHEP session whose frames count into this viewer; (pc, location, Link header)."""
        pc = new_peer_connection()
        pc.addTransceiver("audio", direction="recvonly")
        if self.video:
            pc.addTransceiver("video", direction="recvonly")

        self.count_frames(pc)
        await pc.setLocalDescription(await pc.createOffer())
        status, text, headers = await _post(self.base_url, path, pc.localDescription.sdp, self.token)
        if status != 201:
            await pc.close()
            raise WhipError(status, text)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        return pc, headers["Location"], headers.get("Link", "")

    async def _follow(self, link: str) -> None:
        """Subscribe to the session's events; on ``reconnect``, move make-before-break."""
        url = link.split(">", 1)[0].lstrip("<")
        async with aiohttp.ClientSession() as http:
            async with http.post(absolute(self.base_url, url), json=["reconnect", "active", "inactive"]) as r:
                assert r.status == 201, await r.text()
                stream = r.headers["Location"]
            async with http.get(absolute(self.base_url, stream), timeout=aiohttp.ClientTimeout(total=None)) as r:
                name = None
                async for raw in r.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event:"):
                        name = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and name:
                        data = json.loads(line.split(":", 1)[1])
                        self.events.append((time.monotonic(), name, data))
                        if name == "reconnect":
                            self.tasks.append(asyncio.ensure_future(self._move(data["url"])))
                            return  # the new session has its own stream

    async def _move(self, url: str) -> None:
        asked = time.monotonic()
        old_pc, old_location = self.pc, self.location
        path = url + (f"?{self.query}" if self.query else "")
        for attempt in range(20):
            try:
                pc, location, link = await self._connect(path)
                break
            except WhipError as exc:
                if exc.status not in (409, 503) or attempt == 19:
                    raise
                await asyncio.sleep(0.25)
        self.pc, self.location = pc, location
        if link:
            self.tasks.append(asyncio.ensure_future(self._follow(link)))
        # The old session may still play (a draining shard): keep it until the new one shows a frame.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.frames_by_pc.get(id(pc)):
            await asyncio.sleep(0.02)
        self.moves.append((asked, time.monotonic()))
        try:
            await self.delete_location(old_location)
        finally:
            await old_pc.close()

    async def delete_location(self, location: str) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(absolute(self.base_url, location)) as r:
                return r.status


async def watch(base_url: str, room: str, *, token: str | None = None, query: str = "",
                video: bool = True, follow: bool = False) -> Viewer:
    """A WHEP viewer; ``follow``: listen to the session's events and move when told to."""
    viewer = Viewer(None, "", base_url, token=token, query=query, room=room, video=video)  # type: ignore[arg-type]
    path = f"/whep/{room}" + (f"?{query}" if query else "")
    viewer.pc, viewer.location, link = await viewer._connect(path)
    if follow and link:
        viewer.tasks.append(asyncio.ensure_future(viewer._follow(link)))
    return viewer


class RawPeer:
    """A hand-made WebRTC peer: raw UDP socket, our own STUN check and DTLS, libsrtp keys.

    It takes the SDP of a real aiortc offer and swaps in its own ICE credentials,
    certificate fingerprint and DTLS role, so the test controls every datagram.
    """

    def __init__(self, rtc_port: int, *, setup: str = "active", srtp_profiles: str | None = None) -> None:
        import socket

        from sfu.shard.dtls import DtlsCertificate

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.server = ("127.0.0.1", rtc_port)
        self.cert = DtlsCertificate.generate()
        self.setup = setup
        self.srtp_profiles = srtp_profiles
        self.ufrag, self.pwd = "rawp", "rawpeerrawpeerrawpeer00"
        self.srtp = None
        self.dtls = None
        self.ssrcs: list[int] = []
        self.media_ssrc: dict[str, int] = {}  # kind -> first (non-RTX) SSRC of its m-line
        self.location = ""
        self.answer = ""
        self.offer_filter = lambda sdp: sdp  # tests reshape the offer (e.g. into simulcast)

    async def join(self, base_url: str, room: str, *, kind: str = "whip") -> None:
        pc = new_peer_connection()
        direction = "sendonly" if kind == "whip" else "recvonly"
        pc.addTransceiver("audio", direction=direction)
        pc.addTransceiver("video", direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        await pc.close()
        offer = self.offer_filter(self.own_offer(offer))
        status, self.answer, headers = await _post(base_url, f"/{kind}/{room}", offer, None)
        if status != 201:
            raise WhipError(status, self.answer)
        self.location = headers["Location"]
        await asyncio.to_thread(self.connect)

    def own_offer(self, template: str) -> str:
        """A real offer with our ICE credentials, certificate and DTLS role swapped in.

        Notes the SSRCs it announces (``ssrcs``; ``media_ssrc`` per kind).
        """
        lines = []
        kind_now = ""
        for line in template.splitlines():
            if line.startswith("m="):
                kind_now = line[2:].split()[0]
            if line.startswith("a=ice-ufrag:"):
                line = f"a=ice-ufrag:{self.ufrag}"
            elif line.startswith("a=ice-pwd:"):
                line = f"a=ice-pwd:{self.pwd}"
            elif line.startswith("a=fingerprint:"):
                line = f"a=fingerprint:sha-256 {self.cert.fingerprint_sha256}"
            elif line.startswith("a=setup:"):
                line = f"a=setup:{self.setup}"
            elif line.startswith("a=ssrc:") and " cname:" in line:
                self.ssrcs.append(int(line.split()[0].split(":")[1]))
                self.media_ssrc.setdefault(kind_now, self.ssrcs[-1])
            lines.append(line)
        return "\r\n".join(lines) + "\r\n"

    def check(self) -> None:
        """One ICE connectivity check (USE-CANDIDATE), as a controlling agent sends it."""
        from aioice import stun

        server_ufrag = self.answer.split("a=ice-ufrag:")[1].split()[0]
        server_pwd = self.answer.split("a=ice-pwd:")[1].split()[0]
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{server_ufrag}:{self.ufrag}"
        request.attributes["PRIORITY"] = 1
        request.attributes["ICE-CONTROLLING"] = 1
        request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(server_pwd.encode())
        self.sock.sendto(bytes(request), self.server)

    def connect(self) -> None:
        from aioice import stun

        from sfu.shard.dtls import DtlsEndpoint
        from sfu.shard.srtp import SrtpSession

        self.check()
        fingerprint = self.answer.split("a=fingerprint:sha-256 ")[1].split()[0]
        context = None
        if self.srtp_profiles:
            context = self.cert.context()
            context.set_tlsext_use_srtp(self.srtp_profiles.encode())
        role = "client" if self.setup == "active" else "server"
        self.dtls = DtlsEndpoint(self.cert, role, ("sha-256", fingerprint), context)
        for d in self.dtls.start():
            self.sock.sendto(d, self.server)
        while self.dtls.state in ("new", "connecting"):
            data = self.sock.recv(1500)
            if data[0] < 4:
                response = stun.parse_message(data)
                assert response.message_class == stun.Class.RESPONSE
                assert response.attributes["XOR-MAPPED-ADDRESS"] == self.sock.getsockname()
            elif 20 <= data[0] < 64:
                for d in self.dtls.receive(data):
                    self.sock.sendto(d, self.server)
        assert self.dtls.state == "connected", self.dtls.error
        self.srtp = SrtpSession(self.dtls.srtp_keys)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv_rtcp(self, timeout_s: float = 3.0) -> list:
        """Decrypted RTCP packets received within the timeout (RTP is ignored)."""
        import socket
        import time as _time

        from aiortc.rtp import RtcpPacket

        packets = []
        deadline = _time.monotonic() + timeout_s
        while _time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - _time.monotonic()))
            try:
                data = self.sock.recv(2048)
            except socket.timeout:
                break
            if 128 <= data[0] < 192 and 192 <= data[1] <= 223:
                packets.extend(RtcpPacket.parse(self.srtp.unprotect_rtcp(data)))
                if packets:
                    break
        return packets

    def recv_rtp(self, timeout_s: float = 1.0) -> list[tuple[int, int, bytes]]:
        """(ssrc, seq, payload) of every RTP packet received within the timeout, decrypted."""
        import socket
        import time as _time

        packets = []
        deadline = _time.monotonic() + timeout_s
        while True:
            left = deadline - _time.monotonic()
            if left <= 0:
                return packets
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                return packets
            if 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
                plain = self.srtp.unprotect(data)
                off = 12 + 4 * (plain[0] & 0x0F)
                if plain[0] & 0x10:
                    off += 4 + 4 * int.from_bytes(plain[off + 2:off + 4], "big")
                packets.append((int.from_bytes(plain[8:12], "big"), int.from_bytes(plain[2:4], "big"), plain[off:]))

    def close(self) -> None:
        self.sock.close()


class RoomClient:
    """A participant of the room WebSocket API (``/ws/{room}``), media through aiortc."""

    def __init__(self, base_url: str, room: str) -> None:
        self.url = base_url.replace("http://", "ws://") + f"/ws/{room}"
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[dict] = []
        self._replies: dict[int, asyncio.Future[dict]] = {}
        self._ids = 0
        self._reader: asyncio.Task[None] | None = None
        self.pcs: list[RTCPeerConnection] = []
        self.participant = ""
        self.viewer: Viewer | None = None  # frames of what this participant subscribed to

    async def connect(self) -> None:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            fut = self._replies.pop(data.get("id"), None) if "id" in data else None
            if fut is not None and not fut.done():
                fut.set_result(data)
            else:
                self.events.append(data)

    async def request(self, message: dict, timeout_s: float = 10.0) -> dict:
        assert self.ws is not None
        self._ids += 1
        fut = asyncio.get_running_loop().create_future()
        self._replies[self._ids] = fut
        await self.ws.send_str(json.dumps({**message, "id": self._ids}))
        return await asyncio.wait_for(fut, timeout_s)

    async def join(self, name: str = "", token: str | None = None) -> dict:
        await self.connect()
        message: dict = {"type": "join", "name": name}
        if token:
            message["token"] = token
        reply = await self.request(message)
        self.participant = reply.get("participant", "")
        return reply

    async def publish(self, *, size: tuple[int, int] = (VIDEO_WIDTH, VIDEO_HEIGHT), amplitude: int = 8000
                      ) -> tuple[dict, ToneTrack]:
        pc = new_peer_connection()
        tone = ToneTrack(amplitude)
        pc.addTransceiver(tone, direction="sendonly")
        pc.addTransceiver(MovingSquareTrack(*size), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self.request({"type": "publish", "sdp": pc.localDescription.sdp})
        if reply["type"] == "published":
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        self.pcs.append(pc)
        return reply, tone

    async def subscribe(self, *, audio: int = 1, video: int = 1, **options: object) -> dict:
        viewer = self.viewer or Viewer(None, "", "")  # type: ignore[arg-type]
        self.viewer = viewer
        pc = new_peer_connection()
        for _ in range(audio):
            pc.addTransceiver("audio", direction="recvonly")
        for _ in range(video):
            pc.addTransceiver("video", direction="recvonly")

        viewer.count_frames(pc)

        await pc.setLocalDescription(await pc.createOffer())
        reply = await self.request({"type": "subscribe", "sdp": pc.localDescription.sdp, **options})
        if reply["type"] == "subscribed":
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        self.pcs.append(pc)
        return reply

    def frames_by_mid(self, pc: RTCPeerConnection) -> dict[str, int]:
        """Frames decoded per m-line of one of this participant's subscriptions."""
        assert self.viewer is not None
        return {t.mid: self.viewer.frames_by_track.get(id(t.receiver.track), 0)
                for t in pc.getTransceivers() if t.mid is not None}

    async def wait_event(self, kind: str, timeout_s: float = 10.0, **match: object) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events:
                if event.get("type") == kind and all(event.get(k) == v for k, v in match.items()):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} event {match} in {timeout_s} s; got {self.events}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.viewer is not None:
            for t in self.viewer.tasks:
                t.cancel()
        for pc in self.pcs:
            await pc.close()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.http is not None:
            await self.http.close()
