"""Publish to the SFU over WHIP with aiortc: a media file, or a test pattern and tone.

    python examples/whip_publish.py http://127.0.0.1:8080/whip/demo [--token JWT] [--file clip.mp4]

Then open http://127.0.0.1:8080/watch.html?room=demo to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import math
import signal

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.contrib.media import MediaPlayer
from av import AudioFrame, VideoFrame


class TestPattern(VideoStreamTrack):
    """Colour bars with a moving bar, 640x360."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        bars = np.array([[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0],
                         [192, 0, 192], [192, 0, 0], [0, 0, 192]], dtype=np.uint8)
        self.base = np.repeat(np.repeat(bars[None, :, :], 360, axis=0), 640 // 7 + 1, axis=1)[:, :640]

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = self.base.copy()
        x = (self.n * 4) % 600
        image[:, x:x + 40] = 255
        self.n += 1
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0
        self.start: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        self.start = self.start or loop.time()
        await asyncio.sleep(max(0.0, self.start + self.samples / 48000 - loop.time()))
        t = (np.arange(960) + self.samples) / 48000
        frame = AudioFrame.from_ndarray((np.sin(2 * math.pi * 440 * t) * 6000).astype(np.int16)[None, :],
                                        format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.samples, fractions.Fraction(1, 48000)
        self.samples += 960
        return frame


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    parser.add_argument("--token", help="bearer token from `sfu token --room R --publish`")
    parser.add_argument("--file", help="media file to publish (looped) instead of a test pattern")
    args = parser.parse_args()

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # the SFU is ICE-lite: no STUN needed
    if args.file:
        player = MediaPlayer(args.file, loop=True)
        tracks = [t for t in (player.audio, player.video) if t is not None]
    else:
        tracks = [Tone(), TestPattern()]
    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())

    headers = {"Content-Type": "application/sdp"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(args.url, data=pc.localDescription.sdp, headers=headers) as r:
            if r.status != 201:
                raise SystemExit(f"WHIP failed: {r.status} {await r.text()}")
            location = str(r.url.join(aiohttp.client.URL(r.headers["Location"])))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
        print(f"publishing; session {location}; Ctrl-C to stop")
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            async with http.delete(location, headers=headers) as r:
                print(f"DELETE {r.status}")
            await pc.close()


if __name__ == "__main__":
    asyncio.run(main())
