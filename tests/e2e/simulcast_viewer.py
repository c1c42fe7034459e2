"""A WHEP viewer for the simulcast e2e tests: watch, decode, report every frame, exit.

    python tests/e2e/simulcast_viewer.py <base_url> <room> --bind ADDR --seconds N [--token T] [--query Q]

Run inside a network namespace (``ip netns exec``), so it gathers ICE on ``--bind``
only: the namespace's own address. It offers video only (aiortc's VP8 with
goog-remb and abs-send-time, so it reports a REMB estimate of its link), and
prints JSON lines on stdout, times in CLOCK_MONOTONIC seconds (the same clock as
the test's ``time.monotonic()``):

    {"event": "posted", "t": ..., "status": 201}
    {"event": "frame", "t": ..., "w": 640, "h": 360}   one per decoded frame
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
from aiortc.mediastreams import MediaStreamError

HTTP_TIMEOUT_S = 10


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


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
    args = parser.parse_args()
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.bind]
    return asyncio.run(watch(args))


if __name__ == "__main__":
    sys.exit(main())
