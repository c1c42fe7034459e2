"""The systems the fanout benchmark measures, behind one small interface.

A :class:`Target` starts and stops a server, negotiates a publisher and
viewers for the load generator's raw peers, and says which processes to charge
for CPU and memory. Everything else (ICE, DTLS, SRTP, counting packets) is the
load generator's and identical for every system, so the figures compare.

Implemented: our SFU (Cython or pure-Python fast path) and an aiortc
``MediaRelay`` server (``bench/baselines/aiortc_relay.py``), both WHIP/WHEP,
and Janus VideoRoom (``bench/baselines/janus.py``). Janus's publishers offer
like WHIP, but Janus makes the offer to its subscribers, which is why
``subscribe`` takes our :class:`LocalPeer` facts rather than an SDP string.
Peers bind ``peer_host``: 127.0.0.1, or our end of Janus's veth pair.
"""

from __future__ import annotations

import abc
import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import aiohttp

from . import procfs
from .sdp import LocalPeer, RemotePeer

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 20.0


class TargetError(Exception):
    pass


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int, kind: int = socket.SOCK_DGRAM) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 right now (shard i binds first + i)."""
    for _ in range(100):
        first = free_port(kind)
        if first + count - 1 > 65535:
            continue
        held = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, kind)
                held.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise TargetError(f"no {count} consecutive free ports")


class Target(abc.ABC):
    """One system under test."""

    name: str = ""  # key in the JSON summary: "ours", "python", "aiortc", "janus"
    label: str = ""  # row in the table
    ice_lite: bool = True  # False: the server sends its own ICE checks, which our peers answer
    stamps_survive: bool = True  # payload forwarded byte for byte (False for re-encoding servers)
    peer_host: str = "127.0.0.1"  # the address the load generator's sockets bind and advertise
    core: int = 1  # the core the server is pinned to

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, room: str, local: LocalPeer) -> RemotePeer:
        """Negotiate the synthetic publisher; return what its raw peer needs to connect."""

    @abc.abstractmethod
    async def subscribe(self, room: str, local: LocalPeer) -> RemotePeer:
        """Negotiate one viewer (retrying while the room has nothing published yet)."""

    @abc.abstractmethod
    async def end_session(self, remote: RemotePeer) -> None:
        """End a viewer's or the publisher's session, so the server stops sending to it at once."""

    @abc.abstractmethod
    def cpu_pids(self) -> list[int]:
        """Processes whose CPU time is the cost of forwarding (for us: the shard only)."""

    def memory_pid(self) -> int | None:
        """The process whose RSS grows per consumer (None: not measured)."""
        pids = self.cpu_pids()
        return pids[0] if pids else None

    def media_ports(self) -> set[int]:
        """The server's UDP ports, to read its kernel receive-queue drops."""
        return set()

    async def packets_sent(self) -> int | None:
        """The server's own count of RTP packets sent to viewers, as a cross-check (None: none)."""
        return None


class WhipWhepTarget(Target):
    """Any server with WHIP/WHEP at ``base_url``; subclasses also run the server process."""

    def __init__(self, base_url: str, *, concurrency: int = 32, subscribe_query: str = "",
                 token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.subscribe_query = subscribe_query  # e.g. "layer=l": appended to every WHEP POST
        # A bearer token for every WHIP/WHEP request (a server outside --dev; one token
        # granting publish and subscribe on the room, or the admin token, does for all).
        self.auth_headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        )

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _post(self, path: str, local: LocalPeer, retry_409_s: float = 10.0) -> RemotePeer:
        assert self._http is not None, "start() first"
        deadline = time.monotonic() + retry_409_s
        while True:
            async with self._http.post(self.base_url + path, data=local.offer(),
                                       headers={"Content-Type": "application/sdp", **self.auth_headers}) as r:
                text = await r.text()
                if r.status == 201:
                    location = r.headers.get("Location", "")
                    if location.startswith("/"):
                        location = self.base_url + location
                    return RemotePeer.from_answer(text, location)
                if r.status == 409 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    continue
                raise TargetError(f"POST {path}: {r.status} {text.strip()[:200]}")

    async def publish(self, room: str, local: LocalPeer) -> RemotePeer:
        return await self._post(f"/whip/{room}", local)

    async def subscribe(self, room: str, local: LocalPeer) -> RemotePeer:
        query = f"?{self.subscribe_query}" if self.subscribe_query else ""
        return await self._post(f"/whep/{room}{query}", local)

    async def end_session(self, remote: RemotePeer) -> None:
        if self._http is None or not remote.location:
            return
        try:
            async with self._http.delete(remote.location, headers=self.auth_headers) as r:
                await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass

    def cpu_pids(self) -> list[int]:
        return []


class _ServerProcess:
    """A server started under ``taskset -c <core>`` (``core`` None: unpinned), its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], core: int | None, log_path: Path,
                 cwd: Path = REPO) -> None:
        self.argv = argv if core is None else ["taskset", "-c", str(core), *argv]
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        log = open(self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=str(self.cwd), stdout=log, stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            log.close()
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait_http(self, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise TargetError(f"server exited early; see {self.log_path}")
                try:
                    async with http.get(url) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.2)
        raise TargetError(f"server not ready after {START_TIMEOUT_S:.0f} s; see {self.log_path}")

    async def stop(self, extra_pids: list[int] | None = None,
                   still_ours: Callable[[int], bool] | None = None) -> None:
        """SIGTERM and wait; then SIGKILL ``extra_pids`` (children it should have stopped itself)
        that ``still_ours`` (if given) confirms are still those children, not a reused pid."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 8.0)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for pid in extra_pids or []:
            if still_ours is not None and not still_ours(pid):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class SfuTarget(WhipWhepTarget):
    """Our server in ``--dev`` mode (no tokens).

    By default (the fanout benchmark) one shard, the whole server started under
    ``taskset`` on the shard's core; once the shard is up, signalling (and its
    threads) move to the load generator's core, so the shard's core runs nothing
    but the shard. ``shards`` > 1 (or ``shard_core`` None) runs the server
    unpinned, its shards wherever the kernel puts them (the all-hands benchmark).

    ``impl`` selects the fast path through ``SFU_PURE_PYTHON`` (inherited by
    the shard). ``source_dir``: run the ``sfu`` package found there (a checkout
    of another commit, with its built extension) instead of this repository's.
    """

    def __init__(self, impl: str, *, shard_core: int | None, other_core: int | None, run_dir: Path,
                 shards: int = 1, subscribe_query: str = "", extra_env: dict[str, str] | None = None,
                 source_dir: Path | None = None) -> None:
        self.impl = impl
        self.name = "ours" if impl == "cython" else "python"
        self.label = f"ours ({impl} fast path)"
        self.shards = shards
        self.http_port = free_port()
        self.rtc_port = free_port_range(shards) if shards > 1 else free_port(socket.SOCK_DGRAM)
        super().__init__(f"http://127.0.0.1:{self.http_port}", subscribe_query=subscribe_query)
        env = dict(os.environ, SFU_PURE_PYTHON="1" if impl == "python" else "0", **(extra_env or {}))
        if source_dir is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source_dir), env.get("PYTHONPATH")]))
        pinned = shards == 1 and shard_core is not None
        self.server = _ServerProcess(
            [sys.executable, "-m", "sfu", "serve", "--dev", "--http-port", str(self.http_port),
             "--rtc-port", str(self.rtc_port), "--shards", str(shards), "--log-level", "warning"],
            env, shard_core if pinned else None, run_dir / f"sfu-{impl}.log", cwd=source_dir or REPO,
        )
        self.core = shard_core if pinned else -1
        self.other_core = other_core if pinned else None
        self.shard_pid: int | None = None
        self.shard_pids: list[int] = []

    async def start(self) -> None:
        pid = await self.server.start()
        await self.server.wait_http(self.base_url + "/healthz")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # shards say Hello before /healthz answers; allow a moment all the same
            shards = sorted(c for c in procfs.children(pid) if "sfu.shard.main" in procfs.cmdline(c))
            if len(shards) == self.shards or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if len(shards) != self.shards:
            await self.server.stop(shards)
            raise TargetError(f"expected {self.shards} shard process(es) under pid {pid}, found {shards}")
        self.shard_pids = shards
        self.shard_pid = shards[0]
        if self.other_core is not None:
            procfs.set_affinity_all_threads(pid, {self.other_core})
        await super().start()

    @property
    def signalling_pid(self) -> int | None:
        return self.server.proc.pid if self.server.proc is not None else None

    def _is_our_shard(self, pid: int) -> bool:
        """A shard of this server: its command line names one of our UDP ports."""
        try:
            argv = procfs.cmdline(pid).split()
        except OSError:
            return False
        ports = {str(p) for p in self.media_ports()}
        return "sfu.shard.main" in argv and any(a == "--rtc-port" and b in ports for a, b in zip(argv, argv[1:]))

    async def stop(self) -> None:
        await super().stop()
        pids = set(self.shard_pids)
        if self.server.alive and self.server.proc is not None:  # shards restarted by its supervisor
            pids.update(c for c in procfs.children(self.server.proc.pid) if self._is_our_shard(c))
        await self.server.stop(sorted(pids), still_ours=self._is_our_shard)

    def cpu_pids(self) -> list[int]:
        return list(self.shard_pids)

    def media_ports(self) -> set[int]:
        return {self.rtc_port + i for i in range(self.shards)}

    async def packets_sent(self) -> int | None:
        """``sfu_rtp_packets_sent_total`` from /metrics (a GetStats round trip to the shard)."""
        assert self._http is not None
        try:
            async with self._http.get(self.base_url + "/metrics") as r:
                text = await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None
        total = None
        for line in text.splitlines():
            if line.startswith("sfu_rtp_packets_sent_total"):
                total = (total or 0) + int(float(line.rsplit(" ", 1)[1]))
        return total


class AiortcRelayTarget(WhipWhepTarget):
    """``bench/baselines/aiortc_relay.py`` in one process on the shard's core."""

    name = "aiortc"
    label = "aiortc MediaRelay"
    ice_lite = False
    stamps_survive = False  # it decodes and re-encodes: our payload stamps do not come through

    def __init__(self, *, core: int, run_dir: Path) -> None:
        self.http_port = free_port()
        super().__init__(f"http://127.0.0.1:{self.http_port}", concurrency=4)
        self.server = _ServerProcess(
            [sys.executable, "-m", "bench.baselines.aiortc_relay", "--http-port", str(self.http_port)],
            dict(os.environ), core, run_dir / "aiortc-relay.log",
        )
        self.core = core
        self.pid: int | None = None

    async def start(self) -> None:
        self.pid = await self.server.start()
        await self.server.wait_http(self.base_url + "/healthz")
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.server.stop()

    def cpu_pids(self) -> list[int]:
        return [self.pid] if self.pid else []


class JanusVideoRoomTarget(Target):
    """Janus VideoRoom (Debian's ``janus``), driven through ``bench/baselines/janus.py``.

    Janus 1.1.2 gathers no ICE candidates on ``lo``, so it runs in a network
    namespace joined to ours by a veth pair (198.18.0.1 here, 198.18.0.2
    there; RFC 2544 benchmarking addresses, nothing leaves the machine), ICE-lite,
    pinned with ``taskset`` to the shard core. ``event_loops = 1`` puts all
    its peers on one loop thread; without it Janus runs a thread per handle.
    Publishing is WHIP-like (our offer, its answer), but Janus makes the offer
    to its subscribers, so ``subscribe`` answers Janus's offer with
    ``LocalPeer.answer`` and returns the facts of that offer.
    """

    ice_lite = True  # configured so by bench/baselines/janus.py

    def __init__(self, *, event_loops: int | None, core: int) -> None:
        from .baselines import janus

        self._janus = janus
        self.event_loops = event_loops
        self.name = "janus" if event_loops == 1 else "janus_default"
        self.label = "Janus VideoRoom" + (" (event_loops=1)" if event_loops == 1 else " (default threads)")
        self.peer_host = janus.HOST_ADDR
        self.core = core
        self.server = janus.JanusServer(event_loops=event_loops, cpu=core)
        self.client: "janus.VideoRoomClient | None" = None
        self.pid: int | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        self.pid = self.server.pid
        self.client = self._janus.VideoRoomClient(self.server.api)
        await self.client.__aenter__()

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None
        await asyncio.to_thread(self.server.stop)

    async def publish(self, room: str, local: LocalPeer) -> RemotePeer:
        assert self.client is not None
        return RemotePeer.from_answer(await self.client.publish(local.offer()))

    async def subscribe(self, room: str, local: LocalPeer) -> RemotePeer:
        assert self.client is not None
        offered: list[RemotePeer] = []

        async def answer_for(offer: str) -> str:
            offered.append(RemotePeer.from_answer(offer))  # our DTLS role: client (Janus offers actpass)
            return local.answer(offer)

        handle = await self.client.subscribe(answer_for)
        remote = offered[0]
        remote.location = f"janus-handle:{handle}"
        return remote

    async def end_session(self, remote: RemotePeer) -> None:
        if self.client is None or not remote.location.startswith("janus-handle:"):
            return
        try:
            await self.client.detach(int(remote.location.split(":", 1)[1]))
        except Exception:  # Janus already dropped it, or is going away
            pass

    def cpu_pids(self) -> list[int]:
        return [self.pid] if self.pid else []


def make_run_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fanout-bench-"))
