"""Publishing and subscribing, whichever door a peer came in by (WHIP/WHEP, the room API).

Both build a Session on a shard placement chose: a publisher's tracks become
producers (one per simulcast layer), a viewer's m-lines are filled with
consumers of the room's tracks, relayed from the publisher's shard when the
viewer landed elsewhere.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import control
from ..logs import get_logger
from .negotiation import TrackInfo, answer_publish, answer_subscribe
from .rooms import ProducerInfo, Session
from .sdp import Offer, SdpError, build_answer

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling")
RETRY_AFTER_S = 2


class Redirect(Exception):
    """The room lives on another node of the cluster: ask there (HTTP 307)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class JoinError(Exception):
    """A publish or subscribe refused: an HTTP status and a sentence for the client."""

    def __init__(self, status: int, reason: str, retry_after_s: int | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass
class Subscription:
    """What a viewer asked for, beyond its offer."""

    layer: str = ""  # starting simulcast layer (rid)
    max_width: int | None = None
    max_height: int | None = None
    last_n: int | None = None  # video of the N most recent speakers only
    exclude_stream: str = ""  # a participant's own tracks are not sent back to it
    track_ids: list[str] = field(default_factory=list)  # only these tracks (empty: all)


def _ice_credentials() -> tuple[str, str]:
    # ice-chars are ALPHA / DIGIT / "+" / "/" (RFC 8839): hex is a safe subset.
    return secrets.token_hex(4), secrets.token_hex(16)


def _ssrc() -> int:
    return random.randint(1, 0xFFFFFFFF)


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


class Sessions:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling

    def answer_sdp(self, session: Session, offer: Offer, media: list) -> str:
        shard = self.s.shards[session.shard]
        return build_answer(
            offer, media, ice_ufrag=session.local_ufrag, ice_pwd=session.local_pwd,
            fingerprint_sha256=shard.fingerprint_sha256,
            setup="active" if offer.setup == "passive" else "passive",
            candidate_host=self.s.config.rtc_host, candidate_port=shard.rtc_port,
        )

    async def _create_transport(self, room: str, kind: str, offer: Offer, shard_id: int,
                                participant: str) -> Session:
        """The session's WebRTC transport on the shard; in a co-performance room the shard
        reports its round-trip time (the participant's delay estimate)."""
        ufrag, pwd = _ice_credentials()
        session = Session(id=secrets.token_urlsafe(16), kind=kind, room=room, shard=shard_id,
                          local_ufrag=ufrag, local_pwd=pwd,
                          remote_ufrag=offer.ice_ufrag, remote_pwd=offer.ice_pwd, participant=participant)
        # Offerer's "actpass" leaves the choice to us: we stay DTLS server (passive), so the
        # peer's ClientHello arrives once its ICE checks succeed and we hold no timer.
        role = "client" if offer.setup == "passive" else "server"
        try:
            await self.s.shards[shard_id].request(control.CreateWebRtcTransport(
                transport_id=session.id, room=room, peer_id=session.id, local_ufrag=ufrag, local_pwd=pwd,
                remote_ufrag=offer.ice_ufrag, remote_pwd=offer.ice_pwd, dtls_role=role,
                remote_fingerprint=offer.fingerprint, report_rtt=self.s.performance.matches(room),
            ))
        except control.ControlError as exc:
            raise JoinError(503, f"shard unavailable: {exc}") from None
        return session

    async def _abandon(self, session: Session) -> None:
        try:
            await self.s.shards[session.shard].request(control.CloseTransport(transport_id=session.id))
        except control.ControlError:
            pass

    async def publish(self, room: str, offer: Offer, *, participant: str = "") -> tuple[Session, str]:
        # A co-performance room has publishers at every site: each stays at its node.
        performance = self.s.performance.matches(room)
        try:
            media = answer_publish(offer, red=performance)
        except SdpError as exc:
            raise JoinError(exc.status, exc.reason) from None
        shard_id = self.s.place_room(room)
        if shard_id is None:
            if self.s.cluster.clustered:
                await self._redirect_to_home(room, "whip")
            raise JoinError(503, "no shard is available", RETRY_AFTER_S)
        if self.s.cluster.clustered and not performance:
            home = await self.s.cluster.claim(room, shard_id)
            if home.node != self.s.cluster.id:
                await self._redirect_to_home(room, "whip")
        session = await self._create_transport(room, "whip", offer, shard_id, participant)
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
                        extensions=m.extensions, rid=rid, red_payload_type=m.codec.red_payload_type,
                    ))
                    session.producers.append(producer)
        except control.ControlError as exc:
            await self._abandon(session)
            raise JoinError(503, f"shard unavailable: {exc}") from None
        existing = self.s.rooms.room(room)
        was_active = bool(existing and existing.producers())
        self.s.rooms.get_or_create(room, shard_id)
        self.s.rooms.add(session)
        self.s.on_published(session, first=not was_active)
        log.info("publisher joined", room=room, peer=session.id, shard=shard_id, participant=participant,
                 tracks=[f"{p.kind}/{p.codec.name}" for p in session.producers])
        return session, self.answer_sdp(session, offer, media)

    async def _redirect_to_home(self, room: str, kind: str) -> None:
        """A publisher for a room another node holds (or a node with no shards): go there."""
        home = await self.s.cluster.directory.room_home(room)
        target = None
        if home is not None and home.node != self.s.cluster.id:
            target = await self.s.cluster.node(home.node)
        if target is None:
            nodes = [n for n in await self.s.cluster.directory.nodes()
                     if n.shard_ports and n.id != self.s.cluster.id and not n.load.get("draining")]
            target = min(nodes, key=lambda n: (n.load.get("viewers", 0), n.id), default=None)
        if target is None:
            raise JoinError(503, "no node of the cluster can take it", RETRY_AFTER_S)
        raise Redirect(f"{target.http_url}/{kind}/{room}")

    async def _remote(self, room_name: str) -> list[ProducerInfo]:
        """Tracks of the room published on other nodes (refreshed from the directory)."""
        if not self.s.cluster.clustered:
            return []
        fresh = await self.s.cluster.remote_producers(room_name)
        room = self.s.rooms.room(room_name)
        known = {p.id: p for p in room.remote_producers} if room is not None else {}
        # Keep the objects we already relay (their copies), add the new ones.
        merged = [known.get(p.id, p) for p in fresh]
        if merged and room is None:
            shard = self.s.place_room(room_name)
            if shard is None:
                return []
            room = self.s.rooms.get_or_create(room_name, shard)
        if room is not None:
            room.remote_producers = merged
        return merged

    def _tracks_for(self, room_name: str, want: Subscription, remote: list[ProducerInfo] = ()
                    ) -> tuple[list[ProducerInfo], list[ProducerInfo]]:
        """(every producer of the room, the starting layer of each wanted track), the
        latter ordered for the viewer's m-lines: most recent speakers' tracks first."""
        room = self.s.rooms.room(room_name)
        published = (room.producers() if room is not None else []) + list(remote)
        if want.exclude_stream:
            published = [p for p in published if p.stream_id != want.exclude_stream]
        if want.track_ids:
            published = [p for p in published if (p.track_id or p.id) in want.track_ids]
        chosen = select_layers(published, want.layer, self.s.config.simulcast_max_layer)
        if room is not None:
            order = {stream: i for i, stream in enumerate(self.s.speakers.order(room_name))}
            chosen.sort(key=lambda p: order.get(p.stream_id, len(order)))
        return published, chosen

    async def subscribe(self, room_name: str, offer: Offer, want: Subscription | None = None, *,
                        participant: str = "") -> tuple[Session, str]:
        want = want or Subscription()
        if not self.s.shards and self.s.cluster.clustered:
            await self._redirect_to_home(room_name, "whep")  # a signalling-only replica
        local = self.s.rooms.room(room_name)
        everywhere = self.s.performance.matches(room_name)  # publishers at several nodes
        remote = [] if local is not None and local.producers() and not everywhere else await self._remote(room_name)
        published, producers = self._tracks_for(room_name, want, remote)
        if not producers:
            raise JoinError(409, f"nothing is published in room {room_name!r} yet", RETRY_AFTER_S)
        tracks, by_track = [], {}
        for p in producers:
            track = TrackInfo(kind=p.kind, codec_name=p.codec.name, clock_rate=p.codec.clock_rate,
                              send_ssrc=_ssrc(), send_rtx_ssrc=_ssrc() if p.kind == "video" else None,
                              cname=p.cname, msid=f"{p.stream_id} {p.track_id or p.id}",
                              red=p.codec.red_payload_type is not None)
            tracks.append(track)
            by_track[id(track)] = p
        if want.last_n is not None:
            # Only the first N video m-lines are filled; the rest of the offer stays idle.
            beyond = {id(t) for t in [t for t in tracks if t.kind == "video"][want.last_n:]}
            tracks = [t for t in tracks if id(t) not in beyond]
        try:
            media, matches = answer_subscribe(offer, tracks)
        except SdpError as exc:
            raise JoinError(exc.status, exc.reason) from None
        room = self.s.rooms.room(room_name)
        assert room is not None  # it has producers
        shard_id = self.s.place_viewer(room)
        if shard_id is None:
            if self.s.cluster.clustered:
                await self._redirect_to_home(room_name, "whep")  # this node drains: another one
            raise JoinError(503, "no shard is available", RETRY_AFTER_S)
        try:
            # Away from the publisher's shard, each track (every layer of a simulcast
            # one) arrives through the relay: copied once per shard, then shared.
            local: dict[str, str] = {}
            for _, track, _ in matches:
                chosen = by_track[id(track)]
                for p in self._layers_of(chosen, published):
                    local[p.id] = await self.s.relays.copy_on(p, shard_id)
        except control.ControlError as exc:
            raise JoinError(503, f"shard unavailable: {exc}") from None
        session = await self._create_transport(room_name, "whep", offer, shard_id, participant)
        session.last_n = want.last_n
        shard = self.s.shards[shard_id]
        try:
            for index, track, codec in matches:
                m = media[index]
                consumer_id = secrets.token_urlsafe(12)
                nack = "nack" in codec.rtcp_fb
                chosen = by_track[id(track)]
                layers = [local[p.id] for p in self._layers_of(chosen, published)]
                await shard.request(control.Consume(
                    transport_id=session.id, consumer_id=consumer_id, producer_id=local[chosen.id],
                    layer_producer_ids=layers if len(layers) > 1 else [], max_layer_rid=want.layer,
                    max_width=want.max_width, max_height=want.max_height,
                    room_max_layer=self.s.config.simulcast_max_layer,
                    mid=m.offer.mid, payload_type=codec.payload_type, ssrc=track.send_ssrc,
                    rtx_payload_type=codec.rtx_payload_type if nack else None,
                    rtx_ssrc=track.send_rtx_ssrc if nack and codec.rtx_payload_type is not None else None,
                    extensions=m.extensions, nack=nack, red_payload_type=codec.red_payload_type,
                ))
                session.consumer_ids.append(consumer_id)
                session.slots[consumer_id] = (chosen.kind, chosen.track_id or chosen.id, m.offer.mid)
        except control.ControlError as exc:
            await self._abandon(session)
            raise JoinError(503, f"shard unavailable: {exc}") from None
        self.s.rooms.add(session)
        log.info("viewer joined", room=room_name, peer=session.id, shard=shard_id, participant=participant,
                 tracks=len(session.consumer_ids), last_n=want.last_n)
        return session, self.answer_sdp(session, offer, media)

    @staticmethod
    def _layers_of(chosen: ProducerInfo, published: list[ProducerInfo]) -> list[ProducerInfo]:
        if not chosen.track_id:
            return [chosen]
        return [p for p in published if p.track_id == chosen.track_id]
