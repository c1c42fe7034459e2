"""The room WebSocket API (``/ws/{room}``): interactive clients beside WHIP/WHEP.

One WebSocket per participant carries JSON messages both ways: requests (join,
publish, subscribe, unsubscribe, unpublish, leave) each answered once, echoing
the request's ``id``, and room events (participants, tracks, the active
speaker, last-N slot changes, reconnect requests). Media still flows over
WebRTC: publish and subscribe exchange SDP exactly as WHIP and WHEP do, and
build the same sessions. Documented in docs/room-api.md.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from ..auth import AuthError, Grant, verify_token
from ..control import ControlError
from ..logs import get_logger
from .sdp import SdpError, parse_offer
from .sessions import JoinError, Redirect, Subscription

if TYPE_CHECKING:
    from .app import Signalling
    from .rooms import ProducerInfo, Session

log = get_logger("sfu.signalling.room_api")

MAX_MESSAGE_BYTES = 64 * 1024
MAX_NAME_CHARS = 64
MAX_LAST_N = 64
SEND_QUEUE = 256  # events queued for a client that does not read; beyond that it is dropped
JOIN_TIMEOUT_S = 10.0
TOO_SLOW: dict[str, Any] = {"type": "too slow"}  # the writer's cue to close with 1008


class RequestError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Participant:
    id: str
    room: str
    name: str
    grant: Grant | None  # None in dev mode: everything allowed
    ws: web.WebSocketResponse
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> "publish" | "subscribe"
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))  # None: end

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}


class RoomApi:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling
        self.rooms: dict[str, dict[str, Participant]] = {}
        self.by_session: dict[str, Participant] = {}
        self.dropped_clients = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ws/{room}", self.websocket)]

    # --- events ------------------------------------------------------------------------

    def broadcast(self, room: str, event: dict[str, Any], *, exclude: str = "") -> None:
        for participant in list(self.rooms.get(room, {}).values()):
            if participant.id != exclude:
                self.send(participant, event)

    def to_session(self, session_id: str, event: dict[str, Any]) -> bool:
        participant = self.by_session.get(session_id)
        if participant is None:
            return False
        self.send(participant, event)
        return True

    def send(self, participant: Participant, message: dict[str, Any]) -> None:
        try:
            participant.queue.put_nowait(message)
        except asyncio.QueueFull:
            # A client that reads nothing must not grow our memory: it is let go.
            self.dropped_clients += 1
            log.warning("room client too slow, closing", room=participant.room, participant=participant.id)
            participant.queue = asyncio.Queue(1)
            participant.queue.put_nowait(TOO_SLOW)

    async def _writer(self, participant: Participant) -> None:
        while True:
            message = await participant.queue.get()
            if message is None:
                return  # the socket ends; the handler closes it (1000)
            if message is TOO_SLOW:
                await participant.ws.close(code=1008, message=b"too slow")
                return
            try:
                await participant.ws.send_str(json.dumps(message))
            except ConnectionError:
                return

    def session_ended(self, session: "Session", reason: str, reconnect: bool) -> None:
        """Signalling ended one of a participant's sessions (shard died, drained, closed)."""
        participant = self.by_session.pop(session.id, None)
        if participant is None:
            return
        participant.sessions.pop(session.id, None)
        self.send(participant, {"type": "reconnect" if reconnect else "session_ended", "session": session.id,
                                 "reason": reason})

    def session_reconnect(self, session: "Session", reason: str) -> bool:
        """A draining shard: the session still plays; the client should redo it elsewhere."""
        return self.to_session(session.id, {"type": "reconnect", "session": session.id, "reason": reason})

    # --- the socket --------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        room = request.match_info["room"]
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        if not self.s.shards and self.s.cluster.clustered:
            return await self._forward(room, ws)
        participant: Participant | None = None
        writer: asyncio.Task[None] | None = None
        try:
            # The first message must be a join, within JOIN_TIMEOUT_S.
            try:
                first = await ws.receive(timeout=JOIN_TIMEOUT_S)
            except asyncio.TimeoutError:
                await ws.send_json({"type": "error", "status": 408, "reason": "no join within 10 s"})
                return ws
            try:
                message = self._decode(first)
                if message.get("type") != "join":
                    raise RequestError(400, "the first message must be a join")
                participant = self._join(room, message, ws)
            except RequestError as exc:
                await ws.send_json({"type": "error", "id": _id_of(first), "status": exc.status,
                                    "reason": exc.reason})
                return ws
            writer = asyncio.get_running_loop().create_task(self._writer(participant))
            self.send(participant, self._joined(participant, message))
            self.broadcast(room, {"type": "participant_joined", "participant": participant.json()},
                           exclude=participant.id)
            async for raw in ws:
                message = {}
                try:
                    message = self._decode(raw)
                    reply = await self._handle(participant, message)
                except RequestError as exc:
                    reply = {"type": "error", "status": exc.status, "reason": exc.reason}
                except Exception:  # a bug of ours: the client gets a 500, the room goes on
                    log.exception("room request failed", room=room, participant=participant.id)
                    reply = {"type": "error", "status": 500, "reason": "internal error"}
                if "id" in message:
                    reply["id"] = message["id"]
                self.send(participant, reply)
                if reply.get("type") == "left":
                    break
        finally:
            if participant is not None:
                await self._leave(participant)
                if not participant.queue.full():
                    participant.queue.put_nowait(None)
            if writer is not None:
                try:
                    await asyncio.wait_for(writer, 1.0)
                except (asyncio.TimeoutError, ConnectionError):
                    writer.cancel()
            await ws.close()
        return ws

    async def _forward(self, room: str, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        """A signalling replica (no shards): the socket is carried to the room's node (or the
        least loaded one for a new room), message for message, both ways."""
        import aiohttp

        home = await self.s.cluster.directory.room_home(room)
        nodes = await self.s.cluster.directory.nodes()
        target = next((n for n in nodes if home is not None and n.id == home.node), None)
        if target is None:
            media = [n for n in nodes if n.shard_ports and not n.load.get("draining")]
            target = min(media, key=lambda n: (n.load.get("viewers", 0), n.id), default=None)
        if target is None:
            await ws.send_json({"type": "error", "status": 503, "reason": "no node of the cluster can take it"})
            await ws.close()
            return ws
        url = target.http_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + f"/ws/{room}"
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=MAX_MESSAGE_BYTES) as up:
                async def pump(source: Any, sink: Any) -> None:
                    async for msg in source:
                        if msg.type == WSMsgType.TEXT:
                            await sink.send_str(msg.data)
                        elif msg.type == WSMsgType.BINARY:
                            await sink.send_bytes(msg.data)
                        else:
                            break

                tasks = [asyncio.ensure_future(pump(ws, up)), asyncio.ensure_future(pump(up, ws))]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
        except (aiohttp.ClientError, ConnectionError) as exc:
            if not ws.closed:
                await ws.send_json({"type": "error", "status": 502, "reason": f"the room's node: {exc}"})
        await ws.close()
        return ws

    @staticmethod
    def _decode(raw: Any) -> dict[str, Any]:
        if raw.type == WSMsgType.ERROR:
            raise RequestError(400, "websocket error")
        if raw.type != WSMsgType.TEXT:
            raise RequestError(400, "messages are JSON text frames")
        try:
            message = json.loads(raw.data)
        except ValueError:
            raise RequestError(400, "message is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise RequestError(400, 'a message is a JSON object with a "type"')
        return message

    def _join(self, room: str, message: dict[str, Any], ws: web.WebSocketResponse) -> Participant:
        grant = None
        if not self.s.config.dev:
            token = message.get("token")
            if not isinstance(token, str):
                raise RequestError(401, "join needs a token")
            grant = self._verify(token, room)
        name = message.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise RequestError(400, f"name must be text of at most {MAX_NAME_CHARS} characters")
        participant = Participant(secrets.token_urlsafe(9), room, name or (grant.identity if grant else "") or "",
                                  grant, ws)
        self.rooms.setdefault(room, {})[participant.id] = participant
        log.info("participant joined", room=room, participant=participant.id, name=participant.name)
        return participant

    def _verify(self, token: str, room: str) -> Grant:
        secret = self.s.config.auth_secret or ""
        try:
            return verify_token(secret, token, room=room, action="subscribe")
        except AuthError as exc:
            if not exc.reason.startswith("token does not grant"):
                raise RequestError(401 if "room" not in exc.reason else 403, exc.reason) from None
        try:
            return verify_token(secret, token, room=room, action="publish")
        except AuthError as exc:
            raise RequestError(403, "token grants neither publish nor subscribe") from exc

    def _joined(self, participant: Participant, message: dict[str, Any]) -> dict[str, Any]:
        room = participant.room
        others = [p.json() for p in self.rooms.get(room, {}).values() if p.id != participant.id]
        # In a co-performance room, those at other nodes too.
        others += [{"id": pid, "name": d.get("name", ""), "node": d["node"]}
                   for pid, d in self.s.performance.remote_people.get(room, {}).items()]
        recording = self.s.recordings.active.get(room)
        reply = {"type": "joined", "participant": participant.id, "room": room, "participants": others,
                 "tracks": self.tracks(room), "speaker": self._speaker(room),
                 "recording": recording.id if recording is not None else None}
        if "id" in message:
            reply["id"] = message["id"]
        return reply

    def _published(self, room: str) -> list["ProducerInfo"]:
        """The room's tracks a participant may subscribe to: here, and in a co-performance
        room at other nodes too."""
        state = self.s.rooms.room(room)
        if state is None:
            return []
        remote = list(self.s.performance.announced.get(room, {}).values())
        return state.producers() + remote

    def tracks(self, room: str) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for p in self._published(room):
            track = out.setdefault(p.track_id or p.id, {
                "track": p.track_id or p.id, "kind": p.kind, "codec": p.codec.name,
                "participant": p.participant or self.participant_of(p.stream_id), "layers": []})
            if p.rid:
                track["layers"].append(p.rid)
        return list(out.values())

    def participant_of(self, session_id: str) -> str | None:
        """The participant a publisher session belongs to (None for a plain WHIP one)."""
        session = self.s.rooms.sessions.get(session_id)
        return session.participant or None if session is not None else None

    def _speaker(self, room: str) -> str | None:
        state = self.s.speakers.rooms.get(room)
        return self.participant_of(state.current) if state is not None and state.current else None

    async def _handle(self, participant: Participant, message: dict[str, Any]) -> dict[str, Any]:
        kind = message["type"]
        if kind == "publish":
            self._allowed(participant, "publish")
            session, sdp = await self._join_media(participant, message, "publish")
            return {"type": "published", "session": session.id,
                    "tracks": sorted({p.track_id or p.id for p in session.producers}), "sdp": sdp}
        if kind == "subscribe":
            self._allowed(participant, "subscribe")
            session, sdp = await self._join_media(participant, message, "subscribe")
            return {"type": "subscribed", "session": session.id, "sdp": sdp, "slots": self.slots(session)}
        if kind in ("unsubscribe", "unpublish"):
            session_id = message.get("session")
            wanted = "subscribe" if kind == "unsubscribe" else "publish"
            if participant.sessions.get(session_id) != wanted:
                raise RequestError(404, f"no {wanted} session {session_id!r} of yours")
            session = self.s.rooms.sessions.get(session_id)
            participant.sessions.pop(session_id, None)
            self.by_session.pop(session_id, None)
            if session is not None:
                await self.s.end_session(session, f"{kind} by the participant")
            return {"type": "ok"}
        if kind == "record":
            # Starting or stopping the room's recording is a publisher's call.
            self._allowed(participant, "publish")
            on = message.get("on")
            if not isinstance(on, bool):
                raise RequestError(400, 'record needs "on": true or false')
            try:
                if on:
                    recording = await self.s.recordings.start(participant.room)
                    return {"type": "recording", "on": True, "id": recording.id}
                stopped = await self.s.recordings.stop(participant.room, "stopped by a participant")
            except (RuntimeError, ControlError) as exc:
                raise RequestError(503, f"recorder unavailable: {exc}") from None
            return {"type": "recording", "on": False, "id": stopped.id if stopped else None}
        if kind == "leave":
            return {"type": "left"}
        if kind == "ping":
            return {"type": "pong"}
        raise RequestError(400, f"unknown message type {kind!r}")

    def _allowed(self, participant: Participant, action: str) -> None:
        if participant.grant is not None and not getattr(participant.grant, action):
            raise RequestError(403, f"your token does not grant {action}")

    async def _join_media(self, participant: Participant, message: dict[str, Any], action: str
                          ) -> tuple["Session", str]:
        sdp = message.get("sdp")
        if not isinstance(sdp, str):
            raise RequestError(400, f'{action} needs "sdp": an SDP offer')
        try:
            offer = parse_offer(sdp, max_bytes=self.s.config.max_sdp_bytes)
        except SdpError as exc:
            raise RequestError(exc.status, exc.reason) from None
        try:
            if action == "publish":
                session, answer = await self.s.sessions.publish(participant.room, offer, participant=participant.id)
            else:
                session, answer = await self.s.sessions.subscribe(
                    participant.room, offer, self._subscription(participant, message), participant=participant.id)
        except JoinError as exc:
            raise RequestError(exc.status, exc.reason) from None
        except Redirect as exc:
            raise RequestError(409, f"this room is served by another node: {exc.url}") from None
        participant.sessions[session.id] = action
        self.by_session[session.id] = participant
        return session, answer

    def _subscription(self, participant: Participant, message: dict[str, Any]) -> Subscription:
        want = Subscription(exclude_stream="")
        layer = message.get("layer", "")
        if not isinstance(layer, str):
            raise RequestError(400, "layer must be a rid")
        want.layer = layer
        for name in ("max_width", "max_height", "last_n"):
            value = message.get(name)
            if value is None:
                continue
            limit = MAX_LAST_N if name == "last_n" else 16384
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
                raise RequestError(400, f"{name} must be a whole number, 0 to {limit}")
            setattr(want, name, value)
        tracks = message.get("tracks", [])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise RequestError(400, "tracks must be a list of track ids")
        want.track_ids = tracks
        # Never one's own tracks back: the publisher sessions of this participant.
        own = [sid for sid, what in participant.sessions.items() if what == "publish"]
        want.exclude_stream = own[0] if len(own) == 1 else ""
        if len(own) > 1:
            theirs = {p.track_id or p.id for sid in own for s in [self.s.rooms.sessions.get(sid)] if s
                      for p in s.producers}
            want.track_ids = [t["track"] for t in self.tracks(participant.room) if t["track"] not in theirs
                              and (not tracks or t["track"] in tracks)]
        return want

    @staticmethod
    def tracks_of(session: "Session") -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for p in session.producers:
            seen.setdefault(p.track_id or p.id, {"track": p.track_id or p.id, "kind": p.kind})
        return list(seen.values())

    def slots(self, session: "Session") -> dict[str, dict[str, Any]]:
        """Which track (and whose) each of a viewer's m-lines shows now."""
        out = {}
        owners = {p.track_id or p.id: p for p in self._published(session.room)}
        for kind, track, mid in session.slots.values():
            owner = owners.get(track)
            out[mid] = {"kind": kind, "track": track,
                        "participant": owner.participant or self.participant_of(owner.stream_id) if owner else None}
        return out

    async def _leave(self, participant: Participant) -> None:
        members = self.rooms.get(participant.room, {})
        members.pop(participant.id, None)
        if not members:
            self.rooms.pop(participant.room, None)
        for session_id in list(participant.sessions):
            self.by_session.pop(session_id, None)
            session = self.s.rooms.sessions.get(session_id)
            if session is not None:
                await self.s.end_session(session, "participant left")
        participant.sessions.clear()
        self.broadcast(participant.room, {"type": "participant_left", "participant": participant.id})
        log.info("participant left", room=participant.room, participant=participant.id)


def _id_of(raw: Any) -> Any:
    try:
        return json.loads(raw.data).get("id")
    except Exception:
        return None
