"""Added latency across sites: publish at node A, receive at node B through the QUIC relay.

Two sites (by default two network namespaces joined by a veth pair, ``bench/netsites.py``),
one node each (``sfu serve --shards 1``, HTTP and media on the site's veth address, one
Redis in A, ``relay_transport = "quic"``). The path between the sites: iptables drops
``--loss`` of the UDP arriving at each site over the veth, and a userspace delay relay in
front of B's QUIC relay (which A's relay dials) holds every datagram ``--delay-ms`` each
way (this kernel has no netem). One raw DTLS-SRTP publisher (bench/loadgen.py: real VP8 +
Opus, its CLOCK_MONOTONIC send time written into each payload) runs in A and publishes
on A; viewers run in B, watch on B and read the stamps back, the arrival time taken by
the kernel (SO_TIMESTAMPNS); both are ``bench/latency_peer.py`` processes inside their
namespaces (CLOCK_MONOTONIC is shared across namespaces). Added latency = arrival - send
- the configured path delay: what two SFU hops (A's shard, A's relay, B's relay, B's
shard) cost on top of the network (the veth and the delay relay's own lateness, reported
as ``relay_late_us``, are in it too; both are tens of microseconds).

The room is a co-performance room (the nodes run ``--performance-rooms "choir-*"``): the
publisher offers RFC 2198 RED for its Opus track as Chrome does, the server asks for it,
and the publisher sends every frame with the previous one as a redundant block; the
viewers offer RED too, so a frame whose packet the path lost is rebuilt from the next
one. ``--no-red``: publisher and viewers do not offer it (the same room), to compare. With
RED, ``--plain-viewers`` (default 1) more viewers without RED join beside them and are
reported apart (``plain``): they must get the primary encoding alone.

``--loopback``: the older variant, both nodes on 127.0.0.1 in this namespace (``--dev``),
the delay relay dropping ``--loss`` itself, publisher and viewers in this process.

    python -m bench.latency [--quick] [--delay-ms 30] [--loss 0.01] [--viewers 4] [--no-red] [--loopback]

Needs root (namespaces) unless ``--loopback``. Prints audio and video added latency
(p50/p99, of primaries), the longest gap between two audio frames becoming available
after RED repair and the longest between two audio packets' arrivals; the last line is
one JSON object with at least ``added_p50_ms``, ``added_p99_ms`` (audio), ``max_gap_ms``
(frames, after repair), ``max_arrival_gap_ms``, ``red_repaired`` and ``unrepaired``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sfu.relay.certs import write_cluster_certs

from .latency_peer import Window
from .loadgen import LoadGen
from .redis_server import RedisServer
from .targets import TargetError, WhipWhepTarget, free_port

ROOM = "choir-site-to-site"  # a co-performance room: it matches PERFORMANCE_ROOMS
PERFORMANCE_ROOMS = "choir-*"


class Node(WhipWhepTarget):
    """One `sfu serve` node of the loopback variant (``--dev`` on 127.0.0.1)."""

    def __init__(self, name: str, run_dir: Path, redis_url: str, certs: dict, ca: Path, quic_port: int,
                 quic_public_port: int = 0, source_dir: str | None = None) -> None:
        self.name = name
        self.http_port = free_port()
        super().__init__(f"http://127.0.0.1:{self.http_port}")
        env = dict(os.environ, SFU_RELAY_TRANSPORT="quic", SFU_QUIC_PORT=str(quic_port),
                   SFU_RELAY_CERT=str(certs[name][0]), SFU_RELAY_KEY=str(certs[name][1]), SFU_RELAY_CA=str(ca))
        if quic_public_port:
            env["SFU_QUIC_PUBLIC_PORT"] = str(quic_public_port)
        self.cwd = None
        if source_dir:
            self.cwd = str(Path(source_dir).resolve())
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.cwd, env.get("PYTHONPATH")]))
        self.argv = [sys.executable, "-m", "sfu", "serve", "--dev", "--http-port", str(self.http_port),
                     "--rtc-port", str(free_port(socket.SOCK_DGRAM)), "--shards", "1", "--redis-url", redis_url,
                     "--node-id", name, "--log-level", "warning", "--performance-rooms", PERFORMANCE_ROOMS]
        self.env = env
        self.log_path = run_dir / f"node-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        await super().start()
        log = open(self.log_path, "wb")
        self.proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env, stdout=log, stderr=log, cwd=self.cwd)
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


def _max(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(max(values), 1) if values else None


def _pts(viewers: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for v in viewers:
        for pt, n in v[key].items():
            total[pt] = total.get(pt, 0) + n
    return total


def _audio_frames(viewers: list[dict[str, Any]], delay_ms: float) -> dict[str, Any]:
    """Frame figures of a group of viewers (``latency_peer.Window.describe``). Where the
    longest gap was: the frames on either side (counts), how far apart the publisher sent
    them, and the added latency of the frame that ended it (beyond the path delay)."""
    worst = max((v for v in viewers if v["max_gap_ms"] is not None), key=lambda v: v["max_gap_ms"], default=None)
    return {
        "max_gap_ms": _max([v["max_gap_ms"] for v in viewers]),
        "max_gap_frames": worst["max_gap_frames"] if worst else None,
        "max_gap_sent_ms": worst["max_gap_sent_ms"] if worst else None,
        "max_gap_end_added_ms": round(worst["max_gap_end_us"] / 1000 - delay_ms, 2)
        if worst and worst["max_gap_end_us"] is not None else None,
        "max_arrival_gap_ms": _max([v["max_arrival_gap_ms"] or None for v in viewers]),
        "audio_frames": sum(v["frames"] for v in viewers),
        "red_repaired": sum(v["red_repaired"] for v in viewers),
        "unrepaired": sum(v["unrepaired"] for v in viewers),
        "max_hole_ms": max((v["max_hole_ms"] for v in viewers), default=0),
        "audio_pts": _pts(viewers, "audio_pts"), "other_pts": _pts(viewers, "other_pts"),
        "red_blocks": sum(v["red_blocks"] for v in viewers), "red_malformed": sum(v["red_malformed"] for v in viewers),
    }


def summarize(args: argparse.Namespace, seen: dict[str, Any], path: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the viewers' window (``latency_peer.Window.result``) and the path's counts."""
    audio = [us / 1000 - args.delay_ms for us in seen["audio_us"]]
    every = [us / 1000 - args.delay_ms for us in seen["all_us"]]
    frames = _audio_frames(seen["per_viewer"], args.delay_ms)
    plain = seen.get("plain") or []
    window = seen["window"]
    lost, received = window["lost"], window["audio"] + window["video"]
    late = path.get("relay_late_us") or {}
    result = {
        "mode": "loopback" if args.loopback else "netns",
        "path_delay_ms": args.delay_ms, "path_loss": args.loss, "viewers": args.viewers, "seconds": args.seconds,
        "added_p50_ms": pct(audio, 0.5), "added_p99_ms": pct(audio, 0.99),
        "video_added_p50_ms": pct(every, 0.5), "video_added_p99_ms": pct(every, 0.99),
        "red": args.red, "room": ROOM,
        **frames,
        "max_gap_per_viewer_ms": [v["max_gap_ms"] for v in seen["per_viewer"]],
        "audio_max_gap_per_viewer_ms": seen["audio_max_gap_ms"],
        "red_repaired_per_viewer": [v["red_repaired"] for v in seen["per_viewer"]],
        "unrepaired_per_viewer": [v["unrepaired"] for v in seen["per_viewer"]],
        "viewer_red_pts": sorted({v["red_pt"] for v in seen["per_viewer"] if v["red_pt"] is not None}),
        "plain_viewers": len(plain), "plain": _audio_frames(plain, args.delay_ms) if plain else None,
        "publisher_red_pt": path.pop("publisher_red_pt", None),
        "publisher_red_packets": path.pop("publisher_red_packets", None),
        "audio_samples": len(audio),
        "all_samples": len(every), "viewers_with_audio": seen["viewers_with_audio"],
        "audio_received": window["audio"], "video_received": window["video"],
        "decrypt_failures": window["decrypt_failures"], "misordered": window["misordered"],
        "loss_after_repair": round(lost / max(1, lost + received), 5),
        **path,
        "relay_late_us_p50": late.get("p50"), "relay_late_us_p99": late.get("p99"),
    }
    print(f"audio added latency p50 {result['added_p50_ms']} ms, p99 {result['added_p99_ms']} ms "
          f"({len(audio)} samples); all packets p50 {result['video_added_p50_ms']} / p99 "
          f"{result['video_added_p99_ms']} ms; loss seen by viewers {result['loss_after_repair'] * 100:.2f} %",
          flush=True)
    print(f"audio {'with' if args.red else 'without'} RED (viewers received PTs {frames['audio_pts']}): longest gap "
          f"between frames becoming available {result['max_gap_ms']} ms (between packet arrivals "
          f"{result['max_arrival_gap_ms']} ms; frames {frames['max_gap_frames']} around it were sent "
          f"{frames['max_gap_sent_ms']} ms apart, the second with {frames['max_gap_end_added_ms']} ms added); "
          f"{frames['audio_frames']} frames, {frames['red_repaired']} repaired from RED, {frames['unrepaired']} never "
          f"seen (longest hole {frames['max_hole_ms']} ms)", flush=True)
    if plain:
        other = result["plain"]
        print(f"{len(plain)} viewer(s) without RED beside them: PTs {other['audio_pts']} (other RTP "
              f"{other['other_pts']}), longest gap {other['max_gap_ms']} ms, {other['unrepaired']} of "
              f"{other['audio_frames']} frames never seen", flush=True)
    print(f"path: {path['path_forward']} datagrams A->B, {path['path_back']} B->A through the delay relay "
          f"(its lateness p50 {late.get('p50')} / p99 {late.get('p99')} / max {late.get('max')} us); "
          f"{path['path_dropped']} dropped by the loss", flush=True)
    return result


# --- two namespaces -----------------------------------------------------------------------


def run_netns(args: argparse.Namespace) -> dict[str, Any]:
    from .netsites import NetSites

    with NetSites(args.delay_ms, args.loss, keep=args.keep) as sites:
        print(f"two sites: namespaces {sites.a.netns} ({sites.a.addr}) and {sites.b.netns} ({sites.b.addr}) "
              f"joined by a veth; QUIC relay path {args.delay_ms:.0f} ms one way, {args.loss * 100:.1f} % loss "
              f"each way; {args.viewers} viewers in B for {args.seconds:.0f} s; logs in {sites.run_dir}"
              f"{'' if args.keep else ' (removed at the end unless it fails; --keep keeps them)'}", flush=True)
        redis = sites.start_redis("a")
        node_args = ("--performance-rooms", PERFORMANCE_ROOMS)
        a = sites.start_node("a", redis_url=redis.url, wait=False, source_dir=args.server_src, args=node_args)
        b = sites.start_node("b", redis_url=redis.url, wait=False, source_dir=args.server_src, args=node_args)
        token = sites.token(ROOM, publish=True, subscribe=True)
        common = ["--room", ROOM, "--token", token, *(["--red"] if args.red else [])]
        # The publisher builds its clip (~6 s) while the nodes start.
        publisher = sites.a.python("bench.latency_peer", "publish", "--url", a.url, "--host", sites.a.addr,
                                   *common, name="publisher")
        a.wait_ready()
        b.wait_ready()
        publishing = publisher.wait_json("publishing", timeout=120)
        if args.red and publishing.get("red_pt") is None:
            print("the server's answer did not ask the publisher for RED: it sends plain Opus", flush=True)
        time.sleep(1.0)  # the tracks reach the directory
        viewers = sites.b.python("bench.latency_peer", "view", "--url", b.url, "--host", sites.b.addr, *common,
                                 "--viewers", str(args.viewers), "--settle", str(args.settle),
                                 "--seconds", str(args.seconds), "--plain-viewers", str(args.plain_viewers),
                                 name="viewers")
        seen = viewers.result(timeout=args.settle + args.seconds + 90)
        publisher.stop()
        sent = publisher.last_json() or {}
        b.stop()  # and its delay relay, which writes its final counts
        a.stop()
        relay = b.delay_stats() or {}
        counters = sites.counters()
        path = {
            "run_id": sites.run_id, "sites": {name: site.addr for name, site in sites.sites.items()},
            "path_forward": relay.get("forward", {}).get("sent", 0), "path_back": relay.get("back", {}).get("sent", 0),
            "path_datagrams": relay.get("forward", {}).get("sent", 0) + relay.get("back", {}).get("sent", 0),
            "path_dropped": counters["a"]["loss_drops"] + counters["b"]["loss_drops"],
            "path_dropped_a_to_b": counters["b"]["loss_drops"], "path_dropped_b_to_a": counters["a"]["loss_drops"],
            "veth_a_to_b_packets": counters["b"]["rx_packets"], "veth_b_to_a_packets": counters["a"]["rx_packets"],
            "relay_late_us": relay.get("late_us"), "publisher_packets_sent": sent.get("packets_sent"),
            "publisher_red_pt": sent.get("red_pt"), "publisher_red_packets": sent.get("red_packets"),
        }
    return summarize(args, seen, path)


# --- loopback -----------------------------------------------------------------------------


async def run_loopback(args: argparse.Namespace) -> dict[str, Any]:
    from .clip import build_clip

    run_dir = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    redis = RedisServer(run_dir)
    certs = write_cluster_certs(run_dir / "certs", ["a", "b"])
    quic_a, quic_b, path_port = (free_port(socket.SOCK_DGRAM) for _ in range(3))
    a = Node("a", run_dir, redis.url, certs, run_dir / "certs" / "ca.pem", quic_a, source_dir=args.server_src)
    # B is dialled by A through the delay relay: B advertises the relay's port.
    b = Node("b", run_dir, redis.url, certs, run_dir / "certs" / "ca.pem", quic_b, quic_public_port=path_port,
             source_dir=args.server_src)
    stats_path = run_dir / "delay-relay.json"
    relay = subprocess.Popen(
        [sys.executable, "-m", "bench.delay_relay", "--listen", f"127.0.0.1:{path_port}",
         "--target", f"127.0.0.1:{quic_b}", "--delay-ms", str(args.delay_ms), "--loss", str(args.loss),
         "--seed", "7", "--stats", str(stats_path), *(["--realtime"] if os.geteuid() == 0 else [])],
        stdout=subprocess.DEVNULL, stderr=open(run_dir / "delay-relay.log", "wb"),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                       os.environ.get("PYTHONPATH")]))))
    print(f"two nodes on loopback, QUIC relay path {args.delay_ms:.0f} ms one way, {args.loss * 100:.1f} % loss "
          f"each way; {args.viewers} viewers on B for {args.seconds:.0f} s; logs in {run_dir}", flush=True)
    clip = build_clip()
    publisher = viewers = None
    try:
        await a.start()
        await b.start()
        publisher = LoadGen(a, clip, room=ROOM, red=args.red)
        await publisher.start()
        await asyncio.sleep(1.0)  # the tracks reach the directory
        viewers = LoadGen(b, None, room=ROOM, sample_every=1, red=args.red, track_frames=True)
        await viewers.start()
        await viewers.add_viewers(args.viewers)
        if args.plain_viewers:
            await viewers.add_viewers(args.plain_viewers, red=False)
        await asyncio.sleep(args.settle)
        window = Window(viewers)
        window.start()
        await asyncio.sleep(args.seconds)
        seen = window.result()
        pub = publisher.publisher
        sent = pub.packets_sent() if pub is not None else None
        red_pt = pub.audio_red_pt if pub is not None and pub.audio_red_pt >= 0 else None
        red_packets = pub.red_packets if pub is not None else None
    finally:
        for gen in (viewers, publisher):
            if gen is not None:
                await gen.close()
        await b.stop()
        await a.stop()
        redis.stop()
        relay.terminate()
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    forward, back = stats.get("forward", {}), stats.get("back", {})
    path = {"path_forward": forward.get("sent", 0), "path_back": back.get("sent", 0),
            "path_datagrams": forward.get("sent", 0) + back.get("sent", 0),
            "path_dropped": forward.get("dropped", 0) + back.get("dropped", 0),
            "path_dropped_a_to_b": forward.get("dropped", 0), "path_dropped_b_to_a": back.get("dropped", 0),
            "relay_late_us": stats.get("late_us"), "publisher_packets_sent": sent,
            "publisher_red_pt": red_pt, "publisher_red_packets": red_packets}
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return summarize(args, seen, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short window (under a minute in all)")
    parser.add_argument("--delay-ms", type=float, default=30.0, help="one-way path delay between the sites")
    parser.add_argument("--loss", type=float, default=0.01, help="random loss each way on the path")
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--seconds", type=float, help="the measurement window (default 20 with --quick, else 60)")
    parser.add_argument("--settle", type=float, default=3.0, help="after the viewers joined, before the window")
    parser.add_argument("--loopback", action="store_true",
                        help="both nodes on 127.0.0.1 in this namespace, peers in this process (no root)")
    parser.add_argument("--server-src", metavar="DIR",
                        help="run the nodes from the sfu package in DIR (a snapshot of a commit, extension built)")
    parser.add_argument("--no-red", dest="red", action="store_false",
                        help="publisher and viewers do not offer RED (the same co-performance room), to compare")
    parser.add_argument("--plain-viewers", type=int,
                        help="with RED: viewers without RED beside the others, reported apart (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (20.0 if args.quick else 60.0)
    if args.plain_viewers is None:
        args.plain_viewers = 1 if args.red else 0
    if args.loopback:
        result = asyncio.run(run_loopback(args))
    else:
        if os.geteuid() != 0:
            parser.error("the two-namespace run needs root (or use --loopback)")
        result = run_netns(args)
    print(json.dumps(result), flush=True)
    return result


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the harness's teardown


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main()
