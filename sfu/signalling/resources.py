"""WHIP (RFC 9725) and WHEP endpoints and their session resources.

Both share the resource semantics: POST an offer to create, PATCH to trickle
or restart ICE (ETag/If-Match guarded), DELETE to end.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from aiohttp import web

from .. import control
from ..auth import AuthError, bearer_token, verify_token
from ..logs import get_logger
from .rooms import Session
from .sdp import Offer, SdpError, parse_offer, parse_sdpfrag
from .sessions import JoinError, Redirect, Subscription, _ice_credentials

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Retry-After, Link",
}


def error(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers={**CORS, **headers})


MAX_REQUESTED_PIXELS = 16384
MAX_LAST_N = 64


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
        request["sdp_body"] = body  # kept: a cluster front door may pass it on to the room's node
        try:
            return parse_offer(body.decode("utf-8"), max_bytes=limit)
        except UnicodeDecodeError:
            return error(400, "SDP offer is not UTF-8 text")
        except SdpError as exc:
            return error(exc.status, exc.reason)

    def _session(self, request: web.Request) -> Session | web.Response:
        """The session the URL names, if the request's token may act on it (the grant of
        its kind: publish for WHIP, subscribe for WHEP); else the error to answer."""
        session = self.s.rooms.sessions.get(request.match_info["session"])
        if (session is None or session.room != request.match_info["room"]
                or session.kind != request.match_info["kind"]):
            return error(404, "no such session")
        denied = self._authorize(request, session.room, "publish" if session.kind == "whip" else "subscribe")
        return denied if denied is not None else session

    def _answer(self, session: Session, sdp: str) -> web.Response:
        # In a cluster the session lives on this node whatever door the client came in
        # by: its resource URL says so (absolute), so PATCH, DELETE and events come here.
        location = (self.s.cluster.http_url + session.location) if self.s.cluster.clustered else session.location
        return web.Response(status=201, text=sdp, content_type=SDP, headers={
            **CORS, "Location": location, "ETag": session.etag, "Accept-Patch": SDPFRAG,
            "Link": self.s.events.link(location),
        })

    async def _redirect(self, request: web.Request, exc: Redirect) -> web.StreamResponse:
        """To the room's node: 307 (the client POSTs the same offer there), or, when the
        request carries a token, forwarded by us: clients drop Authorization on a
        cross-origin redirect."""
        url = exc.url + (f"?{request.query_string}" if request.query_string else "")
        auth = request.headers.get("Authorization")
        if auth is None:
            return web.Response(status=307, headers={**CORS, "Location": url}, text=f"this room is served at {url}\n")
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
                async with http.post(url, data=request["sdp_body"], allow_redirects=False, headers={
                        "Content-Type": SDP, "Authorization": auth}) as r:
                    body = await r.read()
                    keep = {k: v for k, v in r.headers.items()
                            if k in ("Location", "ETag", "Accept-Patch", "Link", "Retry-After", "Content-Type",
                                     "WWW-Authenticate")}
                    return web.Response(status=r.status, body=body, headers={**CORS, **keep})
        except (aiohttp.ClientError, TimeoutError) as exc2:
            return error(502, f"the room's node did not answer: {exc2}")

    @staticmethod
    def _refused(exc: JoinError) -> web.Response:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else {}
        return error(exc.status, exc.reason, **headers)

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
        record = request.query.get("record", "0")
        if record not in ("0", "1"):
            return error(400, "record must be 0 or 1")
        try:
            session, sdp = await self.s.sessions.publish(room, offer)
        except JoinError as exc:
            return self._refused(exc)
        except Redirect as exc:
            return await self._redirect(request, exc)
        if record == "1":
            try:
                await self.s.recordings.start(room)
            except (RuntimeError, control.ControlError) as exc:
                log.error("recording could not start", room=room, peer=session.id, error=str(exc))
        return self._answer(session, sdp)

    async def post_whep(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        denied = self._authorize(request, room, "subscribe")
        if denied is not None:
            return denied
        offer = await self._read_offer(request)
        if isinstance(offer, web.Response):
            return offer
        size = _requested_size(request)
        if isinstance(size, web.Response):
            return size
        last_n = request.query.get("last_n")
        if last_n is not None and (not last_n.isdigit() or int(last_n) > MAX_LAST_N):
            return error(400, f"last_n must be a whole number, 0 to {MAX_LAST_N}")
        want = Subscription(layer=request.query.get("layer", ""), max_width=size[0], max_height=size[1],
                            last_n=None if last_n is None else int(last_n))
        try:
            session, sdp = await self.s.sessions.subscribe(room, offer, want)
        except JoinError as exc:
            return self._refused(exc)
        except Redirect as exc:
            return await self._redirect(request, exc)
        return self._answer(session, sdp)

    async def patch(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
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
        return self.s.events.subscribe(session.id, session.location, await request.content.read(4096))

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        # The stream id is the capability (it was handed out to an authorised POST), and
        # the stream must outlive the session: its last event may be "reconnect".
        return await self.s.events.stream(request, request.match_info["session"], request.match_info["stream"])

    async def delete(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        await self.s.end_session(session, "deleted by client")
        return web.Response(status=200, headers=CORS)
