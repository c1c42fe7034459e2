"""Fanout benchmark: how many viewers one shard core serves, and what each forwarded packet costs.

    python -m bench.fanout [--quick] [--impl cython|python|both|none] [--skip-aiortc] [--skip-janus]

One synthetic publisher (VP8 720p at 2.5 Mbit/s + Opus, ``bench/clip.py``)
and N raw DTLS-SRTP viewers (``bench/loadgen.py``) against each system in
turn, in the same run and with the same load:

- ours, Cython fast path, and ours, pure-Python fast path (``SFU_PURE_PYTHON``):
  the server runs under ``taskset`` on the shard core; once the shard is up,
  signalling moves to the load generator's core. The search ramps N (guided
  by the shard's CPU use) until a window loses >= 0.5 % of packets or delivers
  < 90 % of the frame rate or builds a standing queue, then bisects. It
  reports forwarded packets per CPU-second of the shard process (pooled over
  the passing windows that kept it at least half busy); memory per consumer
  from its RSS; then p50/p99 added latency at 70 % of the largest N, the
  time to first frame of viewers joining under that load, and latency again
  at one N common to every system (100), to compare at equal load.
- aiortc ``MediaRelay`` (``bench/baselines/aiortc_relay.py``) on the same
  core, over a few small N (it re-encodes per viewer, so it serves a handful).
- Janus VideoRoom (Debian's ``janus``, ``bench/baselines/janus.py``) in a
  network namespace behind a veth pair, on the same core, searched like ours:
  with ``event_loops = 1`` and with its default thread per handle.
  ``janus_pps_per_cpu_s`` is the better of the two.

CPU is the kernel's utime + stime of the server process over each window
(``/proc/<pid>/stat``), and forwarded packets are those that reached the
viewers' sockets (received + dropped on their full queues), so a busy
neighbour on the machine changes the time a run takes more than its figures
(each window also prints how much of the core others took). The largest N is
more sensitive to neighbours: a server that gets less of its core queues
sooner. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import procfs
from .clip import FPS, Clip, build_clip
from .loadgen import LoadGen
from .targets import AiortcRelayTarget, JanusVideoRoomTarget, SfuTarget, Target, make_run_dir

LOSS_LIMIT = 0.005
MIN_FPS_RATIO = 0.9
# A server that cannot keep up first builds a queue (our shard's socket buffer holds
# seconds of input) and only loses packets once it overflows: a median added latency
# above this means a standing queue, i.e. not served, even without loss yet.
STANDING_QUEUE_MS = 50.0
IDLE_UTIL = 0.1  # below this share of its core, a paused server has drained its backlog
LOADED_UTIL = 0.5  # windows pooled for the packets-per-CPU-second figure
GENERATOR_BUSY = 0.9  # above this share of its core, the load generator may be the limit
CONSUMERS_PER_VIEWER = 2  # audio + video


@dataclass(frozen=True)
class Profile:
    window_s: float  # steady-state measurement window per step
    settle_s: float  # after joins/leaves, before measuring (keyframe bursts from the joins' PLIs)
    start_viewers: int
    max_viewers: int
    search_steps: int
    precision: float  # stop bisecting when hi - lo <= precision * lo
    latency_window_s: float
    first_frame_probes: int
    aiortc_viewers: tuple[int, ...]
    aiortc_settle_s: float
    common_viewers: int  # every searched system is also measured at this N: latency at equal load
    search_budget_s: float  # hard cap per searched system; the search stops early to keep the reserve
    reserve_s: float  # kept for the 70 % window and the first-frame probes
    small_budget_s: float  # hard cap for a system measured at a few small N (aiortc)


# Four searched systems (ours x2, Janus x2) and aiortc stay under 10 minutes.
QUICK = Profile(window_s=3.0, settle_s=1.5, start_viewers=40, max_viewers=1500, search_steps=8, precision=0.08,
                latency_window_s=5.0, first_frame_probes=3, aiortc_viewers=(1, 2, 4), aiortc_settle_s=3.0,
                common_viewers=100, search_budget_s=120.0, reserve_s=25.0, small_budget_s=60.0)
FULL = Profile(window_s=8.0, settle_s=3.0, start_viewers=40, max_viewers=2500, search_steps=14, precision=0.03,
               latency_window_s=15.0, first_frame_probes=10, aiortc_viewers=(1, 2, 4, 8, 16),
               aiortc_settle_s=4.0, common_viewers=100, search_budget_s=420.0, reserve_s=60.0,
               small_budget_s=240.0)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Window:
    """One steady-state measurement at a fixed number of viewers."""

    viewers: int
    seconds: float
    received: int  # RTP packets that reached the viewers
    lost: int  # sequence gaps
    generator_drops: int  # dropped on the viewers' full socket queues: the load generator fell behind
    server_cpu_s: float
    core_busy_s: float  # everything on the server's core, the server included
    generator_cpu_s: float
    frames: int  # video frames (marker bits) received, all viewers
    decrypt_failures: int  # sampled packets that did not decrypt
    published: int  # packets the publisher sent
    nominal_pps: float  # what it should have sent
    server_ingress_drops: int
    server_counter: int | None  # the server's own count of packets sent, if it has one
    rss_kib: int | None
    latency_ms: list[float] = field(default_factory=list)

    @property
    def forwarded(self) -> int:
        return self.received + self.generator_drops

    @property
    def loss(self) -> float:
        return self.lost / max(1, self.received + self.lost)

    @property
    def pps_per_cpu_s(self) -> float:
        return self.forwarded / self.server_cpu_s if self.server_cpu_s > 0 else 0.0

    @property
    def server_util(self) -> float:
        return self.server_cpu_s / self.seconds

    @property
    def others_util(self) -> float:
        """Share of the server's core taken by other processes: a noisy neighbour, when high."""
        return max(0.0, self.core_busy_s - self.server_cpu_s) / self.seconds

    @property
    def generator_util(self) -> float:
        return self.generator_cpu_s / self.seconds

    @property
    def fps(self) -> float:
        return self.frames / max(1, self.viewers) / self.seconds

    @property
    def generator_limits(self) -> list[str]:
        """Why this window may say more about the load generator than about the server."""
        why = []
        if self.generator_util > GENERATOR_BUSY:
            why.append(f"generator CPU {100 * self.generator_util:.0f} %")
        if self.generator_drops > 0.001 * max(1, self.forwarded):
            why.append(f"{self.generator_drops} dropped on the viewers' sockets")
        if self.published < 0.95 * self.nominal_pps * self.seconds:
            why.append(f"published {100 * self.published / (self.nominal_pps * self.seconds):.0f} % of the clip's rate")
        return why

    @property
    def generator_limited(self) -> bool:
        return bool(self.generator_limits)

    def verdict(self) -> tuple[bool, str]:
        if self.viewers == 0:
            return False, "no viewers"
        if self.loss >= LOSS_LIMIT:
            return False, f"loss {100 * self.loss:.2f} %"
        if self.fps < MIN_FPS_RATIO * FPS:
            return False, f"{self.fps:.1f} fps"
        p50 = percentile(self.latency_ms, 0.5)
        if p50 is not None and p50 >= STANDING_QUEUE_MS:
            return False, f"standing queue (p50 {p50:.0f} ms)"
        return True, "ok"

    def line(self) -> str:
        ok, why = self.verdict()
        lat = ""
        if self.latency_ms:
            lat = f" latency p50 {percentile(self.latency_ms, 0.5):.2f} p99 {percentile(self.latency_ms, 0.99):.2f} ms"
        gen = f" GENERATOR-LIMITED ({', '.join(self.generator_limits)})" if self.generator_limited else ""
        if self.decrypt_failures:
            lat += f" {self.decrypt_failures} SAMPLES FAILED TO DECRYPT"
        if self.server_counter is not None:  # the server's own count, as a cross-check
            lat = f" (server counted {self.server_counter / self.seconds:.0f}/s)" + lat
        return (f"  N={self.viewers:5d}  {self.forwarded / self.seconds:9.0f} pkt/s  "
                f"server CPU {100 * self.server_util:3.0f} % (others {100 * self.others_util:2.0f} %)  "
                f"{self.pps_per_cpu_s:9.0f} pkt/CPU-s  "
                f"loss {100 * self.loss:5.2f} %  {self.fps:4.1f} fps  generator CPU {100 * self.generator_util:3.0f} %"
                f"{lat}  -> {why}{gen}")


@dataclass
class Result:
    """What one system achieved; filled as the run goes, so a cut-short run still reports."""

    name: str
    label: str
    windows: list[Window] = field(default_factory=list)
    best: Window | None = None  # the largest N that passed
    at_70: Window | None = None
    at_common: Window | None = None
    kib_per_consumer: float | None = None
    first_frame_ms: list[float] = field(default_factory=list)
    generator_limited: bool = False
    error: str | None = None
    join_failures: int = 0
    decrypt_failures: int = 0
    misordered: int = 0
    decrypted: int = 0

    @property
    def max_viewers(self) -> int | None:
        return self.best.viewers if self.best else None

    @property
    def pps_per_cpu_s(self) -> float | None:
        """Pooled over every passing window that kept the server at least half busy.

        One window is a few seconds of tick-sampled CPU time; pooling the loaded
        ones (the largest N, the steps near it, the 70 % window) steadies the figure.
        """
        loaded = [w for w in (*self.windows, self.at_70) if w is not None and w.verdict()[0]
                  and w.server_util >= LOADED_UTIL]
        if not loaded:
            return round(self.best.pps_per_cpu_s) if self.best else None
        return round(sum(w.forwarded for w in loaded) / sum(w.server_cpu_s for w in loaded))

    def latency(self, q: float, common: bool = False) -> float | None:
        window = self.at_common if common else self.at_70
        if window is None or not window.latency_ms:
            return None
        value = percentile(window.latency_ms, q)
        return round(value, 3) if value is not None else None

    @property
    def first_frame_median_ms(self) -> float | None:
        return round(statistics.median(self.first_frame_ms), 1) if self.first_frame_ms else None


async def measure(gen: LoadGen, target: Target, seconds: float, core: int) -> Window:
    """Counters, CPU and drops before and after ``seconds`` of steady load."""
    pids = target.cpu_pids()
    me = os.getpid()
    counter0 = await target.packets_sent()
    ports = gen.ports()
    per_viewer0 = gen.counters()
    drops0 = procfs.udp_drops(ports)
    ingress0 = procfs.udp_drops(target.media_ports())
    cpu0 = sum(procfs.cpu_seconds(p) for p in pids)
    core0 = procfs.core_busy_seconds(core)
    gen_cpu0 = procfs.cpu_seconds(me)
    published0 = gen.publisher.packets_sent()
    gen.latency_ns.clear()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu1 = sum(procfs.cpu_seconds(p) for p in pids)
    core1 = procfs.core_busy_seconds(core)
    gen_cpu1 = procfs.cpu_seconds(me)
    published1 = gen.publisher.packets_sent()
    per_viewer1 = gen.counters()
    drops1 = procfs.udp_drops(ports)
    ingress1 = procfs.udp_drops(target.media_ports())
    latency = [ns / 1e6 for ns in gen.latency_ns]
    counter1 = await target.packets_sent()
    memory_pid = target.memory_pid()
    received = lost = frames = failures = 0
    viewers = 0
    for fd, after in per_viewer1.items():
        before = per_viewer0.get(fd)
        if before is None:
            continue
        viewers += 1
        received += (after[0] - before[0]) + (after[1] - before[1])
        lost += after[2] - before[2]
        frames += after[4] - before[4]
        failures += after[5] - before[5]
    return Window(
        viewers=viewers, seconds=elapsed, received=received, lost=lost, generator_drops=drops1 - drops0,
        server_cpu_s=cpu1 - cpu0, core_busy_s=core1 - core0, generator_cpu_s=gen_cpu1 - gen_cpu0, frames=frames,
        decrypt_failures=failures,
        published=published1 - published0, nominal_pps=gen.publisher.nominal_pps,
        server_ingress_drops=ingress1 - ingress0,
        server_counter=(counter1 - counter0) if counter0 is not None and counter1 is not None else None,
        rss_kib=procfs.rss_kib(memory_pid) if memory_pid else None, latency_ms=latency,
    )


async def set_viewers(gen: LoadGen, count: int, log: Callable[[str], None]) -> None:
    """Join or leave until ``count`` viewers are connected (one retry round for failed joins)."""
    started, before = time.monotonic(), len(gen.viewers)
    for _ in range(2):
        missing = count - len(gen.viewers)
        if missing <= 0:
            break
        failures = gen.join_failures
        await gen.add_viewers(missing)
        if gen.join_failures > failures:
            log(f"  {gen.join_failures - failures} joins failed: {dict(gen.join_errors.most_common(2))}")
    if len(gen.viewers) > count:
        await gen.remove_viewers(len(gen.viewers) - count)
    if len(gen.viewers) - before > 50:
        log(f"  ({len(gen.viewers) - before} viewers joined in {time.monotonic() - started:.1f} s)")


async def drain_backlog(gen: LoadGen, target: Target, max_s: float = 30.0) -> float:
    """Pause the publisher until the server is idle, so no backlog leaks into the next window.

    Joins (DTLS handshakes on the shard's core, keyframe bursts) and an
    overloaded step leave packets queued in the server; measured right away,
    the next step would inherit their delay. Returns the seconds it took.
    """
    pids = target.cpu_pids()
    started = time.monotonic()
    gen.publisher.paused = True
    try:
        while time.monotonic() - started < max_s:
            before = sum(procfs.cpu_seconds(p) for p in pids)
            await asyncio.sleep(0.2)
            if (sum(procfs.cpu_seconds(p) for p in pids) - before) / 0.2 < IDLE_UTIL:
                break
    finally:
        gen.publisher.paused = False
    return time.monotonic() - started


async def steady(gen: LoadGen, target: Target, settle_s: float) -> None:
    """Drain what the last change left queued, then let the load run before measuring."""
    await drain_backlog(gen, target)
    await asyncio.sleep(settle_s)


def next_count(n: int, window: Window, lo: int, hi: int | None, profile: Profile) -> int | None:
    """The next N to try, or None when the search is done.

    Ramping up, aim just under the N the shard's CPU use predicts it can take
    (CPU grows linearly with viewers); once a step failed, bisect.
    """
    if hi is None:
        predicted = n / window.server_util if window.server_util > 0.02 else 4 * n
        proposal = int(min(4 * n, max(1.25 * n, 0.97 * predicted)))
        proposal = min(proposal, profile.max_viewers)
        return proposal if proposal > n else None
    if hi - lo <= max(2, profile.precision * lo):
        return None
    return (lo + hi) // 2


async def start_target(target: Target) -> None:
    """Start a system; stop whatever part of it did start if that fails."""
    try:
        await target.start()
    except BaseException:
        await target.stop()
        raise


async def run_search(target: Target, clip: Clip, profile: Profile, result: Result,
                     log: Callable[[str], None]) -> None:
    """Find the largest N this system serves, then measure it at 70 % of that N and at the common N."""
    await start_target(target)
    gen = LoadGen(target, clip)
    try:
        await gen.start()
        await asyncio.sleep(profile.settle_s + 1.0)
        memory_pid = target.memory_pid()
        rss0 = procfs.rss_kib(memory_pid) if memory_pid else None
        n, lo, hi = profile.start_viewers, 0, None
        memory_window: Window | None = None  # last passing window before any viewer left
        stop_searching = time.monotonic() + profile.search_budget_s - profile.reserve_s
        for _ in range(profile.search_steps):
            if time.monotonic() > stop_searching:
                log("  (search stopped: time budget)")
                break
            await set_viewers(gen, n, log)
            await steady(gen, target, profile.settle_s)
            window = await measure(gen, target, profile.window_s, target.core)
            result.windows.append(window)
            log(window.line())
            ok, _ = window.verdict()
            if ok and window.viewers >= (result.best.viewers if result.best else 0):
                result.best = window
                lo = window.viewers
                if hi is None:
                    memory_window = window
            elif not ok:
                hi = window.viewers
                result.generator_limited |= window.generator_limited
            step = next_count(window.viewers, window, lo, hi, profile)
            if step is None:
                break
            n = step
        if memory_window and rss0 is not None and memory_window.rss_kib is not None:
            result.kib_per_consumer = round(
                (memory_window.rss_kib - rss0) / (CONSUMERS_PER_VIEWER * memory_window.viewers), 2)
        if result.best is None:
            return
        n70 = max(1, round(0.7 * result.best.viewers))
        await set_viewers(gen, n70, log)
        await steady(gen, target, profile.settle_s)
        result.at_70 = await measure(gen, target, profile.latency_window_s, target.core)
        log(result.at_70.line() + "   (70 % of max)")
        for _ in range(profile.first_frame_probes):
            await asyncio.sleep(0.7)  # outside the previous join's keyframe-request window
            ms = await gen.first_frame_ms()
            if ms is not None:
                result.first_frame_ms.append(ms)
        log(f"  first frame (WHEP POST -> first keyframe packet) at N={n70}: "
            + ", ".join(f"{ms:.0f}" for ms in result.first_frame_ms) + " ms")
        if result.best.viewers >= profile.common_viewers:
            await set_viewers(gen, profile.common_viewers, log)
            await steady(gen, target, profile.settle_s)
            result.at_common = await measure(gen, target, profile.window_s, target.core)
            log(result.at_common.line() + "   (same N for every system)")
    finally:
        totals = gen.totals()
        result.decrypt_failures += totals["decrypt_failures"]
        result.misordered += totals["misordered"]
        result.decrypted += totals["decrypted"]
        result.join_failures += gen.join_failures
        await gen.close()
        await target.stop()


async def run_small(target: Target, clip: Clip, profile: Profile, result: Result,
                    log: Callable[[str], None]) -> None:
    """A system that serves a handful of viewers: fixed small steps, stop at the first that fails."""
    await start_target(target)
    gen = LoadGen(target, clip, join_concurrency=2)
    try:
        await gen.start()
        await asyncio.sleep(profile.aiortc_settle_s)
        for n in profile.aiortc_viewers:
            await set_viewers(gen, n, log)
            await steady(gen, target, profile.aiortc_settle_s)
            window = await measure(gen, target, profile.window_s, target.core)
            result.windows.append(window)
            log(window.line())
            ok, _ = window.verdict()
            if ok:
                result.best = window
            else:
                result.generator_limited |= window.generator_limited
                break
        if result.best is None and result.windows:
            # Nothing kept up: still report what one viewer cost.
            result.best = max(result.windows, key=lambda w: w.pps_per_cpu_s)
            result.error = "no step kept up with the source (figures at the best step)"
    finally:
        result.join_failures += gen.join_failures
        result.decrypt_failures += gen.totals()["decrypt_failures"]
        await gen.close()
        await target.stop()


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(results: list[Result], ours: Result | None) -> str:
    base = ours.pps_per_cpu_s if ours else None
    common = next((r.at_common.viewers for r in results if r.at_common), None)
    header = (f"{'system':34} {'max N':>6} {'fwd pkt/CPU-s':>14} {'vs ours':>8} {'at N':>5} {'p50 ms':>7} "
              f"{'p99 ms':>7} {f'p50/p99 ms at N={common}':>22} {'1st frame ms':>12} {'KiB/consumer':>12}")
    lines = [header, "-" * len(header)]
    for r in results:
        ratio = (r.pps_per_cpu_s / base) if (base and r.pps_per_cpu_s) else None
        note = f"  ({r.error})" if r.error else ""
        if r.generator_limited and r.best:
            note += "  (a failing step was generator-limited)"
        lines.append(
            f"{r.label:34} {_fmt(r.max_viewers, 'd'):>6} {_fmt(r.pps_per_cpu_s, ',.0f'):>14} "
            f"{(_fmt(ratio, '.3f') + '×') if ratio else '—':>8} "
            f"{_fmt(r.at_70.viewers if r.at_70 else None, 'd'):>5} {_fmt(r.latency(0.5), '.2f'):>7} "
            f"{_fmt(r.latency(0.99), '.2f'):>7} "
            f"{_fmt(r.latency(0.5, True), '.2f') + ' / ' + _fmt(r.latency(0.99, True), '.2f'):>22} "
            f"{_fmt(r.first_frame_median_ms, '.0f'):>12} "
            f"{_fmt(r.kib_per_consumer, '.1f'):>12}{note}")
    return "\n".join(lines)


def summary(results: dict[str, Result], clip: Clip, quick: bool, seconds: float) -> dict[str, Any]:
    ours = results.get("ours")
    python = results.get("python")
    aiortc = results.get("aiortc")
    janus_runs = [r for r in (results.get("janus"), results.get("janus_default")) if r and r.pps_per_cpu_s]
    janus = max(janus_runs, key=lambda r: r.pps_per_cpu_s or 0) if janus_runs else None  # Janus at its best

    def pps(r: Result | None) -> float | None:
        return r.pps_per_cpu_s if r else None

    out: dict[str, Any] = {
        "ours_pps_per_cpu_s": pps(ours),
        "python_pps_per_cpu_s": pps(python),
        "aiortc_pps_per_cpu_s": pps(aiortc),
        "janus_pps_per_cpu_s": pps(janus),
        "max_viewers": ours.max_viewers if ours else None,
        "p50_added_latency_ms": ours.latency(0.5) if ours else None,
        "p99_added_latency_ms": ours.latency(0.99) if ours else None,
        "kib_per_consumer": ours.kib_per_consumer if ours else None,
        "first_frame_ms": ours.first_frame_median_ms if ours else None,
    }
    for key in ("python", "aiortc", "janus", "janus_default"):
        r = results.get(key)
        if r is None or r.best is None:
            continue
        if key == "janus_default":
            out["janus_default_pps_per_cpu_s"] = r.pps_per_cpu_s
        out[f"{key}_max_viewers"] = r.max_viewers
        if key != "aiortc":
            out[f"{key}_p50_added_latency_ms"] = r.latency(0.5)
            out[f"{key}_p99_added_latency_ms"] = r.latency(0.99)
            out[f"{key}_kib_per_consumer"] = r.kib_per_consumer
            out[f"{key}_first_frame_ms"] = r.first_frame_median_ms
    if ours and python and ours.pps_per_cpu_s and python.pps_per_cpu_s:
        out["ours_vs_python"] = round(ours.pps_per_cpu_s / python.pps_per_cpu_s, 2)
    if ours and aiortc and ours.pps_per_cpu_s and aiortc.pps_per_cpu_s:
        out["ours_vs_aiortc"] = round(ours.pps_per_cpu_s / aiortc.pps_per_cpu_s, 1)
    if ours and janus and ours.pps_per_cpu_s and janus.pps_per_cpu_s:
        out["ours_vs_janus"] = round(ours.pps_per_cpu_s / janus.pps_per_cpu_s, 2)
    out["latency_at_common_n_ms"] = {k: {"viewers": r.at_common.viewers, "p50": r.latency(0.5, True),
                                         "p99": r.latency(0.99, True)}
                                     for k, r in results.items() if r.at_common}
    out["generator_limited"] = {k: r.generator_limited for k, r in results.items()}
    # How much of the server's core other processes took, on average over the windows: the
    # per-CPU-second figures hold up under it, max N and latency do not.
    out["others_on_core_pct"] = {k: round(100 * statistics.mean(w.others_util for w in r.windows))
                                 for k, r in results.items() if r.windows}
    out["errors"] = {k: r.error for k, r in results.items() if r.error}
    out["quick"] = quick
    out["seconds"] = round(seconds)
    out["load"] = {"video": f"VP8 {clip.width}x{clip.height} {clip.video_bitrate_bps / 1e6:.2f} Mbit/s",
                   "keyframe_bytes": clip.keyframe_bytes, "audio": "Opus 20 ms"}
    return out


async def main_async(args: argparse.Namespace) -> int:
    started = time.monotonic()
    profile = QUICK if args.quick else FULL
    run_dir = make_run_dir()

    def log(message: str) -> None:
        print(message, flush=True)

    clip = build_clip()
    log(f"load: VP8 {clip.width}x{clip.height}, {clip.video_bitrate_bps / 1e6:.2f} Mbit/s, keyframe "
        f"{clip.keyframe_bytes // 1000} KB every 2 s, + Opus; shard on core {args.shard_core}, "
        f"load generator on core {args.generator_core}; logs in {run_dir}")

    impls = {"both": ["cython", "python"], "none": []}.get(args.impl, [args.impl])
    results: dict[str, Result] = {}
    for impl in impls:
        sfu = SfuTarget(impl, shard_core=args.shard_core, other_core=args.generator_core, run_dir=run_dir)
        result = results[sfu.name] = Result(sfu.name, sfu.label)
        log(f"{sfu.label}:")
        await _bounded(run_search(sfu, clip, profile, result, log), result, profile.search_budget_s, log)
    if not args.skip_aiortc:
        relay = AiortcRelayTarget(core=args.shard_core, run_dir=run_dir)
        result = results[relay.name] = Result(relay.name, relay.label)
        log(f"{relay.label}:")
        await _bounded(run_small(relay, clip, profile, result, log), result, profile.small_budget_s, log)
    if args.skip_janus:
        results["janus"] = Result("janus", "Janus VideoRoom", error="skipped")
    else:
        for event_loops in (1, None):
            janus = JanusVideoRoomTarget(event_loops=event_loops, core=args.shard_core)
            result = results[janus.name] = Result(janus.name, janus.label)
            log(f"{janus.label}:")
            await _bounded(run_search(janus, clip, profile, result, log), result, profile.search_budget_s, log)

    ours = results.get("ours")
    log("")
    log(table(list(results.values()), ours))
    for r in results.values():
        if r.decrypted or r.decrypt_failures or r.misordered or r.join_failures:
            log(f"{r.label}: {r.decrypted} sampled packets decrypted, {r.decrypt_failures} failed, "
                f"{r.misordered} out of order or altered; {r.join_failures} joins failed")
    log("added latency = publisher send -> kernel timestamp of the forwarded copy (loopback; veth for Janus), "
        "at 70 % of max N; pkt/CPU-s = packets reaching the viewers / server process CPU time")
    print(json.dumps(summary(results, clip, args.quick, time.monotonic() - started)), flush=True)
    return 0


async def _bounded(run: Any, result: Result, budget_s: float, log: Callable[[str], None]) -> None:
    """Run one system with a hard time cap (plus time to stop it); keep what it measured."""
    try:
        await asyncio.wait_for(run, budget_s + 15.0)
    except asyncio.TimeoutError:
        result.error = f"stopped after {budget_s:.0f} s"
        log(f"  {result.error}")
    except Exception as exc:  # one system failing must not lose the others' figures
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"  failed: {result.error}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows and search (< 10 minutes)")
    parser.add_argument("--impl", choices=("cython", "python", "both", "none"), default="both",
                        help="which of our fast paths to measure (SFU_PURE_PYTHON); none: baselines only")
    parser.add_argument("--skip-aiortc", action="store_true", help="do not measure the aiortc MediaRelay baseline")
    parser.add_argument("--skip-janus", action="store_true", help="do not measure Janus VideoRoom")
    parser.add_argument("--shard-core", type=int, default=1, help="core the server under test is pinned to")
    parser.add_argument("--generator-core", type=int, default=0, help="core of the load generator and signalling")
    args = parser.parse_args()
    cores = os.sched_getaffinity(0)
    if {args.shard_core, args.generator_core} - cores or args.shard_core == args.generator_core:
        parser.error(f"need two distinct cores among {sorted(cores)}")
    os.sched_setaffinity(0, {args.generator_core})
    import uvloop

    sys.exit(uvloop.run(main_async(args)))


if __name__ == "__main__":
    main()
