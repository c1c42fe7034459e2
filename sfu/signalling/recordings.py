"""Recordings as signalling runs them: the recorder process, who is recorded, the replay API.

Recording a room makes each publisher's tracks (a simulcast track's top layer)
consumers on that publisher's shard, on a relay transport addressed to the
recorder's UDP port: to the shard the recorder is one more viewer. The recorder
is started at the first recording and restarted if it dies; the publishers
being recorded then continue in a new segment.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import control
from ..auth import ADMIN_ROOM, AuthError, bearer_token, verify_token
from ..logs import get_logger
from ..recording import catalog
from ..relay.base import Copy, relay_consume
from ..relay.loopback import LOOPBACK
from .child_process import ChildProcess
from .rooms import ProducerInfo, Session

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling.recordings")
RECORDER_RELAY = "recorder"
RESTART_BACKOFF_S = 1.0


class RecorderProcess(ChildProcess):
    name = "recorder"

    def __init__(self, directory: Path, log_level: str, host: str, log_levels: str = "", node_id: str = "") -> None:
        super().__init__(lambda body: None)
        self.directory = directory
        self.log_level = log_level
        self.host = host
        self.log_levels = log_levels
        self.node_id = node_id

    def arguments(self) -> list[str]:
        return ["sfu.recording.main", "--recordings", str(self.directory), "--log-level", self.log_level,
                "--host", self.host, "--log-levels", self.log_levels, "--node-id", self.node_id]


@dataclass
class ActiveRecording:
    id: str
    room: str
    started_at: float
    # publisher session id -> (shard, consumer ids there)
    publishers: dict[str, tuple[int, list[str]]] = field(default_factory=dict)


class Recordings:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling
        self.directory = Path(signalling.config.recordings).resolve()
        self.recorder: RecorderProcess | None = None
        self.active: dict[str, ActiveRecording] = {}  # by room
        self.restarts = 0
        self._lock = asyncio.Lock()  # one start at a time per server
        self._recorder_lock = asyncio.Lock()  # one recorder process
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    # --- the recorder process ----------------------------------------------------------

    async def _recorder(self) -> RecorderProcess:
        async with self._recorder_lock:
            return await self._ensure_recorder()

    async def _ensure_recorder(self) -> RecorderProcess:
        if self.recorder is None or self.recorder.process is None or self.recorder.process.returncode is not None:
            host = LOOPBACK.get(self.s.config.rtc_host, self.s.config.rtc_host)
            recorder = RecorderProcess(self.directory, self.s.config.log_level, host, self.s.config.log_levels,
                                       self.s.config.node_id)
            await recorder.start()
            self.recorder = recorder
            self._watch = asyncio.get_running_loop().create_task(self._watch_recorder(recorder))
            log.info("recorder started", pid=recorder.process.pid if recorder.process else None,
                     port=recorder.rtc_port, recordings=str(self.directory))
        return self.recorder

    async def _watch_recorder(self, recorder: RecorderProcess) -> None:
        assert recorder.process is not None
        status = await recorder.process.wait()
        if self._stopping or recorder is not self.recorder:
            return
        log.error("recorder died", status=status, recordings=len(self.active))
        await recorder.stop(0.1)
        self.recorder = None
        self.restarts += 1
        await asyncio.sleep(RESTART_BACKOFF_S)
        # Every publisher being recorded continues in a new segment.
        for recording in list(self.active.values()):
            for session_id in list(recording.publishers):
                recording.publishers.pop(session_id)
                session = self.s.rooms.sessions.get(session_id)
                if session is not None:
                    try:
                        await self._record_publisher(recording, session)
                    except (control.ControlError, RuntimeError) as exc:
                        log.error("re-recording failed", room=recording.room, peer=session_id, error=str(exc))

    async def stop_all(self) -> None:
        self._stopping = True
        for room in list(self.active):
            await self.stop(room, "server stopping")
        if self.recorder is not None:
            await self.recorder.stop(5.0)  # the recorder closes its files on a closed channel
        if self._watch is not None:
            self._watch.cancel()

    # --- recording rooms ---------------------------------------------------------------

    async def start(self, room: str) -> ActiveRecording:
        async with self._lock:
            existing = self.active.get(room)
            if existing is not None:
                return existing
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            recording = ActiveRecording(f"{re.sub(r'[^A-Za-z0-9_.-]', '_', room)[:60]}-{stamp}-"
                                        f"{random.getrandbits(16):04x}", room, time.time())
            self.active[room] = recording
            state = self.s.rooms.room(room)
            for session in list(state.sessions.values()) if state is not None else []:
                if session.kind == "whip":
                    await self._record_publisher(recording, session)
        log.info("recording started", room=room, recording=recording.id)
        self.s.room_api.broadcast(room, {"type": "recording", "on": True, "id": recording.id})
        return recording

    async def stop(self, room: str, reason: str) -> ActiveRecording | None:
        recording = self.active.pop(room, None)
        if recording is None:
            return None
        for session_id, (shard, consumers) in recording.publishers.items():
            for consumer_id in consumers:
                try:
                    await self.s.shards[shard].request(control.CloseConsumer(consumer_id=consumer_id))
                except control.ControlError:
                    pass
        if self.recorder is not None:
            try:
                await self.recorder.request(control.StopRecording(recording_id=recording.id), timeout_s=10.0)
            except control.ControlError as exc:
                log.error("recorder did not stop cleanly", recording=recording.id, error=str(exc))
        log.info("recording stopped", room=room, recording=recording.id, reason=reason)
        self.s.room_api.broadcast(room, {"type": "recording", "on": False, "id": recording.id})
        return recording

    async def on_published(self, session: Session) -> None:
        recording = self.active.get(session.room)
        if recording is not None:
            try:
                await self._record_publisher(recording, session)
            except (control.ControlError, RuntimeError) as exc:
                log.error("recording a new publisher failed", room=session.room, peer=session.id, error=str(exc))

    async def on_publisher_left(self, session: Session) -> None:
        recording = self.active.get(session.room)
        if recording is None or recording.publishers.pop(session.id, None) is None:
            return
        if self.recorder is not None:
            try:
                await self.recorder.request(control.StopRecording(recording_id=recording.id,
                                                                  publisher_id=session.id), timeout_s=10.0)
            except control.ControlError:
                pass

    async def _record_publisher(self, recording: ActiveRecording, session: Session) -> None:
        if session.id in recording.publishers:
            return
        recording.publishers[session.id] = (session.shard, [])  # taken, before any await
        recorder = await self._recorder()
        shard = self.s.shards[session.shard]
        host = LOOPBACK.get(self.s.config.rtc_host, self.s.config.rtc_host)
        await shard.request(control.OpenRelay(relay_id=RECORDER_RELAY, peer_host=host, peer_port=recorder.rtc_port))
        tracks, consumers = [], []
        for producer in self._top_layers(session.producers):
            codec = producer.codec
            copy = Copy.of(producer)
            consumer_id = f"{RECORDER_RELAY}/{recording.id}/{producer.id}"
            await shard.request(relay_consume(RECORDER_RELAY, consumer_id, producer.id, codec, copy.ssrc,
                                              copy.rtx_ssrc, keep_red=False))
            consumers.append(consumer_id)
            tracks.append(control.RecordTrack(ssrc=copy.ssrc, kind=producer.kind, codec=codec.name,
                                              payload_type=codec.payload_type, clock_rate=codec.clock_rate,
                                              rtx_ssrc=copy.rtx_ssrc,
                                              rtx_payload_type=codec.rtx_payload_type if copy.rtx_ssrc else None))
        recording.publishers[session.id] = (session.shard, consumers)
        if tracks:
            await recorder.request(control.StartRecording(
                recording_id=recording.id, room=recording.room, publisher_id=session.id, tracks=tracks,
                shard_host=host, shard_port=shard.rtc_port))

    @staticmethod
    def _top_layers(producers: list[ProducerInfo]) -> list[ProducerInfo]:
        """One producer per track: a simulcast track's last listed (top) layer."""
        by_track: dict[str, ProducerInfo] = {}
        for p in producers:
            by_track[p.track_id or p.id] = p
        return list(by_track.values())

    async def stats(self) -> dict[str, Any] | None:
        if self.recorder is None:
            return None
        try:
            return await self.recorder.request(control.GetStats(), timeout_s=1.0)
        except control.ControlError:
            return None

    # --- HTTP ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/rooms/{room}/recording", self.post_recording),
            web.delete("/api/rooms/{room}/recording", self.delete_recording),
            web.get("/api/recordings", self.list),
            web.get("/recordings/{id}", self.download),
            web.get("/recordings/{id}/{file}", self.download),
        ]

    def _authorize(self, request: web.Request, room: str, action: str) -> None:
        """Admin tokens may do anything; a room's publisher (start/stop) or viewer (replay)
        token its own room. ``?token=`` works too: a <video src> sends no header."""
        if self.s.config.dev:
            return
        token = bearer_token(request.headers.get("Authorization")) or request.query.get("token")
        secret = self.s.config.auth_secret or ""
        for room_, action_ in ((ADMIN_ROOM, "admin"), (room, action)):
            try:
                verify_token(secret, token, room=room_, action=action_)
                return
            except AuthError as exc:
                reason = exc.reason
        forbidden = bool(token) and ("grant" in reason or "not valid" in reason)
        raise (web.HTTPForbidden if forbidden else web.HTTPUnauthorized)(text=f"{reason}\n")

    async def post_recording(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        self._authorize(request, room, "publish")
        try:
            recording = await self.start(room)
        except (RuntimeError, control.ControlError) as exc:
            raise web.HTTPServiceUnavailable(text=f"recorder unavailable: {exc}\n") from None
        return web.json_response({"id": recording.id, "room": room, "started_at": recording.started_at,
                                  "publishers": len(recording.publishers)}, status=201)

    async def delete_recording(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        self._authorize(request, room, "publish")
        recording = await self.stop(room, "stopped through the API")
        if recording is None:
            raise web.HTTPNotFound(text=f"room {room!r} is not being recorded\n")
        return web.json_response({"id": recording.id, "room": room})

    async def list(self, request: web.Request) -> web.Response:
        room = request.query.get("room")
        self._authorize(request, room or ADMIN_ROOM, "subscribe" if room else "admin")
        return web.json_response(catalog.list_recordings(self.directory, room))

    async def download(self, request: web.Request) -> web.StreamResponse:
        found = catalog.find(self.directory, request.match_info["id"], request.match_info.get("file"))
        if found is None:
            raise web.HTTPNotFound(text="no such recording\n")
        path, manifest = found
        self._authorize(request, manifest.get("room", ""), "subscribe")
        content_type = "video/webm" if path.suffix == ".webm" else "video/x-matroska"
        # FileResponse answers Range requests (206) itself.
        return web.FileResponse(path, headers={"Content-Type": content_type, "Accept-Ranges": "bytes"})
