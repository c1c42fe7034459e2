"""Simulcast selection cost: CPU per delivered datagram, simulcast beside a single-layer forward.

    python -m bench.simulcast_cost --quick    # < 2 minutes
    python -m bench.simulcast_cost            # < 5 minutes

The acceptance target (simulcast issue): the per-packet cost of simulcast
selection is at most 10 % over a single-layer forward. Everything runs in one
process against the Cython engine (``sfu._fastpath``), each scenario on its
own ``Engine`` with real UDP sockets on 127.0.0.1, the pacer off (as in
``bench/micro_test_fastpath.py``), and the same number of viewers:

- ``baseline``: one VP8 producer, every viewer on it.
- ``simulcast``: three VP8 producers (rids l, m, h) on one publisher
  transport, a third of the viewers on each; the publisher's stream
  interleaves the layers' packets h:m:l = 6:3:1 (one frame of each layer per
  10 packets).
- ``one_layer_h`` / ``one_layer_l``: the same three-layer stream, every viewer
  on h (resp. l): what receiving the unwanted layers costs.
- ``pending_target``: as ``simulcast``, and every viewer has a pending move to
  another layer (l->m, m->h, h->l) that never happens (no keyframe comes):
  the per-packet target check.
- ``baseline_same_fanout``: one producer, a third of the viewers: the
  single-layer forward with ``simulcast``'s datagrams per incoming packet.
- ``ingress_only``: the three-layer stream, no viewers (CPU per incoming packet).

Each scenario runs in two crypto modes: ``gcm`` (publisher and viewers on
AES-128-GCM SRTP, as WebRTC runs: the engine unprotects each incoming packet
and protects each copy) and ``plain`` (RTP, both sides). And two drivers:
``feed`` (``Engine.feed()`` per packet, the brief's harness, which adds a
Python call, an address parse, a malloc'd copy and one ``sendmmsg`` per
incoming packet) and ``socket`` (the publisher's packets sent to the engine's
socket beforehand, untimed; the timed part is ``Engine.on_readable()``, the
production path: ``recvmmsg`` of 64, one ``sendmmsg`` per batch).

A round runs one batch of every (driver, mode, scenario) in a shuffled order;
the figures are medians over rounds, so a noisy neighbour hits all scenarios
alike. CPU is ``time.process_time_ns()`` (user + system of this process; the
kernel has no IRQ time accounting here, so loopback delivery into the
viewers' sockets, done in the sender's context, is counted) around the batch
only: building and encrypting the publisher's packets, draining the viewers'
sockets and ``Engine.tick()`` are outside it. After each batch every viewer
socket is drained and checked: exactly the expected datagrams, on the
viewer's SSRC, sequence numbers consecutive; the engine's ``packets_out``
grew by the same count and it counted no drop.

The last line printed is one JSON object: the top-level figures are the
``feed`` driver in ``gcm`` mode; ``plain`` and ``socket`` are nested.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pylibsrtp import Policy, Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures import make_rtp, make_vp8_payload, rtp_payload_offset  # noqa: E402

import sfu.fastpath  # noqa: E402  (gives the engine libsrtp's entry points)
from sfu import _fastpath  # noqa: E402

TARGET_RATIO = 1.10
PACKET_BYTES = 1200
AUDIO_LEVEL_ID, ABS_SEND_TIME_ID, TRANSPORT_CC_ID, MID_ID, RID_ID = 1, 2, 3, 4, 10
VP8_PT, VP8_RTX_PT = 96, 97
TS_PER_FRAME = 3000  # 30 fps at 90 kHz
# A publisher's frame period: which layer each of its 10 packets belongs to
# (0 = l, 1 = m, 2 = h): h:m:l = 6:3:1, interleaved as a pacer would.
RIDS = ("l", "m", "h")
SIMULCAST_PATTERN = (2, 1, 2, 2, 0, 2, 1, 2, 2, 1)
SINGLE_PATTERN = (0,) * 10
GCM_KEY = bytes(range(28))  # master key + salt
RCVBUF = 4 * 1024 * 1024
SCENARIOS = ("baseline", "simulcast", "one_layer_h", "one_layer_l", "pending_target",
             "baseline_same_fanout", "ingress_only")
MODES = ("gcm", "plain")
DRIVERS = ("feed", "socket")


def srtp_sessions() -> tuple[Session, Session]:
    """(rx, tx) as ``sfu.shard.srtp.SrtpSession`` configures them, AES-128-GCM."""
    rx = Policy(key=GCM_KEY, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    rx.window_size = 1024
    tx = Policy(key=GCM_KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    tx.allow_repeat_tx = True
    return Session(rx), Session(tx)


def udp(rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def vp8_packet(ssrc: int, seq: int, ts: int, pic: int, tl0: int, *, start: bool, marker: bool,
               keyframe: bool = False, rid: str = "") -> bytes:
    """A 1,200-byte VP8 packet as Chrome sends it (abs-send-time, transport-cc, mid; rid
    only on the first packets, before the SFU's receiver reports acknowledge the SSRC)."""
    extensions = {ABS_SEND_TIME_ID: b"\x12\x34\x56", TRANSPORT_CC_ID: struct.pack("!H", seq & 0xFFFF),
                  MID_ID: b"0"}
    if rid:
        extensions[RID_ID] = rid.encode()
    header = make_rtp(seq=seq, ts=ts, ssrc=ssrc, pt=VP8_PT, marker=marker, payload=b"", extensions=extensions)
    descriptor = make_vp8_payload(keyframe, start=start, picture_id=pic, picture_id_bits=15, tl0picidx=tl0, tid=0)
    return header + descriptor + bytes(PACKET_BYTES - len(header) - len(descriptor))


@dataclass
class Layer:
    """One encoding's RTP stream as the publisher sends it."""

    rid: str
    ssrc: int
    per_frame: int
    seq: int
    ts: int
    pic: int = 1000
    tl0: int = 7
    templates: list[bytearray] = field(default_factory=list)
    pic_at: int = 0

    def __post_init__(self) -> None:
        for j in range(self.per_frame):
            t = bytearray(vp8_packet(self.ssrc, 0, 0, 0x7FFF, 0, start=j == 0, marker=j == self.per_frame - 1))
            self.templates.append(t)
        self.pic_at = rtp_payload_offset(bytes(self.templates[0])) + 2

    def keyframe(self) -> list[bytes]:
        """A whole keyframe (mid and rid on every packet), then the next frame starts."""
        out = [vp8_packet(self.ssrc, self.seq + j, self.ts, self.pic, self.tl0, start=j == 0,
                          marker=j == self.per_frame - 1, keyframe=j == 0, rid=self.rid)
               for j in range(self.per_frame)]
        self._next_frame()
        return out

    def packet(self, j: int) -> bytes:
        """Packet j of the current frame (delta); the last one ends the frame."""
        t = self.templates[j]
        struct.pack_into("!HI", t, 2, (self.seq + j) & 0xFFFF, self.ts & 0xFFFFFFFF)
        struct.pack_into("!HB", t, self.pic_at, 0x8000 | (self.pic & 0x7FFF), self.tl0 & 0xFF)
        if j == self.per_frame - 1:
            self._next_frame()
        return bytes(t)

    def _next_frame(self) -> None:
        self.seq += self.per_frame
        self.ts += TS_PER_FRAME
        self.pic += 1
        self.tl0 += 1


@dataclass
class Samples:
    cpu_ns: list[float] = field(default_factory=list)   # per delivered datagram (per packet if none)
    wall_ns: list[float] = field(default_factory=list)
    cpu_packet_ns: list[float] = field(default_factory=list)  # per incoming packet
    packets: int = 0
    datagrams: int = 0


class Scenario:
    """One engine: a publisher transport with 1 or 3 VP8 producers, ``viewers`` consumers."""

    def __init__(self, name: str, mode: str, driver: str, viewers: int, frames_per_batch: int) -> None:
        self.name, self.mode, self.driver = name, mode, driver
        self.frames = frames_per_batch
        simulcast = name not in ("baseline", "baseline_same_fanout")
        if name == "baseline_same_fanout":
            viewers //= 3
        elif name == "ingress_only":
            viewers = 0
        self.pattern = SIMULCAST_PATTERN if simulcast else SINGLE_PATTERN
        rids = RIDS if simulcast else ("",)
        ssrc_base = random.getrandbits(28) << 4
        self.layers = [Layer(rid, ssrc_base + i, self.pattern.count(i), seq=random.randrange(60000),
                             ts=random.getrandbits(32)) for i, rid in enumerate(rids)]
        if name == "one_layer_h":
            placement = [2] * viewers
        elif name == "one_layer_l" or not simulcast:
            placement = [0] * viewers
        else:
            placement = [i % 3 for i in range(viewers)]
        self.placement = placement
        secure = mode == "gcm"

        self.sock = udp(RCVBUF)
        self.publisher = udp(RCVBUF)
        self.viewer_socks = [udp(RCVBUF) for _ in placement]
        self.engine = e = _fastpath.Engine(self.sock.fileno(), self._slow_path, pacer_enabled=False)
        self.pub_t = e.add_transport(secure=secure, mid=MID_ID, abs_send_time=ABS_SEND_TIME_ID,
                                     audio_level=AUDIO_LEVEL_ID)
        e.set_transport_extensions(self.pub_t, mid=MID_ID, abs_send_time=ABS_SEND_TIME_ID,
                                   audio_level=AUDIO_LEVEL_ID, rid=RID_ID if simulcast else 0)
        self.source = self.publisher.getsockname()
        e.set_transport_address(self.pub_t, *self.source)
        self.protect = None
        self.sessions = []
        if secure:
            rx, tx = srtp_sessions()
            e.set_transport_srtp(self.pub_t, rx, tx)
            _, gen_tx = srtp_sessions()  # the publisher's own outbound session
            self.sessions += [rx, tx, gen_tx]
            self.protect = gen_tx.protect
        # SSRCs unsignalled, as Chrome's rid simulcast: learnt from mid (and rid) on the first packet.
        self.producers = [e.add_producer(self.pub_t, video=True, codec=_fastpath.CODEC_VP8, payload_type=VP8_PT,
                                         clock_rate=90000, rtx_payload_type=VP8_RTX_PT, mid=b"0", rid=rid.encode())
                          for rid in rids]
        self.consumers = []
        self.viewer_ssrc = []
        for i, (layer, vs) in enumerate(zip(placement, self.viewer_socks)):
            vt = e.add_transport(secure=secure)
            e.set_transport_address(vt, *vs.getsockname())
            if secure:
                rx, tx = srtp_sessions()
                e.set_transport_srtp(vt, rx, tx)
                self.sessions += [rx, tx]
            ssrc = 0x40000000 + i
            self.consumers.append(e.add_consumer(
                vt, self.producers[layer], payload_type=VP8_PT, ssrc=ssrc, rtx_payload_type=VP8_RTX_PT,
                rtx_ssrc=0x50000000 + i, nack=True, mid=MID_ID, abs_send_time=ABS_SEND_TIME_ID, mid_value=b"0",
                first_seq=(1000 * i) & 0xFFFF, first_ts=7 * i, first_rtx_seq=i))
            self.viewer_ssrc.append(struct.pack("!I", ssrc))
        self.next_seq: list[int | None] = [None] * len(placement)
        self.received = [0] * len(placement)
        self.plis = 0

        # Every layer starts with a keyframe (every viewer starts on it), then one delta frame.
        start = [p for layer in self.layers for p in layer.keyframe()]
        if self.protect is not None:
            start = [self.protect(p) for p in start]
        start += self._frame_packets(1)
        self._deliver(start, expect=[2 * self.layers[layer].per_frame for layer in placement])
        if name == "pending_target":
            for c, layer in zip(self.consumers, placement):
                e.set_consumer_producer(c, self.producers[(layer + 1) % 3])
            assert all(e.consumer_producer(c) == self.producers[layer] for c, layer in zip(self.consumers, placement))
            self._drain_publisher()
        self.per_batch = [self.frames * self.layers[layer].per_frame for layer in placement]
        self.samples = Samples()

    def _slow_path(self, data: bytes, addr: tuple) -> None:
        raise AssertionError(f"{self.name}: a datagram went to the slow path")

    def _frame_packets(self, frames: int) -> list[bytes]:
        counters = [0] * len(self.layers)
        out = []
        for _ in range(frames):
            for li in self.pattern:
                out.append(self.layers[li].packet(counters[li]))
                counters[li] = (counters[li] + 1) % self.layers[li].per_frame
        if self.protect is not None:
            out = [self.protect(p) for p in out]
        return out

    def batch(self) -> tuple[int, int, int, int]:
        """One timed batch: (cpu ns, wall ns, incoming packets, delivered datagrams)."""
        return self._deliver(self._frame_packets(self.frames), self.per_batch)

    def _deliver(self, packets: list[bytes], expect: list[int]) -> tuple[int, int, int, int]:
        e = self.engine
        before = e.totals()
        if self.driver == "socket":
            send, to = self.publisher.sendto, self.sock.getsockname()
            for p in packets:
                send(p, to)
            on_readable = e.on_readable
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            on_readable()
            c1, w1 = time.process_time_ns(), time.perf_counter_ns()
            for _ in range(100):  # one call reads up to 1,024 datagrams; the check below catches a shortfall
                if e.totals()["packets_in"] - before["packets_in"] >= len(packets):
                    break
                c2 = time.process_time_ns()
                w2 = time.perf_counter_ns()
                on_readable()
                c1 += time.process_time_ns() - c2
                w1 += time.perf_counter_ns() - w2
        else:
            feed = e.feed
            host, port = self.source
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            for p in packets:
                feed(p, host, port)
            c1, w1 = time.process_time_ns(), time.perf_counter_ns()
        e.tick()  # untimed: coalesced keyframe requests go out here, as the shard's timer does
        after = e.totals()
        delivered = self._drain_viewers(expect)
        self._drain_publisher()
        drops = e.drop_counts()
        assert after["packets_in"] - before["packets_in"] == len(packets), (self.name, before, after)
        assert after["packets_out"] - before["packets_out"] == delivered == sum(expect), \
            (self.name, after["packets_out"] - before["packets_out"], delivered, sum(expect))
        assert not drops, (self.name, self.mode, drops)
        return c1 - c0, w1 - w0, len(packets), delivered

    def _drain_viewers(self, expect: list[int]) -> int:
        total = 0
        for i, s in enumerate(self.viewer_socks):
            recv, ssrc, seq, n = s.recv, self.viewer_ssrc[i], self.next_seq[i], 0
            try:
                while True:
                    d = recv(2048)
                    assert d[8:12] == ssrc, (self.name, i, d[8:12].hex())
                    got = (d[2] << 8) | d[3]
                    assert seq is None or got == seq, (self.name, self.mode, i, "gap", seq, got)
                    seq = (got + 1) & 0xFFFF
                    n += 1
            except BlockingIOError:
                pass
            assert n == expect[i], (self.name, self.mode, self.driver, f"viewer {i} received {n}, expected {expect[i]}")
            self.next_seq[i] = seq
            self.received[i] += n
            total += n
        return total

    def _drain_publisher(self) -> None:
        try:
            while True:
                self.publisher.recv(2048)
                self.plis += 1
        except BlockingIOError:
            pass

    def record(self) -> None:
        cpu, wall, packets, delivered = self.batch()
        per = delivered or packets
        self.samples.cpu_ns.append(cpu / per)
        self.samples.wall_ns.append(wall / per)
        self.samples.cpu_packet_ns.append(cpu / packets)
        self.samples.packets += packets
        self.samples.datagrams += delivered

    def close(self) -> None:
        for s in (self.sock, self.publisher, *self.viewer_socks):
            s.close()


# --- report ------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 4:
        return min(xs), max(xs)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def summarize(group: dict[str, Scenario]) -> dict:
    m = {name: median(s.samples.cpu_ns) for name, s in group.items()}
    mp = {name: median(s.samples.cpu_packet_ns) for name, s in group.items()}
    base, sim = group["baseline"].samples, group["simulcast"].samples
    paired = [s / b for s, b in zip(sim.cpu_ns, base.cpu_ns)]
    pending_checks = len(group["pending_target"].placement) / 3  # per incoming packet, every layer alike
    out = {
        "baseline_ns_per_datagram": round(m["baseline"], 1),
        "simulcast_ns_per_datagram": round(m["simulcast"], 1),
        "ratio": round(m["simulcast"] / m["baseline"], 4),
        "target_ratio": TARGET_RATIO,
        "met": m["simulcast"] / m["baseline"] <= TARGET_RATIO,
        "paired_ratio_median": round(median(paired), 4),
        "paired_ratio_iqr": [round(x, 4) for x in quartiles(paired)],
        "one_layer_h_ns_per_datagram": round(m["one_layer_h"], 1),
        "one_layer_l_ns_per_datagram": round(m["one_layer_l"], 1),
        "pending_target_ns_per_datagram": round(m["pending_target"], 1),
        "baseline_same_fanout_ns_per_datagram": round(m["baseline_same_fanout"], 1),
        "ratio_same_fanout": round(m["simulcast"] / m["baseline_same_fanout"], 4),
        "ingress_only_ns_per_packet": round(mp["ingress_only"], 1),
        "pending_check_ns_per_viewer_packet": round(
            (mp["pending_target"] - mp["simulcast"]) / pending_checks, 1) if pending_checks else None,
        "ns_per_incoming_packet": {name: round(v, 1) for name, v in mp.items()},
        "model": model(group, mp),
        "wall_ns_per_datagram": {name: round(median(s.samples.wall_ns), 1) for name, s in group.items()
                                 if s.samples.datagrams},
        "datagrams_per_packet": {name: round(s.samples.datagrams / s.samples.packets, 3)
                                 for name, s in group.items()},
    }
    return out


def model(group: dict[str, Scenario], mp: dict[str, float]) -> dict:
    """cost per incoming packet = I + k * D (k datagrams out), fitted from the two single-layer
    scenarios; then what simulcast adds beyond I + k * D, and the ratio amortization alone gives."""
    n, k = len(group["baseline"].placement), len(group["baseline_same_fanout"].placement)
    d = (mp["baseline"] - mp["baseline_same_fanout"]) / (n - k)
    i = mp["baseline"] - n * d
    return {
        "per_datagram_ns": round(d, 1), "per_incoming_packet_ns": round(i, 1),
        "simulcast_extra_ns_per_packet": round(mp["simulcast"] - mp["baseline_same_fanout"], 1),
        "ratio_from_amortization_alone": round((i / k + d) / (i / n + d), 4),
    }


def table(label: str, group: dict[str, Scenario]) -> str:
    base = median(group["baseline"].samples.cpu_ns)
    lines = [f"{label}:",
             f"  {'scenario':<22}{'dgrams/pkt':>11}{'CPU ns/dgram':>14}{'p25-p75':>14}{'CPU ns/pkt':>12}"
             f"{'wall ns/dgram':>15}{'vs baseline':>13}"]
    for name, s in group.items():
        x = s.samples
        if x.datagrams:
            q1, q3 = quartiles(x.cpu_ns)
            cols = (f"{median(x.cpu_ns):.0f}", f"{q1:.0f}-{q3:.0f}", f"{median(x.wall_ns):.0f}",
                    f"{median(x.cpu_ns) / base:.3f}")
        else:
            cols = ("-", "-", "-", "-")
        lines.append(f"  {name:<22}{x.datagrams / x.packets:>11.2f}{cols[0]:>14}{cols[1]:>14}"
                     f"{median(x.cpu_packet_ns):>12.0f}{cols[2]:>15}{cols[3]:>13}")
    return "\n".join(lines)


def describe_build() -> dict:
    root = Path(__file__).resolve().parent.parent
    so = Path(_fastpath.__file__)
    info = {"engine": str(so), "so_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(so.stat().st_mtime))}
    pyx = so.parent / "_fastpath.pyx"
    if pyx.exists() and pyx.stat().st_mtime > so.stat().st_mtime:
        info["warning"] = "sfu/_fastpath.pyx is newer than the built extension: it may not reflect the working tree"
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "sfu/_fastpath.pyx"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        info["commit"] = f"{commit}+modified sfu/_fastpath.pyx" if commit and dirty else commit
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulcast_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (< 2 minutes)")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 250, --quick 80)")
    parser.add_argument("--viewers", type=int, default=21, help="viewers per scenario (a multiple of 3; default 21)")
    parser.add_argument("--frames", type=int, default=50,
                        help="publisher frame periods (10 packets each) per timed batch (default 50)")
    parser.add_argument("--modes", default=",".join(MODES), help="gcm,plain")
    parser.add_argument("--drivers", default=",".join(DRIVERS), help="feed,socket")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=float,
                        help="stop measuring after this many seconds, with the rounds done by then "
                             "(default 270, --quick 100)")
    args = parser.parse_args()
    if sfu.fastpath.IMPLEMENTATION != "cython":
        parser.error("this measures the Cython engine: unset SFU_PURE_PYTHON")
    if args.viewers < 3 or args.viewers % 3:
        parser.error("--viewers must be a positive multiple of 3")
    modes = [m for m in args.modes.split(",") if m]
    drivers = [d for d in args.drivers.split(",") if d]
    if set(modes) - set(MODES) or set(drivers) - set(DRIVERS) or "gcm" not in modes or "feed" not in drivers:
        parser.error(f"--modes from {MODES} (with gcm), --drivers from {DRIVERS} (with feed)")
    rounds = args.rounds or (80 if args.quick else 250)
    budget_s = args.budget or (100.0 if args.quick else 270.0)
    warmup = 2
    random.seed(args.seed)
    started = time.monotonic()

    build = describe_build()
    print(f"simulcast selection cost: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, commit {build['commit']}, "
          f"engine built {build['so_mtime']} UTC", flush=True)
    if "warning" in build:
        print(f"  warning: {build['warning']}", flush=True)
    print(f"{args.viewers} viewers, {PACKET_BYTES}-byte VP8 packets, {args.frames * 10} packets per batch, "
          f"{rounds} rounds (+{warmup} warm-up), drivers {drivers}, modes {modes}", flush=True)

    groups: dict[tuple[str, str], dict[str, Scenario]] = {}
    for driver in drivers:
        for mode in modes:
            groups[driver, mode] = {name: Scenario(name, mode, driver, args.viewers, args.frames)
                                    for name in SCENARIOS}
    everything = [s for g in groups.values() for s in g.values()]
    gc.collect()
    gc.disable()
    deadline = started + budget_s
    done = 0
    try:
        for r in range(warmup + rounds):
            if r > warmup + 10 and time.monotonic() > deadline:
                print(f"  time budget ({budget_s:.0f} s) spent: stopping after {done} rounds", flush=True)
                break
            order = everything[:]
            random.shuffle(order)
            for s in order:
                if r < warmup:
                    s.batch()
                else:
                    s.record()
            done = max(0, r + 1 - warmup)
            gc.collect()
            if r >= warmup and ((r - warmup + 1) % max(1, rounds // 4) == 0 or r == warmup + rounds - 1):
                g = groups["feed", "gcm"]
                b, sm = median(g["baseline"].samples.cpu_ns), median(g["simulcast"].samples.cpu_ns)
                print(f"  round {r - warmup + 1}/{rounds} ({time.monotonic() - started:.0f} s): feed/gcm baseline "
                      f"{b:.0f} ns, simulcast {sm:.0f} ns per datagram, ratio {sm / b:.3f}", flush=True)
    finally:
        gc.enable()

    print()
    results = {}
    for (driver, mode), g in groups.items():
        print(table(f"driver {driver}, {'AES-128-GCM SRTP' if mode == 'gcm' else 'plain RTP'}", g))
        results[driver, mode] = summarize(g)
        x = results[driver, mode]
        print(f"  ratio simulcast/baseline {x['ratio']:.3f} (paired per round {x['paired_ratio_median']:.3f}, "
              f"IQR {x['paired_ratio_iqr'][0]:.3f}-{x['paired_ratio_iqr'][1]:.3f}); target <= {TARGET_RATIO}: "
              f"{'met' if x['met'] else 'NOT met'}; simulcast/baseline_same_fanout {x['ratio_same_fanout']:.3f}")
        md = x["model"]
        print(f"  fit cost/packet = I + k*D: D = {md['per_datagram_ns']:.0f} ns per datagram, I = "
              f"{md['per_incoming_packet_ns']:.0f} ns per incoming packet; I spread over {args.viewers // 3} instead "
              f"of {args.viewers} datagrams alone gives {md['ratio_from_amortization_alone']:.3f}; simulcast adds "
              f"{md['simulcast_extra_ns_per_packet']:.0f} ns per packet over the same fan-out single layer")
        if x["pending_check_ns_per_viewer_packet"] is not None:
            print(f"  pending target check: {x['pending_check_ns_per_viewer_packet']:.0f} ns per waiting viewer "
                  f"per packet of its target layer; a packet nobody watches: {x['ingress_only_ns_per_packet']:.0f} ns")
        print()
    pli_total = sum(s.plis for s in everything)
    elapsed = time.monotonic() - started
    print(f"{sum(s.samples.datagrams for s in everything)} datagrams checked, {pli_total} keyframe requests "
          f"to publishers, no drops; {elapsed:.0f} s")

    top = dict(results["feed", "gcm"])
    top["srtp"] = "AES-128-GCM"
    top["driver"] = "feed"
    if ("feed", "plain") in results:
        top["plain"] = results["feed", "plain"]
    if "socket" in drivers:
        top["socket"] = {mode: results["socket", mode] for mode in modes}
    top["met_everywhere"] = all(x["met"] for x in results.values())
    top.update(viewers=args.viewers, packets_per_batch=args.frames * 10, rounds=done,
               packet_bytes=PACKET_BYTES, layer_mix_h_m_l=[6, 3, 1], commit=build["commit"],
               elapsed_s=round(elapsed, 1))
    print(json.dumps(top))


if __name__ == "__main__":
    main()
