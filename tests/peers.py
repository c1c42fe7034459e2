"""Real WebRTC peers for tests: aiortc publishers and viewers speaking WHIP/WHEP."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from dataclasses import dataclass, field

import aiohttp
import aioice.ice
import numpy as np
from aiortc import (
    MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

# Gather on loopback only: the server's candidate is 127.0.0.1, and tests must
# never put traffic on any other interface.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

VIDEO_WIDTH, VIDEO_HEIGHT = 320, 240


def new_peer_connection() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


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

    def __init__(self) -> None:
        super().__init__()
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
        data = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, rate)
        self._samples += n
        return frame


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

    async def delete(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(self.base_url + self.location) as r:
                return r.status

    async def close(self) -> None:
        await self.pc.close()


async def publish(base_url: str, room: str, *, video: bool = True, audio: bool = True,
                  token: str | None = None, size: tuple[int, int] = (VIDEO_WIDTH, VIDEO_HEIGHT)) -> Publisher:
    pc = new_peer_connection()
    track = None
    if audio:
        pc.addTransceiver(ToneTrack(), direction="sendonly")
    if video:
        track = MovingSquareTrack(*size)
        pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    status, text, headers = await _post(base_url, f"/whip/{room}", pc.localDescription.sdp, token)
    if status != 201:
        await pc.close()
        raise WhipError(status, text)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return Publisher(pc, headers["Location"], base_url, track)


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
            async with http.delete(self.base_url + self.location) as r:
                return r.status

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.pc.close()


async def watch(base_url: str, room: str, *, token: str | None = None) -> Viewer:
    pc = new_peer_connection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    viewer = Viewer(pc, "", base_url)

    async def consume(track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    viewer.frame_sizes.append((frame.width, frame.height))
                    viewer.frame_times.append(time.monotonic())
                else:
                    viewer.audio_frames += 1
        except MediaStreamError:
            viewer.ended[track.kind].set()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        viewer.ended[track.kind] = asyncio.Event()
        viewer.tasks.append(asyncio.ensure_future(consume(track)))

    await pc.setLocalDescription(await pc.createOffer())
    status, text, headers = await _post(base_url, f"/whep/{room}", pc.localDescription.sdp, token)
    if status != 201:
        await pc.close()
        raise WhipError(status, text)
    viewer.location = headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return viewer
