"""Two sites in two network namespaces joined by one veth pair, with a delayed, lossy path.

A reusable harness for cross-site tests and benchmarks (needs root: ``ip netns``,
veth, iptables; this kernel has no netem, so the delay is a userspace relay):

- **Sites**: namespaces ``sfu-a-<run>`` and ``sfu-b-<run>``, ``lo`` up in each, joined by
  one veth pair with a /30 from 10.0.0.0/8 chosen at random per run (``.1`` is A, ``.2``
  is B). Everything a site runs binds its veth address; traffic between two processes
  of one site goes over that site's ``lo``, only traffic between sites crosses the veth.
- **Loss**: an iptables rule on INPUT in each namespace drops UDP arriving on the veth
  with probability ``loss`` (``-m statistic --mode random``), so each direction loses
  ``loss``. TCP is exempt: signalling, the nodes' internal API and Redis are reliable
  and only slowed by retransmissions, which would measure TCP, not the media path.
- **Delay**: ``bench/delay_relay.py``, one process per node started with ``delayed=True``,
  inside the node's site in front of its QUIC relay: the node advertises the delay
  relay's port as its ``quic_public_port``, so a QUIC relay that dials it (the side with
  out-flows: the publisher's node) goes through the delay relay, which holds each
  datagram ``delay_ms`` in each direction (one-way delay, both ways). Only QUIC crosses
  the delay: HTTP between nodes and Redis go over the veth directly (control plane).
  The relay measures its own lateness (``SiteNode.delay_stats()['late_us']``).
- **Processes**: anything spawned in a site (``Site.spawn``, ``Site.python``) runs under
  ``ip netns exec`` in its own session, with the repository on ``PYTHONPATH``; its stdout
  is collected line by line (``SiteProcess.lines``, ``wait_json``, ``last_json``), stderr
  goes to a log file in the run directory. CLOCK_MONOTONIC is the same in every namespace,
  so send stamps taken in one site compare with arrival times taken in the other.
- **Teardown** (leaving the ``with`` block, on error too): every process stopped (SIGTERM,
  then SIGKILL to its process group), any process still inside a namespace killed
  (``ip netns pids``), the iptables rules deleted, the namespaces (and with them the
  veth pair) deleted. ``leftovers(run_id)`` says what of a run is still there.

Example (node A publishes, node B has viewers)::

    with NetSites(delay_ms=30, loss=0.01) as sites:
        redis = sites.start_redis("a")
        a = sites.start_node("a", redis_url=redis.url)
        b = sites.start_node("b", redis_url=redis.url)
        pub = sites.a.python("bench.latency_peer", "publish", "--url", a.url, ...)
        out = sites.b.run_python("my_viewer.py", "--url", b.url, timeout=60)  # its stdout
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.client
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

HTTP_PORT = 8080
RTC_PORT = 50000
QUIC_PORT = 4433
QUIC_PUBLIC_PORT = 4434  # the delay relay in front of QUIC_PORT
REDIS_PORT = 6379


class NetSitesError(Exception):
    pass


def _run(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NetSitesError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Call ``fn`` in a thread that has entered ``netns`` (sockets it creates stay in it)."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def python_argv(target: str, *args: str) -> list[str]:
    """``python -m target`` for a module name, ``python target`` for a script path."""
    if target.endswith(".py") or os.sep in target:
        return [sys.executable, "-u", target, *args]
    return [sys.executable, "-u", "-m", target, *args]


class SiteProcess:
    """A process running inside a site: stdout collected by a thread, stderr in ``log_path``."""

    def __init__(self, site: "Site", argv: list[str], *, name: str, env: dict[str, str], cwd: Path,
                 log_path: Path, stdout_to_log: bool = False) -> None:
        self.site = site
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                site.exec_prefix + argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                stdout=log if stdout_to_log else subprocess.PIPE, stderr=log if not stdout_to_log else subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        self.pid = self.proc.pid  # `ip netns exec` execs: this is the command's own pid
        self._reader: threading.Thread | None = None
        if not stdout_to_log:
            self._reader = threading.Thread(target=self._read, name=f"stdout-{name}", daemon=True)
            self._reader.start()
        else:
            self._eof = True

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_line(self, predicate: Callable[[str], bool] | str, timeout: float = 30.0) -> str:
        """The first stdout line (already read or to come) for which ``predicate`` holds
        (a string: the line contains it); NetSitesError on timeout or if the process exits first."""
        test = (lambda line: predicate in line) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if test(line):
                        return line
                seen = len(self.lines)
                if self._eof:
                    raise NetSitesError(f"{self.name} exited ({self.proc.poll()}) without the line we wait for; "
                                        f"log {self.log_path}:\n{self.log()[-2000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NetSitesError(f"{self.name}: no such line in {timeout:.0f} s; log {self.log_path}")
                self._cond.wait(min(left, 0.5))

    def wait_json(self, event: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The first stdout line that is a JSON object (with ``"event": event`` if given)."""
        def test(line: str) -> bool:
            obj = _json_object(line)
            return obj is not None and (event is None or obj.get("event") == event)
        return json.loads(self.wait_line(test, timeout))

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (and the last of its stdout); its return code."""
        rc = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return rc

    def last_json(self) -> dict[str, Any] | None:
        with self._cond:
            for line in reversed(self.lines):
                obj = _json_object(line)
                if obj is not None:
                    return obj
        return None

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for a clean exit and return the last JSON line of its stdout."""
        try:
            rc = self.wait(timeout)
        except subprocess.TimeoutExpired:
            raise NetSitesError(f"{self.name} still running after {timeout:.0f} s; log {self.log_path}") from None
        obj = self.last_json()
        if rc != 0 or obj is None:
            raise NetSitesError(f"{self.name} exited {rc} ({'no JSON line' if obj is None else 'with an error'}); "
                                f"log {self.log_path}:\n{self.log()[-3000:]}")
        return obj

    def send_signal(self, signum: int) -> None:
        if self.alive:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0, signum: int = signal.SIGTERM) -> int | None:
        """``signum`` (SIGTERM), wait up to ``timeout``, then SIGKILL; then SIGKILL whatever is
        left of its process group (children it should have stopped itself)."""
        if self.alive:
            self.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in _netns_pids(self.site.netns):  # what is left of its session: children it did not stop
            try:
                if os.getpgid(pid) == self.pid:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode


def _json_object(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class _NsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, netns: str, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        sock = in_netns(self.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Site:
    """One namespace: its name, veth, address, and ways to run things in it."""

    def __init__(self, sites: "NetSites", name: str, netns: str, veth: str, addr: str) -> None:
        self.sites = sites
        self.name = name
        self.netns = netns
        self.veth = veth
        self.addr = addr
        self.exec_prefix = ["ip", "netns", "exec", netns]
        self.processes: list[SiteProcess] = []

    def __repr__(self) -> str:
        return f"Site({self.name!r}, netns={self.netns!r}, addr={self.addr!r})"

    # --- processes ----------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["NETSITES_SITE"] = self.name
        env["NETSITES_ADDR"] = self.addr
        env.update(extra or {})
        return env

    def spawn(self, argv: list[str], *, name: str | None = None, env: dict[str, str] | None = None,
              cwd: Path | str = REPO, stdout_to_log: bool = False) -> SiteProcess:
        """Start ``argv`` in this site (environment: ours + ``env``, the repository on
        PYTHONPATH, NETSITES_SITE / NETSITES_ADDR set). Stopped at teardown if still running."""
        self.sites._check_open()
        name = name or f"{self.name}-{Path(argv[0]).name}-{len(self.processes)}"
        log_path = self.sites.run_dir / f"{name}.log"
        proc = SiteProcess(self, argv, name=name, env=self.env(env), cwd=Path(cwd), log_path=log_path,
                           stdout_to_log=stdout_to_log)
        self.processes.append(proc)
        self.sites.processes.append(proc)
        return proc

    def python(self, target: str, *args: str, **kwargs: Any) -> SiteProcess:
        """``spawn`` a Python module (``"bench.latency_peer"``) or script (``"x/y.py"``), unbuffered."""
        short = Path(target).stem if target.endswith(".py") or os.sep in target else target.split(".")[-1]
        kwargs.setdefault("name", f"{self.name}-{short}-{len(self.processes)}")
        return self.spawn(python_argv(target, *args), **kwargs)

    def run(self, argv: list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None,
            cwd: Path | str = REPO, check: bool = True) -> str:
        """Run ``argv`` in this site to completion; its stdout (NetSitesError if it fails and ``check``)."""
        self.sites._check_open()
        result = subprocess.run(self.exec_prefix + argv, env=self.env(env), cwd=str(cwd), capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise NetSitesError(f"{' '.join(argv)} in site {self.name}: exit {result.returncode}:\n"
                                f"{result.stderr[-3000:]}")
        return result.stdout

    def run_python(self, target: str, *args: str, **kwargs: Any) -> str:
        """``run`` a Python module or script; its stdout."""
        return self.run(python_argv(target, *args), **kwargs)

    # --- network ------------------------------------------------------------------------

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket of this namespace, for this process to use (bind the site's address)."""
        return in_netns(self.netns, lambda: socket.socket(family, kind))

    def http(self, method: str, url: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
        """One HTTP request from inside this site: (status, body). Raises OSError if unreachable."""
        parts = urlsplit(url)
        conn = _NsHTTPConnection(self.netns, parts.hostname or "", parts.port, timeout)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_tcp(self, host: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = self.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            try:
                sock.connect((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise NetSitesError(f"nothing listens on {host}:{port} (from site {self.name})") from None
                time.sleep(0.05)
            finally:
                sock.close()

    def counters(self) -> dict[str, int]:
        """This site's veth: rx/tx packets and bytes, and drops."""
        out = _run("ip", "-n", self.netns, "-j", "-s", "link", "show", "dev", self.veth).stdout
        stats = json.loads(out)[0]["stats64"]
        return {"rx_packets": stats["rx"]["packets"], "tx_packets": stats["tx"]["packets"],
                "rx_bytes": stats["rx"]["bytes"], "tx_bytes": stats["tx"]["bytes"],
                "rx_dropped": stats["rx"]["dropped"], "tx_dropped": stats["tx"]["dropped"]}

    def loss_drops(self) -> int:
        """UDP datagrams the loss rule dropped on arrival at this site so far."""
        if not self.sites.loss:
            return 0
        out = _run("ip", "netns", "exec", self.netns, "iptables", "-w", "-L", "INPUT", "-v", "-x", "-n").stdout
        return sum(int(line.split()[0]) for line in out.splitlines() if self.sites.comment in line)


class SiteNode:
    """An ``sfu serve`` node inside a site (and its delay relay, if any)."""

    def __init__(self, site: Site, name: str, process: SiteProcess, *, http_port: int, rtc_port: int, shards: int,
                 quic_port: int | None, quic_public_port: int | None, delay: SiteProcess | None,
                 delay_stats_path: Path | None) -> None:
        self.site = site
        self.name = name
        self.process = process
        self.http_port = http_port
        self.rtc_port = rtc_port
        self.shards = shards
        self.quic_port = quic_port
        self.quic_public_port = quic_public_port
        self.delay = delay
        self.delay_stats_path = delay_stats_path
        self.url = f"http://{site.addr}:{http_port}"

    def __repr__(self) -> str:
        return f"SiteNode({self.name!r}, site={self.site.name!r}, url={self.url!r})"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/healthz`` answers 200 (NetSitesError if the node exits or the time is up)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.process.alive:
                raise NetSitesError(f"node {self.name} exited {self.process.proc.returncode}; "
                                    f"log {self.process.log_path}:\n{self.process.log()[-3000:]}")
            try:
                status, _ = self.site.http("GET", self.url + "/healthz", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise NetSitesError(f"node {self.name} not ready after {timeout:.0f} s; log {self.process.log_path}")
            time.sleep(0.1)

    def get(self, path: str, *, admin: bool = True, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET from inside the node's site, with an admin token by default."""
        headers = {"Authorization": f"Bearer {self.site.sites.token('*', admin=True)}"} if admin else {}
        return self.site.http("GET", self.url + path, headers=headers, timeout=timeout)

    def delay_stats(self) -> dict[str, Any] | None:
        """The delay relay's stats (rewritten every second, and at its exit)."""
        if self.delay_stats_path is None:
            return None
        try:
            return json.loads(self.delay_stats_path.read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        self.process.stop(timeout=15.0)
        if self.delay is not None:
            self.delay.stop()


class SiteRedis:
    def __init__(self, site: Site, process: SiteProcess, port: int) -> None:
        self.site = site
        self.process = process
        self.port = port
        self.url = f"redis://{site.addr}:{port}/0"


class NetSites:
    """The two sites, A and B (``sites.a``, ``sites.b``, ``sites["a"]``). A context manager.

    ``delay_ms``: one-way delay added by each node's delay relay (``start_node(delayed=True)``);
    ``loss``: probability that a UDP datagram arriving at a site over the veth is dropped.
    ``run_dir``: logs, stats, certificates (default a new temporary directory, removed at
    the end unless ``keep`` or an error). ``realtime_relay``: run delay relays SCHED_FIFO.
    """

    def __init__(self, delay_ms: float = 30.0, loss: float = 0.01, *, run_dir: Path | str | None = None,
                 keep: bool = False, realtime_relay: bool = True) -> None:
        if not 0 <= loss < 1:
            raise ValueError("loss is a probability in [0, 1)")
        self.delay_ms = delay_ms
        self.loss = loss
        self.keep = keep
        self.realtime_relay = realtime_relay
        self.run_id = secrets.token_hex(3)
        self.comment = f"netsites-{self.run_id}"
        self._own_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix=f"netsites-{self.run_id}-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.secret = secrets.token_hex(32)
        self.sites: dict[str, Site] = {}
        self.nodes: list[SiteNode] = []
        self._open = False
        self._certs: dict[str, tuple[Path, Path]] = {}
        self._rules: list[tuple[Site, list[str]]] = []  # (site, iptables rule spec after -A), to delete at close
        self.processes: list[SiteProcess] = []  # every process spawned in a site, in order

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> "NetSites":
        self.start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(failed=exc_type is not None)

    async def __aenter__(self) -> "NetSites":
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, *rest: Any) -> None:
        self.__exit__(exc_type, *rest)

    def _check_open(self) -> None:
        if not self._open:
            raise NetSitesError("the sites are not up (use NetSites as a context manager)")

    def start(self) -> None:
        if os.geteuid() != 0:
            raise NetSitesError("NetSites needs root (ip netns, veth, iptables)")
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                raise NetSitesError(f"{tool} is not installed")
        net = f"10.{random.randint(100, 254)}.{random.randint(0, 255)}.{random.randrange(0, 256, 4)}"
        base = net.rsplit(".", 1)
        self._open = True
        try:
            for i, name in enumerate(("a", "b")):
                netns = f"sfu-{name}-{self.run_id}"
                self.sites[name] = Site(self, name, netns, f"v{name}-{self.run_id}", f"{base[0]}.{int(base[1]) + 1 + i}")
                _run("ip", "netns", "add", netns)
            a, b = self.sites["a"], self.sites["b"]
            _run("ip", "link", "add", a.veth, "netns", a.netns, "type", "veth", "peer", "name", b.veth,
                 "netns", b.netns)
            for site in (a, b):
                _run("ip", "-n", site.netns, "addr", "add", f"{site.addr}/30", "dev", site.veth)
                _run("ip", "-n", site.netns, "link", "set", site.veth, "up")
                _run("ip", "-n", site.netns, "link", "set", "lo", "up")
                if self.loss:
                    self.add_rule(site, ["INPUT", "-i", site.veth, "-p", "udp", "-m", "statistic", "--mode", "random",
                                         "--probability", f"{self.loss:.6f}", "-j", "DROP"])
        except BaseException:
            self.close(failed=True)
            raise

    def add_rule(self, site: Site | str, rule: list[str], table: str = "filter") -> None:
        """``iptables -t <table> -A <rule>`` (``rule`` starts with the chain) in the site's namespace,
        tagged with this run's comment; deleted at close."""
        site = self._site(site)
        spec = [rule[0], "-m", "comment", "--comment", self.comment, *rule[1:]]
        _run("ip", "netns", "exec", site.netns, "iptables", "-w", "-t", table, "-A", *spec)
        self._rules.append((site, ["-t", table, *spec]))

    def close(self, failed: bool = False) -> None:
        """Stop everything and remove the namespaces; safe to call twice."""
        errors: list[str] = []
        for proc in reversed(self.processes):  # peers, then nodes, then what they use (Redis)
            try:
                proc.stop(timeout=15.0 if proc.name.startswith("node-") else 5.0)
            except Exception as exc:  # keep tearing down
                errors.append(f"stopping {proc.name}: {exc}")
        for site in self.sites.values():
            if not _netns_exists(site.netns):
                continue
            for pid in _netns_pids(site.netns):  # anything left in a namespace of ours is ours
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for rule_site, spec in self._rules:
                if rule_site is site:
                    _run("ip", "netns", "exec", site.netns, "iptables", "-w", *spec[:2], "-D", *spec[2:],
                         check=False)
            result = _run("ip", "netns", "del", site.netns, check=False)
            if result.returncode != 0:
                errors.append(f"ip netns del {site.netns}: {result.stderr.strip()}")
        self._open = False
        if self._own_dir and not self.keep and not failed:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self._rules.clear()
        if errors:
            if not failed:
                raise NetSitesError("; ".join(errors))
            print(f"netsites teardown: {'; '.join(errors)}", file=sys.stderr)

    def leftovers(self) -> list[str]:
        """What of this run is still there (namespaces, veths, iptables rules): empty after close."""
        return leftovers(self.run_id)

    # --- accessors ----------------------------------------------------------------------

    def __getitem__(self, name: str) -> Site:
        return self.sites[name]

    @property
    def a(self) -> Site:
        return self.sites["a"]

    @property
    def b(self) -> Site:
        return self.sites["b"]

    def _site(self, site: Site | str) -> Site:
        return site if isinstance(site, Site) else self.sites[site]

    def token(self, room: str, *, publish: bool = False, subscribe: bool = False, admin: bool = False,
              ttl_s: float = 3600) -> str:
        """A token of the nodes' shared secret (they run with auth: --dev refuses non-loopback)."""
        from sfu.auth import issue_token

        return issue_token(self.secret, room, publish=publish, subscribe=subscribe, admin=admin, ttl_s=ttl_s)

    def counters(self) -> dict[str, Any]:
        """Per site: veth counters and the loss rule's drops."""
        return {name: {**site.counters(), "loss_drops": site.loss_drops()} for name, site in self.sites.items()}

    # --- services -----------------------------------------------------------------------

    def start_redis(self, site: Site | str = "a", port: int = REDIS_PORT) -> SiteRedis:
        """A redis-server bound to the site's address (no persistence); ``.url`` for the nodes."""
        site = self._site(site)
        binary = shutil.which("redis-server")
        if binary is None:
            raise NetSitesError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        data = self.run_dir / f"redis-{site.name}"
        data.mkdir(exist_ok=True)
        proc = site.spawn([binary, "--bind", site.addr, "--port", str(port), "--save", "", "--appendonly", "no",
                           "--protected-mode", "no", "--dir", str(data)], name=f"redis-{site.name}",
                          stdout_to_log=True)
        try:
            site.wait_tcp(site.addr, port)
        except NetSitesError:
            raise NetSitesError(f"redis-server did not start in site {site.name}; log {proc.log_path}:\n{proc.log()}")
        return SiteRedis(site, proc, port)

    def node_cert(self, name: str) -> tuple[Path, Path, Path]:
        """A QUIC relay certificate and key for node ``name``, and the CA's path: one CA per run
        (``sfu.relay.certs``), certificates for later nodes signed by the same CA."""
        directory = self.run_dir / "certs"
        ca_path = directory / "ca.pem"
        if name not in self._certs:
            if not ca_path.exists():
                from sfu.relay.certs import write_cluster_certs

                self._certs.update(write_cluster_certs(directory, [name]))
            else:
                from sfu.relay.certs import add_node_cert

                self._certs[name] = add_node_cert(directory, name)
        cert, key = self._certs[name]
        return cert, key, ca_path

    def start_node(self, site: Site | str, name: str | None = None, *, redis_url: str | None = None,
                   shards: int = 1, quic: bool = True, delayed: bool = True, http_port: int = HTTP_PORT,
                   rtc_port: int = RTC_PORT, quic_port: int = QUIC_PORT, quic_public_port: int = QUIC_PUBLIC_PORT,
                   args: Iterable[str] = (), env: dict[str, str] | None = None, wait: bool = True,
                   log_level: str = "warning", source_dir: Path | str | None = None) -> SiteNode:
        """``sfu serve`` in ``site``: HTTP and media on the site's address, public URL
        ``http://<addr>:<http_port>``, node id ``name`` (default the site's name), the run's
        auth secret, ``--redis-url``. ``quic``: relay over QUIC (certificates of this run);
        ``delayed``: a delay relay on ``quic_public_port`` in front of ``quic_port``, and
        the node advertises it, so QUIC relays dialling this node cross the path delay.
        ``wait``: until /healthz answers (else call ``wait_ready()``). ``source_dir``: run the
        ``sfu`` package found there (a snapshot of another commit, its extension built)."""
        site = self._site(site)
        name = name or site.name
        node_env = {"SFU_AUTH_SECRET": self.secret, "SFU_SHARDS": str(shards)}
        if quic:
            cert, key, ca = self.node_cert(name)
            node_env.update(SFU_RELAY_TRANSPORT="quic", SFU_QUIC_PORT=str(quic_port), SFU_RELAY_CERT=str(cert),
                            SFU_RELAY_KEY=str(key), SFU_RELAY_CA=str(ca))
        delay = stats_path = None
        if quic and delayed:
            node_env["SFU_QUIC_PUBLIC_PORT"] = str(quic_public_port)
            stats_path = self.run_dir / f"delay-{name}.json"
            delay = site.python("bench.delay_relay", "--listen", f"{site.addr}:{quic_public_port}",
                                "--target", f"{site.addr}:{quic_port}", "--delay-ms", str(self.delay_ms),
                                "--stats", str(stats_path), *(["--realtime"] if self.realtime_relay else []),
                                name=f"delay-{name}")
            delay.wait_json("listening", timeout=15)
        if source_dir is not None:
            node_env["PYTHONPATH"] = os.pathsep.join([str(Path(source_dir).resolve()), str(REPO),
                                                      *filter(None, [os.environ.get("PYTHONPATH")])])
        node_env.update(env or {})
        argv = [sys.executable, "-m", "sfu", "serve", "--http-host", site.addr, "--http-port", str(http_port),
                "--rtc-host", site.addr, "--rtc-port", str(rtc_port), "--public-url", f"http://{site.addr}:{http_port}",
                "--node-id", name, "--log-level", log_level, "--recordings", str(self.run_dir / f"recordings-{name}"),
                *(["--redis-url", redis_url] if redis_url else []), *args]
        # Not run from the repository: `python -m` puts the working directory first on sys.path.
        process = site.spawn(argv, name=f"node-{name}", env=node_env, stdout_to_log=True,
                             cwd=Path(source_dir).resolve() if source_dir is not None else self.run_dir)
        node = SiteNode(site, name, process, http_port=http_port, rtc_port=rtc_port, shards=shards,
                        quic_port=quic_port if quic else None,
                        quic_public_port=quic_public_port if quic and delayed else None,
                        delay=delay, delay_stats_path=stats_path)
        self.nodes.append(node)
        if wait:
            node.wait_ready()
        return node


def _netns_exists(netns: str) -> bool:
    return os.path.exists(f"/run/netns/{netns}")


def _netns_pids(netns: str) -> list[int]:
    result = _run("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in result.stdout.split() if p.strip().isdigit()]


def leftovers(run_id: str) -> list[str]:
    """Namespaces, interfaces and iptables rules of run ``run_id`` still present
    (interfaces and rules are looked for in the root namespace too)."""
    found = []
    names = _run("ip", "netns", "list", check=False).stdout
    found += [f"netns {line.split()[0]}" for line in names.splitlines() if run_id in line]
    links = _run("ip", "-o", "link", "show", check=False).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if run_id in line]
    rules = _run("iptables-save", check=False).stdout if shutil.which("iptables-save") else ""
    found += [f"iptables rule {line}" for line in rules.splitlines() if f"netsites-{run_id}" in line]
    return found
