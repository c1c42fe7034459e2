"""The REST admin API: rooms, peers and shards as JSON; closing a peer.

For operators and their tools (dashboards, scripts, the load tests' churn users).
Guarded by an admin token (``sfu token --room "*" --admin``); open only in
``--dev``. Shard figures come fresh from each shard (``GetStats``); a shard that
does not answer within a second is listed as down rather than holding the reply.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import control
from ..auth import ADMIN_ROOM, AuthError, bearer_token, verify_token
from ..logs import get_logger
from .rooms import Room, Session

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling.admin")
STATS_TIMEOUT_S = 1.0
SHARD_FIELDS = ("transports", "relays", "producers", "consumers", "packets_in", "packets_out", "bytes_in",
                "bytes_out")


def session_json(session: Session) -> dict[str, Any]:
    return {
        "id": session.id, "kind": session.kind, "room": session.room, "shard": session.shard,
        "connected": session.connected, "location": session.location,
        "tracks": [{"id": p.id, "kind": p.kind, "codec": p.codec.name, "rid": p.rid} for p in session.producers],
        "consumers": len(session.consumer_ids),
    }


def room_json(room: Room) -> dict[str, Any]:
    kinds = [s.kind for s in room.sessions.values()]
    return {"name": room.name, "shard": room.shard, "publishers": kinds.count("whip"),
            "viewers": kinds.count("whep"), "peers": [session_json(s) for s in room.sessions.values()]}


def require_admin(config: Any, request: web.Request) -> None:
    """An admin token (``sfu token --room "*" --admin``), unless the server runs ``--dev``:
    401 for a missing or bad token, 403 for one that does not grant admin."""
    if config.dev:
        return
    try:
        verify_token(config.auth_secret or "", bearer_token(request.headers.get("Authorization")),
                     room=ADMIN_ROOM, action="admin")
    except AuthError as exc:
        if exc.reason.startswith(("token does not grant", "token not valid for room")):
            raise web.HTTPForbidden(text=f"{exc.reason}\n") from None
        raise web.HTTPUnauthorized(text=f"{exc.reason}\n", headers={"WWW-Authenticate": 'Bearer realm="sfu"'}) \
            from None


class AdminApi:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/rooms", self.rooms),
            web.get("/api/rooms/{room}", self.room),
            web.get("/api/peers", self.peers),
            web.delete("/api/peers/{peer}", self.close_peer),
            web.get("/api/shards", self.shards),
            web.post("/api/shards/{shard}/drain", self.drain),
        ]

    def _authorize(self, request: web.Request) -> None:
        require_admin(self.s.config, request)

    async def rooms(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response([room_json(r) for r in self.s.rooms.rooms.values()])

    async def room(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room = self.s.rooms.room(request.match_info["room"])
        if room is None:
            raise web.HTTPNotFound(text="no such room\n")
        return web.json_response(room_json(room))

    async def peers(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response([session_json(s) for s in self.s.rooms.sessions.values()])

    async def close_peer(self, request: web.Request) -> web.Response:
        self._authorize(request)
        session = self.s.rooms.sessions.get(request.match_info["peer"])
        if session is None:
            raise web.HTTPNotFound(text="no such peer\n")
        await self.s.end_session(session, "closed by an admin")
        return web.Response(status=204)

    async def shards(self, request: web.Request) -> web.Response:
        self._authorize(request)

        async def one(shard_id: int) -> dict[str, Any]:
            shard = self.s.shards[shard_id]
            out: dict[str, Any] = {
                "id": shard_id, "pid": shard.process.pid if shard.process else None, "rtc_port": shard.rtc_port,
                "restarts": self.s.supervisor.restarts.get(shard_id, 0), "up": False,
                "rooms": sum(1 for r in self.s.rooms.rooms.values() if r.shard == shard_id),
                "peers": sum(1 for p in self.s.rooms.sessions.values() if p.shard == shard_id),
                "viewers": self.s.rooms.viewers_by_shard[shard_id],
                "draining": shard_id in self.s.supervisor.draining,
            }
            try:
                stats = await shard.request(control.GetStats(), timeout_s=STATS_TIMEOUT_S)
            except control.ControlError:
                return out
            out["up"] = True
            out.update({k: stats.get(k, 0) for k in SHARD_FIELDS})
            if shard.load is not None:
                out["load"] = {"packets_in_per_s": round(shard.load.packets_in_per_s, 1),
                               "packets_out_per_s": round(shard.load.packets_out_per_s, 1),
                               "cpu": round(shard.load.cpu, 3)}
            return out

        return web.json_response(await asyncio.gather(*(one(i) for i in range(len(self.s.shards)))))

    async def drain(self, request: web.Request) -> web.Response:
        """Move a shard's peers elsewhere, then restart it fresh (202: it runs in the background)."""
        self._authorize(request)
        raw = request.match_info["shard"]
        if not raw.isdigit() or int(raw) >= len(self.s.shards):
            raise web.HTTPNotFound(text="no such shard\n")
        shard_id = int(raw)
        if len(self.s.shards) < 2 and not self.s.cluster.clustered:
            raise web.HTTPConflict(text="the only shard cannot drain: there is nowhere to move its peers\n")
        if not self.s.supervisor.start_drain(shard_id, "drain asked through the admin API"):
            raise web.HTTPConflict(text=f"shard {shard_id} is already draining or down\n")
        peers = sum(1 for p in self.s.rooms.sessions.values() if p.shard == shard_id)
        return web.json_response({"shard": shard_id, "peers": peers, "timeout_s": self.s.config.drain_timeout_s},
                                 status=202)
