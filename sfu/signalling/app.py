"""Signalling: the HTTP surface, the room registry, and the shards it places peers on."""

from __future__ import annotations

import asyncio
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import control, loop_lag
from ..config import Config
from ..logs import get_logger
from .active_speaker import ActiveSpeakers
from .cluster import ClusterNode
from .admin import AdminApi
from .events import EventStreams
from .last_n import LastN
from .layer_demand import LayerDemand
from .metrics import ShardCollector
from .performance import Performance
from .placement import ShardState, place_publisher, place_viewer
from .recordings import Recordings
from .relays import Relays
from .resources import Resources
from .room_api import RoomApi
from .rooms import ProducerInfo, Room, RoomRegistry, Session
from .sessions import Sessions
from .shard_process import ShardProcess
from .supervisor import ShardSupervisor

log = get_logger("sfu.signalling")
STATIC = Path(str(importlib_resources.files("sfu.signalling") / "static"))


class Signalling:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rooms = RoomRegistry()
        self.shards: list[ShardProcess] = []
        self.registry = CollectorRegistry()
        self.collector = ShardCollector()
        self.registry.register(self.collector)
        self.supervisor = ShardSupervisor(self, self._new_shard)
        self.relays = Relays(self)
        self.events = EventStreams()
        self.sessions = Sessions(self)
        self.speakers = ActiveSpeakers(self._on_speaker)
        self.room_api = RoomApi(self)
        self.last_n = LastN(self)
        self.recordings = Recordings(self)
        self.cluster = ClusterNode(self)
        self.performance = Performance(self)
        self.layer_demand = LayerDemand(self)
        self._background: set[asyncio.Task[Any]] = set()

    def _new_shard(self, shard_id: int) -> ShardProcess:
        return ShardProcess(shard_id, self.config, self.on_shard_notification)

    async def start_shards(self) -> None:
        self._lag_task = asyncio.get_running_loop().create_task(loop_lag.watch(log, process="signalling"))
        for shard_id in range(self.config.shards):
            shard = self._new_shard(shard_id)
            await shard.start()
            self.shards.append(shard)
        for shard_id in range(len(self.shards)):
            self.supervisor.watch(shard_id)
        await self.cluster.start()
        self.performance.start()

    async def stop_shards(self) -> None:
        await self.performance.stop()
        await self.cluster.stop()
        await self.recordings.stop_all()
        self._lag_task.cancel()
        self.events.close_all()
        await self.supervisor.stop()
        await asyncio.gather(*(s.stop(self.config.shutdown_timeout_s * 0.75) for s in self.shards))

    def end_sessions_on_shard(self, shard_id: int, reason: str) -> int:
        """Forget every session of a shard that died (their transports went with it) and
        tell each client, where it listens, to POST again: placement skips the dead shard."""
        ended = [s for s in self.rooms.sessions.values() if s.shard == shard_id]
        self.relays.shard_died(shard_id)
        self.layer_demand.shard_gone(shard_id)
        for session in ended:
            self.forget_session(session, reason, reconnect=True)
        return len(ended)

    def shard_states(self) -> list[ShardState]:
        return [ShardState(
            id=shard.id,
            available=(shard.channel is not None and shard.process is not None
                       and shard.process.returncode is None and shard.id not in self.supervisor.draining
                       and shard.id not in self.supervisor.dead),
            viewers=self.rooms.viewers_by_shard[shard.id], sessions=self.rooms.sessions_by_shard[shard.id],
            consumers=self.rooms.consumers_by_shard[shard.id],
            load=shard.load) for shard in self.shards]

    def place_room(self, room: str) -> int | None:
        """Publishers of a room share its home shard (the least busy when the room began);
        a home that died or drains is replaced for the next publisher."""
        states = self.shard_states()
        existing = self.rooms.room(room)
        if existing is not None and states[existing.shard].available:
            return existing.shard
        shard = place_publisher(states)
        if existing is not None and shard is not None:
            existing.shard = shard
        return shard

    def place_viewer(self, room: Room) -> int | None:
        carrying = {shard for p in room.producers() for shard in p.copies}
        return place_viewer(self.shard_states(), room.shard, carrying,
                            max_cpu=self.config.shard_max_cpu, max_viewers=self.config.shard_max_viewers)

    async def end_session(self, session: Session, reason: str) -> None:
        self.forget_session(session, reason)
        try:
            await self.shards[session.shard].request(control.CloseTransport(transport_id=session.id))
        except control.ControlError:
            pass

    def forget_session(self, session: Session, reason: str, *, reconnect: bool = False) -> None:
        """The one way a session ends here: registry, event streams, relayed copies, room events."""
        room_before = self.rooms.room(session.room)
        if self.rooms.remove(session.id) is None:
            return
        if room_before is not None and self.rooms.room(session.room) is None:
            for producer in room_before.remote_producers:  # nobody here watches them any more
                self.relays.producer_ended(producer)
        if reconnect:
            self.events.send(session.id, "reconnect", {"url": f"/{session.kind}/{session.room}", "reason": reason})
        self.events.end(session.id)
        self.room_api.session_ended(session, reason, reconnect)
        log.info("session ended", room=session.room, peer=session.id, kind=session.kind, reason=reason,
                 shard=session.shard, participant=session.participant)
        if session.kind == "whip":
            self.layer_demand.session_ended(session)
            self._spawn(self.recordings.on_publisher_left(session))
            self._spawn(self.cluster.unpublished(session))
            for producer in session.producers:
                self.relays.producer_ended(producer)
            self.speakers.forget(session.room, session.id)
            ended = {p.track_id or p.id for p in session.producers}
            room = self.rooms.room(session.room)
            still_published = room is not None and bool(room.producers())
            for viewer in list(room.sessions.values()) if room is not None else []:
                # Their consumers of these tracks got a BYE and are gone from the shard.
                watched = [c for c, (_, track, _) in viewer.slots.items() if track in ended]
                for consumer in watched:
                    del viewer.slots[consumer]
                if watched and still_published and viewer.kind == "whep" and not viewer.participant:
                    # A WHEP viewer's tracks are fixed at its POST: the publisher it watched
                    # left or moved (a drain publishes anew first), so it should POST again
                    # to get what the room has now. Room API clients get track events instead.
                    self.events.send(viewer.id, "reconnect", {
                        "url": f"/whep/{viewer.room}", "reason": "a publisher it watched left or moved"})
            self.room_api.broadcast(session.room, {
                "type": "track_unpublished", "participant": session.participant or None,
                "tracks": self.room_api.tracks_of(session)})
            room = self.rooms.room(session.room)
            if room is not None and not room.producers():
                self.room_event(room, "inactive", {"reason": reason})

    def on_published(self, session: Session, *, first: bool) -> None:
        """A publisher's tracks are in the room: tell who listens."""
        if first:
            self.room_event(self.rooms.rooms[session.room], "active", {})
        self.room_api.broadcast(session.room, {
            "type": "track_published", "participant": session.participant or None,
            "tracks": self.room_api.tracks_of(session)})
        self._spawn(self.recordings.on_published(session))
        self._spawn(self.cluster.published(session))

    def remote_track_ended(self, room: Room, producer: ProducerInfo) -> None:
        """A track of another node ended: its viewers here should POST again (or wait)."""
        track = producer.track_id or producer.id
        for viewer in list(room.sessions.values()):
            watched = [c for c, (_, t, _) in viewer.slots.items() if t == track]
            for consumer in watched:
                del viewer.slots[consumer]
            if watched and viewer.kind == "whep" and not viewer.participant:
                self.events.send(viewer.id, "reconnect", {"url": f"/whep/{room.name}",
                                                          "reason": "a publisher it watched left or moved"})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_audio_levels(self, levels: list[tuple[str, float, float]]) -> None:
        by_room: dict[str, dict[str, tuple[float, float]]] = {}
        for producer_id, dbov, voiced in levels:
            producer = self.rooms.producers.get(producer_id)
            if producer is not None:
                by_room.setdefault(producer.room, {})[producer.stream_id] = (dbov, voiced)
        now = asyncio.get_running_loop().time()
        for room, streams in by_room.items():
            self.speakers.report(room, streams, now)

    def _on_speaker(self, room: str, stream: str, level_dbov: float) -> None:
        session = self.rooms.sessions.get(stream)
        log.info("active speaker", room=room, peer=stream, participant=session.participant if session else None,
                 level_dbov=round(level_dbov, 1))
        self.room_api.broadcast(room, {"type": "active_speaker", "participant": session.participant or None
                                       if session else None, "session": stream, "level_dbov": round(level_dbov, 1)})
        self._spawn(self.last_n.update_room(room))

    def room_event(self, room: Room, event: str, data: dict[str, Any]) -> None:
        for session in list(room.sessions.values()):
            if session.kind == "whep":
                self.events.send(session.id, event, data)

    def on_shard_notification(self, shard_id: int, body: Any) -> None:
        if isinstance(body, control.TransportStateChanged):
            session = self.rooms.sessions.get(body.transport_id)
            if session is None:
                return
            if body.state == "connected":
                session.connected = True
            elif body.state in ("closed", "failed"):
                self.forget_session(session, body.reason)
        elif isinstance(body, control.AudioLevels):
            self._on_audio_levels(body.levels)
        elif isinstance(body, control.LayerDemand):
            self.layer_demand.report(body.shard_id, body.producer_ids, asyncio.get_running_loop().time())
        elif isinstance(body, control.RoundTrips):
            for transport_id, rtt_ms in body.rtts:
                session = self.rooms.sessions.get(transport_id)
                if session is not None:
                    session.rtt_ms = rtt_ms
        elif isinstance(body, control.Draining):
            self.supervisor.start_drain(shard_id, "shard got SIGTERM")

    # --- plain endpoints ---------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        async def one(shard: ShardProcess) -> dict[str, Any] | None:
            try:
                return await shard.request(control.GetStats(), timeout_s=1.0)
            except control.ControlError:
                return None

        stats = await asyncio.gather(*(one(s) for s in self.shards))
        self.collector.stats = [s for s in stats if s is not None]
        counts: dict[str, int] = {}
        for session in self.rooms.sessions.values():
            counts[session.kind] = counts.get(session.kind, 0) + 1
        self.collector.sessions = counts
        self.collector.rooms = len(self.rooms.rooms)
        self.collector.shard_restarts = dict(self.supervisor.restarts)
        self.collector.shard_ids = [s.id for s in self.shards]
        self.collector.drains = self.supervisor.drains
        self.collector.relay_copies = self.relays.copies_made
        self.collector.events_sent = self.events.sent
        self.collector.layers_paused = self.layer_demand.pauses
        self.collector.recorder = await self.recordings.stats()
        self.collector.recordings_active = len(self.recordings.active)
        self.collector.recorder_restarts = self.recordings.restarts
        self.collector.quic = await self.cluster.quic_stats()
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        alive = [s.id for s in self.shards if s.process is not None and s.process.returncode is None]
        if len(alive) != len(self.shards):
            return web.json_response({"status": "degraded", "shards_alive": alive}, status=503)
        return web.json_response({"status": "ok", "shards_alive": alive})

    async def page(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("page") or "index.html"
        path = STATIC / name
        if not path.is_file():
            raise web.HTTPNotFound(text="no such page\n")
        return web.FileResponse(path)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=max(self.config.max_sdp_bytes * 2, 65536))
        app.add_routes(Resources(self).routes())
        app.add_routes(AdminApi(self).routes())
        app.add_routes(self.room_api.routes())
        app.add_routes(self.recordings.routes())
        app.add_routes(self.cluster.routes())
        app.add_routes([
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/", self.page),
            web.get(r"/{page:[a-z]+\.html}", self.page),
            web.static("/static", STATIC),
        ])
        return app
