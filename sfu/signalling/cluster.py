"""This node in the cluster: its heartbeat, its rooms and tracks in the directory,
tracks from other nodes for its viewers, and the internal API other nodes call.

Without ``--redis-url`` the directory is in memory and this is a cluster of one.
A publisher's room is claimed for its node; a publisher arriving at another node
is redirected there (307, which WHIP clients follow). A viewer may join any node:
tracks homed elsewhere arrive through a node relay, one copy per shard. When a
node disappears from the directory (no heartbeat for 10 s), its rooms are free
and the copies this node held of its tracks end (their viewers are told).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import control
from ..auth import ADMIN_ROOM, issue_token
from ..cluster.directory import HEARTBEAT_S, Directory, MemoryDirectory, NodeRecord, RoomHome
from ..logs import get_logger
from ..relay.loopback import LOOPBACK
from ..relay.base import relay_consume
from ..relay.node import NodeRelay, NodeRelayError
from ..relay.quic import QUIC_RELAY, QuicRelay
from ..relay.quic_main import HELLO_KEY_ENV, HELLO_KEY_LABEL
from .admin import require_admin
from .child_process import ChildProcess
from .rooms import ProducerInfo, Session
from .sdp import Codec

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling.cluster")


class QuicRelayProcess(ChildProcess):
    name = "quic-relay"

    def __init__(self, config: Any, host: str) -> None:
        super().__init__(lambda body: None)
        self.config = config
        self.host = host

    def arguments(self) -> list[str]:
        c = self.config
        # Shards bind rtc_host only: the relay process meets them there (not on loopback).
        return ["sfu.relay.quic_main", "--quic-host", self.host, "--local-host", self.host,
                "--quic-port", str(c.quic_port), "--public-port", str(c.quic_public_port or c.quic_port),
                "--cert", c.relay_cert, "--key", c.relay_key, "--ca", c.relay_ca, "--log-level", c.log_level,
                "--log-levels", c.log_levels, "--node-id", c.node_id]

    def environment(self) -> dict[str, str] | None:
        """The key the relay's hellos are signed with: derived from the cluster's secret, so
        the relay process never holds the secret that signs tokens."""
        if not self.config.auth_secret:
            return None
        key = hmac.new(self.config.auth_secret.encode(), HELLO_KEY_LABEL, hashlib.sha256).hexdigest()
        return {**os.environ, HELLO_KEY_ENV: key}


def _codec_json(codec: Codec) -> dict[str, Any]:
    return {"name": codec.name, "payload_type": codec.payload_type, "clock_rate": codec.clock_rate,
            "channels": codec.channels, "fmtp": codec.fmtp, "rtcp_fb": list(codec.rtcp_fb),
            "rtx_payload_type": codec.rtx_payload_type, "red_payload_type": codec.red_payload_type}


class ClusterNode:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling
        config = signalling.config
        self.id = config.node_id or f"{socket.gethostname()}-{config.http_port}"  # cli sets it
        self.http_url = (config.public_url or f"http://{config.http_host}:{config.http_port}").rstrip("/")
        self.rtc_host = LOOPBACK.get(config.rtc_host, config.rtc_host)
        if config.redis_url:
            from ..cluster.redis_directory import RedisDirectory

            self.directory: Directory = RedisDirectory(config.redis_url)
        else:
            self.directory = MemoryDirectory()
        self.remote_links: dict[tuple[int, str, int], NodeRelay | QuicRelay] = {}
        self.quic: QuicRelayProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self.heartbeats = 0

    @property
    def clustered(self) -> bool:
        return bool(self.s.config.redis_url)

    def _token(self) -> str | None:
        """An admin token of the cluster's secret, for other nodes' internal API."""
        secret = self.s.config.auth_secret
        return issue_token(secret, ADMIN_ROOM, admin=True, ttl_s=60) if secret else None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.s.config.relay_transport == "quic" and self.s.shards:
            self.quic = QuicRelayProcess(self.s.config, self.rtc_host)
            await self.quic.start()
            log.info("quic relay started", node=self.id, port=self.s.config.quic_port)
        await self._heartbeat()
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("node up", node=self.id, http_url=self.http_url, clustered=self.clustered)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await self.directory.leave(self.id)
        except Exception as exc:  # a gone Redis must not stop a shutdown
            log.warning("leaving the directory failed", node=self.id, error=str(exc))
        await self.directory.close()
        if self.quic is not None:
            await self.quic.stop()

    @property
    def draining(self) -> bool:
        """Every shard of this node drains: a node on its way out (a rolling update)."""
        return bool(self.s.shards) and all(s.id in self.s.supervisor.draining for s in self.s.shards)

    async def drain_started(self) -> None:
        """Once the whole node drains, its rooms are free to move: the next publisher of
        each (the present one, moving) claims it on another node."""
        if not self.clustered or not self.draining:
            return
        await self._heartbeat()
        for room in list(self.s.rooms.rooms):
            await self.directory.release_room(room, self.id)
        log.info("node draining: its rooms released", node=self.id, rooms=len(self.s.rooms.rooms))

    async def _heartbeat(self) -> None:
        shards = self.s.shards
        load = {"viewers": sum(self.s.rooms.viewers_by_shard.values()), "draining": self.draining,
                "cpu": [round(s.load.cpu, 3) if s.load else 0.0 for s in shards]}
        await self.directory.heartbeat(NodeRecord(
            id=self.id, http_url=self.http_url, rtc_host=self.rtc_host,
            shard_ports=[s.rtc_port for s in shards], load=load,
            quic_port=(self.s.config.quic_public_port or self.s.config.quic_port) if self.quic is not None else 0))
        self.heartbeats += 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._heartbeat()
                await self._check_remote_tracks()
            except Exception:  # Redis away for a moment: try again next beat
                log.exception("cluster heartbeat failed", node=self.id)

    # --- rooms and tracks ----------------------------------------------------------------

    async def claim(self, room: str, shard: int) -> RoomHome:
        return await self.directory.claim_room(room, RoomHome(self.id, shard))

    async def node(self, node_id: str) -> NodeRecord | None:
        return next((n for n in await self.directory.nodes() if n.id == node_id), None)

    async def published(self, session: Session) -> None:
        await self.directory.publish_tracks(session.room, self.id, {p.id: {
            "kind": p.kind, "codec": _codec_json(p.codec), "cname": p.cname, "stream_id": p.stream_id,
            "track_id": p.track_id, "rid": p.rid, "shard": p.shard, "participant": session.participant}
            for p in session.producers})

    async def unpublished(self, session: Session) -> None:
        await self.directory.unpublish_tracks(session.room, [p.id for p in session.producers])
        room = self.s.rooms.room(session.room)
        if room is None or not any(s.kind == "whip" for s in room.sessions.values()):
            await self.directory.release_room(session.room, self.id)

    async def remote_producers(self, room: str) -> list[ProducerInfo]:
        """The room's tracks published on other nodes, as producers this node can relay."""
        out = []
        for producer_id, t in (await self.directory.tracks(room)).items():
            if t["node"] == self.id:
                continue
            c = t["codec"]
            out.append(ProducerInfo(
                id=producer_id, kind=t["kind"], codec=Codec(
                    name=c["name"], payload_type=c["payload_type"], clock_rate=c["clock_rate"],
                    channels=c.get("channels", 1), fmtp=c.get("fmtp", ""), rtcp_fb=tuple(c.get("rtcp_fb", ())),
                    rtx_payload_type=c.get("rtx_payload_type"), red_payload_type=c.get("red_payload_type")),
                cname=t["cname"], stream_id=t["stream_id"], track_id=t["track_id"], rid=t["rid"], room=room,
                shard=t["shard"], node=t["node"], participant=t.get("participant", "")))
        return out

    async def link(self, producer: ProducerInfo, shard: int) -> NodeRelay | QuicRelay:
        """The relay from the producer's node and shard to our ``shard`` (opened once)."""
        key = (shard, producer.node, producer.shard)
        link = self.remote_links.get(key)
        if link is not None:
            return link
        node = await self.node(producer.node)
        if node is None or producer.shard >= len(node.shard_ports):
            raise NodeRelayError(f"node {producer.node} is not up")
        link: NodeRelay | QuicRelay
        if self.quic is not None and node.quic_port:
            link = QuicRelay(self.s.shards, shard, self.quic,
                             (self.rtc_host, self.s.config.quic_public_port or self.s.config.quic_port),
                             node.http_url, (node.rtc_host, node.quic_port), producer.shard, self._token())
        else:
            link = NodeRelay(self.s.shards, shard, self.rtc_host, node.http_url, node.id, producer.shard,
                             node.rtc_host, node.shard_ports[producer.shard], self.id, self._token())
        await link.open()
        self.remote_links[key] = link
        log.info("node relay opened", node=self.id, frm=f"{node.id}/{producer.shard}", to=shard, relay=link.id)
        return link

    async def _check_remote_tracks(self) -> None:
        """End our copies of tracks whose node unpublished them or went away."""
        for room in list(self.s.rooms.rooms.values()):
            if self.s.performance.follows(room.name):
                continue  # followed every second, with room events (performance.py)
            remote = [p for p in room.remote_producers if p.copies]
            if not remote:
                continue
            alive = await self.directory.tracks(room.name)
            gone = [p for p in remote if p.id not in alive]
            for producer in gone:
                log.info("remote track ended", room=room.name, producer=producer.id, node=producer.node)
                room.remote_producers.remove(producer)
                self.s.relays.producer_ended(producer)
                self.s.remote_track_ended(room, producer)
        live_nodes = {n.id for n in await self.directory.nodes()}
        for key in [k for k in self.remote_links if k[1] not in live_nodes]:
            link = self.remote_links.pop(key)
            await link.close(endpoint=link.local_shard)

    # --- HTTP: the internal API other nodes call, and placement --------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/internal/relay/open", self.internal_open),
            web.post("/internal/relay/carry", self.internal_carry),
            web.post("/internal/relay/release", self.internal_release),
            web.post("/internal/relay/close", self.internal_close),
            web.post("/internal/quic/open", self.internal_quic_open),
            web.post("/internal/quic/carry", self.internal_quic_carry),
            web.post("/internal/quic/release", self.internal_quic_release),
            web.get("/api/nodes", self.api_nodes),
            web.get("/api/placement/{room}", self.api_placement),
        ]

    def _authorize(self, request: web.Request) -> None:
        require_admin(self.s.config, request)

    async def _body(self, request: web.Request, *keys: str) -> dict[str, Any]:
        self._authorize(request)
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body must be JSON\n") from None
        if not isinstance(body, dict) or any(k not in body for k in keys):
            raise web.HTTPBadRequest(text=f"body needs {', '.join(keys)}\n")
        return body

    def _shard(self, shard: Any) -> Any:
        if not isinstance(shard, int) or not 0 <= shard < len(self.s.shards):
            raise web.HTTPNotFound(text="no such shard\n")
        return self.s.shards[shard]

    async def internal_open(self, request: web.Request) -> web.Response:
        body = await self._body(request, "relay_id", "shard", "peer_host", "peer_port")
        try:
            await self._shard(body["shard"]).request(control.OpenRelay(
                relay_id=str(body["relay_id"]), peer_host=str(body["peer_host"]), peer_port=int(body["peer_port"])))
        except control.ControlError as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
        return web.json_response({"ok": True})

    async def internal_carry(self, request: web.Request) -> web.Response:
        body = await self._body(request, "relay_id", "producer_id", "consumer_id", "ssrc")
        producer = self.s.rooms.producers.get(str(body["producer_id"]))
        if producer is None:
            raise web.HTTPNotFound(text="no such producer here\n")
        rtx_ssrc = body.get("rtx_ssrc")
        try:
            await self.s.shards[producer.shard].request(relay_consume(
                str(body["relay_id"]), str(body["consumer_id"]), producer.id, producer.codec, int(body["ssrc"]),
                int(rtx_ssrc) if rtx_ssrc is not None else None))
        except control.ControlError as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
        producer.relayed_to_nodes.add(str(body["consumer_id"]))
        log.info("track relayed to another node", room=producer.room, producer=producer.id,
                 relay=body["relay_id"])
        return web.json_response({"ok": True})

    def _released(self, consumer_id: str) -> None:
        for producer in self.s.rooms.producers.values():
            producer.relayed_to_nodes.discard(consumer_id)

    async def internal_release(self, request: web.Request) -> web.Response:
        body = await self._body(request, "consumer_id")
        self._released(str(body["consumer_id"]))
        for shard in self.s.shards:
            try:
                await shard.request(control.CloseConsumer(consumer_id=str(body["consumer_id"])))
            except control.ControlError:
                pass
        return web.json_response({"ok": True})

    async def internal_close(self, request: web.Request) -> web.Response:
        body = await self._body(request, "relay_id", "shard")
        try:
            await self._shard(body["shard"]).request(control.CloseRelay(relay_id=str(body["relay_id"])))
        except control.ControlError:
            pass
        return web.json_response({"ok": True})

    def _quic(self) -> QuicRelayProcess:
        if self.quic is None:
            raise web.HTTPConflict(text="this node does not relay over QUIC\n")
        return self.quic

    async def internal_quic_open(self, request: web.Request) -> web.Response:
        body = await self._body(request, "shard")
        quic = self._quic()
        try:
            await self._shard(body["shard"]).request(control.OpenRelay(
                relay_id=QUIC_RELAY, peer_host=quic.host, peer_port=quic.rtc_port))
        except control.ControlError as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
        return web.json_response({"ok": True})

    async def internal_quic_carry(self, request: web.Request) -> web.Response:
        body = await self._body(request, "producer_id", "consumer_id", "ssrc", "peer_host", "peer_port")
        quic = self._quic()
        producer = self.s.rooms.producers.get(str(body["producer_id"]))
        if producer is None:
            raise web.HTTPNotFound(text="no such producer here\n")
        rtx_ssrc = body.get("rtx_ssrc")
        rtx_ssrc = int(rtx_ssrc) if rtx_ssrc is not None and producer.codec.rtx_payload_type is not None else None
        ssrcs = [int(body["ssrc"])] + ([rtx_ssrc] if rtx_ssrc is not None else [])
        shard = self.s.shards[producer.shard]
        try:
            await quic.request(control.QuicFlow(ssrcs=ssrcs, direction="out", peer_host=str(body["peer_host"]),
                                                peer_port=int(body["peer_port"]), shard_port=shard.rtc_port))
            await shard.request(relay_consume(QUIC_RELAY, str(body["consumer_id"]), producer.id, producer.codec,
                                              ssrcs[0], rtx_ssrc))
        except control.ControlError as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
        producer.relayed_to_nodes.add(str(body["consumer_id"]))
        log.info("track relayed over QUIC", room=producer.room, producer=producer.id,
                 peer=f"{body['peer_host']}:{body['peer_port']}")
        return web.json_response({"ok": True})

    async def internal_quic_release(self, request: web.Request) -> web.Response:
        body = await self._body(request, "consumer_id", "ssrcs")
        self._released(str(body["consumer_id"]))
        for shard in self.s.shards:
            try:
                await shard.request(control.CloseConsumer(consumer_id=str(body["consumer_id"])))
            except control.ControlError:
                pass
        if self.quic is not None:
            try:
                await self.quic.request(control.QuicFlowClose(ssrcs=[int(x) for x in body["ssrcs"]]))
            except control.ControlError:
                pass
        return web.json_response({"ok": True})

    async def quic_stats(self) -> dict[str, Any] | None:
        if self.quic is None:
            return None
        try:
            return await self.quic.request(control.GetStats(), timeout_s=1.0)
        except control.ControlError:
            return None

    async def api_nodes(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response([n.to_json() for n in await self.directory.nodes()])

    async def api_placement(self, request: web.Request) -> web.Response:
        """Where a room lives and where its next viewer would go: the same on every replica."""
        self._authorize(request)
        room = request.match_info["room"]
        home = await self.directory.room_home(room)
        nodes = await self.directory.nodes()
        media = [n for n in nodes if n.shard_ports]
        viewer_node = None
        if home is not None:
            viewer_node = home.node
        elif media:
            viewer_node = min(media, key=lambda n: (n.load.get("viewers", 0), n.id)).id
        return web.json_response({
            "room": room, "home": None if home is None else {"node": home.node, "shard": home.shard},
            "publisher_node": home.node if home is not None else viewer_node, "viewer_node": viewer_node,
            "nodes": [n.id for n in nodes]})



