"""sfu-drain, the preStop hook of the Kubernetes manifests (deploy/docker/sfu_drain.py).

Its logic against a scripted admin API, then the script itself (run as the kubelet
runs it: a process, configured by the pod's SFU_* variables) against a real
``sfu serve`` with publishers on both of its shards, and with tokens.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import peers
from conftest import TEST_SECRET, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "docker" / "sfu_drain.py"

_spec = importlib.util.spec_from_file_location("sfu_drain", SCRIPT)
assert _spec is not None and _spec.loader is not None
sfu_drain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sfu_drain)


class FakeApi:
    """The admin API as a script: shards drain for ``drain_polls`` looks, or never."""

    def __init__(self, peers_by_shard: list[int], drain_polls: int = 2, refuse: set[int] = frozenset(),
                 stuck: set[int] = frozenset()) -> None:
        self.shards = [{"id": i, "peers": n, "draining": False, "up": True} for i, n in enumerate(peers_by_shard)]
        self.drain_polls, self.refuse, self.stuck = drain_polls, refuse, stuck
        self.calls: list[tuple[str, str]] = []
        self.left: dict[int, int] = {}

    def call(self, method: str, path: str) -> tuple[int, Any]:
        self.calls.append((method, path))
        if method == "GET":
            for shard_id in list(self.left):
                self.left[shard_id] -= 1
                if self.left[shard_id] <= 0 and shard_id not in self.stuck:
                    self.shards[shard_id].update(draining=False, peers=0)
                    del self.left[shard_id]
            return 200, [dict(s) for s in self.shards]
        shard_id = int(path.split("/")[3])
        if shard_id in self.refuse:
            return 409, "the only shard cannot drain: there is nowhere to move its peers"
        self.shards[shard_id]["draining"] = True
        self.left[shard_id] = self.drain_polls
        return 202, {"shard": shard_id, "peers": self.shards[shard_id]["peers"], "timeout_s": 30}


def _run(api: FakeApi, timeout_s: float = 10.0) -> tuple[int, list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    rc = sfu_drain.drain(api, timeout_s=timeout_s, poll_s=0.5, log=lambda event, **f: lines.append({"event": event, **f}),
                         clock=lambda: now[0], sleep=sleep)
    return rc, lines


def test_drains_every_busy_shard_at_once_then_waits() -> None:
    api = FakeApi([3, 0, 2], drain_polls=3)
    rc, lines = _run(api)
    assert rc == 0
    posts = [path for method, path in api.calls if method == "POST"]
    assert posts == ["/api/shards/0/drain", "/api/shards/2/drain"]  # the empty shard is left alone
    first_get_after_posts = next(i for i, c in enumerate(api.calls) if c[0] == "GET" and i > 0)
    assert first_get_after_posts > max(i for i, c in enumerate(api.calls) if c[0] == "POST")
    events = [line["event"] for line in lines]
    assert events == ["drain started", "drain started", "drain finished", "drain finished", "node drained"]


def test_nothing_to_drain() -> None:
    api = FakeApi([0, 0])
    assert _run(api) == (0, [{"event": "nothing to drain", "shards": 2}])
    assert [m for m, _ in api.calls] == ["GET"]


def test_a_refused_drain_is_logged_not_waited_for() -> None:
    api = FakeApi([4], refuse={0})  # a node with one shard: the API says 409
    rc, lines = _run(api)
    assert rc == 0
    assert lines[0]["event"] == "drain refused" and lines[0]["status"] == 409


def test_gives_up_at_the_timeout() -> None:
    api = FakeApi([1, 1], stuck={1})
    rc, lines = _run(api, timeout_s=5.0)
    assert rc == 1
    assert lines[-1]["event"] == "drain timed out" and lines[-1]["shards"] == [1]


def test_settings_from_the_pod_environment() -> None:
    assert sfu_drain.default_url({}) == "http://127.0.0.1:8080"
    assert sfu_drain.default_url({"SFU_HTTP_HOST": "0.0.0.0", "SFU_HTTP_PORT": "9000"}) == "http://127.0.0.1:9000"
    assert sfu_drain.default_url({"SFU_HTTP_HOST": "10.1.2.3"}) == "http://10.1.2.3:8080"
    assert sfu_drain.default_url({"SFU_HTTP_HOST": "fd00::1"}) == "http://[fd00::1]:8080"
    assert sfu_drain.default_timeout({"SFU_DRAIN_TIMEOUT_S": "12"}) == 22.0
    assert sfu_drain.default_timeout({}) == 40.0
    assert sfu_drain.admin_token({"SFU_ADMIN_TOKEN": " abc\n", "SFU_AUTH_SECRET": "s"}) == "abc"
    assert sfu_drain.admin_token({}) is None
    from sfu.auth import verify_token

    token = sfu_drain.admin_token({"SFU_AUTH_SECRET": TEST_SECRET})
    assert verify_token(TEST_SECRET, token, room="*", action="admin")


async def _script(server, *, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """sfu-drain as the kubelet runs it: a process with the pod's environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--poll", "0.2",
        env={**os.environ, "SFU_HTTP_HOST": "127.0.0.1", "SFU_HTTP_PORT": str(server.http_port), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode()


async def test_drains_a_real_server(tmp_path: Path) -> None:
    """Two rooms on two shards: both shards drain at once and come back fresh."""
    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2", "SFU_DRAIN_TIMEOUT_S": "2"})
    publishers = []
    try:
        for room in ("drain-a", "drain-b"):
            publishers.append(await peers.publish(server.base_url, room))
            await asyncio.sleep(1.2)  # a load report, so the second room goes to the idle shard
        status, shards = await asyncio.to_thread(sfu_drain.Api(server.base_url, None).call, "GET", "/api/shards")
        busy = sorted(s["id"] for s in shards if s["peers"])
        started = time.monotonic()
        rc, out = await _script(server, env={"SFU_DRAIN_TIMEOUT_S": "2"})
        took = time.monotonic() - started
        assert rc == 0, out
        lines = [json.loads(line) for line in out.splitlines()]
        events = [line["event"] for line in lines]
        assert events.count("drain started") == len(busy) and events[-1] == "node drained", out
        assert events.index("drain finished") > max(i for i, e in enumerate(events) if e == "drain started")
        print(f"drained shards {busy} in {took:.2f} s")
        status, shards = await asyncio.to_thread(sfu_drain.Api(server.base_url, None).call, "GET", "/api/shards")
        assert all(s["up"] and not s["draining"] for s in shards), shards
        assert server.metrics()["sfu_shard_drains_total"] == len(busy)
        assert sum(server.metrics()[f'sfu_shard_restarts_total{{shard="{i}"}}'] for i in (0, 1)) == 0
    finally:
        for publisher in publishers:
            await publisher.close()
        stop_server(server)


@pytest.mark.parametrize("secret, expected", [(TEST_SECRET, 0), ("not-the-secret-0123456789abcdef", 1)])
async def test_mints_its_admin_token_from_the_secret(tmp_path: Path, secret: str, expected: int) -> None:
    server = start_server(tmp_path, "--auth-secret", TEST_SECRET, env={"SFU_SHARDS": "2"})
    log = tmp_path / "container.log"
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--log", str(log),
            env={**{k: v for k, v in os.environ.items() if not k.startswith("SFU_")},
                 "SFU_HTTP_PORT": str(server.http_port), "SFU_AUTH_SECRET": secret},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == expected, out.decode()
        last = json.loads(log.read_text().splitlines()[-1])
        assert last["event"] == ("nothing to drain" if expected == 0 else "cannot list shards"), last
        if expected:
            assert last["status"] == 401
    finally:
        stop_server(server)
