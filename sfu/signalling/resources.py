"""WHIP (RFC 9725) and WHEP endpoints and their session resources.

Both share the resource semantics: POST an offer to create, PATCH to trickle
or restart ICE (ETag/If-Match guarded), DELETE to end.
"""

from __future__ import annotations

import random
import secrets
from typing import TYPE_CHECKING

from aiohttp import web

from .. import control
from ..auth import AuthError, bearer_token, verify_token
from ..logs import get_logger
from .negotiation import TrackInfo, answer_publish, answer_subscribe
from .rooms import ProducerInfo, Session
from .sdp import Offer, SdpError, build_answer, parse_offer, parse_sdpfrag

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
RETRY_AFTER_S = 2
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Retry-After, Link",
}


def error(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers={**CORS, **headers})


def _ice_credentials() -> tuple[str, str]:
    # ice-chars are ALPHA / DIGIT / "+" / "/" (RFC 8839): hex is a safe subset.
    return secrets.token_hex(4), secrets.token_hex(16)


def _ssrc() -> int:
    return random.randint(1, 0xFFFFFFFF)


MAX_REQUESTED_PIXELS = 16384


def _requested_size(request: web.Request) -> tuple[int | None, int | None] | web.Response:
    """``?max_width=&max_height=``: the viewer's video element in device pixels.

    The layer policy then sends no layer larger than what fills that box (the watch
    page passes its own size): a phone never pays for the 1080p layer.
    """
    out: list[int | None] = []
    for name in ("max_width", "max_height"):
        raw = request.query.get(name)
        if raw is None or raw == "":
            out.append(None)
            continue
        if not raw.isdigit() or not 0 < int(raw) <= MAX_REQUESTED_PIXELS:
            return error(400, f"{name} must be a whole number of pixels, 1 to {MAX_REQUESTED_PIXELS}")
        out.append(int(raw))
    return out[0], out[1]


def select_layers(producers: list[ProducerInfo], layer: str | None,
                  room_max_layer: int | None = None) -> list[ProducerInfo]:
    """One producer per track: the requested simulcast layer (``?layer=<rid>``) where the
    track has it, else the middle of the layers as listed (publishers list low to high),
    or the room's ceiling if lower: a viewer's first seconds carry no bandwidth
    estimate, and starting a thin link on the top layer floods it before the estimate
    can say so.

    Switching layers mid-stream belongs to the simulcast policy (sfu/simulcast); this is
    the starting choice.
    """
    tracks: dict[str, list[ProducerInfo]] = {}
    for p in producers:
        tracks.setdefault(p.track_id or p.id, []).append(p)
    def start(layers: list[ProducerInfo]) -> ProducerInfo:
        index = next((i for i, p in enumerate(layers) if layer and p.rid == layer), len(layers) // 2)
        if room_max_layer is not None:
            index = min(index, room_max_layer, len(layers) - 1)
        return layers[index]

    return [start(layers) for layers in tracks.values()]


class Resources:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling

    def routes(self) -> list[web.RouteDef]:
        return [
            web.options("/whip/{room}", self.options),
            web.options("/whep/{room}", self.options),
            web.options("/{kind:whip|whep}/{room}/{session}", self.options),
            web.post("/whip/{room}", self.post_whip),
            web.post("/whep/{room}", self.post_whep),
            web.patch("/{kind:whip|whep}/{room}/{session}", self.patch),
            web.delete("/{kind:whip|whep}/{room}/{session}", self.delete),
            web.options("/{kind:whip|whep}/{room}/{session}/sse", self.options),
            web.post("/{kind:whip|whep}/{room}/{session}/sse", self.post_events),
            web.get("/{kind:whip|whep}/{room}/{session}/sse/{stream}", self.get_events),
        ]

    # --- helpers -----------------------------------------------------------------------

    def _authorize(self, request: web.Request, room: str, action: str) -> web.Response | None:
        if self.s.config.dev:
            return None
        try:
            verify_token(self.s.config.auth_secret or "", bearer_token(request.headers.get("Authorization")),
                         room=room, action=action)
        except AuthError as exc:
            status = 403 if "grant" in exc.reason or "not valid for room" in exc.reason else 401
            headers = {"WWW-Authenticate": 'Bearer realm="sfu"'} if status == 401 else {}
            return error(status, exc.reason, **headers)
        return None

    async def _read_offer(self, request: web.Request) -> Offer | web.Response:
        if request.content_type != SDP:
            return error(415, f"content type must be {SDP}, got {request.content_type or 'none'}")
        limit = self.s.config.max_sdp_bytes
        if request.content_length is not None and request.content_length > limit:
            return error(413, f"SDP offer larger than {limit} bytes")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return error(413, f"SDP offer larger than {limit} bytes")
        try:
            return parse_offer(body.decode("utf-8"), max_bytes=limit)
        except UnicodeDecodeError:
            return error(400, "SDP offer is not UTF-8 text")
        except SdpError as exc:
            return error(exc.status, exc.reason)

    def _session(self, request: web.Request) -> Session | web.Response:
        session = self.s.rooms.sessions.get(request.match_info["session"])
        if (session is None or session.room != request.match_info["room"]
                or session.kind != request.match_info["kind"]):
            return error(404, "no such session")
        return session

    def _answer(self, session: Session, offer: Offer, media: list, status: int = 201) -> web.Response:
        shard = self.s.shards[session.shard]
        sdp = build_answer(
            offer, media, ice_ufrag=session.local_ufrag, ice_pwd=session.local_pwd,
            fingerprint_sha256=shard.fingerprint_sha256,
            setup="active" if offer.setup == "passive" else "passive",
            candidate_host=self.s.config.rtc_host, candidate_port=shard.rtc_port,
        )
        return web.Response(status=status, text=sdp, content_type=SDP, headers={
            **CORS, "Location": session.location, "ETag": session.etag, "Accept-Patch": SDPFRAG,
            "Link": self.s.events.link(session.location),
        })

    async def _create_transport(self, room: str, kind: str, offer: Offer, shard_id: int) -> Session:
        ufrag, pwd = _ice_credentials()
        session = Session(id=secrets.token_urlsafe(16), kind=kind, room=room, shard=shard_id,
                          local_ufrag=ufrag, local_pwd=pwd,
                          remote_ufrag=offer.ice_ufrag, remote_pwd=offer.ice_pwd)
        # Offerer's "actpass" leaves the choice to us: we stay DTLS server (passive), so the
        # peer's ClientHello arrives once its ICE checks succeed and we hold no timer.
        role = "client" if offer.setup == "passive" else "server"
        await self.s.shards[shard_id].request(control.CreateWebRtcTransport(
            transport_id=session.id, room=room, peer_id=session.id, local_ufrag=ufrag, local_pwd=pwd,
            remote_ufrag=offer.ice_ufrag, remote_pwd=offer.ice_pwd, dtls_role=role,
            remote_fingerprint=offer.fingerprint,
        ))
        return session

    # --- handlers ----------------------------------------------------------------------

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**CORS, "Accept-Post": SDP, "Accept-Patch": SDPFRAG})

    async def post_whip(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        denied = self._authorize(request, room, "publish")
        if denied is not None:
            return denied
        offer = await self._read_offer(request)
        if isinstance(offer, web.Response):
            return offer
        try:
            media = answer_publish(offer)
        except SdpError as exc:
            return error(exc.status, exc.reason)
        shard_id = self.s.place_room(room)
        if shard_id is None:
            return error(503, "no shard is available", **{"Retry-After": str(RETRY_AFTER_S)})
        try:
            session = await self._create_transport(room, "whip", offer, shard_id)
        except control.ControlError as exc:
            return error(503, f"shard unavailable: {exc}")
        shard = self.s.shards[shard_id]
        try:
            for m in media:
                if m.codec is None or m.direction != "recvonly":
                    continue
                o = m.offer
                track_id = secrets.token_urlsafe(12)
                # A simulcast m-line is one track sent as several layers, each its own
                # RTP stream: one producer per rid, SSRCs learnt from the rid extension.
                for rid in m.recv_rids or [""]:
                    producer = ProducerInfo(id=secrets.token_urlsafe(12), kind=o.kind, codec=m.codec,
                                            cname=o.cname or session.id, stream_id=session.id,
                                            track_id=track_id, rid=rid, room=room, shard=shard_id)
                    await shard.request(control.Produce(
                        transport_id=session.id, producer_id=producer.id, kind=o.kind, codec=m.codec.name,
                        mid=o.mid, payload_type=m.codec.payload_type, clock_rate=m.codec.clock_rate,
                        rtx_payload_type=m.codec.rtx_payload_type,
                        ssrc=None if rid else o.ssrc, rtx_ssrc=None if rid else o.rtx_ssrc,
                        extensions=m.extensions, rid=rid,
                    ))
                    session.producers.append(producer)
        except control.ControlError as exc:
            await shard.request(control.CloseTransport(transport_id=session.id))
            return error(503, f"shard unavailable: {exc}")
        was_active = bool(self.s.rooms.room(room) and self.s.rooms.room(room).producers())
        self.s.rooms.get_or_create(room, shard_id)
        self.s.rooms.add(session)
        if not was_active and session.producers:
            self.s.room_event(self.s.rooms.rooms[room], "active", {})
        log.info("publisher joined", room=room, peer=session.id, shard=shard_id,
                 tracks=[f"{p.kind}/{p.codec.name}" for p in session.producers])
        return self._answer(session, offer, media)

    async def post_whep(self, request: web.Request) -> web.Response:
        room_name = request.match_info["room"]
        denied = self._authorize(request, room_name, "subscribe")
        if denied is not None:
            return denied
        offer = await self._read_offer(request)
        if isinstance(offer, web.Response):
            return offer
        room = self.s.rooms.room(room_name)
        published = room.producers() if room is not None else []
        layer = request.query.get("layer", "")
        size = _requested_size(request)
        if isinstance(size, web.Response):
            return size
        producers = select_layers(published, layer, self.s.config.simulcast_max_layer)
        if not producers:
            return error(409, f"nothing is published in room {room_name!r} yet",
                         **{"Retry-After": str(RETRY_AFTER_S)})
        tracks, by_track = [], {}
        for p in producers:
            track = TrackInfo(kind=p.kind, codec_name=p.codec.name, clock_rate=p.codec.clock_rate,
                              send_ssrc=_ssrc(), send_rtx_ssrc=_ssrc() if p.kind == "video" else None,
                              cname=p.cname, msid=f"{p.stream_id} {p.track_id or p.id}")
            tracks.append(track)
            by_track[id(track)] = p
        try:
            media, matches = answer_subscribe(offer, tracks)
        except SdpError as exc:
            return error(exc.status, exc.reason)
        shard_id = self.s.place_viewer(room)
        if shard_id is None:
            return error(503, "no shard is available", **{"Retry-After": str(RETRY_AFTER_S)})
        try:
            # Away from the publisher's shard, each track (every layer of a simulcast
            # one) arrives through the relay: copied once per shard, then shared.
            local: dict[str, str] = {}
            for chosen in producers:
                for p in published:
                    if p is chosen or (chosen.track_id and p.track_id == chosen.track_id):
                        local[p.id] = await self.s.relays.copy_on(p, shard_id)
            session = await self._create_transport(room_name, "whep", offer, shard_id)
        except control.ControlError as exc:
            return error(503, f"shard unavailable: {exc}")
        shard = self.s.shards[shard_id]
        try:
            for index, track, codec in matches:
                m = media[index]
                consumer_id = secrets.token_urlsafe(12)
                nack = "nack" in codec.rtcp_fb
                chosen = by_track[id(track)]
                layers = [local[p.id] for p in published if chosen.track_id and p.track_id == chosen.track_id]
                await shard.request(control.Consume(
                    transport_id=session.id, consumer_id=consumer_id, producer_id=local[chosen.id],
                    layer_producer_ids=layers if len(layers) > 1 else [], max_layer_rid=layer,
                    max_width=size[0], max_height=size[1], room_max_layer=self.s.config.simulcast_max_layer,
                    mid=m.offer.mid, payload_type=codec.payload_type, ssrc=track.send_ssrc,
                    rtx_payload_type=codec.rtx_payload_type if nack else None,
                    rtx_ssrc=track.send_rtx_ssrc if nack and codec.rtx_payload_type is not None else None,
                    extensions=m.extensions, nack=nack,
                ))
                session.consumer_ids.append(consumer_id)
        except control.ControlError as exc:
            try:
                await shard.request(control.CloseTransport(transport_id=session.id))
            except control.ControlError:
                pass
            return error(503, f"shard unavailable: {exc}")
        self.s.rooms.add(session)
        log.info("viewer joined", room=room_name, peer=session.id, shard=shard_id,
                 tracks=len(session.consumer_ids))
        return self._answer(session, offer, media)

    async def patch(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        denied = self._authorize(request, session.room, "publish" if session.kind == "whip" else "subscribe")
        if denied is not None:
            return denied
        if request.content_type != SDPFRAG:
            return error(415, f"content type must be {SDPFRAG}")
        if_match = request.headers.get("If-Match")
        if if_match is None:
            return error(428, "If-Match header required")
        try:
            frag = parse_sdpfrag(await request.text())
        except (SdpError, UnicodeDecodeError) as exc:
            return error(400, getattr(exc, "reason", "sdpfrag is not UTF-8 text"))
        if if_match.strip() == "*":
            return await self._restart_ice(session, frag)
        if if_match.strip() != session.etag:
            return error(412, "ETag does not match the session's current one")
        if frag.ice_ufrag is not None and frag.ice_ufrag != session.remote_ufrag:
            return error(422, "ICE credentials changed: an ICE restart needs If-Match: *")
        # ICE-lite learns the peer's address from its checks: candidates need no action.
        return web.Response(status=204, headers=CORS)

    async def _restart_ice(self, session: Session, frag: object) -> web.Response:
        ufrag, pwd = getattr(frag, "ice_ufrag", None), getattr(frag, "ice_pwd", None)
        if not ufrag or not pwd:
            return error(400, "an ICE restart needs ice-ufrag and ice-pwd")
        local_ufrag, local_pwd = _ice_credentials()
        try:
            await self.s.shards[session.shard].request(control.RestartIce(
                transport_id=session.id, local_ufrag=local_ufrag, local_pwd=local_pwd,
                remote_ufrag=ufrag, remote_pwd=pwd))
        except control.ControlError as exc:
            return error(503, f"shard unavailable: {exc}")
        session.local_ufrag, session.local_pwd = local_ufrag, local_pwd
        session.remote_ufrag, session.remote_pwd = ufrag, pwd
        session.etag = f'"{secrets.token_hex(8)}"'
        shard = self.s.shards[session.shard]
        body = (f"a=ice-lite\r\na=ice-ufrag:{local_ufrag}\r\na=ice-pwd:{local_pwd}\r\n"
                f"a=candidate:1 1 udp 2130706431 {self.s.config.rtc_host} {shard.rtc_port} typ host\r\n"
                "a=end-of-candidates\r\n")
        return web.Response(status=200, text=body, content_type=SDPFRAG,
                            headers={**CORS, "ETag": session.etag})

    async def post_events(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        denied = self._authorize(request, session.room, "publish" if session.kind == "whip" else "subscribe")
        if denied is not None:
            return denied
        return self.s.events.subscribe(session.id, session.location, await request.content.read(4096))

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        # The stream id is the capability (it was handed out to an authorised POST), and
        # the stream must outlive the session: its last event may be "reconnect".
        return await self.s.events.stream(request, request.match_info["session"], request.match_info["stream"])

    async def delete(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        denied = self._authorize(request, session.room, "publish" if session.kind == "whip" else "subscribe")
        if denied is not None:
            return denied
        await self.s.end_session(session, "deleted by client")
        return web.Response(status=200, headers=CORS)
