"""The cross-site latency bench's peers, one process per site (run inside a namespace).

    python -m bench.latency_peer publish --url URL --room R [--token T] --host ADDR [--red]
    python -m bench.latency_peer view --url URL --room R [--token T] --host ADDR --viewers 4 --settle 3 --seconds 20
        [--red [--plain-viewers 1]]

``publish``: one raw DTLS-SRTP publisher (``bench/loadgen.py``: real VP8 + Opus, its
CLOCK_MONOTONIC send time stamped into each payload), bound to ``--host``. It builds
the clip, waits for the server's /healthz, publishes, prints ``{"event": "publishing"}``
(with ``red``: whether the answer asked for RED) and runs until SIGTERM/SIGINT (or
``--seconds``); then ``{"event": "done", ...}``. ``--red``: offer RFC 2198 RED for the
Opus track and send it if the answer lists it first (the previous frame as the
redundant block).

``view``: ``--viewers`` raw viewers (every packet decrypted, arrival times from the
kernel, SO_TIMESTAMPNS), prints ``{"event": "joined", ...}``, waits ``--settle``, then
measures for ``--seconds`` and prints ``{"event": "result", ...}``: every sample as
send-to-arrival microseconds (no path delay subtracted), audio alone, each viewer's
longest audio gap, and the counters of the window. CLOCK_MONOTONIC is one clock for
every namespace of the machine, so the publisher's stamps and these arrivals compare.
Audio frames are followed by the count in their stamps: when each first became
available (its primary, or with ``--red`` the next packet's redundant copy), so each
viewer reports the longest gap between consecutive frames becoming available, frames
repaired from RED and frames never seen, beside the longest gap between two audio
packets' arrivals. ``--red``: the viewers offer RED; ``--plain-viewers N`` adds N viewers
that do not (reported apart, ``plain``: what a viewer without RED gets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from .loadgen import TOTALS, LoadGen
from .targets import WhipWhepTarget


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            try:
                async with http.get(url.rstrip("/") + "/healthz") as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


def make_target(url: str, token: str | None, host: str) -> WhipWhepTarget:
    target = WhipWhepTarget(url, token=token)
    target.peer_host = host
    return target


class Window:
    """The viewers' samples over one measurement window (samples and counters since ``start``)."""

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.before: dict[str, int] = {}

    def start(self) -> None:
        for v in self.gen.viewers:
            v.audio_latency_ns.clear()
            v.audio_max_gap_ns = 0
            v.audio_last_ns = 0
            v.start_frames()
            v.audio_pts.clear()
            v.other_pts.clear()
            v.red_blocks = v.red_malformed = 0
        self.gen.latency_ns.clear()
        self.before = self.gen.totals()

    def result(self) -> dict[str, Any]:
        """The window's samples. The headline figures (``audio_us``, the gaps, the frame
        counts) are of the viewers that negotiated as the generator's ``red`` says; the
        others (``plain``: viewers without RED beside RED ones) are described apart."""
        after = self.gen.totals()
        delta = {k: after[k] - self.before.get(k, 0) for k in TOTALS}
        viewers = [v for v in self.gen.viewers if v.red == self.gen.red]
        others = [v for v in self.gen.viewers if v.red != self.gen.red]
        return {
            "audio_us": [ns // 1000 for v in viewers for ns in v.audio_latency_ns],
            "all_us": [ns // 1000 for ns in self.gen.latency_ns],
            "audio_max_gap_ms": [round(v.audio_max_gap_ns / 1e6, 2) for v in viewers],
            "viewers_with_audio": sum(1 for v in viewers if v.audio_latency_ns),
            "per_viewer": [self.describe(v) for v in viewers],
            "plain": [self.describe(v) for v in others],
            "window": delta,
        }

    @staticmethod
    def describe(v: Any) -> dict[str, Any]:
        """One viewer: what it negotiated and received (audio PTs of the decrypted packets,
        RTP of neither stream by PT), and its audio frames."""
        return {
            "red_offered": v.red, "red_pt": v.audio_red_pt if v.audio_red_pt >= 0 else None, "audio_pt": v.audio_pt,
            "audio_pts": {str(pt): n for pt, n in sorted(v.audio_pts.items())},
            "other_pts": {str(pt): n for pt, n in sorted(v.other_pts.items())},
            "red_blocks": v.red_blocks, "red_malformed": v.red_malformed,
            "max_arrival_gap_ms": round(v.audio_max_gap_ns / 1e6, 2),
            "latency_samples": len(v.audio_latency_ns),
            **v.audio_frame_stats(),
        }


async def publish(args: argparse.Namespace) -> None:
    from .clip import build_clip

    clip = build_clip()
    await wait_healthy(args.url)
    target = make_target(args.url, args.token, args.host)
    await target.start()
    gen = LoadGen(target, clip, room=args.room, red=args.red)
    assert gen.publisher is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await gen.start()
        emit({"event": "publishing", "host": args.host, "url": args.url, "red_offered": args.red,
              "red_pt": gen.publisher.audio_red_pt if gen.publisher.audio_red_pt >= 0 else None})
        try:
            await asyncio.wait_for(stop.wait(), args.seconds or None)
        except asyncio.TimeoutError:
            pass
        publisher = gen.publisher
        done = {"event": "done", "packets_sent": publisher.packets_sent(), "audio_sent": publisher.audio.count,
                "keyframe_requests": publisher.keyframe_requests, "bytes_sent": publisher.bytes_sent,
                "red_pt": publisher.audio_red_pt if publisher.audio_red_pt >= 0 else None,
                "red_packets": publisher.red_packets}
    finally:
        await gen.close()
        await target.stop()
    emit(done)


async def view(args: argparse.Namespace) -> None:
    await wait_healthy(args.url)
    target = make_target(args.url, args.token, args.host)
    await target.start()
    gen = LoadGen(target, None, room=args.room, sample_every=1, red=args.red, track_frames=True)
    try:
        await gen.start()
        joined = await gen.add_viewers(args.viewers)
        plain = await gen.add_viewers(args.plain_viewers, red=False) if args.plain_viewers else 0
        emit({"event": "joined", "viewers": joined, "plain_viewers": plain, "join_errors": dict(gen.join_errors),
              "join_ms": [round(ms, 1) for ms in gen.join_ms]})
        if not joined:
            raise SystemExit(f"no viewer joined: {dict(gen.join_errors)}")
        await asyncio.sleep(args.settle)
        window = Window(gen)
        window.start()
        await asyncio.sleep(args.seconds)
        result = {"event": "result", "viewers": joined, "seconds": args.seconds, **window.result()}
    finally:
        await gen.close()
        await target.stop()
    emit(result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("publish", "view"))
    parser.add_argument("--url", required=True, help="the node's base URL (WHIP/WHEP)")
    parser.add_argument("--room", default="site-to-site")
    parser.add_argument("--token", help="bearer token for WHIP/WHEP (servers outside --dev)")
    parser.add_argument("--host", default="127.0.0.1", help="address the peers' sockets bind and advertise")
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=0.0, help="view: the window; publish: run at most this long")
    parser.add_argument("--red", action="store_true", help="offer RFC 2198 RED for audio (publisher and viewers)")
    parser.add_argument("--plain-viewers", type=int, default=0,
                        help="view --red: also this many viewers without RED, reported apart")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.role == "view" and not args.seconds:
        parser.error("view needs --seconds")
    runner(publish(args) if args.role == "publish" else view(args))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
