"""All-hands benchmark: one simulcast presenter, as many low-layer viewers as two shards carry.

    python -m bench.allhands [--quick] [--viewers N] [--max-viewers M] [--rate R] [--procs P]

The scenario: a company all-hands. One presenter publishes simulcast VP8 in
three rid layers (l 320x180, m 640x360, h 1280x720, each its own real libvpx
GOP, ``bench/clip.py``) plus Opus, over WHIP; thousands of viewers join over
WHEP with ``?layer=l`` (audio + the low layer, which ``layer`` also caps) at a
fixed rate, hold still for a measuring window, then leave.

- The server is ``sfu serve --dev --shards 2`` (``bench/targets.py``'s
  ``SfuTarget``), unpinned: the shards, signalling, the presenter and the load
  generators share the machine's cores with whatever else runs on it. Viewers
  go wherever signalling places them (all on the presenter's shard without
  inter-shard relays; spilling to the other shard through the relay once the
  first is "full" with them); ``GET /api/shards`` (open in ``--dev``) says
  where the viewers and consumers are, each second.
- The presenter runs in this process (``bench/loadgen.py``'s ``Publisher`` in
  simulcast mode). The viewers run in ``--procs`` load-generator processes
  (this module with ``--worker``), each a publisher-less ``LoadGen``, driven
  over stdin/stdout with JSON lines; each joins its share at its share of the
  rate, interleaved with the others.
- Ramp: joins at ``--rate`` per second up to ``--viewers``. Each second the
  controller judges the last second: loss (sequence gaps, which include drops
  on full viewer sockets), median added latency (above 50 ms: a standing
  queue), join failures. Three bad seconds in a row, a shard's death or the
  time cap stop the ramp; after bad seconds the viewers beyond the last good
  second leave.
- Hold: after ``--settle`` seconds, one window of ``--window`` seconds:
  received packets and loss, frames per viewer, viewers that got both audio
  and video, added latency (the publisher's CLOCK_MONOTONIC send stamp in the
  payload to the viewer socket's kernel receive timestamp, i.e. publisher send
  to server departure on loopback; one packet in 50 sampled), CPU of every
  process and how long each waited for a core (``schedstat``), the kernel's UDP
  counters (``/proc/net/snmp``: RcvbufErrors, SndbufErrors) and per-socket
  drops (``/proc/net/udp``: shard sockets, viewer sockets), and RSS of the
  shards and signalling against their RSS before the first join. A window that
  loses packets or queues is repeated with 15 % fewer viewers (twice at most).
- Probe: then joins go on at the same rate up to ``--max-viewers``, judged as
  in the ramp, to find how many the machine carries and what stops it.
- Leave: every viewer DELETEs its session; the time it takes is reported.

What bound it (``bound_by``): the probe's (else the ramp's) stop reason and who
was saturated in its last seconds: a shard process near one core, signalling
near one core, a load-generator process near one core or behind its schedule
(event loop late, drops on the viewers' sockets), drops on the shards' sockets,
or the machine (its cores busy, everyone's time, while our processes queue for
them); or a shard killed by the supervisor.

Everything binds 127.0.0.1; the run is bounded in viewers and in time (a global
deadline; workers exit on their own deadline or when this process goes away).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procfs

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("l", "m", "h")
# (width, height, target bit rate) per layer; "small" keeps encoding quick for the tests.
LAYER_SIZES = {
    "default": {"l": (320, 180, 150_000), "m": (640, 360, 500_000), "h": (1280, 720, 2_500_000)},
    "small": {"l": (160, 96, 60_000), "m": (320, 180, 150_000), "h": (640, 360, 500_000)},
}
LOSS_LIMIT = 0.01  # a second losing more than this is bad
STANDING_QUEUE_MS = 50.0  # a median added latency above this is a queue, not a delay
BAD_SECONDS = 3  # consecutive bad seconds that stop the ramp
MIN_VIEWERS_FOR_HEALTH = 20  # fewer viewers than this: too few packets to judge a second by
FAILURE_LIMIT = 0.05  # join failures per attempt that stop the ramp
SATURATED = 0.9  # share of one core above which a single-threaded process is its own limit
GENERATOR_LAG_MS = 100.0  # a load generator's event loop this late is behind with its drain sweeps
MACHINE_SATURATED = 0.9  # share of all cores' time busy (everyone's) above which the machine is the limit
WAIT_SATURATED = 0.3  # seconds per second our processes together waited for a core: the machine is short
ADMIN_TIMEOUT_S = 2.0
WORKER_MAX_LATENCY_SAMPLES = 100_000
STATUS_SAMPLES = 400  # latency samples per worker per status line
JSON_LINE_LIMIT = 1 << 26


@dataclass(frozen=True)
class Profile:
    viewers: int  # the ramp's goal, held and measured
    max_viewers: int  # the probe's goal after the window (= viewers: no probe)
    rate: float  # joins per second, all load generators together
    settle_s: float
    window_s: float
    max_ramp_s: float  # each ramp stops here whatever the count
    deadline_s: float  # the whole run
    procs: int


QUICK = Profile(viewers=2000, max_viewers=3000, rate=100.0, settle_s=4.0, window_s=10.0, max_ramp_s=45.0,
                deadline_s=540.0, procs=2)
FULL = Profile(viewers=2000, max_viewers=5000, rate=100.0, settle_s=6.0, window_s=30.0, max_ramp_s=90.0,
               deadline_s=900.0, procs=2)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def snmp_udp() -> dict[str, int]:
    """The kernel's UDP counters for this network namespace (``/proc/net/snmp``, the ``Udp:`` lines):
    RcvbufErrors (datagrams dropped on a full receive queue, any socket), SndbufErrors, InErrors, ..."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}


def machine_busy_seconds() -> float:
    """Non-idle time of all cores together (``/proc/stat``'s ``cpu`` line), everyone's."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / procfs.CLK_TCK


def udp_sockets(ports: set[int]) -> tuple[int, int]:
    """(bytes queued to be read, datagrams dropped) summed over our UDP sockets on ``ports``
    (``/proc/net/udp``: the rx_queue and drops columns). A queue that stays full means its
    reader is behind; the kernel timestamps the latency is read from do not show that."""
    queued = drops = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                queued += int(fields[4].split(":")[1], 16)
                drops += int(fields[-1])
    return queued, drops


def cpu_or_none(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return procfs.cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


def rss_or_zero(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        return procfs.rss_kib(pid)
    except (OSError, ValueError):
        return 0


# --- the load-generator process --------------------------------------------------------


class Worker:
    """Runs in a ``--worker`` process: a publisher-less ``LoadGen`` that joins, reports and leaves
    on command. Commands come as JSON lines on stdin; replies and a status line a second go
    to stdout (nothing else may write there)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gen: Any = None
        self.ramp_task: asyncio.Task[int] | None = None
        self.window: list[int] | None = None  # latency samples (µs) since "mark", None: not measuring
        self.window_seen = 0
        self.mark_counters: dict[int, tuple[int, ...]] = {}
        self.mark_totals: dict[str, int] = {}
        self.mark_drops = 0
        self.mark_cpu = 0.0
        self.join_ms_seen = 0
        self.retired_drops = 0  # socket drops of viewers that left (their sockets are gone)
        self.loop_lag_ms = 0.0  # the worst event-loop lateness since the last status
        self.out = sys.stdout

    def send(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    async def run(self) -> None:
        from .loadgen import LoadGen
        from .targets import WhipWhepTarget

        target = WhipWhepTarget(self.args.url, concurrency=self.args.http_concurrency,
                                subscribe_query=self.args.query)
        await target.start()
        self.gen = gen = LoadGen(target, None, room=self.args.room, sample_every=self.args.sample_every)
        await gen.start()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=JSON_LINE_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        status = loop.create_task(self.status_forever())
        lag = loop.create_task(self.watch_loop_lag())
        deadline = loop.time() + self.args.deadline_s
        try:
            while loop.time() < deadline:
                try:
                    line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if not line:
                    break  # the controller went away
                command = json.loads(line)
                if command["cmd"] == "quit":
                    self.send({"id": command["id"], "result": {}})
                    break
                loop.create_task(self.handle(command))
        finally:
            status.cancel()
            lag.cancel()
            if self.ramp_task is not None:
                self.ramp_task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gen.close(), 20)
            await target.stop()

    async def handle(self, command: dict[str, Any]) -> None:
        try:
            result = await getattr(self, "cmd_" + command["cmd"])(**command.get("args", {}))
            self.send({"id": command["id"], "result": result})
        except Exception as exc:  # reported to the controller, which decides
            self.send({"id": command["id"], "error": f"{type(exc).__name__}: {exc}"})

    async def watch_loop_lag(self) -> None:
        """How late a 10 ms timer fires: a busy load generator is late for its drain sweeps too."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            self.loop_lag_ms = max(self.loop_lag_ms, (loop.time() - t - 0.01) * 1000)

    async def status_forever(self) -> None:
        gen = self.gen
        pid = os.getpid()
        while True:
            await asyncio.sleep(1.0)
            samples = [v // 1000 for v in gen.latency_ns]
            gen.latency_ns.clear()
            if self.window is not None:
                for v in samples:  # reservoir: a bounded, uniform sample of the window
                    self.window_seen += 1
                    if len(self.window) < WORKER_MAX_LATENCY_SAMPLES:
                        self.window.append(v)
                    else:
                        j = random.randrange(self.window_seen)
                        if j < WORKER_MAX_LATENCY_SAMPLES:
                            self.window[j] = v
            joins = gen.join_ms[self.join_ms_seen:]
            self.join_ms_seen = len(gen.join_ms)
            queued, drops = udp_sockets(gen.ports())
            lag, self.loop_lag_ms = self.loop_lag_ms, 0.0
            self.send({"ev": "status", "viewers": len(gen.viewers), "attempted": gen.joins_attempted,
                       "failed": gen.join_failures, "in_flight": gen.joins_in_flight, "totals": gen.totals(),
                       "socket_drops": drops + self.retired_drops, "queued_bytes": queued,
                       "loop_lag_ms": round(lag, 1), "first_join_ns": gen.first_join_ns,
                       "last_joined_ns": gen.last_joined_ns,
                       "lat_us": random.sample(samples, min(len(samples), STATUS_SAMPLES)),
                       "join_ms": [round(v, 1) for v in joins[:200]], "cpu_s": procfs.cpu_seconds(pid),
                       "errors": dict(gen.join_errors.most_common(3))})

    async def cmd_ramp(self, count: int, rate: float, delay_s: float = 0.0, max_in_flight: int = 64) -> dict:
        async def ramp() -> int:
            await asyncio.sleep(delay_s)
            return await self.gen.add_viewers_at_rate(count, rate, max_in_flight)

        self.ramp_task = asyncio.get_running_loop().create_task(ramp())
        return {}

    async def cmd_stop_ramp(self) -> dict:
        if self.ramp_task is not None and not self.ramp_task.done():
            self.ramp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ramp_task
        return {"viewers": len(self.gen.viewers)}

    async def cmd_count(self) -> dict:
        return {"viewers": len(self.gen.viewers)}

    async def cmd_trim(self, keep: int) -> dict:
        gone = self.gen.viewers[keep:]
        self.retired_drops += procfs.udp_drops({v.port for v in gone})
        await self.gen.remove_viewers(len(self.gen.viewers) - keep)
        return {"viewers": len(self.gen.viewers)}

    async def cmd_mark(self) -> dict:
        gen = self.gen
        self.mark_counters = gen.counters()
        self.mark_totals = gen.totals()
        self.mark_drops = procfs.udp_drops(gen.ports())
        self.mark_cpu = procfs.cpu_seconds(os.getpid())
        self.window, self.window_seen = [], 0
        gen.latency_ns.clear()
        return {"viewers": len(gen.viewers)}

    async def cmd_report(self) -> dict:
        gen = self.gen
        now = gen.counters()
        totals = gen.totals()
        video_and_audio = video_only = 0
        frames: list[int] = []
        for fd, c in now.items():
            before = self.mark_counters.get(fd)
            if before is None:
                continue
            dv, da = c[0] - before[0], c[1] - before[1]
            frames.append(c[4] - before[4])
            if dv > 0 and da > 0:
                video_and_audio += 1
            elif dv > 0:
                video_only += 1
        samples = self.window or []
        self.window = None
        return {"viewers": len(gen.viewers), "measured_viewers": len(frames),
                "receiving": video_and_audio, "video_only": video_only,
                "frames": frames, "totals": {k: totals[k] - self.mark_totals.get(k, 0) for k in totals},
                "socket_drops": procfs.udp_drops(gen.ports()) - self.mark_drops,
                "cpu_s": procfs.cpu_seconds(os.getpid()) - self.mark_cpu, "lat_us": samples}

    async def cmd_leave(self) -> dict:
        t0 = time.monotonic()
        count = len(self.gen.viewers)
        await self.gen.remove_viewers(count)
        return {"left": count, "seconds": time.monotonic() - t0}


def worker_main(args: argparse.Namespace) -> None:
    import uvloop

    uvloop.run(Worker(args).run())


# --- the controller --------------------------------------------------------------------


class WorkerHandle:
    """The controller's end of one load-generator process."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self.status: dict[str, Any] = {}
        self.lat_us: list[int] = []  # from status lines since the controller last took them
        self.join_ms: list[float] = []
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ev") == "status":
                self.status = msg
                self.lat_us.extend(msg["lat_us"])
                self.join_ms.extend(msg["join_ms"])
            elif "id" in msg:
                future = self._waiting.pop(msg["id"], None)
                if future is not None and not future.done():
                    if "error" in msg:
                        future.set_exception(RuntimeError(f"worker {self.index}: {msg['error']}"))
                    else:
                        future.set_result(msg["result"])
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError(f"worker {self.index} exited"))

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self._reader.done()

    async def call(self, cmd: str, timeout_s: float = 60.0, **args: Any) -> Any:
        if not self.alive:
            raise RuntimeError(f"worker {self.index} is not running")
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": self._next_id, "cmd": cmd, "args": args}) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(future, timeout_s)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.call("quit", timeout_s=30.0)
        try:
            await asyncio.wait_for(self.proc.wait(), 30.0)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


@dataclass
class Second:
    """One second of the run, as the controller saw it."""

    t: float
    viewers: int
    attempted: int
    failed: int
    in_flight: int
    received: int
    lost: int
    frames: int
    lat_ms: list[float]
    join_ms: list[float]
    cpu: dict[str, float]  # process -> cores (CPU-seconds per second)
    wait: dict[str, float]  # process -> seconds per second its threads waited for a core (schedstat)
    machine_busy: float  # cores busy, everyone's
    rcvbuf_errors: int
    sndbuf_errors: int
    shard_drops: int
    generator_drops: int
    generator_queued_kib: float  # bytes waiting in the viewers' sockets, all load generators
    generator_loop_lag_ms: float  # the worst of the load generators' event-loop lateness
    shards: list[dict[str, Any]]  # /api/shards, trimmed

    @property
    def loss(self) -> float:
        return self.lost / max(1, self.received + self.lost)

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.lat_ms, 0.5)

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.lat_ms, 0.99)


def sched_wait_seconds(pid: int) -> float | None:
    """Time the threads of ``pid`` spent runnable but waiting for a core (``/proc/<pid>/task/*/schedstat``,
    second field): how much a process was held back by everything else on the machine."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        return None
    return total / 1e9


SHARD_KEYS = ("id", "pid", "up", "restarts", "viewers", "consumers", "relays", "transports", "packets_out",
              "packets_in")


@dataclass
class Run:
    args: argparse.Namespace
    profile: Profile
    log: Any
    target: Any = None
    workers: list[WorkerHandle] = field(default_factory=list)
    publisher_gen: Any = None
    shard_pids: dict[int, int] = field(default_factory=dict)  # shard id -> pid (a restarted shard gets a new one)
    restarts: dict[int, int] = field(default_factory=dict)  # shard id -> restarts seen by the supervisor
    _prev: dict[str, Any] = field(default_factory=dict)

    # --- accounting ------------------------------------------------------------------

    def processes(self) -> dict[str, int | None]:
        procs: dict[str, int | None] = {}
        if self.shard_pids:
            for shard_id, pid in sorted(self.shard_pids.items()):
                procs[f"shard{shard_id}"] = pid
        else:
            for i, pid in enumerate(self.target.shard_pids):
                procs[f"shard{i}"] = pid
        procs["signalling"] = self.target.signalling_pid
        procs["presenter"] = os.getpid()
        for w in self.workers:
            procs[f"loadgen{w.index}"] = w.pid
        return procs

    def cpu_now(self) -> dict[tuple[str, int], tuple[float, float]]:
        """(name, pid) -> (CPU seconds, runqueue-wait seconds)."""
        out = {}
        for name, pid in self.processes().items():
            if pid is None:
                continue
            cpu, wait = cpu_or_none(pid), sched_wait_seconds(pid)
            if cpu is not None:
                out[(name, pid)] = (cpu, wait or 0.0)
        return out

    def rss_now(self) -> dict[str, int]:
        out = {name: rss_or_zero(pid) for name, pid in self.processes().items() if name.startswith("shard")}
        out["signalling"] = rss_or_zero(self.target.signalling_pid)
        return out

    def note_shards(self, shards: list[dict[str, Any]]) -> None:
        for row in shards:
            if row.get("pid"):
                old = self.shard_pids.get(row["id"])
                if old is not None and old != row["pid"]:
                    self.log(f"!! shard {row['id']} has a new process ({old} -> {row['pid']}): it died and was "
                             f"restarted (restarts {row.get('restarts')}); see the server log")
                self.shard_pids[row["id"]] = row["pid"]
            self.restarts[row["id"]] = row.get("restarts", 0)

    async def sample(self) -> Second:
        """Everything since the previous call (the first call only primes)."""
        shards = [{k: row.get(k) for k in SHARD_KEYS} for row in await self.admin_shards()]
        self.note_shards(shards)
        now = time.monotonic()
        cpu = self.cpu_now()
        busy = machine_busy_seconds()
        udp = snmp_udp()
        shard_drops = procfs.udp_drops(self.target.media_ports())
        statuses = [w.status for w in self.workers]
        totals = {k: sum(s.get("totals", {}).get(k, 0) for s in statuses) for k in ("video", "audio", "lost", "frames")}
        totals["drops"] = sum(s.get("socket_drops", 0) for s in statuses)
        lat = [v / 1000 for w in self.workers for v in w.lat_us]
        joins = [v for w in self.workers for v in w.join_ms]
        for w in self.workers:
            w.lat_us.clear()
            w.join_ms.clear()
        prev = self._prev or {"t": now, "cpu": cpu, "busy": busy, "udp": udp, "totals": totals,
                              "shard_drops": shard_drops}
        dt = max(1e-3, now - prev["t"])
        second = Second(
            t=now, viewers=sum(s.get("viewers", 0) for s in statuses),
            attempted=sum(s.get("attempted", 0) for s in statuses), failed=sum(s.get("failed", 0) for s in statuses),
            in_flight=sum(s.get("in_flight", 0) for s in statuses),
            received=totals["video"] + totals["audio"] - prev["totals"]["video"] - prev["totals"]["audio"],
            lost=totals["lost"] - prev["totals"]["lost"], frames=totals["frames"] - prev["totals"]["frames"],
            lat_ms=lat, join_ms=joins,
            cpu={name: (v[0] - prev["cpu"][(name, pid)][0]) / dt for (name, pid), v in cpu.items()
                 if (name, pid) in prev["cpu"]},
            wait={name: (v[1] - prev["cpu"][(name, pid)][1]) / dt for (name, pid), v in cpu.items()
                  if (name, pid) in prev["cpu"]},
            machine_busy=(busy - prev["busy"]) / dt,
            rcvbuf_errors=udp.get("RcvbufErrors", 0) - prev["udp"].get("RcvbufErrors", 0),
            sndbuf_errors=udp.get("SndbufErrors", 0) - prev["udp"].get("SndbufErrors", 0),
            shard_drops=shard_drops - prev["shard_drops"],
            generator_drops=totals["drops"] - prev["totals"]["drops"],
            generator_queued_kib=sum(s.get("queued_bytes", 0) for s in statuses) / 1024,
            generator_loop_lag_ms=max((s.get("loop_lag_ms", 0.0) for s in statuses), default=0.0),
            shards=shards,
        )
        self._prev = {"t": now, "cpu": cpu, "busy": busy, "udp": udp, "totals": totals, "shard_drops": shard_drops}
        return second

    def print_second(self, s: Second, phase: str, start: float) -> None:
        cpu = " ".join(f"{k} {v:.2f}" + (f" (waited {s.wait[k]:.2f})" if s.wait.get(k, 0) >= 0.05 else "")
                       for k, v in s.cpu.items())
        shards = " ".join(f"#{r['id']} {r.get('viewers')}v/{r.get('consumers')}c" +
                          (f"/{r['relays']}r" if r.get("relays") else "") + ("" if r.get("up") else " DOWN")
                          for r in s.shards)
        p50, p99 = s.p50_ms, s.p99_ms
        lat = f"{p50:.1f}/{p99:.1f}" if p50 is not None and p99 is not None else "-"
        self.log(f"{phase:5s} t={s.t - start:5.1f}s viewers {s.viewers:5d} (tried {s.attempted}, failed {s.failed}, "
                 f"in flight {s.in_flight})  rx {s.received:7d} pkt/s  loss {100 * s.loss:5.2f} %  "
                 f"p50/p99 {lat} ms | shards {shards} | cores: {cpu}, machine {s.machine_busy:.2f} | "
                 f"RcvbufErrors +{s.rcvbuf_errors} SndbufErrors +{s.sndbuf_errors}, socket drops: shards "
                 f"+{s.shard_drops} viewers +{s.generator_drops} | viewer sockets hold {s.generator_queued_kib:.0f} "
                 f"KiB, loadgen loop lag {s.generator_loop_lag_ms:.0f} ms")

    async def admin_shards(self) -> list[dict[str, Any]]:
        http = self.target._http
        try:
            async with http.get(self.target.base_url + "/api/shards",
                                timeout=aiohttp_timeout(ADMIN_TIMEOUT_S)) as r:
                if r.status == 200:
                    return await r.json()
        except Exception:  # the figure is then missing, not the run
            pass
        return []


def aiohttp_timeout(seconds: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


def bottleneck(cpu: dict[str, float], wait: dict[str, float], machine_busy: float, cores: int, generator_drops: int,
               shard_drops: int, received: int, generator_lag_ms: float = 0.0) -> tuple[str, list[str]]:
    """Who was saturated: (verdict, evidence). A single-threaded process saturates at one core;
    the machine when its cores are busy (everyone's time) and our processes queue for them."""
    evidence = []
    found = []
    if generator_lag_ms >= GENERATOR_LAG_MS:
        found.append("load generator (behind its schedule)")
        evidence.append(f"a load generator's event loop ran {generator_lag_ms:.0f} ms late")
    for name, value in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if value >= SATURATED:
            evidence.append(f"{name} at {value:.2f} cores")
            if name.startswith("shard"):
                found.append(f"{name} CPU")
            elif name == "signalling":
                found.append("signalling CPU")
            elif name.startswith("loadgen"):
                found.append("load generator CPU")
            else:
                found.append(f"{name} CPU")
    if generator_drops > 0.001 * max(1, received):
        found.append("load generator (drops on viewer sockets)")
        evidence.append(f"{generator_drops} datagrams dropped on full viewer sockets")
    if shard_drops > 0:
        found.append("shard ingress (drops on shard sockets)")
        evidence.append(f"{shard_drops} datagrams dropped on the shards' sockets")
    ours = sum(cpu.values())
    waited = sum(wait.values())
    if machine_busy >= MACHINE_SATURATED * cores or (machine_busy >= 0.8 * cores and waited >= WAIT_SATURATED):
        found.append(f"machine CPU ({cores} cores)")
        evidence.append(f"all cores {machine_busy:.2f}/{cores} busy ({ours:.2f} ours, "
                        f"{max(0.0, machine_busy - ours):.2f} other processes and kernel threads)")
    if waited >= 0.05:
        top = sorted(wait.items(), key=lambda kv: -kv[1])[:3]
        evidence.append("waiting for a core: " + ", ".join(f"{k} {v:.2f} s/s" for k, v in top))
    if not found:
        busiest = max(cpu.items(), key=lambda kv: kv[1]) if cpu else ("-", 0.0)
        return "none saturated", [f"busiest {busiest[0]} at {busiest[1]:.2f} cores",
                                  f"all cores {machine_busy:.2f}/{cores} busy ({ours:.2f} ours)"] + evidence
    return ", ".join(dict.fromkeys(found)), evidence


def mean_of(seconds: list[Second], attr: str) -> dict[str, float]:
    keys = {k for s in seconds for k in getattr(s, attr)}
    return {k: round(sum(getattr(s, attr).get(k, 0.0) for s in seconds) / max(1, len(seconds)), 3)
            for k in sorted(keys)}


async def build_layers(size: str) -> tuple[Any, list[tuple[str, Any]]]:
    from .clip import Clip, encode_audio, encode_video

    def build() -> tuple[Any, list[tuple[str, Any]]]:
        audio = tuple(encode_audio())
        layers = []
        for rid in LAYERS:
            w, h, bps = LAYER_SIZES[size][rid]
            layers.append((rid, Clip(tuple(encode_video(w, h, bps)), audio, w, h)))
        return layers[0][1], layers

    return await asyncio.to_thread(build)


async def start_workers(args: argparse.Namespace, profile: Profile, target: Any, run_dir: Path,
                        workers: list[WorkerHandle]) -> None:
    """Start the load-generator processes into ``workers`` (so that a failure still stops those started)."""
    for i in range(profile.procs):
        log = open(run_dir / f"loadgen{i}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.allhands", "--worker", "--url", target.base_url, "--room", args.room,
                "--query", f"layer={args.layer}", "--sample-every", str(args.sample_every),
                "--deadline-s", str(profile.deadline_s + 60),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=str(REPO),
                limit=JSON_LINE_LIMIT, env=dict(os.environ, PYTHONPATH=str(REPO)),
            )
        finally:
            log.close()
        workers.append(WorkerHandle(i, proc))
    # Ready once each has said its first status line.
    deadline = time.monotonic() + 30
    while any(not w.status for w in workers):
        if time.monotonic() > deadline or any(not w.alive for w in workers):
            raise RuntimeError(f"load generators did not start; see {run_dir}/loadgen*.log")
        await asyncio.sleep(0.1)


async def measure_window(run: Run, seconds: float, log: Any, start: float) -> dict[str, Any]:
    """One window at a steady viewer count: mark, wait, report."""
    target = run.target
    await asyncio.gather(*(w.call("mark") for w in run.workers))
    shards0 = await run.admin_shards()
    udp0, drops0 = snmp_udp(), procfs.udp_drops(target.media_ports())
    cpu0, busy0, t0 = run.cpu_now(), machine_busy_seconds(), time.monotonic()
    per_second = []
    end = t0 + seconds
    while time.monotonic() < end:
        await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
        s = await run.sample()
        per_second.append(s)
        run.print_second(s, "hold", start)
    t1 = time.monotonic()
    cpu1, busy1 = run.cpu_now(), machine_busy_seconds()
    udp1, drops1 = snmp_udp(), procfs.udp_drops(target.media_ports())
    shards1 = await run.admin_shards()
    rss = run.rss_now()
    reports = await asyncio.gather(*(w.call("report") for w in run.workers))
    dt = t1 - t0
    received = sum(r["totals"]["video"] + r["totals"]["audio"] for r in reports)
    lost = sum(r["totals"]["lost"] for r in reports)
    lat = [v / 1000 for r in reports for v in r["lat_us"]]
    frames = [f for r in reports for f in r["frames"]]
    by_id0 = {s["id"]: s for s in shards0}
    shard_rows = []
    for s in shards1:
        before = by_id0.get(s["id"], {})
        same = s.get("up") and before.get("up") and before.get("pid") == s.get("pid")
        shard_rows.append({
            "id": s["id"], "up": s.get("up"), "restarts": s.get("restarts"), "viewers": s.get("viewers"),
            "consumers": s.get("consumers"), "relays": s.get("relays"), "transports": s.get("transports"),
            "producers": s.get("producers"),
            "packets_out_per_s": round((s.get("packets_out", 0) - before.get("packets_out", 0)) / dt) if same else None,
            "packets_in_per_s": round((s.get("packets_in", 0) - before.get("packets_in", 0)) / dt) if same else None,
        })
    same_keys = [k for k in cpu1 if k in cpu0]
    return {
        "seconds": dt, "viewers": sum(r["viewers"] for r in reports),
        "measured_viewers": sum(r["measured_viewers"] for r in reports),
        "receiving": sum(r["receiving"] for r in reports), "video_only": sum(r["video_only"] for r in reports),
        "received": received, "received_per_s": received / dt, "lost": lost,
        "loss": lost / max(1, received + lost),
        "decrypt_failures": sum(r["totals"]["decrypt_failures"] for r in reports),
        "misordered": sum(r["totals"]["misordered"] for r in reports),
        "fps_per_viewer": (sum(frames) / len(frames) / dt) if frames else 0.0,
        "fps_min": (min(frames) / dt) if frames else 0.0,
        "lat_ms": lat, "latency_samples": len(lat),
        "generator_drops": sum(r["socket_drops"] for r in reports),
        "cpu": {k[0]: round((cpu1[k][0] - cpu0[k][0]) / dt, 3) for k in same_keys},
        "wait": {k[0]: round((cpu1[k][1] - cpu0[k][1]) / dt, 3) for k in same_keys},
        "machine_busy": (busy1 - busy0) / dt,
        "rcvbuf_errors": udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0),
        "sndbuf_errors": udp1.get("SndbufErrors", 0) - udp0.get("SndbufErrors", 0),
        "udp_in_errors": udp1.get("InErrors", 0) - udp0.get("InErrors", 0),
        "shard_drops": drops1 - drops0, "shards": shard_rows, "rss": rss, "per_second": per_second,
        "generator_lag_ms": (sorted(x.generator_loop_lag_ms for x in per_second)[len(per_second) // 2]
                             if per_second else 0.0),
    }


def window_problems(window: dict[str, Any], loss_limit: float) -> list[str]:
    """Why a window does not count as carried ([]: it does)."""
    problems = []
    if window["loss"] > loss_limit:
        problems.append(f"loss {100 * window['loss']:.2f} %")
    p50 = percentile(window["lat_ms"], 0.5)
    if p50 is not None and p50 > STANDING_QUEUE_MS:
        problems.append(f"median added latency {p50:.0f} ms")
    if window["receiving"] < 0.99 * window["viewers"]:
        problems.append(f"only {window['receiving']} of {window['viewers']} viewers got audio and video")
    return problems


async def trim_to(run: Run, keep: int) -> None:
    """Leave the newest viewers until ``keep`` remain, spread over the load generators."""
    counts = [r["viewers"] for r in await asyncio.gather(*(w.call("count") for w in run.workers))]
    excess = sum(counts) - keep
    if excess <= 0:
        return
    share = [0] * len(counts)
    for _ in range(excess):  # take from the fullest
        i = max(range(len(counts)), key=lambda j: counts[j] - share[j])
        share[i] += 1
    await asyncio.gather(*(w.call("trim", timeout_s=120, keep=counts[i] - share[i])
                           for i, w in enumerate(run.workers)))


@dataclass
class Ramp:
    """What one ramp did."""

    goal: int
    stop_reason: str
    reached: bool
    peak: int  # viewers connected when it stopped
    last_good: int  # viewers in its last healthy second
    seconds: list[Second]
    verdict: str  # who was saturated in its last seconds
    evidence: list[str]
    cpu: dict[str, float]
    wait: dict[str, float]


async def ramp_to(run: Run, goal: int, start: float, cores: int, deadline: float, phase: str) -> Ramp:
    """Join viewers at the profile's rate, spread over the load generators, until ``goal`` are
    in (or trying), or BAD_SECONDS unhealthy seconds in a row, a shard's death, a time cap."""
    profile, args = run.profile, run.args
    counts = [r["viewers"] for r in await asyncio.gather(*(w.call("count") for w in run.workers))]
    have = sum(counts)
    procs = len(run.workers)
    n = max(0, goal - have)
    per_worker = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    ramp_start = time.monotonic()
    restarts0 = dict(run.restarts)
    attempted0 = sum(w.status.get("attempted", 0) for w in run.workers)
    failed0 = sum(w.status.get("failed", 0) for w in run.workers)
    await asyncio.gather(*(w.call("ramp", count=per_worker[i], rate=profile.rate / procs,
                                  delay_s=i / profile.rate, max_in_flight=args.max_in_flight)
                           for i, w in enumerate(run.workers)))
    bad = 0
    last_good = have
    stop_reason = ""
    seconds: list[Second] = []
    while True:
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - (seconds[-1].t if seconds else ramp_start))))
        s = await run.sample()
        seconds.append(s)
        run.print_second(s, phase, start)
        if not all(w.alive for w in run.workers):
            stop_reason = "a load-generator process exited"
            break
        if not run.target.server.alive:
            raise RuntimeError("the server exited; see its log")
        if run.restarts != restarts0:
            stop_reason = "a shard died"
            break
        unhealthy = []
        if s.viewers >= MIN_VIEWERS_FOR_HEALTH:
            if s.loss > args.loss_limit:
                unhealthy.append(f"loss {100 * s.loss:.1f} %")
            if s.p50_ms is not None and s.p50_ms > STANDING_QUEUE_MS:
                unhealthy.append(f"median added latency {s.p50_ms:.0f} ms")
        tried, failed = s.attempted - attempted0, s.failed - failed0
        if tried >= 50 and failed > FAILURE_LIMIT * tried:
            unhealthy.append(f"{failed} of {tried} joins failed")
        if unhealthy:
            bad += 1
            if bad >= BAD_SECONDS:
                stop_reason = f"{BAD_SECONDS} s unhealthy: " + ", ".join(unhealthy)
                break
        else:
            bad = 0
            last_good = s.viewers
        if s.viewers + failed >= goal and s.in_flight == 0:
            stop_reason = f"reached {goal} viewers"
            break
        if time.monotonic() - ramp_start > profile.max_ramp_s:
            stop_reason = f"ramp time cap ({profile.max_ramp_s:.0f} s)"
            break
        if time.monotonic() > deadline - 60:
            stop_reason = "run deadline"
            break
    stops = await asyncio.gather(*(w.call("stop_ramp", timeout_s=60) for w in run.workers))
    stressed = seconds[-BAD_SECONDS:]
    cpu, wait = mean_of(stressed, "cpu"), mean_of(stressed, "wait")
    verdict, evidence = bottleneck(cpu, wait, sum(x.machine_busy for x in stressed) / max(1, len(stressed)), cores,
                                   sum(x.generator_drops for x in stressed), sum(x.shard_drops for x in stressed),
                                   sum(x.received for x in stressed),
                                   min((x.generator_loop_lag_ms for x in stressed), default=0.0))
    return Ramp(goal=goal, stop_reason=stop_reason, reached=stop_reason.startswith("reached"),
                peak=sum(r["viewers"] for r in stops), last_good=last_good, seconds=seconds, verdict=verdict,
                evidence=evidence, cpu=cpu, wait=wait)


def timeline(seconds: list[Second], start: float) -> list[list[Any]]:
    """Per second: t, viewers, received pkt/s, loss %, p50 ms, p99 ms, then cores of each process."""
    out = []
    for s in seconds:
        p50, p99 = s.p50_ms, s.p99_ms
        out.append([round(s.t - start, 1), s.viewers, s.received, round(100 * s.loss, 2),
                    None if p50 is None else round(p50, 1), None if p99 is None else round(p99, 1),
                    {k: round(v, 2) for k, v in s.cpu.items()}, round(s.machine_busy, 2)])
    return out


async def controller(args: argparse.Namespace, profile: Profile) -> dict[str, Any]:
    from .loadgen import LoadGen
    from .targets import SfuTarget, make_run_dir

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.monotonic()
    deadline = started + profile.deadline_s
    run_dir = make_run_dir()
    log(f"all-hands benchmark: logs in {run_dir}")
    cores = os.cpu_count() or 1
    t = time.monotonic()
    audio_clip, layers = await build_layers(args.clip)
    layer_kbps = {rid: round(c.video_bitrate_bps / 1000) for rid, c in layers}
    log(f"clip: {', '.join(f'{rid} {c.width}x{c.height} {layer_kbps[rid]} kbit/s' for rid, c in layers)} "
        f"+ Opus {audio_clip.audio_bitrate_bps / 1000:.0f} kbit/s (encoded in {time.monotonic() - t:.1f} s)")

    target = SfuTarget(args.impl, shard_core=None, other_core=None, run_dir=run_dir, shards=args.shards,
                       subscribe_query=f"layer={args.layer}", extra_env=dict(args.server_env),
                       source_dir=Path(args.server_src).resolve() if args.server_src else None)
    run = Run(args=args, profile=profile, log=log)
    result: dict[str, Any] = {"scenario": "all-hands", "server_shards": args.shards, "layer": args.layer,
                              "server_env": dict(args.server_env), "load_generator_processes": profile.procs,
                              "cores": cores, "layer_kbps": layer_kbps, "target_viewers": profile.viewers,
                              "probe_viewers": profile.max_viewers, "join_rate_target_per_s": profile.rate,
                              "run_dir": str(run_dir)}
    try:
        await target.start()
        run.target = target
        run.note_shards(await run.admin_shards())
        log(f"server: sfu serve --dev --shards {args.shards} on {target.base_url}, "
            f"shard pids {run.shard_pids}, signalling pid {target.signalling_pid}")

        gen = run.publisher_gen = LoadGen(target, audio_clip, room=args.room, simulcast=layers)
        await gen.start()
        publisher = gen.publisher
        log(f"presenter connected: simulcast {publisher.rids}, {publisher.nominal_pps:.0f} pkt/s nominal "
            f"({', '.join(f'{rid} {pps:.0f}' for rid, pps in publisher.layer_pps().items())} video + 50 audio)")
        await start_workers(args, profile, target, run_dir, run.workers)
        log(f"{len(run.workers)} load-generator process(es): pids {[w.pid for w in run.workers]}")
        await asyncio.sleep(1.0)  # the layers' SSRCs learnt, history rings filled
        rss0 = run.rss_now()
        restarts0 = dict(run.restarts)
        await run.sample()

        # --- ramp to the goal ----------------------------------------------------------
        ramp = await ramp_to(run, profile.viewers, started, cores, deadline, "ramp")
        # The rate achieved: viewers joined over the time from the first WHEP POST to the last
        # join completed (CLOCK_MONOTONIC is one clock for all processes).
        await asyncio.sleep(1.1)  # one more status line from each load generator
        attempted = sum(w.status.get("attempted", 0) for w in run.workers)
        failed = sum(w.status.get("failed", 0) for w in run.workers)
        firsts = [w.status["first_join_ns"] for w in run.workers if w.status.get("first_join_ns")]
        lasts = [w.status["last_joined_ns"] for w in run.workers if w.status.get("last_joined_ns")]
        ramp_s = (max(lasts) - min(firsts)) / 1e9 if firsts and lasts else 0.0
        join_rate = ramp.peak / ramp_s if ramp_s > 0 else 0.0
        join_ms = [v for x in ramp.seconds for v in x.join_ms]
        log(f"ramp: {ramp.peak} viewers in {ramp_s:.1f} s ({join_rate:.0f}/s; {failed} of {attempted} joins "
            f"failed); stopped: {ramp.stop_reason}; in its last seconds: {ramp.verdict} ({'; '.join(ramp.evidence)})")
        # Memory: RSS keeps its high-water mark when viewers leave, so it is read at the ramp's
        # peak (and again in the window, which counts when nobody left in between).
        rss_peak, restarted_in_ramp = run.rss_now(), run.restarts != restarts0
        trimmed = False
        if not ramp.reached and ramp.stop_reason.startswith(f"{BAD_SECONDS} s unhealthy"):
            log(f"back to the last good second's {ramp.last_good} viewers")
            await trim_to(run, min(ramp.peak, ramp.last_good))
            trimmed = True

        # --- hold and measure ------------------------------------------------------------
        windows = []
        while True:
            await asyncio.sleep(profile.settle_s)
            await run.sample()
            window = await measure_window(run, profile.window_s, log, started)
            problems = window_problems(window, args.loss_limit)
            windows.append({"viewers": window["viewers"], "problems": problems, "loss": round(window["loss"], 5),
                            "p50_ms": percentile(window["lat_ms"], 0.5), "p99_ms": percentile(window["lat_ms"], 0.99)})
            if (not problems or len(windows) > 2 or window["viewers"] <= MIN_VIEWERS_FOR_HEALTH
                    or run.restarts != restarts0
                    or time.monotonic() + profile.settle_s + profile.window_s + 60 > deadline):
                break
            keep = int(window["viewers"] * 0.85)
            log(f"window not carried ({', '.join(problems)}): down to {keep} viewers and measure again")
            await trim_to(run, keep)
            trimmed = True
        viewers = window["viewers"]
        if trimmed:
            rss1, memory_viewers = rss_peak, ramp.peak
        else:
            rss1, memory_viewers = window["rss"], viewers
        growth = {k: rss1.get(k, 0) - rss0.get(k, 0) for k in rss1}
        memory_valid = not restarted_in_ramp and memory_viewers > 0 and (trimmed or run.restarts == restarts0)
        verdict, evidence = bottleneck(window["cpu"], window["wait"], window["machine_busy"], cores,
                                       window["generator_drops"], window["shard_drops"], window["received"],
                                       window["generator_lag_ms"])
        log(f"window: {viewers} viewers, {window['receiving']} receiving; "
            f"{'carried' if not problems else 'NOT carried: ' + ', '.join(problems)}; {verdict} "
            f"({'; '.join(evidence)})")
        p50, p99 = percentile(window["lat_ms"], 0.5), percentile(window["lat_ms"], 0.99)

        # --- probe: keep joining to find the limit ---------------------------------------
        probe: Ramp | None = None
        if (profile.max_viewers > viewers and not problems and run.restarts == restarts0
                and time.monotonic() + 90 < deadline):
            probe = await ramp_to(run, profile.max_viewers, started, cores, deadline, "probe")
            log(f"probe: stopped at {probe.peak} viewers ({probe.stop_reason}); last healthy second "
                f"{probe.last_good}; in its last seconds: {probe.verdict} ({'; '.join(probe.evidence)})")

        # --- leave ---------------------------------------------------------------------
        t = time.monotonic()
        leaves = await asyncio.gather(*(w.call("leave", timeout_s=180) for w in run.workers))
        leave_s = time.monotonic() - t
        left = sum(r["left"] for r in leaves)
        await asyncio.sleep(1.0)
        shards_after = await run.admin_shards()
        remaining = sum(x.get("viewers") or 0 for x in shards_after)
        log(f"leave: {left} viewers DELETEd their sessions in {leave_s:.1f} s; the server holds {remaining} "
            f"viewer sessions a second later")

        died = {i: n - restarts0.get(i, 0) for i, n in run.restarts.items() if n != restarts0.get(i, 0)}
        limit = probe if probe is not None else ramp
        if probe is not None:
            max_viewers = probe.peak if probe.reached else probe.last_good
        else:
            max_viewers = viewers if not problems else min(ramp.last_good, viewers)
        if limit.stop_reason == "a shard died":
            bound_by = f"a shard died at {limit.peak} viewers (the supervisor's ping timeout) with {limit.verdict}"
        elif limit.reached and limit.verdict == "none saturated":
            bound_by = f"nothing: the goal of {limit.goal} viewers was reached with nothing saturated"
        elif limit.reached:
            bound_by = f"{limit.verdict} (reached the goal of {limit.goal})"
        else:
            bound_by = f"{limit.verdict} (stopped at {limit.peak} viewers: {limit.stop_reason})"
        result.update({
            "viewers": window["receiving"],  # joined, and got audio and video in the window
            "viewers_joined": viewers,
            "viewers_receiving": window["receiving"],
            "join_rate_per_s": round(join_rate, 1),
            "p50_added_latency_ms": round(p50, 2) if p50 is not None else None,
            "p99_added_latency_ms": round(p99, 2) if p99 is not None else None,
            "kib_per_viewer": round(sum(growth.values()) / memory_viewers, 1) if memory_valid else None,
            "max_viewers": max_viewers,
            "bound_by": bound_by,
            "bound_evidence": limit.evidence,
            "bound_cpu_cores": limit.cpu,
            "bound_cpu_wait_s_per_s": limit.wait,
            "carried": not problems,
            "window_problems": problems,
            "window_bottleneck": verdict,
            "window_evidence": evidence,
            "ramp_stop_reason": ramp.stop_reason,
            "probe_stop_reason": probe.stop_reason if probe else None,
            "probe_peak_viewers": probe.peak if probe else None,
            "shard_restarts": died,
            "joins_attempted": attempted,
            "join_failures": failed,
            "join_errors": {k: v for w in run.workers for k, v in w.status.get("errors", {}).items()},
            "join_ms_p50": round(percentile(join_ms, 0.5) or 0, 1),
            "join_ms_p99": round(percentile(join_ms, 0.99) or 0, 1),
            "ramp_s": round(ramp_s, 1),
            "loss": round(window["loss"], 5),
            "received_pkt_per_s": round(window["received_per_s"]),
            "fps_per_viewer": round(window["fps_per_viewer"], 1),
            "fps_min_viewer": round(window["fps_min"], 1),
            "decrypt_failures": window["decrypt_failures"],
            "misordered": window["misordered"],
            "latency_samples": window["latency_samples"],
            "consumers_per_shard": {str(x["id"]): x["consumers"] for x in window["shards"]},
            "viewers_per_shard": {str(x["id"]): x["viewers"] for x in window["shards"]},
            "shard_stats": window["shards"],
            "cpu_cores": window["cpu"],
            "cpu_wait_s_per_s": window["wait"],
            "machine_busy_cores": round(window["machine_busy"], 2),
            "udp_rcvbuf_errors": window["rcvbuf_errors"],
            "udp_sndbuf_errors": window["sndbuf_errors"],
            "shard_socket_drops": window["shard_drops"],
            "generator_socket_drops": window["generator_drops"],
            "generator_loop_lag_ms": window["generator_lag_ms"],
            "kib_per_viewer_by_process": {k: round(v / memory_viewers, 1) if memory_valid else None
                                          for k, v in growth.items()},
            "memory_viewers": memory_viewers,
            "rss_kib_before": rss0, "rss_kib_after": rss1,
            "windows": windows,
            "leave_s": round(leave_s, 1),
            "consumers_after_leave": {str(x["id"]): x.get("consumers") for x in shards_after},
            "viewer_sessions_after_leave": remaining,
            "window_s": round(window["seconds"], 1),
            "run_s": round(time.monotonic() - started, 1),
            "publisher_keyframe_requests": publisher.keyframe_requests,
            "timeline": timeline(ramp.seconds + (probe.seconds if probe else []), started),
        })
        return result
    finally:
        if run.workers:
            await asyncio.gather(*(w.stop() for w in run.workers), return_exceptions=True)
        if run.publisher_gen is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run.publisher_gen.close(), 10)
        await target.stop()


def summary(result: dict[str, Any]) -> str:
    lines = [
        "",
        f"held {result.get('viewers')} viewers ({'carried' if result.get('carried') else 'NOT carried'}); "
        f"most carried: {result.get('max_viewers')}; bound by: {result.get('bound_by')}",
        f"viewers {result.get('viewers')} (receiving audio+video: {result.get('viewers_receiving')}; probe peak "
        f"{result.get('probe_peak_viewers')}), joined at {result.get('join_rate_per_s')}/s "
        f"(target {result.get('join_rate_target_per_s')}/s; join p50 {result.get('join_ms_p50')} ms, "
        f"p99 {result.get('join_ms_p99')} ms, failures {result.get('join_failures')})",
        f"added latency p50 {result.get('p50_added_latency_ms')} ms, p99 {result.get('p99_added_latency_ms')} ms; "
        f"loss {100 * (result.get('loss') or 0):.3f} %; {result.get('fps_per_viewer')} fps per viewer; "
        f"{result.get('received_pkt_per_s')} pkt/s received",
        f"memory {result.get('kib_per_viewer')} KiB per viewer ({result.get('kib_per_viewer_by_process')})",
        f"viewers per shard {result.get('viewers_per_shard')}, consumers {result.get('consumers_per_shard')}; "
        f"CPU (cores) {result.get('cpu_cores')}, waiting for a core (s/s) {result.get('cpu_wait_s_per_s')}, "
        f"machine {result.get('machine_busy_cores')} busy",
        f"kernel (window): RcvbufErrors +{result.get('udp_rcvbuf_errors')}, SndbufErrors "
        f"+{result.get('udp_sndbuf_errors')} (all UDP sockets of the machine); "
        f"shard sockets +{result.get('shard_socket_drops')}, viewer sockets +{result.get('generator_socket_drops')}",
        f"limit: {result.get('bound_by')} [{'; '.join(result.get('bound_evidence', []))}]",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.allhands", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter window (under 10 minutes in all)")
    parser.add_argument("--viewers", type=int, help="viewers to join, hold and measure (default 2000)")
    parser.add_argument("--max-viewers", type=int,
                        help="then keep joining up to this many to find the limit (default 3000 quick, 5000 full; "
                             "with --viewers alone: no probe)")
    parser.add_argument("--rate", type=float, help="joins per second (default 100)")
    parser.add_argument("--procs", type=int, help="load-generator processes for the viewers (default 2)")
    parser.add_argument("--window", type=float, help="seconds of the measuring window")
    parser.add_argument("--settle", type=float, help="seconds between the ramp and the window")
    parser.add_argument("--max-ramp", type=float, help="seconds the ramp may take at most")
    parser.add_argument("--deadline", type=float, help="seconds the whole run may take at most")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--layer", default="l", choices=LAYERS, help="the viewers' ?layer=")
    parser.add_argument("--impl", default="cython", choices=("cython", "python"))
    parser.add_argument("--clip", default="default", choices=tuple(LAYER_SIZES),
                        help="layer sizes: default l 320x180 / m 640x360 / h 1280x720; small halves them")
    parser.add_argument("--room", default="allhands")
    parser.add_argument("--server-src", metavar="DIR",
                        help="run the sfu package from DIR (e.g. a `git worktree` of another commit, built) "
                             "instead of this checkout's")
    parser.add_argument("--server-env", metavar="SFU_X=V", action="append", default=[],
                        type=lambda kv: tuple(kv.split("=", 1)),
                        help="server configuration through its environment, e.g. SFU_SHARD_MAX_CPU=0.6 (repeatable)")
    parser.add_argument("--loss-limit", type=float, default=LOSS_LIMIT)
    parser.add_argument("--max-in-flight", type=int, default=64, help="joins in flight per load generator")
    parser.add_argument("--sample-every", type=int, default=50, help="viewers decrypt one packet in this many")
    # the load-generator process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--query", default="", help=argparse.SUPPRESS)
    parser.add_argument("--deadline-s", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument("--http-concurrency", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker and not (args.url or "").startswith("http://127.0.0.1"):
        parser.error("the load generator only talks to 127.0.0.1")
    return args


def profile_of(args: argparse.Namespace) -> Profile:
    base = QUICK if args.quick else FULL
    return Profile(
        viewers=args.viewers if args.viewers is not None else base.viewers,
        # --viewers alone: no probe; --max-viewers alone: probe from the profile's hold count.
        max_viewers=max(args.max_viewers if args.max_viewers is not None else
                        args.viewers if args.viewers is not None else base.max_viewers,
                        args.viewers if args.viewers is not None else base.viewers),
        rate=args.rate if args.rate is not None else base.rate,
        settle_s=args.settle if args.settle is not None else base.settle_s,
        window_s=args.window if args.window is not None else base.window_s,
        max_ramp_s=args.max_ramp if args.max_ramp is not None else base.max_ramp_s,
        deadline_s=args.deadline if args.deadline is not None else base.deadline_s,
        procs=max(1, args.procs if args.procs is not None else base.procs),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print progress, a summary and, last, the JSON line; return the result."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    import uvloop

    profile = profile_of(args)
    result = uvloop.run(asyncio.wait_for(controller(args, profile), profile.deadline_s + 120))
    print(summary(result), flush=True)
    print(json.dumps(result, separators=(", ", ": ")), flush=True)
    return result


if __name__ == "__main__":
    main()
