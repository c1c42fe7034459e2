"""Server-sent events for WHEP and WHIP sessions: how the server reaches a client mid-session.

The WHEP draft's extension: the 201 answer carries a ``Link`` with
``rel="urn:ietf:params:whep:ext:core:server-sent-events"`` and the events on
offer; the client POSTs a JSON list of the events it wants there, gets a
``Location``, and GETs it as ``text/event-stream``. We offer:

- ``reconnect`` (``{"url": <endpoint>, "reason": ...}``): POST a new offer to
  ``url``. Sent when the session's shard died (the session is already gone) or
  drains (the old session lives until the client DELETEs it, so it can move
  make-before-break);
- ``active`` / ``inactive``: the room got its first publisher / lost its last;
- ``layers`` (``{"track": ..., "active": [rid, ...]}``, publishers): the simulcast
  layers someone watches; a publisher that can stops sending the others
  (layer_demand.py).

WHIP has no such extension; we offer the same link on WHIP sessions so a
publisher can be moved the same way.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..logs import get_logger

log = get_logger("sfu.signalling.events")

EVENTS_REL = "urn:ietf:params:whep:ext:core:server-sent-events"
SUPPORTED = ("active", "inactive", "reconnect", "layers")
KEEPALIVE_S = 15.0
UNCLAIMED_TTL_S = 60.0  # a subscription never fetched, after its session ended
MAX_SUBSCRIPTIONS_PER_SESSION = 4


@dataclass
class Subscription:
    id: str
    session_id: str
    events: frozenset[str]
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(default_factory=asyncio.Queue)
    ended: bool = False


class EventStreams:
    def __init__(self) -> None:
        self.subscriptions: dict[str, Subscription] = {}
        self.by_session: dict[str, list[Subscription]] = {}
        self.sent = 0

    @staticmethod
    def link(location: str) -> str:
        return f'<{location}/sse>; rel="{EVENTS_REL}"; events="{",".join(SUPPORTED)}"'

    def subscribe(self, session_id: str, location: str, body: bytes) -> web.Response:
        """``POST {session}/sse`` with a JSON list of event names."""
        from .resources import CORS, error

        try:
            wanted = json.loads(body or b"[]")
        except (ValueError, UnicodeDecodeError):
            return error(400, "body must be a JSON list of event names")
        if not isinstance(wanted, list) or not all(isinstance(e, str) for e in wanted):
            return error(400, "body must be a JSON list of event names")
        unknown = sorted(set(wanted) - set(SUPPORTED))
        if unknown:
            return error(400, f"unsupported events {unknown}; offered: {', '.join(SUPPORTED)}")
        subs = self.by_session.setdefault(session_id, [])
        if len(subs) >= MAX_SUBSCRIPTIONS_PER_SESSION:
            return error(429, f"at most {MAX_SUBSCRIPTIONS_PER_SESSION} event streams per session")
        sub = Subscription(secrets.token_urlsafe(12), session_id, frozenset(wanted or SUPPORTED))
        subs.append(sub)
        self.subscriptions[sub.id] = sub
        return web.Response(status=201, headers={**CORS, "Location": f"{location}/sse/{sub.id}"})

    async def stream(self, request: web.Request, session_id: str, stream_id: str) -> web.StreamResponse:
        """``GET {session}/sse/{id}``: events until the session ends or the client goes."""
        from .resources import CORS, error

        sub = self.subscriptions.get(stream_id)
        if sub is None or sub.session_id != session_id:
            return error(404, "no such event stream")
        response = web.StreamResponse(headers={**CORS, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                name, data = item
                await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if sub.ended:
                self._forget(sub)
        return response

    def send(self, session_id: str, event: str, data: dict[str, Any]) -> int:
        """Queue ``event`` for every stream of the session that asked for it; how many."""
        count = 0
        for sub in self.by_session.get(session_id, ()):
            if event in sub.events and not sub.ended:
                sub.queue.put_nowait((event, data))
                count += 1
        self.sent += count
        return count

    def end(self, session_id: str) -> None:
        """The session is over: close its streams once what is queued has gone out."""
        for sub in self.by_session.pop(session_id, []):
            sub.ended = True
            sub.queue.put_nowait(None)
            # Fetched streams forget themselves on closing; one never fetched expires.
            asyncio.get_running_loop().call_later(UNCLAIMED_TTL_S, self._forget, sub)

    def _forget(self, sub: Subscription) -> None:
        self.subscriptions.pop(sub.id, None)
        subs = self.by_session.get(sub.session_id)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self.by_session[sub.session_id]

    def close_all(self) -> None:
        for session_id in list(self.by_session):
            self.end(session_id)
