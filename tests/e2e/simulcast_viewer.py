"""A WHEP viewer for the simulcast e2e tests: watch, decode, report every frame, exit.

    python tests/e2e/simulcast_viewer.py <base_url> <room> --bind ADDR --seconds N
        [--token T] [--query Q] [--keyframe-resync]

Run inside a network namespace (``ip netns exec``), so it gathers ICE on ``--bind``
only: the namespace's own address. It offers video only (aiortc's VP8 with
goog-remb and abs-send-time, so it reports a REMB estimate of its link), and
prints JSON lines on stdout, times in CLOCK_MONOTONIC seconds (the same clock as
the test's ``time.monotonic()``):

    {"event": "posted", "t": ..., "status": 201, "posted_at": <just before the POST>}
    {"event": "frame", "t": ..., "w": 640, "h": 360}   one per decoded frame
    {"event": "remb", "t": ..., "bps": 931000}          each REMB it sends
    {"event": "rr", "t": ..., "ssrc": ..., "fraction_lost": 0.57}   each receiver report block
    {"event": "resync", "t": ..., "skipped": 31}         --keyframe-resync jumped a hole
    {"event": "end", "t": ..., "frames": N, "reason": "..."}

It DELETEs its session and exits after ``--seconds`` from its POST, or at once
when the stream ends or stdin closes. Exit 0 when it decoded a frame, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp
import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpreceiver import NackGenerator, RTCRtpReceiver
from aiortc.rtp import RtcpRrPacket
from aiortc.utils import uint16_add

HTTP_TIMEOUT_S = 10


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def report_remb() -> None:
    """Print each REMB estimate aiortc sends (what the server's layer policy is fed)."""
    add = RemoteBitrateEstimator.add

    def add_and_report(self, *args, **kwargs):
        remb = add(self, *args, **kwargs)
        if remb is not None:
            emit("remb", bps=remb[0])
        return remb

    RemoteBitrateEstimator.add = add_and_report


def report_receiver_reports() -> None:
    """Print the fraction lost of each receiver report sent (the policy's loss input)."""
    send = RTCRtpReceiver._send_rtcp

    async def send_and_report(self, packet):
        if isinstance(packet, RtcpRrPacket):
            for report in packet.reports:
                emit("rr", ssrc=report.ssrc, fraction_lost=report.fraction_lost / 256)
        return await send(self, packet)

    RTCRtpReceiver._send_rtcp = send_and_report


def vp8_keyframe_start(payload: bytes) -> bool:
    """The first packet of a VP8 keyframe (RFC 7741 §4.2-4.3)."""
    if len(payload) < 2:
        return False
    i = 1
    if payload[0] & 0x80:  # X: extension octets follow
        ext, i = payload[1], 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            i += 2 if len(payload) > i and payload[i] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            i += 1
        if ext & 0x30:  # T or K: TID/KEYIDX
            i += 1
    return bool(payload[0] & 0x10) and payload[0] & 0x07 == 0 and len(payload) > i and payload[i] & 0x01 == 0


def resync_on_keyframes() -> None:
    """Jump the jitter buffer to a keyframe when packets before it are missing, as browsers do.

    aiortc waits for every hole to be filled, and gives up on one only when 512 more
    packets have come (30 s of a 150 kbit/s layer); libwebrtc drops what it cannot
    complete and decodes from the next keyframe.
    """
    add = JitterBuffer.add

    def add_resyncing(self, packet):
        if self._is_video and self._origin is not None and vp8_keyframe_start(packet.payload):
            ahead = uint16_add(packet.sequence_number, -self._origin)
            if 0 < ahead < self.capacity and any(
                    self._packets[uint16_add(self._origin, i) % self.capacity] is None for i in range(ahead)):
                emit("resync", skipped=ahead)
                self.remove(ahead)
        return add(self, packet)

    JitterBuffer.add = add_resyncing


NACK_RETRY_S = 0.1
NACK_MAX_TRIES = 10


def renack_like_browsers() -> None:
    """Ask again for packets still missing, every 100 ms, up to 10 times, as browsers do.

    Stock aiortc NACKs a missing packet only when another loss happens after it; if
    the one repair is lost too, the hole stays until a keyframe. libwebrtc's
    NackRequester retries each missing packet every round trip, up to 10 times.
    """
    add = NackGenerator.add

    def add_with_retries(self, packet):
        missed = add(self, packet)
        tries = self.__dict__.setdefault("tries", {})
        for seq in [s for s in tries if s not in self.missing]:
            del tries[seq]
        now = time.monotonic()
        if not self.missing or not (missed or now - self.__dict__.get("last_nack", 0.0) >= NACK_RETRY_S):
            return False
        for seq in list(self.missing):
            tries[seq] = tries.get(seq, 0) + 1
            if tries[seq] > NACK_MAX_TRIES:
                self.missing.discard(seq)
                del tries[seq]
        self.last_nack = now
        return bool(self.missing)

    NackGenerator.add = add_with_retries


async def stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def watch(args: argparse.Namespace) -> int:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    frames = 0
    ended = asyncio.Event()
    reason = "time is up"

    async def consume(track) -> None:
        nonlocal frames, reason
        try:
            while True:
                frame = await track.recv()
                frames += 1
                emit("frame", w=frame.width, h=frame.height)
        except MediaStreamError:
            reason = "the stream ended"
            ended.set()

    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    headers = {"Content-Type": "application/sdp"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    url = f"{args.base_url}/whep/{args.room}" + (f"?{args.query}" if args.query else "")
    location = None
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            posted = time.monotonic()
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as r:
                answer = await r.text()
                emit("posted", status=r.status, posted_at=posted)
                if r.status != 201:
                    emit("end", frames=0, reason=f"POST {r.status}: {answer[:300]}")
                    return 1
                location = r.headers["Location"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            left = posted + args.seconds - time.monotonic()
            stop = asyncio.ensure_future(stdin_closed())
            done, _ = await asyncio.wait([stop, asyncio.ensure_future(ended.wait())], timeout=max(0.0, left),
                                         return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                reason = "stdin closed"
            stop.cancel()
        finally:
            for task in tasks:
                task.cancel()
            if location is not None:
                try:
                    async with http.delete(args.base_url + location, headers=headers):
                        pass
                except aiohttp.ClientError:
                    pass
            await pc.close()
    emit("end", frames=frames, reason=reason)
    return 0 if frames else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("room")
    parser.add_argument("--bind", required=True, help="the only address ICE gathers on")
    parser.add_argument("--seconds", type=float, required=True, help="watch this long after the POST")
    parser.add_argument("--token", default="")
    parser.add_argument("--query", default="", help="WHEP query string, e.g. layer=m")
    parser.add_argument("--keyframe-resync", action="store_true",
                        help="skip to a keyframe over unrepaired holes, as browsers do (see resync_on_keyframes)")
    parser.add_argument("--renack", action="store_true",
                        help="retry NACKs for packets still missing, as browsers do (see renack_like_browsers)")
    args = parser.parse_args()
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.bind]
    report_remb()
    report_receiver_reports()
    if args.keyframe_resync:
        resync_on_keyframes()
    if args.renack:
        renack_like_browsers()
    return asyncio.run(watch(args))


if __name__ == "__main__":
    sys.exit(main())
