"""Janus VideoRoom (Debian's ``janus``) as a baseline, in a network namespace the bench makes.

Janus 1.1.2 gathers no ICE candidates on ``lo``, so it runs inside its own
namespace joined to this one by a veth pair with addresses from the RFC 2544
benchmarking range (198.18.0.0/15): traffic never leaves the machine. Janus is
told to be ICE-lite and to use only that veth, so a light load generator can
drive it the way it drives our server. Its HTTP API answers on the same address.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

NETNS = "sfubench-janus"
HOST_IF, NS_IF = "sfubh0", "sfubj0"
HOST_ADDR, NS_ADDR = "198.18.0.1", "198.18.0.2"
HTTP_PORT = 8088
ROOM = 1234
PLUGINS_DIR = "/usr/lib/x86_64-linux-gnu/janus/plugins"
TRANSPORTS_DIR = "/usr/lib/x86_64-linux-gnu/janus/transports"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def setup_namespace() -> None:
    """A namespace with one veth: 198.18.0.1 here, 198.18.0.2 there. Idempotent."""
    teardown_namespace()
    _ip("netns", "add", NETNS)
    _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
    _ip("link", "set", NS_IF, "netns", NETNS)
    _ip("addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
    _ip("link", "set", HOST_IF, "up")
    _ip("netns", "exec", NETNS, "ip", "addr", "add", f"{NS_ADDR}/30", "dev", NS_IF)
    _ip("netns", "exec", NETNS, "ip", "link", "set", NS_IF, "up")
    _ip("netns", "exec", NETNS, "ip", "link", "set", "lo", "up")


def teardown_namespace() -> None:
    _ip("link", "del", HOST_IF, check=False)
    _ip("netns", "del", NETNS, check=False)


def _configs(folder: Path, event_loops: int | None, log_file: Path) -> None:
    loops = f"\tevent_loops = {event_loops}\n" if event_loops else ""
    (folder / "janus.jcfg").write_text(f"""general: {{
\tconfigs_folder = "{folder}"
\tplugins_folder = "{PLUGINS_DIR}"
\ttransports_folder = "{TRANSPORTS_DIR}"
\tlog_to_stdout = false
\tlog_to_file = "{log_file}"
\tdebug_level = 3
\tsession_timeout = 120
{loops}}}
media: {{
\tipv6 = false
\trtp_port_range = "20000-60000"
\tno_media_timer = 5
}}
nat: {{
\tice_lite = true
\tice_tcp = false
\tfull_trickle = false
\tice_enforce_list = "{NS_IF}"
}}
plugins: {{
\tdisable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}}
transports: {{
\tdisable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}}
events: {{
\tbroadcast = false
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""general: {{
\tjson = "plain"
\tbase_path = "/janus"
\thttp = true
\tport = {HTTP_PORT}
\tinterface = "{NS_IF}"
\thttps = false
}}
admin: {{
\tadmin_http = false
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text(f"""room-{ROOM}: {{
\tdescription = "sfu bench"
\tpublishers = 1
\tbitrate = 0
\tfir_freq = 0
\taudiocodec = "opus"
\tvideocodec = "vp8"
\tnotify_joining = false
}}
""")


class JanusServer:
    """Janus in its namespace, with or without ``event_loops = 1``, optionally pinned."""

    def __init__(self, *, event_loops: int | None = None, cpu: int | None = None) -> None:
        self.event_loops = event_loops
        self.cpu = cpu
        self.dir = Path(tempfile.mkdtemp(prefix="sfubench-janus-"))
        self.log_file = self.dir / "janus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.api = f"http://{NS_ADDR}:{HTTP_PORT}/janus"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 20.0) -> None:
        if shutil.which("janus") is None:
            raise RuntimeError("janus is not installed: apt-get install -y janus")
        setup_namespace()
        _configs(self.dir, self.event_loops, self.log_file)
        command = ["ip", "netns", "exec", NETNS]
        if self.cpu is not None:
            command += ["taskset", "-c", str(self.cpu)]
        # `ip netns exec` and `taskset` both exec: the pid we get is Janus's own.
        command += ["janus", "-F", str(self.dir), "-C", str(self.dir / "janus.jcfg")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"janus exited {self.process.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.api}/info", timeout=1) as r:
                    if json.load(r).get("janus") == "server_info":
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"janus did not answer on {self.api}: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        teardown_namespace()
        shutil.rmtree(self.dir, ignore_errors=True)


class JanusError(Exception):
    pass


class VideoRoomClient:
    """The VideoRoom dance over Janus's HTTP API: one session, a handle per peer.

    Events arrive by long poll on the session; a pump routes them to whoever
    waits on that handle.
    """

    def __init__(self, api: str) -> None:
        self.api = api
        self.http: aiohttp.ClientSession | None = None
        self.session_id = 0
        self._tx = itertools.count(1)
        self._waiters: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._pump: asyncio.Task[None] | None = None
        self.feed_id: int | None = None

    async def __aenter__(self) -> "VideoRoomClient":
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        reply = await self._post(self.api, {"janus": "create"})
        self.session_id = reply["data"]["id"]
        self._pump = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pump is not None:
            self._pump.cancel()
        try:
            await self._post(f"{self.api}/{self.session_id}", {"janus": "destroy"})
        except Exception:
            pass
        assert self.http is not None
        await self.http.close()

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        body = {**body, "transaction": str(next(self._tx))}
        async with self.http.post(url, json=body) as r:
            reply = await r.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(reply["error"]["reason"])
        return reply

    async def _poll(self) -> None:
        assert self.http is not None
        while True:
            try:
                async with self.http.get(f"{self.api}/{self.session_id}?maxev=20") as r:
                    events = await r.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.1)
                continue
            for event in events if isinstance(events, list) else [events]:
                sender = event.get("sender")
                if sender in self._waiters:
                    self._waiters[sender].put_nowait(event)

    async def _attach(self) -> int:
        reply = await self._post(f"{self.api}/{self.session_id}",
                                 {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        handle = reply["data"]["id"]
        self._waiters[handle] = asyncio.Queue()
        return handle

    async def _message(self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None,
                       want_jsep: bool = False, timeout_s: float = 20.0) -> dict[str, Any]:
        request: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        reply = await self._post(f"{self.api}/{self.session_id}/{handle}", request)
        if reply.get("janus") == "success":
            return reply
        deadline = time.monotonic() + timeout_s
        while True:
            event = await asyncio.wait_for(self._waiters[handle].get(), max(0.1, deadline - time.monotonic()))
            if event.get("janus") != "event":
                continue
            data = event.get("plugindata", {}).get("data", {})
            if "error" in data:
                raise JanusError(data["error"])
            if want_jsep and "jsep" not in event:
                continue
            return event

    async def publish(self, offer_sdp: str) -> str:
        """Join the room as its publisher; returns Janus's SDP answer."""
        handle = await self._attach()
        joined = await self._message(handle, {"request": "join", "ptype": "publisher", "room": ROOM})
        self.feed_id = joined["plugindata"]["data"]["id"]
        event = await self._message(handle, {"request": "publish", "audio": True, "video": True},
                                    jsep={"type": "offer", "sdp": offer_sdp}, want_jsep=True)
        return event["jsep"]["sdp"]

    async def subscribe(self, answer_for: Callable[[str], Awaitable[str]]) -> int:
        """Join as a subscriber: Janus offers, ``answer_for(offer)`` answers. Returns the handle."""
        if self.feed_id is None:
            raise JanusError("nothing published yet")
        handle = await self._attach()
        deadline = time.monotonic() + 15
        while True:
            try:
                event = await self._message(handle, {"request": "join", "ptype": "subscriber", "room": ROOM,
                                                     "streams": [{"feed": self.feed_id}]}, want_jsep=True)
                break
            except JanusError as exc:
                # The feed exists once the publisher's ICE and DTLS are up.
                if "No such feed" not in str(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        answer = await answer_for(event["jsep"]["sdp"])
        await self._message(handle, {"request": "start"}, jsep={"type": "answer", "sdp": answer})
        return handle

    async def detach(self, handle: int) -> None:
        """End one peer: Janus tears down its PeerConnection with the handle."""
        self._waiters.pop(handle, None)
        await self._post(f"{self.api}/{self.session_id}/{handle}", {"janus": "detach"})
