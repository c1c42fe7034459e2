"""Locust load test of the SFU: WHEP viewers with real ICE/DTLS/SRTP, WHIP publishers, room WebSocket churn, admin REST.

Run it as its own process (locust monkey-patches the standard library with gevent)::

    locust -f loadtest/locustfile.py --headless -u 222 -r 20 -t 60s --host http://127.0.0.1:8080

User classes (how many of each: loadtest/README.md):

- ``PublisherUser`` (``fixed_count`` = ``LOADTEST_ROOMS``, one per room): a WHIP publisher that loops
  a real VP8 GOP and real Opus (``bench/clip.py``), paced as libwebrtc paces, answering PLI/FIR
  with a keyframe (``bench.loadgen.Publisher``, driven by a greenlet here instead of asyncio).
- ``RoomChurnUser`` (``fixed_count`` = ``LOADTEST_CHURN_USERS``): room WebSocket API cycles:
  connect, join, ping, subscribe + unsubscribe (SDP only, no media), leave; then again.
- ``AdminUser`` (``fixed_count`` = ``LOADTEST_ADMIN_USERS``): GET /api/rooms, /api/shards, /api/peers.
- ``ViewerUser`` (the rest of ``-u``): a WHEP viewer: POST an offer, ICE checks with USE-CANDIDATE
  (the server is ICE-lite), DTLS as the client, SRTP; then it watches and counts.

What viewers report (request type ``WEBRTC``, so it lands in locust's tables, CSV and HTML):

- ``connect``: WHEP POST to DTLS connected (ICE + DTLS), ms.
- ``first_frame``: WHEP POST to the first decrypted packet of a VP8 keyframe, ms.
- ``media_latency``: publisher send to the viewer's kernel receive timestamp, ms, for the sampled
  (decrypted) packets of rooms whose publisher runs in this process (the payload carries its
  CLOCK_MONOTONIC send time).
- ``loss_permille``: every ``LOADTEST_WINDOW_S`` per viewer, packets lost in the window (from RTP
  sequence numbers, read in clear) per thousand expected; ``response_length`` = packets expected.
  A window with no packet at all, more than ``LOADTEST_MAX_LOSS_PCT`` lost, or an SRTP
  authentication failure is a failure.

Per-viewer cost is kept low as ``bench/loadgen.py`` keeps it: every viewer socket is a plain
non-blocking UDP socket, drained by one greenlet per process that sweeps them all with one
epoll call every few milliseconds; every packet's header is read, one in ``LOADTEST_SAMPLE_EVERY``
is decrypted (plus each stream's first packet and the video until the first keyframe).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import os
import random
import socket
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.monkey
import gevent.socket
from locust import FastHttpUser, User, between, constant_pacing, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ (not installed) and sfu/

from bench.clip import Clip, build_clip  # noqa: E402
from bench.loadgen import (  # noqa: E402
    AUDIO_PT, CONSENT_INTERVAL_S, VIDEO_PT, ConnectError, Publisher, RawPeer, Viewer, realtime_minus_monotonic_ns)
from bench.sdp import LocalPeer, RemotePeer  # noqa: E402
from sfu.shard.dtls import DtlsCertificate, DtlsEndpoint  # noqa: E402
from sfu.shard.srtp import SrtpSession  # noqa: E402

log = logging.getLogger("loadtest")
# websocket-client logs every close code other than 1000 as an error; the churn users report
# the code they get in the statistics instead ("WS server close <code>").
logging.getLogger("websocket").setLevel(logging.CRITICAL)

# --- configuration (environment) ----------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


ROOMS = _env_int("LOADTEST_ROOMS", 1)
ROOM_PREFIX = os.environ.get("LOADTEST_ROOM_PREFIX", "loadtest")
CHURN_USERS = _env_int("LOADTEST_CHURN_USERS", 20)
ADMIN_USERS = _env_int("LOADTEST_ADMIN_USERS", 1)
VIDEO = os.environ.get("LOADTEST_VIDEO", "640x360@600")  # WIDTHxHEIGHT@KBITS of the publishers' VP8
WATCH_S = _env_float("LOADTEST_WATCH_S", 0.0)  # a viewer's session length; 0: the whole run
SAMPLE_EVERY = _env_int("LOADTEST_SAMPLE_EVERY", 50)
WINDOW_S = _env_float("LOADTEST_WINDOW_S", 5.0)
MAX_LOSS_PCT = _env_float("LOADTEST_MAX_LOSS_PCT", 5.0)
FIRST_FRAME_TIMEOUT_S = _env_float("LOADTEST_FIRST_FRAME_TIMEOUT_S", 10.0)
CONNECT_TIMEOUT_S = _env_float("LOADTEST_CONNECT_TIMEOUT_S", 10.0)
PUBLISHER_WAIT_S = _env_float("LOADTEST_PUBLISHER_WAIT_S", 30.0)
ADMIN_INTERVAL_S = _env_float("LOADTEST_ADMIN_INTERVAL_S", 2.0)
CHURN_SUBSCRIBE = os.environ.get("LOADTEST_CHURN_SUBSCRIBE", "1") not in ("0", "", "no", "false")
AUTH_SECRET = os.environ.get("LOADTEST_AUTH_SECRET", "")  # mint tokens for a server outside --dev
SUMMARY_JSON = os.environ.get("LOADTEST_SUMMARY_JSON", "")  # write the media totals here at the end

DRAIN_INTERVAL_S = 0.004
# A joining viewer first gets the server's history since the last keyframe (GOP: 2 s), whose
# send stamps are old: latency samples of a session's first REPLAY_S are not reported.
REPLAY_S = 2.5
WEBRTC = "WEBRTC"
WS = "WS"


def room_name(index: int) -> str:
    return f"{ROOM_PREFIX}-{index % max(1, ROOMS)}"


def token(room: str, **grant: bool) -> str | None:
    if not AUTH_SECRET:
        return None
    from sfu.auth import issue_token

    return issue_token(AUTH_SECRET, room, ttl_s=24 * 3600, **grant)


def auth_headers(room: str, **grant: bool) -> dict[str, str]:
    t = token(room, **grant)
    return {"Authorization": f"Bearer {t}"} if t else {}


def fire(name: str, response_time_ms: float, *, request_type: str = WEBRTC, length: int = 0,
         exception: BaseException | str | None = None) -> None:
    if isinstance(exception, str):
        exception = RuntimeError(exception)
    events.request.fire(request_type=request_type, name=name, response_time=response_time_ms,
                        response_length=length, exception=exception, context={})


class Failed(Exception):
    """A step failed and was reported already."""


# --- where traffic goes ---------------------------------------------------------------------


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.")


class Target:
    """The --host: its IP, and the address our UDP sockets bind and advertise."""

    def __init__(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"--host must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.ip = socket.gethostbyname(parsed.hostname)
        if _is_loopback(self.ip):
            self.local_ip = "127.0.0.1" if self.ip == "127.0.0.1" else self.ip
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no datagram is sent
                probe.connect((self.ip, 9))
                self.local_ip = probe.getsockname()[0]
        ws_scheme = "wss" if parsed.scheme == "https" else "ws"
        self.ws_base = f"{ws_scheme}://{parsed.netloc}"

    def check_candidate(self, address: tuple[str, int]) -> None:
        """Media goes only to the --host (or, for a loopback --host, to loopback)."""
        ip = address[0]
        if ip != self.ip and not (_is_loopback(ip) and _is_loopback(self.ip)):
            raise ConnectError(f"the answer's candidate {ip} is not the --host address {self.ip}: refused")


_targets: dict[str, Target] = {}


def target_of(host: str) -> Target:
    if host not in _targets:
        _targets[host] = Target(host)
    return _targets[host]


# --- process-wide state ---------------------------------------------------------------------

_certificate: DtlsCertificate | None = None
_context: Any = None
_clip: Clip | None = None
_room_ready: dict[str, gevent.event.Event] = collections.defaultdict(gevent.event.Event)
_local_publishers: set[str] = set()  # rooms whose publisher runs in this process (stamps are ours)
_counters: dict[str, itertools.count[int]] = collections.defaultdict(itertools.count)


def certificate() -> tuple[DtlsCertificate, Any]:
    """One certificate and OpenSSL context for every peer of the process (as bench/loadgen.py does)."""
    global _certificate, _context
    if _certificate is None:
        _certificate = DtlsCertificate.generate()
        _context = _certificate.context()
    return _certificate, _context


def clip() -> Clip:
    global _clip
    if _clip is None:
        size, _, kbps = VIDEO.partition("@")
        width, _, height = size.partition("x")
        started = time.monotonic()
        _clip = build_clip(int(width), int(height), int(kbps or 600) * 1000)
        log.info("clip %sx%s: %.0f kbit/s video, keyframe %d B, encoded in %.1f s", width, height,
                 _clip.video_bitrate_bps / 1000, _clip.keyframe_bytes, time.monotonic() - started)
    return _clip


def _raw_socket(peer: RawPeer) -> None:
    """Swap the (gevent) socket RawPeer made for a plain non-blocking one on the same fd.

    The sweep reads it with recv_into until EAGAIN and never blocks; the handshake waits on
    the fd with gevent.socket.wait_read, so neither needs gevent's socket wrapper.
    """
    original = gevent.monkey.get_original("socket", "socket")
    raw = original(fileno=peer.sock.detach())
    raw.setblocking(False)
    peer.sock = raw
    peer.fd = raw.fileno()


def connect(peer: RawPeer, remote: RemotePeer, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """ICE (our checks with USE-CANDIDATE; the server is ICE-lite) then DTLS as the client, blocking
    this greenlet only. bench.loadgen.RawPeer.connect, without asyncio. Media that follows the
    handshake stays queued in the socket for the sweep."""
    peer.remote = remote
    dtls = peer.dtls = DtlsEndpoint(peer.certificate, remote.dtls_role, remote.fingerprint, peer.context)
    ice_ok = dtls_heard = False
    first_flight: list[bytes] = []
    clock = time.monotonic
    deadline = clock() + timeout_s
    next_check = 0.0
    flight_wait = 0.05
    next_flight = 0.0
    while True:
        now = clock()
        if now > deadline:
            raise ConnectError(f"no {'DTLS' if ice_ok else 'ICE'} connection in {timeout_s:.0f} s")
        if not ice_ok and now >= next_check:
            peer.send_check()
            next_check = now + 0.1
        # Resend our first flight on a short timer until the server answers (OpenSSL waits 1 s).
        if first_flight and not dtls_heard and now >= next_flight and flight_wait < 0.5:
            peer._send_all(first_flight)
            flight_wait *= 2
            next_flight = now + flight_wait
        wait = 0.05
        if dtls.state == "connecting":
            dtls_wait = dtls.next_timeout_s()
            if dtls_wait is not None:
                if dtls_wait <= 0:
                    peer._send_all(dtls.handle_timeout())
                else:
                    wait = min(wait, dtls_wait)
        if not ice_ok:
            wait = min(wait, max(0.0, next_check - now))
        try:
            gevent.socket.wait_read(peer.fd, timeout=max(wait, 0.001))
        except TimeoutError:
            continue
        while True:
            try:
                data, addr = peer.sock.recvfrom(4096)
            except BlockingIOError:
                break
            except OSError:
                continue  # an ICMP error queued on the socket
            if not data:
                continue
            first = data[0]
            if first < 4:
                if peer.on_stun(data, addr) and not ice_ok:
                    ice_ok = True
                    first_flight.extend(dtls.start())
                    peer._send_all(first_flight)
                    next_flight = clock() + flight_wait
            elif 20 <= first < 64:
                dtls_heard = True
                peer._send_all(dtls.receive(data))
                if dtls.state == "connected":
                    assert dtls.srtp_keys is not None
                    peer.srtp = SrtpSession(dtls.srtp_keys)
                    return
                if dtls.state in ("failed", "closed"):
                    raise ConnectError(f"DTLS {dtls.state}: {dtls.error}")
            # SRTP before our handshake finished cannot be decrypted yet: dropped.


# --- the media sweep (one greenlet per process) -------------------------------------------------

TOTAL_KEYS = ("video", "audio", "lost", "late", "frames", "decrypted", "decrypt_failures", "misordered")


class ViewerSession:
    """A viewer's socket and counters (bench.loadgen.Viewer) as the sweep sees them."""

    def __init__(self, viewer: Viewer, room: str) -> None:
        self.viewer = viewer
        self.room = room
        self.first_frame = gevent.event.Event()
        self.window: tuple[int, int, int] = (0, 0, 0)  # received, lost, decrypt failures at the window start
        self.window_started = 0.0
        self.connected_at = 0.0


class MediaHub:
    """Drains every connected viewer's socket, sends consent checks, reports loss windows."""

    def __init__(self) -> None:
        self.epoll = gevent.monkey.get_original("select", "epoll")()
        self.sessions: dict[int, ViewerSession] = {}
        self.buf = bytearray(4096)
        self.bufs = [self.buf]
        self.latency_ns: list[int] = []
        self.scratch: list[int] = []  # samples of replayed history, dropped
        self.clock_offset_ns = realtime_minus_monotonic_ns()
        self.retired: collections.Counter[str] = collections.Counter()
        self.sessions_total = 0
        self.reporting = True
        self.greenlet = gevent.spawn(self._run)

    def add(self, session: ViewerSession) -> None:
        fd = session.viewer.fd
        self.sessions[fd] = session
        self.sessions_total += 1
        session.window_started = session.connected_at = time.monotonic()
        self.epoll.register(fd, 0x001)  # EPOLLIN

    def remove(self, session: ViewerSession) -> None:
        fd = session.viewer.fd
        if self.sessions.get(fd) is session:
            now = time.monotonic()
            if session.first_frame.is_set() and now - session.window_started >= 1.0:
                self._report_window(session, now)  # the last, partial window of a session that ends
            del self.sessions[fd]
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass
            for key in TOTAL_KEYS:
                self.retired[key] += getattr(session.viewer, key)

    def totals(self) -> dict[str, int]:
        out = {k: self.retired[k] + sum(getattr(s.viewer, k) for s in self.sessions.values()) for k in TOTAL_KEYS}
        out["sessions"] = self.sessions_total
        return out

    def _run(self) -> None:
        clock = time.monotonic
        next_second = clock() + 1.0
        tick = 0
        while True:
            try:
                self._sweep()
                now = clock()
                if now >= next_second:
                    next_second = now + 1.0
                    tick += 1
                    self._housekeeping(tick, now)
            except Exception:  # the sweep must survive anything one viewer does
                log.exception("media sweep")
            gevent.sleep(DRAIN_INTERVAL_S)

    def _sweep(self) -> None:
        sessions, buf, bufs, latency = self.sessions, self.buf, self.bufs, self.latency_ns
        offset = self.clock_offset_ns
        scratch = self.scratch
        settled = time.monotonic() - REPLAY_S
        for fd, _ in self.epoll.poll(0, len(sessions) + 1):
            session = sessions.get(fd)
            if session is None:
                continue
            viewer = session.viewer
            viewer.drain(buf, bufs, latency if session.connected_at < settled else scratch, offset)
            if viewer.first_frame_ns and not session.first_frame.is_set():
                session.first_frame.set()
        scratch.clear()
        if latency:
            for sample in latency:
                if 0 <= sample < 10_000_000_000:
                    fire("media_latency", sample / 1e6)
            latency.clear()

    def _housekeeping(self, tick: int, now: float) -> None:
        self.clock_offset_ns = realtime_minus_monotonic_ns()
        slots = int(CONSENT_INTERVAL_S)
        for i, session in enumerate(list(self.sessions.values())):
            if i % slots == tick % slots:
                session.viewer.send_check()  # consent: the server closes peers silent for 30 s
            if now - session.window_started >= WINDOW_S:
                self._report_window(session, now)

    def _report_window(self, session: ViewerSession, now: float) -> None:
        v = session.viewer
        received, lost, failures = v.video + v.audio, v.lost, v.decrypt_failures
        r0, l0, f0 = session.window
        session.window = (received, lost, failures)
        session.window_started = now
        if not self.reporting:
            return
        got, missed, bad = received - r0, lost - l0, failures - f0
        expected = got + missed
        permille = 1000.0 * missed / expected if expected else 1000.0
        error = None
        if got == 0:
            error = f"no media for {WINDOW_S:.0f} s"
        elif permille > 10 * MAX_LOSS_PCT:
            error = f"loss {permille / 10:.1f} % in {WINDOW_S:.0f} s (> {MAX_LOSS_PCT} %)"
        elif bad:
            error = "SRTP decrypt failures"
        fire("loss_permille", permille, length=expected, exception=error)


_hub: MediaHub | None = None


def hub() -> MediaHub:
    global _hub
    if _hub is None:
        _hub = MediaHub()
    return _hub


@events.test_start.add_listener
def _on_test_start(**_: Any) -> None:
    if _hub is not None:
        _hub.reporting = True


@events.test_stopping.add_listener
def _on_test_stopping(**_: Any) -> None:
    # Users are about to be stopped in no particular order: a publisher gone first would
    # make its viewers' last windows look like outages.
    if _hub is not None:
        _hub.reporting = False


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    if _hub is None:
        return
    t = _hub.totals()
    received = t["video"] + t["audio"]
    t["loss_pct"] = round(100.0 * t["lost"] / max(1, received + t["lost"]), 4)
    log.info("media totals: %d viewer sessions, %d packets received (%d video, %d audio), %d lost (%.3f %%), "
             "%d late, %d decrypted, %d decrypt failures, %d misordered", t["sessions"], received, t["video"],
             t["audio"], t["lost"], t["loss_pct"], t["late"], t["decrypted"], t["decrypt_failures"],
             t["misordered"])
    if SUMMARY_JSON:
        Path(SUMMARY_JSON).write_text(json.dumps(t, indent=2) + "\n")


# --- WHIP publisher ---------------------------------------------------------------------------


class GeventPublisher(Publisher):
    """bench.loadgen.Publisher with its pacing loop on a greenlet."""

    def run(self) -> None:
        clock = time.monotonic
        self.started_at = clock()
        self._pace_from(self.started_at)
        next_consent = self.started_at + CONSENT_INTERVAL_S
        while True:
            self._on_readable()  # RTCP (PLI/FIR restart the GOP), STUN, DTLS
            wake = self._pace(clock())
            if clock() >= next_consent:
                self.send_check()
                next_consent = clock() + CONSENT_INTERVAL_S
            gevent.sleep(max(0.0, wake - clock()))

class PublisherUser(FastHttpUser):
    """One per room: publishes over WHIP and streams until the run ends."""

    fixed_count = ROOMS
    abstract = ROOMS <= 0
    wait_time = between(1, 2)  # before publishing again after a failure
    network_timeout = 15.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self.room = room_name(next(_counters["publisher"]))
        self.target = target_of(self.host)
        self.peer: GeventPublisher | None = None
        self.location = ""
        _local_publishers.add(self.room)

    @task
    def publish(self) -> None:
        cert, context = certificate()
        peer = self.peer = GeventPublisher(clip(), cert, context, stamps=True, host=self.target.local_ip)
        _raw_socket(peer)
        try:
            local = peer.local_peer("sendonly", audio_ssrc=peer.audio.ssrc, video_ssrc=peer.video.ssrc,
                                    rtx_ssrc=peer.rtx_ssrc)
            started = time.monotonic()
            with self.client.post(f"/whip/{self.room}", data=local.offer(), name="/whip/[room]",
                                  headers={"Content-Type": "application/sdp", **auth_headers(self.room, publish=True)},
                                  catch_response=True) as r:
                if r.status_code != 201:
                    r.failure(f"WHIP {r.status_code}: {(r.text or '')[:200]}")
                    raise Failed()
                self.location = r.headers.get("Location") or ""
                try:
                    remote = RemotePeer.from_answer(r.text or "", self.location)
                except ValueError as exc:
                    r.failure(str(exc))
                    raise Failed() from None
            peer.audio.pt = remote.audio_pt or AUDIO_PT
            for layer in peer.layers:
                layer.stream.pt = remote.video_pt or VIDEO_PT
            try:
                self.target.check_candidate(remote.address)
                connect(peer, remote)
            except ConnectError as exc:
                fire("publisher_connect", (time.monotonic() - started) * 1000, exception=exc)
                raise Failed() from None
            fire("publisher_connect", (time.monotonic() - started) * 1000)
            log.info("publisher of %s connected", self.room)
            _room_ready[self.room].set()
            peer.run()  # until the user is stopped
        except Failed:
            pass
        finally:
            _room_ready[self.room].clear()
            self._end()

    def _end(self) -> None:
        peer, self.peer = self.peer, None
        location, self.location = self.location, ""
        if location:
            self.client.delete(location, name="/whip/[session]", headers=auth_headers(self.room, publish=True))
        if peer is not None:
            peer.close()

    def on_stop(self) -> None:
        self._end()


# --- WHEP viewer ------------------------------------------------------------------------------


def wait_for_publisher(room: str) -> None:
    """If this process publishes the room, wait until its publisher is connected.

    Fixed-count users (the publishers) are spawned before the others, so a room published by
    this process is known here by the time its viewers start. Otherwise (``--processes``, or a
    publisher of its own) the viewer asks and retries on 409 as the server says.
    """
    if room in _local_publishers:
        _room_ready[room].wait(PUBLISHER_WAIT_S)


class ViewerUser(FastHttpUser):
    """A WHEP viewer with real ICE, DTLS and SRTP; watches for LOADTEST_WATCH_S (0: until the end)."""

    weight = 1
    wait_time = between(0.5, 1.5)  # before joining again after a session ended or failed
    network_timeout = 15.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self.room = room_name(next(_counters["viewer"]))
        self.target = target_of(self.host)
        self.session: ViewerSession | None = None
        self.location = ""

    @task
    def watch(self) -> None:
        wait_for_publisher(self.room)
        try:
            session = self._join()
            end = time.monotonic() + WATCH_S if WATCH_S > 0 else math.inf
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    break
                gevent.sleep(min(left, 1.0))
                dtls = session.viewer.dtls
                if dtls is not None and dtls.state == "closed":
                    fire("session", 0, exception="the server closed the session (DTLS close_notify)")
                    break
        except Failed:
            pass
        finally:
            self._leave()

    def _join(self) -> ViewerSession:
        cert, context = certificate()
        # Payload stamps (send times) are ours to read only if this process publishes the room.
        viewer = Viewer(cert, context, stamps=self.room in _local_publishers, sample_every=SAMPLE_EVERY,
                        host=self.target.local_ip)
        _raw_socket(viewer)
        session = self.session = ViewerSession(viewer, self.room)
        viewer.joined_ns = time.monotonic_ns()
        offer = viewer.local_peer("recvonly").offer()
        for attempt in itertools.count():
            with self.client.post(f"/whep/{self.room}", data=offer, name="/whep/[room]",
                                  headers={"Content-Type": "application/sdp",
                                           **auth_headers(self.room, subscribe=True)},
                                  catch_response=True) as r:
                if r.status_code == 409 and attempt < 30:
                    # Nothing published yet (a publisher of another process is still coming up):
                    # counted apart, not as a failure, and asked again after Retry-After.
                    r.request_meta["name"] = "/whep/[room] 409 not published yet"
                    r.success()
                    retry = r.headers.get("Retry-After") or "1"
                    gevent.sleep(float(retry) if retry.replace(".", "", 1).isdigit() else 1.0)
                    viewer.joined_ns = time.monotonic_ns()
                    continue
                if r.status_code != 201:
                    r.failure(f"WHEP {r.status_code}: {(r.text or '')[:200]}")
                    raise Failed()
                self.location = r.headers.get("Location") or ""
                try:
                    remote = RemotePeer.from_answer(r.text or "", self.location)
                except ValueError as exc:
                    r.failure(str(exc))
                    raise Failed() from None
                break
        viewer.remote = remote
        viewer.set_remote_payload_types()
        viewer.watch_keyframe = True  # decrypt every video packet until the first keyframe
        try:
            self.target.check_candidate(remote.address)
            connect(viewer, remote)
        except ConnectError as exc:
            fire("connect", (time.monotonic_ns() - viewer.joined_ns) / 1e6, exception=exc)
            raise Failed() from None
        fire("connect", (time.monotonic_ns() - viewer.joined_ns) / 1e6)
        hub().add(session)
        if not session.first_frame.wait(FIRST_FRAME_TIMEOUT_S):
            fire("first_frame", FIRST_FRAME_TIMEOUT_S * 1000,
                 exception=f"no keyframe in {FIRST_FRAME_TIMEOUT_S:.0f} s "
                           f"({viewer.video} video packets, {viewer.decrypt_failures} decrypt failures)")
            raise Failed()
        fire("first_frame", (viewer.first_frame_ns - viewer.joined_ns) / 1e6)
        return session

    def _leave(self) -> None:
        session, self.session = self.session, None
        location, self.location = self.location, ""
        if session is not None:
            hub().remove(session)
        # End the session before closing the socket: the server would otherwise keep
        # sending into a closed port until consent expires.
        if location:
            self.client.delete(location, name="/whep/[session]", headers=auth_headers(self.room, subscribe=True))
        if session is not None:
            session.viewer.close()

    def on_stop(self) -> None:
        self._leave()


# --- room WebSocket API churn -----------------------------------------------------------------


class RoomChurnUser(User):
    """Room WebSocket API: connect, join, ping, subscribe/unsubscribe (SDP only), leave; again."""

    fixed_count = CHURN_USERS
    abstract = CHURN_USERS <= 0
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.room = room_name(next(_counters["churn"]))
        self.target = target_of(self.host)
        self.ws: Any = None
        self.next_id = 0

    def _request(self, name: str, message: dict[str, Any], expect: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """Send one request; events are skipped until the reply with our id. Reports it."""
        self.next_id += 1
        message = {**message, "id": self.next_id}
        started = time.monotonic()
        try:
            self.ws.send(json.dumps(message))
            deadline = started + timeout_s
            while True:
                self.ws.settimeout(max(0.01, deadline - time.monotonic()))
                raw = self.ws.recv()
                if not raw:
                    raise ConnectionError("socket closed")
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    break
        except Exception as exc:
            fire(name, (time.monotonic() - started) * 1000, request_type=WS, exception=exc)
            raise Failed() from None
        elapsed = (time.monotonic() - started) * 1000
        if reply.get("type") != expect:
            if reply.get("type") == "error" and reply.get("status") == 409 and name == "subscribe":
                raise LookupError("nothing published yet")  # not the server's fault: skipped
            fire(name, elapsed, request_type=WS, exception=f"{reply.get('type')}: {reply.get('status')} "
                                                           f"{reply.get('reason', '')}")
            raise Failed()
        fire(name, elapsed, request_type=WS, length=len(raw))
        return reply

    @task
    def cycle(self) -> None:
        import websocket  # websocket-client: blocking sockets, cooperative under gevent

        wait_for_publisher(self.room)
        started = time.monotonic()
        try:
            try:
                self.ws = websocket.create_connection(f"{self.target.ws_base}/ws/{self.room}", timeout=10,
                                                      enable_multithread=False)
            except Exception as exc:
                fire("connect", (time.monotonic() - started) * 1000, request_type=WS, exception=exc)
                return
            fire("connect", (time.monotonic() - started) * 1000, request_type=WS)
            join: dict[str, Any] = {"type": "join", "name": f"churn-{id(self) % 10000}"}
            t = token(self.room, subscribe=True)
            if t:
                join["token"] = t
            self._request("join", join, "joined")
            self._request("ping", {"type": "ping"}, "pong")
            if CHURN_SUBSCRIBE:
                cert, _ = certificate()
                offer = LocalPeer(direction="recvonly", ice_ufrag=os.urandom(4).hex(), ice_pwd=os.urandom(16).hex(),
                                  fingerprint_sha256=cert.fingerprint_sha256, port=9,
                                  host=self.target.local_ip).offer()
                try:
                    reply = self._request("subscribe", {"type": "subscribe", "sdp": offer}, "subscribed")
                except LookupError:
                    pass
                else:
                    gevent.sleep(random.uniform(0.1, 0.5))
                    self._request("unsubscribe", {"type": "unsubscribe", "session": reply["session"]}, "ok")
            gevent.sleep(random.uniform(0.1, 0.5))
            self._request("ping", {"type": "ping"}, "pong")
            self._request("leave", {"type": "leave"}, "left")
            self._await_close()
        except Failed:
            pass
        finally:
            self._close()

    def _await_close(self) -> None:
        """After ``left`` the server closes the socket: report how long that took, under its close code."""
        import websocket

        started = time.monotonic()
        try:
            self.ws.settimeout(2.0)
            while True:
                opcode, frame = self.ws.recv_data_frame(True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:  # websocket-client has answered it
                    data = frame.data or b""
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    break
        except Exception as exc:
            fire("server close", (time.monotonic() - started) * 1000, request_type=WS,
                 exception=f"no close after left: {exc!r}")
            return
        fire(f"server close {code}", (time.monotonic() - started) * 1000, request_type=WS)
        self.ws.shutdown()
        self.ws = None

    def _close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except Exception:
                pass

    def on_stop(self) -> None:
        self._close()


# --- REST admin API ---------------------------------------------------------------------------


class AdminUser(FastHttpUser):
    """The admin REST API at a low rate: one GET every LOADTEST_ADMIN_INTERVAL_S."""

    fixed_count = ADMIN_USERS
    abstract = ADMIN_USERS <= 0
    wait_time = constant_pacing(ADMIN_INTERVAL_S)
    network_timeout = 15.0

    def _get(self, path: str) -> None:
        headers = auth_headers("*", admin=True)
        with self.client.get(path, headers=headers, name=path, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {(r.text or '')[:200]}")
                return
            try:
                body = json.loads(r.text or "")
            except ValueError:
                r.failure("not JSON")
                return
            if not isinstance(body, list):
                r.failure("not a JSON list")

    @task(2)
    def rooms(self) -> None:
        self._get("/api/rooms")

    @task(1)
    def shards(self) -> None:
        self._get("/api/shards")

    @task(1)
    def peers(self) -> None:
        self._get("/api/peers")
