"""Shared fixtures: a real ``sfu serve`` process on 127.0.0.1 with ports of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from bench.redis_server import RedisServer

sys.path.insert(0, str(Path(__file__).parent))  # tests/peers.py and friends


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value}, plus label-less sums under the bare name."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        values[key] = float(value)
        bare = key.split("{", 1)[0]
        if "{" in key:
            values[bare] = values.get(bare, 0.0) + float(value)
    return values


@dataclass
class SfuServer:
    base_url: str
    http_port: int
    rtc_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> SfuServer:
    """``sfu serve`` with free ports; ``host`` (HTTP and RTC) may be a test namespace's veth address."""
    http_port = free_port()
    rtc_port = free_port(socket.SOCK_DGRAM)
    log_path = tmp_path / f"sfu-{http_port}.log"
    log_file = open(log_path, "wb")
    hosts = [] if host == "127.0.0.1" else ["--http-host", host, "--rtc-host", host]
    process = subprocess.Popen(
        [sys.executable, "-m", "sfu", "serve", *hosts, "--http-port", str(http_port),
         "--rtc-port", str(rtc_port), *args],
        stdout=log_file, stderr=subprocess.STDOUT,
        env={**os.environ, "SFU_SHARDS": "1", **(env or {})},  # one shard unless a test asks for more
    )
    server = SfuServer(f"http://{host}:{http_port}", http_port, rtc_port, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sfu serve exited {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.base_url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"sfu serve did not come up on {host}:\n{server.log()}")


def stop_server(server: SfuServer, timeout_s: float = 5.0) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for cluster tests (the directory)."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def sfu_server(tmp_path: Path) -> Iterator[SfuServer]:
    """A dev-mode server (no auth), one shard."""
    server = start_server(tmp_path, "--dev")
    yield server
    stop_server(server)


TEST_SECRET = "test-secret-0123456789abcdef0123456789"


@pytest.fixture
def sfu_auth_server(tmp_path: Path) -> Iterator[SfuServer]:
    """A server that requires tokens signed with TEST_SECRET."""
    server = start_server(tmp_path, "--auth-secret", TEST_SECRET)
    yield server
    stop_server(server)


@pytest.fixture(autouse=True)
def _collect_garbage_first(request: pytest.FixtureRequest) -> None:
    """Tests with real peers in this process measure media timing; the garbage earlier
    tests left (aiortc peers are cyclic) would otherwise be collected in one pause of up
    to half a second in the middle of a measurement, stalling this process's publisher."""
    if any(part in request.node.nodeid for part in ("tests/e2e/", "tests/signalling/", "tests/cluster/",
                                                    "tests/relay/", "tests/recording/")):
        import gc

        gc.collect()
