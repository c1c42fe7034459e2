"""Baseline (b): a WHIP/WHEP relay written the way a Python developer would today, with aiortc.

One ``RTCPeerConnection`` per peer, the publisher's tracks shared through
aiortc's ``MediaRelay``, and ``relay.subscribe(track)`` added to each viewer's
connection. aiortc decodes the publisher's stream once and encodes it again
for every viewer (its senders take frames, not packets): that is the cost the
benchmark measures, not a flaw of this file. It is ICE-full (aioice) and takes
its DTLS role from the offer.

    python -m bench.baselines.aiortc_relay --http-port 8090

Loopback only: aioice is told that 127.0.0.1 is the only host address.
"""

from __future__ import annotations

import argparse
import secrets

import aioice.ice
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class RelayServer:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, list[MediaStreamTrack]] = {}  # room -> the publisher's tracks
        self.sessions: dict[str, RTCPeerConnection] = {}

    async def _answer(self, request: web.Request, pc: RTCPeerConnection, kind: str) -> web.Response:
        await pc.setLocalDescription(await pc.createAnswer())
        session = secrets.token_urlsafe(12)
        self.sessions[session] = pc
        location = f"/{kind}/{request.match_info['room']}/{session}"
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": location})

    async def whip(self, request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        self.tracks[request.match_info["room"]] = tracks
        return await self._answer(request, pc, "whip")

    async def whep(self, request: web.Request) -> web.Response:
        tracks = self.tracks.get(request.match_info["room"])
        if not tracks:
            return web.Response(status=409, text="nothing published yet\n", headers={"Retry-After": "1"})
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        for track in tracks:
            pc.addTrack(self.relay.subscribe(track))
        return await self._answer(request, pc, "whep")

    async def delete(self, request: web.Request) -> web.Response:
        pc = self.sessions.pop(request.match_info["session"], None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=200)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.post("/whip/{room}", self.whip),
            web.post("/whep/{room}", self.whep),
            web.delete("/{kind:whip|whep}/{room}/{session}", self.delete),
            web.get("/healthz", self.healthz),
        ])
        return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8090)
    args = parser.parse_args()
    web.run_app(RelayServer().app(), host="127.0.0.1", port=args.http_port, print=None, access_log=None)


if __name__ == "__main__":
    main()
