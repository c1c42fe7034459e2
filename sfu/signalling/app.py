"""Signalling: the HTTP surface, the room registry, and the shards it places peers on."""

from __future__ import annotations

import asyncio
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import control
from ..config import Config
from ..logs import get_logger
from .admin import AdminApi
from .metrics import ShardCollector
from .resources import Resources
from .rooms import RoomRegistry, Session
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

    def _new_shard(self, shard_id: int) -> ShardProcess:
        return ShardProcess(shard_id, self.config, self.on_shard_notification)

    async def start_shards(self) -> None:
        for shard_id in range(self.config.shards):
            shard = self._new_shard(shard_id)
            await shard.start()
            self.shards.append(shard)
        for shard_id in range(len(self.shards)):
            self.supervisor.watch(shard_id)

    async def stop_shards(self) -> None:
        await self.supervisor.stop()
        await asyncio.gather(*(s.stop(self.config.shutdown_timeout_s * 0.75) for s in self.shards))

    def end_sessions_on_shard(self, shard_id: int, reason: str) -> int:
        """Forget every session of a shard that died: their transports went with it."""
        ended = [s for s in self.rooms.sessions.values() if s.shard == shard_id]
        for session in ended:
            self.rooms.remove(session.id)
            log.info("session ended", room=session.room, peer=session.id, kind=session.kind, reason=reason,
                     shard=shard_id)
        return len(ended)

    def place_room(self, room: str) -> int:
        """A room lives on one shard until inter-shard relays exist: the least busy one.

        Busy is what the shards report (packets sent per second, then CPU), which
        follows reality (a room of 3 peers can outweigh one of 30); until a shard has
        reported, and to break ties, the number of sessions placed on it.
        """
        existing = self.rooms.room(room)
        if existing is not None:
            return existing.shard
        sessions = [0] * len(self.shards)
        for r in self.rooms.rooms.values():
            sessions[r.shard] += len(r.sessions)

        def busy(shard_id: int) -> tuple[float, float, int]:
            load = self.shards[shard_id].load
            if load is None:
                return (0.0, 0.0, sessions[shard_id])
            return (round(load.packets_out_per_s, -2), round(load.cpu, 1), sessions[shard_id])

        return min(range(len(self.shards)), key=busy)

    async def end_session(self, session: Session, reason: str) -> None:
        self.rooms.remove(session.id)
        try:
            await self.shards[session.shard].request(control.CloseTransport(transport_id=session.id))
        except control.ControlError:
            pass
        log.info("session ended", room=session.room, peer=session.id, kind=session.kind, reason=reason)

    def on_shard_notification(self, shard_id: int, body: Any) -> None:
        if isinstance(body, control.TransportStateChanged):
            session = self.rooms.sessions.get(body.transport_id)
            if session is None:
                return
            if body.state == "connected":
                session.connected = True
            elif body.state in ("closed", "failed"):
                self.rooms.remove(session.id)
                log.info("session ended", room=session.room, peer=session.id, kind=session.kind,
                         reason=body.reason, shard=shard_id)

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
        app.add_routes([
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/", self.page),
            web.get(r"/{page:[a-z]+\.html}", self.page),
            web.static("/static", STATIC),
        ])
        return app
