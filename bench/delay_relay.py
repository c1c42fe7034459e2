"""A userspace UDP delay relay: every datagram, both ways, leaves ``delay`` after it arrived.

This kernel has no netem, so the path delay between two sites is a small process
in front of a UDP service (the far site's QUIC relay): it listens on one
address, gives each client its own upstream socket towards the target, and sends
every datagram on, in either direction, ``--delay-ms`` after the kernel received
it (the arrival time is the kernel's receive timestamp, SO_TIMESTAMPNS, so how
late this process reads does not count; only how late it sends does). Optional
random loss each way (``--loss``; the two-site harness drops with iptables
instead).

Written for a small jitter of its own: one process doing nothing else, one
``select`` with a microsecond timeout for the next datagram due (epoll's timeout
is in milliseconds), timer slack set to 1 µs, and optionally SCHED_FIFO
(``--realtime``). It measures itself: the lateness of every send against its due
time (p50/p99/max in the stats), which is delay that a benchmark would otherwise
count as the system's.

    python -m bench.delay_relay --listen 10.0.0.2:4434 --target 10.0.0.2:4433 --delay-ms 30 \
        [--loss 0.01] [--stats stats.json] [--realtime]

Stats (JSON, written to ``--stats`` every second and at exit, and printed as the
last line on stdout at SIGTERM/SIGINT): ``forward`` (client -> target) and
``back`` (target -> client), each ``received`` / ``sent`` / ``dropped`` /
``bytes``; ``late_us`` {p50, p99, max, n}; ``clients``.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from bench.loadgen import realtime_minus_monotonic_ns

SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")
PR_SET_TIMERSLACK = 29
MAX_LATE_SAMPLES = 2_000_000
RCVBUF = 4 << 20


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _percentile(sorted_values: list[int], q: float) -> int | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class DelayRelay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay_s: float, loss: float = 0.0,
                 seed: int | None = None) -> None:
        self.target = target
        self.delay_ns = int(delay_s * 1e9)
        self.loss = loss
        self.rnd = random.Random(seed)
        self.listener = self._socket()
        self.listener.bind(listen)
        self.upstreams: dict[tuple[str, int], socket.socket] = {}  # client address -> its socket to the target
        self.client_of: dict[int, tuple[str, int]] = {}  # upstream fd -> client address
        self.socks: dict[int, socket.socket] = {self.listener.fileno(): self.listener}
        self.queue: list[tuple[int, int, socket.socket, bytes, tuple[str, int] | None, str]] = []
        self.seq = 0
        self.counts = {d: {"received": 0, "sent": 0, "dropped": 0, "bytes": 0} for d in ("forward", "back")}
        self.late_ns: list[int] = []
        self.offset_ns = realtime_minus_monotonic_ns()
        self.running = True

    @staticmethod
    def _socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        return s

    def _upstream(self, client: tuple[str, int]) -> socket.socket:
        s = self.upstreams.get(client)
        if s is None:
            s = self._socket()
            s.bind((self.listener.getsockname()[0], 0))
            s.connect(self.target)
            self.upstreams[client] = s
            self.client_of[s.fileno()] = client
            self.socks[s.fileno()] = s
        return s

    def _read(self, sock: socket.socket) -> None:
        is_listener = sock is self.listener
        direction = "forward" if is_listener else "back"
        counts = self.counts[direction]
        for _ in range(256):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(65536, 64)
            except BlockingIOError:
                return
            except OSError:  # ICMP port unreachable queued on a connected upstream socket
                continue
            arrival = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = TIMESPEC.unpack_from(payload)
                    arrival = sec * 1_000_000_000 + nsec - self.offset_ns
            if not arrival:
                arrival = time.monotonic_ns()
            counts["received"] += 1
            if self.loss and self.rnd.random() < self.loss:
                counts["dropped"] += 1
                continue
            if is_listener:
                out, to = self._upstream(addr), None
            else:
                out, to = self.listener, self.client_of[sock.fileno()]
            self.seq += 1
            heapq.heappush(self.queue, (arrival + self.delay_ns, self.seq, out, data, to, direction))

    def _send_due(self) -> None:
        queue = self.queue
        now = time.monotonic_ns()
        while queue and queue[0][0] <= now:
            due, _, sock, data, to, direction = heapq.heappop(queue)
            try:
                if to is None:
                    sock.send(data)
                else:
                    sock.sendto(data, to)
            except OSError:
                self.counts[direction]["dropped"] += 1
                continue
            sent_at = time.monotonic_ns()
            counts = self.counts[direction]
            counts["sent"] += 1
            counts["bytes"] += len(data)
            if len(self.late_ns) < MAX_LATE_SAMPLES:
                self.late_ns.append(sent_at - due)
            now = sent_at

    def stats(self) -> dict:
        late = sorted(self.late_ns)
        us = (lambda v: None if v is None else round(v / 1000, 1))
        return {"delay_ms": self.delay_ns / 1e6, "loss": self.loss, "forward": dict(self.counts["forward"]),
                "back": dict(self.counts["back"]), "clients": len(self.upstreams), "queued": len(self.queue),
                "late_us": {"p50": us(_percentile(late, 0.5)), "p99": us(_percentile(late, 0.99)),
                            "max": us(late[-1] if late else None), "n": len(late)}}

    def run(self, stats_path: Path | None = None) -> None:
        next_stats = time.monotonic() + 1.0
        while self.running:
            timeout = 0.5
            if self.queue:
                timeout = max(0.0, (self.queue[0][0] - time.monotonic_ns()) / 1e9)
            try:
                ready, _, _ = select.select(list(self.socks), [], [], min(timeout, 0.5))
            except InterruptedError:
                continue
            for fd in ready:
                self._read(self.socks[fd])
            self._send_due()
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + 1.0
                self.offset_ns = realtime_minus_monotonic_ns()
                if stats_path is not None:
                    write_stats(stats_path, self.stats())

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


def write_stats(path: Path, stats: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


def _tune(realtime: bool) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(1000), 0, 0, 0)  # 1 µs instead of 50 µs
    except (OSError, AttributeError):
        pass
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except (OSError, AttributeError) as exc:
            print(f"delay relay: no SCHED_FIFO ({exc}); running at normal priority", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delay_relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, type=_addr, help="HOST:PORT clients send to")
    parser.add_argument("--target", required=True, type=_addr, help="HOST:PORT of the service behind it")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay, applied each way")
    parser.add_argument("--loss", type=float, default=0.0, help="random loss each way (default none)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stats", type=Path, help="JSON stats file, rewritten every second and at exit")
    parser.add_argument("--realtime", action="store_true", help="SCHED_FIFO priority 10 (root)")
    args = parser.parse_args(argv)
    _tune(args.realtime)
    relay = DelayRelay(args.listen, args.target, args.delay_ms / 1000, args.loss, args.seed)

    def stop(_signum: int, _frame: object) -> None:
        relay.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"event": "listening", "listen": "%s:%d" % relay.listener.getsockname()}), flush=True)
    try:
        relay.run(args.stats)
    finally:
        stats = relay.stats()
        if args.stats is not None:
            write_stats(args.stats, stats)
        relay.close()
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
