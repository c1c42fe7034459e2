"""Added latency across sites: publish at node A, receive at node B through the QUIC relay.

Two nodes (each `sfu serve --shards 1`) share a Redis directory and relay over
QUIC; the path between their QUIC relays goes through a userspace UDP relay
that adds a fixed one-way delay and random loss each way (this kernel has no
netem). One raw DTLS-SRTP publisher (bench/loadgen.py: real VP8 + Opus, its
CLOCK_MONOTONIC send time written into each payload) publishes on A; viewers on
B read the stamps back, the arrival time taken by the kernel (SO_TIMESTAMPNS).
Added latency = arrival - send - the configured path delay: what two SFU hops
(A's shard, A's relay, B's relay, B's shard) cost on top of the network.

    python -m bench.latency [--quick] [--delay-ms 30] [--loss 0.01] [--viewers 4]

Prints audio and video added latency (p50/p99) and the longest audio gap a
viewer saw; the last line is one JSON object with at least ``added_p50_ms``,
``added_p99_ms`` (audio) and ``max_gap_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sfu.relay.certs import write_cluster_certs

from .clip import build_clip
from .loadgen import LoadGen
from .redis_server import RedisServer
from .targets import TargetError, WhipWhepTarget, free_port

ROOM = "site-to-site"


class PathRelay(asyncio.DatagramProtocol):
    """UDP from the dialling relay to ``target`` and back, each datagram delayed and maybe lost."""

    def __init__(self, target: tuple[str, int], delay_s: float, loss: float, rnd: random.Random) -> None:
        self.target, self.delay_s, self.loss, self.rnd = target, delay_s, loss, rnd
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None
        self.client: tuple[str, int] | None = None
        self.dropped = self.carried = 0

    def _later(self, send, data: bytes, addr) -> None:
        if self.rnd.random() < self.loss:
            self.dropped += 1
            return
        self.carried += 1
        asyncio.get_running_loop().call_later(self.delay_s, send, data, addr)

    def datagram_received(self, data: bytes, addr) -> None:
        self.client = addr
        if self.upstream is not None:
            self._later(self.upstream.sendto, data, self.target)

    def back(self, data: bytes) -> None:
        if self.transport is not None and self.client is not None:
            self._later(self.transport.sendto, data, self.client)


async def start_path(listen_port: int, target: tuple[str, int], delay_s: float, loss: float) -> PathRelay:
    loop = asyncio.get_running_loop()
    relay = PathRelay(target, delay_s, loss, random.Random(7))
    relay.transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", listen_port))

    class Back(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr) -> None:
            relay.back(data)

    relay.upstream, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
    return relay


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node(WhipWhepTarget):
    """One `sfu serve` node of the two-site cluster."""

    def __init__(self, name: str, run_dir: Path, redis_url: str, certs: dict, ca: Path, quic_port: int,
                 quic_public_port: int = 0) -> None:
        self.name = name
        self.http_port = free_port()
        super().__init__(f"http://127.0.0.1:{self.http_port}")
        env = dict(os.environ, SFU_RELAY_TRANSPORT="quic", SFU_QUIC_PORT=str(quic_port),
                   SFU_RELAY_CERT=str(certs[name][0]), SFU_RELAY_KEY=str(certs[name][1]), SFU_RELAY_CA=str(ca))
        if quic_public_port:
            env["SFU_QUIC_PUBLIC_PORT"] = str(quic_public_port)
        self.argv = [sys.executable, "-m", "sfu", "serve", "--dev", "--http-port", str(self.http_port),
                     "--rtc-port", str(free_udp_port()), "--shards", "1", "--redis-url", redis_url,
                     "--node-id", name, "--log-level", "warning"]
        self.env = env
        self.log_path = run_dir / f"node-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        await super().start()
        log = open(self.log_path, "wb")
        self.proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env, stdout=log, stderr=log)
        import aiohttp

        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(self.base_url + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TargetError(f"node {self.name} did not start; see {self.log_path}")

    async def stop(self) -> None:
        await super().stop()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


async def run(args: argparse.Namespace) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    redis = RedisServer(run_dir)
    certs = write_cluster_certs(run_dir / "certs", ["a", "b"])
    quic_a, quic_b, path_port = free_udp_port(), free_udp_port(), free_udp_port()
    a = Node("a", run_dir, redis.url, certs, run_dir / "certs" / "ca.pem", quic_a)
    # B is dialled by A through the path relay: B advertises the relay's port.
    b = Node("b", run_dir, redis.url, certs, run_dir / "certs" / "ca.pem", quic_b, quic_public_port=path_port)
    delay_s = args.delay_ms / 1000
    path = await start_path(path_port, ("127.0.0.1", quic_b), delay_s, args.loss)
    print(f"two nodes, QUIC relay path {args.delay_ms:.0f} ms one way, {args.loss * 100:.1f} % loss each way; "
          f"{args.viewers} viewers on B for {args.seconds:.0f} s; logs in {run_dir}", flush=True)
    clip = build_clip()
    publisher = viewers = None
    try:
        await a.start()
        await b.start()
        publisher = LoadGen(a, clip, room=ROOM)
        await publisher.start()
        await asyncio.sleep(1.0)  # the tracks reach the directory
        viewers = LoadGen(b, None, room=ROOM, sample_every=1)
        await viewers.start()
        await viewers.add_viewers(args.viewers)
        await asyncio.sleep(args.settle)
        for v in viewers.viewers:
            v.audio_latency_ns.clear()
            v.audio_max_gap_ns = 0
            v.audio_last_ns = 0
        viewers.latency_ns.clear()
        await asyncio.sleep(args.seconds)
        audio = [ns / 1e6 - args.delay_ms for v in viewers.viewers for ns in v.audio_latency_ns]
        every = [ns / 1e6 - args.delay_ms for ns in viewers.latency_ns]
        gaps = [v.audio_max_gap_ns / 1e6 for v in viewers.viewers if v.audio_max_gap_ns]
        lost = sum(v.lost for v in viewers.viewers)
        received = sum(v.audio + v.video for v in viewers.viewers)
    finally:
        for gen in (viewers, publisher):
            if gen is not None:
                await gen.close()
        await b.stop()
        await a.stop()
        redis.stop()
        if path.transport is not None:
            path.transport.close()
        if path.upstream is not None:
            path.upstream.close()
    result = {
        "path_delay_ms": args.delay_ms, "path_loss": args.loss, "viewers": args.viewers, "seconds": args.seconds,
        "added_p50_ms": pct(audio, 0.5), "added_p99_ms": pct(audio, 0.99),
        "video_added_p50_ms": pct([x for x in every], 0.5), "video_added_p99_ms": pct(every, 0.99),
        "max_gap_ms": round(max(gaps), 1) if gaps else None, "audio_samples": len(audio),
        "loss_after_repair": round(lost / max(1, lost + received), 5),
        "path_datagrams": path.carried, "path_dropped": path.dropped,
    }
    print(f"audio added latency p50 {result['added_p50_ms']} ms, p99 {result['added_p99_ms']} ms "
          f"({len(audio)} samples); all packets p50 {result['video_added_p50_ms']} / p99 "
          f"{result['video_added_p99_ms']} ms; longest audio gap {result['max_gap_ms']} ms; "
          f"loss seen by viewers {result['loss_after_repair'] * 100:.2f} %", flush=True)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short window (about a minute in all)")
    parser.add_argument("--delay-ms", type=float, default=30.0, help="one-way path delay between the sites")
    parser.add_argument("--loss", type=float, default=0.01, help="random loss each way on the path")
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    args.seconds = args.seconds or (20.0 if args.quick else 60.0)
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
