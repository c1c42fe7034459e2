"""The recorder process fed through a lossy, reordering relay (5 % loss, neighbours swapped).

The test plays signalling (the control socket, StartRecording) and the shard (real
VP8 and Opus from aiortc's encoders, RTP with sender reports; NACKs answered with
RTX, as a shard does, through the same lossy relay), with its relay in between: the
file must still decode, the recorder must not crash, and what stayed missing is
counted.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpPacket, RtcpRtpfbPacket, RtcpSenderInfo, RtcpSrPacket, RtpPacket

from av_sync import analyse
from sfu import control

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
SECONDS = 10


class Listener:
    def __init__(self) -> None:
        self.hello: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_request(self, body):
        raise ValueError("no requests")

    def on_notification(self, body) -> None:
        if isinstance(body, control.Hello) and not self.hello.done():
            self.hello.set_result(body)


def media(seconds: int) -> list[tuple[float, str, list[bytes], int]]:
    """(send time, kind, payloads, RTP timestamp) of real encoded frames, in time order."""
    video, audio = get_encoder(VP8), get_encoder(OPUS)
    out = []
    for i in range(seconds * 30):
        image = np.full((240, 320, 3), 16 + (i * 3) % 200, dtype=np.uint8)
        image[100:140, (i * 5) % 280:(i * 5) % 280 + 40] = 235
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        # A keyframe each half second stands in for the shard answering the recorder's PLIs.
        payloads, ts = video.encode(frame, force_keyframe=i % 15 == 0)
        out.append((i / 30, "video", payloads, ts))
    for i in range(seconds * 50):
        t = (np.arange(960) + i * 960) / 48000
        data = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        payloads, ts = audio.encode(frame)
        out.append((i / 50, "audio", payloads, ts))
    return sorted(out, key=lambda x: x[0])


async def test_loss_and_reordering_between_shard_and_recorder(tmp_path) -> None:
    sock_dir = tempfile.mkdtemp(prefix="rec-test-")
    path = os.path.join(sock_dir, "c.sock")
    listener = Listener()
    channels = []

    async def accept(reader, writer):
        channels.append(control.Channel(reader, writer, listener))

    server = await asyncio.start_unix_server(accept, path=path)
    recordings = tmp_path / "rec"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfu.recording.main", "--control-path", path, "--recordings", str(recordings),
        "--log-level", "warning")
    shard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    shard.bind(("127.0.0.1", 0))
    shard.setblocking(False)
    try:
        hello = await asyncio.wait_for(listener.hello, 15)
        channel = channels[0]
        tracks = [control.RecordTrack(ssrc=1111, kind="audio", codec="opus", payload_type=111, clock_rate=48000),
                  control.RecordTrack(ssrc=2222, kind="video", codec="VP8", payload_type=96, clock_rate=90000,
                                      rtx_ssrc=3333, rtx_payload_type=97)]
        await channel.request(control.StartRecording(
            recording_id="lossy-1", room="lossy", publisher_id="pub", tracks=tracks,
            shard_host="127.0.0.1", shard_port=shard.getsockname()[1]))
        recorder = ("127.0.0.1", hello.rtc_port)
        rnd = random.Random(5)
        seq = {"audio": 1000, "video": 60000}  # the video's sequence numbers wrap mid-recording
        ssrc = {"audio": 1111, "video": 2222}
        pt = {"audio": 111, "video": 96}
        last_ts = {"audio": 0, "video": 0}
        sent = dropped = swapped = 0
        held: bytes | None = None
        history: dict[tuple[int, int], bytes] = {}
        rtx_seq = 0
        nacks = retransmitted = 0

        def relay(data: bytes) -> bool:
            nonlocal held, swapped, dropped
            if rnd.random() < 0.05:
                dropped += 1
                return False
            if held is None and rnd.random() < 0.1:
                held = data  # goes out after the next one: reordered
                return True
            shard.sendto(data, recorder)
            if held is not None:
                shard.sendto(held, recorder)
                held, swapped = None, swapped + 1
            return True

        def answer_nacks() -> None:
            nonlocal nacks, retransmitted, rtx_seq
            while True:
                try:
                    data = shard.recv(2048)
                except BlockingIOError:
                    return
                for fb in RtcpPacket.parse(data):
                    if isinstance(fb, RtcpRtpfbPacket) and fb.fmt == 1:
                        nacks += 1
                        for lost in fb.lost:
                            original = history.get((fb.media_ssrc, lost))
                            if original is None or fb.media_ssrc != 2222:
                                continue
                            parsed = RtpPacket.parse(original)
                            rtx = RtpPacket(payload_type=97, sequence_number=rtx_seq & 0xFFFF,
                                            timestamp=parsed.timestamp, ssrc=3333, marker=parsed.marker,
                                            payload=lost.to_bytes(2, "big") + parsed.payload)
                            rtx_seq += 1
                            retransmitted += 1
                            relay(bytes(rtx.serialize()))

        began = time.monotonic()
        next_sr = 0.0
        for at, kind, payloads, ts in media(SECONDS):
            # Twice real time: the recorder's buffers see arrival gaps like a real path's.
            delay = began + at / 2 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if at >= next_sr:
                next_sr += 1.0
                ntp = int((time.time() + 2208988800) * 2**32)
                for k in ("audio", "video"):
                    sr = RtcpSrPacket(ssrc=ssrc[k], sender_info=RtcpSenderInfo(
                        ntp_timestamp=ntp, rtp_timestamp=last_ts[k], packet_count=0, octet_count=0))
                    shard.sendto(bytes(sr), recorder)
            last_ts[kind] = ts
            answer_nacks()
            for j, payload in enumerate(payloads):
                packet = RtpPacket(payload_type=pt[kind], sequence_number=seq[kind] & 0xFFFF, timestamp=ts,
                                   ssrc=ssrc[kind], marker=int(j == len(payloads) - 1), payload=payload)
                seq[kind] += 1
                data = bytes(packet.serialize())
                history[(ssrc[kind], packet.sequence_number)] = data
                sent += 1
                relay(data)
        for _ in range(10):
            await asyncio.sleep(0.05)
            answer_nacks()
        stats = await channel.request(control.GetStats())
        await channel.request(control.StopRecording(recording_id="lossy-1"))
        assert process.returncode is None  # no crash
        manifest = json.loads((recordings / "lossy-1" / "recording.json").read_text())
        [segment] = manifest["publishers"]["pub"]["segments"]
        print(f"sent {sent} (+{retransmitted} RTX), dropped {dropped}, swapped {swapped}; recorder: "
              f"NACK packets {nacks}, lost {segment['lost_packets']}, frames dropped {segment['dropped_frames']}, "
              f"file {segment['duration_s']} s")
        assert segment["complete"]
        # Audio is not retransmitted (no NACK for Opus in WebRTC): its losses stay, counted.
        assert segment["lost_packets"] > 0 and stats["lost_packets"] == segment["lost_packets"]
        assert nacks > 0 and retransmitted > 0  # it asked for the video's holes
        result = analyse(str(recordings / "lossy-1" / segment["file"]))
        assert result["video_frames"] > SECONDS * 30 * 0.7, result["video_frames"]
        assert result["audio_windows"] > SECONDS * 200 * 0.8
        assert abs(segment["duration_s"] - SECONDS) < 0.5
    finally:
        for channel in channels:
            channel.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            process.kill()
        server.close()
        shard.close()
        Path(path).unlink(missing_ok=True)
        os.rmdir(sock_dir)
