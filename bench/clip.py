"""The media the synthetic publisher loops: one real 2 s VP8 GOP at 2.5 Mbit/s, and 1 s of Opus.

Why real bitstreams rather than random bytes of the right sizes: the aiortc
baseline decodes what it receives (and re-encodes it per viewer), so garbage
would make it forward nothing; and a real encoder gives real frame sizes (a
keyframe of ~50 KB, deltas from a few hundred bytes to tens of KB). Every
system measured gets the very same packets.

Encoding takes a few seconds of one core (libvpx realtime, through PyAV); the
content is a textured picture panning by a few pixels a frame, with fresh
low-level noise in every frame as a camera sensor makes: without it libvpx
alternates tiny and 30-40 KB delta frames, with it deltas are even-sized
(~6-15 KB) like a real webcam's, and the keyframe is ~55 KB. We keep the
first GOP, whose keyframe is the encoder's own first frame: libvpx under-codes
*forced* keyframes and then spends 100+ KB on the next frame, which no real
sender does.
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass

import av
import numpy as np

FPS = 30
GOP_FRAMES = 2 * FPS  # a keyframe every 2 s
AUDIO_FRAME_MS = 20


@dataclass(frozen=True)
class Clip:
    video_frames: tuple[bytes, ...]  # one GOP, 30 fps; frame 0 is the keyframe
    audio_frames: tuple[bytes, ...]  # Opus, 20 ms each
    width: int
    height: int

    @property
    def keyframe_bytes(self) -> int:
        return len(self.video_frames[0])

    @property
    def video_bitrate_bps(self) -> float:
        return sum(map(len, self.video_frames)) * 8 * FPS / len(self.video_frames)

    @property
    def audio_bitrate_bps(self) -> float:
        return sum(map(len, self.audio_frames)) * 8 * 1000 / AUDIO_FRAME_MS / len(self.audio_frames)


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    """Blocky low-frequency noise plus fine grain, twice the frame size so it can pan."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (height // 4, width // 4), dtype=np.uint8)
    tex = np.repeat(np.repeat(low, 8, axis=0), 8, axis=1).astype(np.uint16)
    tex = (tex + np.roll(tex, 4, 0) + np.roll(tex, 4, 1) + np.roll(tex, -4, 0)) // 4
    fine = rng.integers(0, 65, tex.shape, dtype=np.uint16)
    return (tex // 2 + fine).astype(np.uint8)


SENSOR_NOISE = 8  # +- levels of fresh noise per pixel and frame
RATE_UNDERSHOOT = 0.95  # libvpx CBR lands ~5 % under its target on this content


def encode_video(width: int = 1280, height: int = 720, bitrate_bps: int = 2_500_000, seed: int = 1) -> list[bytes]:
    """Encode one GOP (2 s) of panning, noisy texture: a keyframe, then 59 delta frames."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    buffer_bits = bitrate_bps * 2 // 5
    bitrate_bps = int(bitrate_bps / RATE_UNDERSHOOT)
    codec.bit_rate = bitrate_bps
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.time_base = fractions.Fraction(1, FPS)
    codec.gop_size = GOP_FRAMES
    # CBR with a 400 ms buffer, as a real-time sender runs it.
    codec.options = {
        "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
        "minrate": str(bitrate_bps), "maxrate": str(bitrate_bps), "bufsize": str(buffer_bits),
        "undershoot-pct": "95", "overshoot-pct": "5",
    }
    texture = _texture(width, height, seed).astype(np.int16)
    noise = np.random.default_rng(seed + 1)
    grey = bytes([128]) * (width * height // 4)
    frames: list[bytes] = []
    for i in range(GOP_FRAMES):
        oy, ox = (i * 2) % height, (i * 4) % width
        luma = texture[oy:oy + height, ox:ox + width] + noise.integers(-SENSOR_NOISE, SENSOR_NOISE + 1,
                                                                        (height, width), dtype=np.int16)
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.planes[0].update(np.clip(luma, 0, 255).astype(np.uint8).tobytes())
        frame.planes[1].update(grey)
        frame.planes[2].update(grey)
        frame.pts = i
        frames.extend(bytes(p) for p in codec.encode(frame))
    frames.extend(bytes(p) for p in codec.encode(None))
    return frames


def encode_audio(seconds: float = 1.0, bitrate_bps: int = 48_000) -> list[bytes]:
    """Opus packets of a 440 Hz tone with a little noise (~100-160 bytes each at 48 kbit/s)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate_bps
    samples = 48000 * AUDIO_FRAME_MS // 1000
    rng = np.random.default_rng(2)
    packets: list[bytes] = []
    for i in range(int(seconds * 1000 / AUDIO_FRAME_MS)):
        t = (np.arange(samples) + i * samples) / 48000
        pcm = np.sin(2 * np.pi * 440 * t) * 6000 + rng.normal(0, 800, samples)
        frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = i * samples
        packets.extend(bytes(p) for p in codec.encode(frame))
    return packets


def build_clip(width: int = 1280, height: int = 720, video_bitrate_bps: int = 2_500_000) -> Clip:
    video = encode_video(width, height, video_bitrate_bps)
    return Clip(tuple(video), tuple(encode_audio()), width, height)


if __name__ == "__main__":
    clip = build_clip()
    sizes = sorted(map(len, clip.video_frames[1:]))
    print(f"{clip.width}x{clip.height} keyframe {clip.keyframe_bytes} B, "
          f"video {clip.video_bitrate_bps / 1e6:.2f} Mbit/s, delta frames {sizes[0]}-{sizes[-1]} B "
          f"(median {sizes[len(sizes) // 2]}), audio {len(clip.audio_frames)} packets "
          f"{min(map(len, clip.audio_frames))}-{max(map(len, clip.audio_frames))} B, "
          f"{clip.audio_bitrate_bps / 1000:.0f} kbit/s")
