"""Media whose events can be found again in a recording: a screen that flashes white and a
tone that beeps at the same moments (tracks for aiortc), and the analysis of a file.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc import MediaStreamTrack, VideoStreamTrack

FLASH_PERIOD_S = 1.5
FLASH_S = 0.2


def flashing(t: float) -> bool:
    return t > 0.5 and (t % FLASH_PERIOD_S) < FLASH_S


class FlashTrack(VideoStreamTrack):
    """Dark frames, white while ``flashing``, by the shared clock ``start``."""

    def __init__(self, start: float, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.start = start
        self.dark = np.full((height, width, 3), 16, dtype=np.uint8)
        self.white = np.full((height, width, 3), 235, dtype=np.uint8)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = self.white if flashing(time.monotonic() - self.start) else self.dark
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class BeepTrack(MediaStreamTrack):
    """Silence, a 1 kHz beep while ``flashing``, in real-time 20 ms frames."""

    kind = "audio"

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start
        self.samples = 0
        self.began: float | None = None

    async def recv(self) -> av.AudioFrame:
        rate, n = 48000, 960
        if self.began is None:
            self.began = time.monotonic()
        wait = self.began + self.samples / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.monotonic() - self.start
        t = now + np.arange(n) / rate
        on = np.array([flashing(x) for x in t])
        data = (np.sin(2 * math.pi * 1000 * t) * 12000 * on).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, rate)
        self.samples += n
        return frame


def onsets(times: list[float], on: list[bool]) -> list[float]:
    return [t for i, (t, o) in enumerate(zip(times, on)) if o and (i == 0 or not on[i - 1])]


def analyse(path: str) -> dict:
    """Flash and beep onsets (seconds in the file), duration, and frames decoded."""
    container = av.open(path)
    video_t, video_on = [], []
    for frame in container.decode(video=0):
        luma = frame.to_ndarray(format="gray").mean()
        video_t.append(float(frame.time))
        video_on.append(luma > 128)
    container.close()
    container = av.open(path)
    audio_t, audio_on = [], []
    for frame in container.decode(audio=0):
        samples = frame.to_ndarray().astype(np.float32)
        samples = samples.reshape(-1) if samples.ndim == 1 else samples[0]
        step = frame.sample_rate // 200  # 5 ms windows
        for k in range(0, len(samples) - step + 1, step):
            audio_t.append(float(frame.time) + k / frame.sample_rate)
            audio_on.append(float(np.sqrt(np.mean(samples[k:k + step] ** 2))) > 0.05 * (32768 if samples.max() > 2 else 1))
    container.close()
    ends = [t for t in (video_t[-1:] + audio_t[-1:])]
    starts = [t for t in (video_t[:1] + audio_t[:1])]
    return {"flashes": onsets(video_t, video_on), "beeps": onsets(audio_t, audio_on),
            "video_frames": len(video_t), "audio_windows": len(audio_t),
            "duration": max(ends) - min(starts) if ends else 0.0, "last_video": video_t[-1] if video_t else 0.0}


def offsets(flashes: list[float], beeps: list[float]) -> list[float]:
    """For each flash, the beep nearest to it: video minus audio, seconds."""
    return [f - min(beeps, key=lambda b: abs(b - f)) for f in flashes] if beeps else []
