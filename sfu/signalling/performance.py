"""Co-performance rooms: performers at several sites, hearing each other as soon as the path allows.

A room whose name matches ``performance_rooms`` differs from an all-hands room in
three ways:

- Publishers stay at the node they reached (no redirect to the room's home):
  each site's performers publish locally, and every node relays the others'
  tracks in, so tracks cross between nodes both ways. Each node learns the
  other nodes' participants and tracks from the directory, once a second, and
  tells its own participants as room events, as if they were local.
- Audio asks publishers for RED (RFC 2198): a lost packet is rebuilt from the
  next one at the receiver, with no retransmission round trip across sites.
  Viewers that did not offer RED get each packet's primary only.
- Each participant is told its estimated one-way delay from every other one:
  half of each one's round trip to its node (RTCP on its receiving transport)
  plus half the relay's round trip between their nodes (QUIC). The SFU itself
  adds no buffering to audio, so this is the delay a performer must play with.
"""

from __future__ import annotations

import asyncio
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from .rooms import ProducerInfo

if TYPE_CHECKING:
    from .app import Signalling
    from .room_api import Participant

log = get_logger("sfu.signalling.performance")

SYNC_INTERVAL_S = 1.0


def one_way_ms(theirs: float | None, relay: float | None, yours: float | None) -> float | None:
    """The estimate between two participants: unknown while either one's access is."""
    if theirs is None or yours is None:
        return None
    return round(theirs + (relay or 0.0) + yours, 1)


class Performance:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling
        self.patterns = [p.strip() for p in signalling.config.performance_rooms.split(",") if p.strip()]
        self.remote_people: dict[str, dict[str, dict[str, Any]]] = {}  # room -> participant -> name, node...
        self.announced: dict[str, dict[str, ProducerInfo]] = {}  # room -> remote producers told to the room
        self._task: asyncio.Task[None] | None = None

    def matches(self, room: str) -> bool:
        return any(fnmatchcase(room, pattern) for pattern in self.patterns)

    def follows(self, room: str) -> bool:
        """A co-performance room with participants here: its remote tracks are kept in step
        (and told) by ``sync``."""
        return self.matches(room) and room in self.s.room_api.rooms

    def start(self) -> None:
        if self.patterns:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for room in list(self.remote_people):
            try:
                await self.s.cluster.directory.set_presence(room, self.s.cluster.id, {})
            except Exception:  # a gone Redis must not stop a shutdown
                break

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            rooms = {r for r in self.s.room_api.rooms if self.matches(r)} | set(self.remote_people)
            relay_ms = await self._relay_rtts() if rooms else {}
            for room in sorted(rooms):
                try:
                    await self.sync(room, relay_ms)
                except Exception:  # Redis away for a moment: next second
                    log.exception("co-performance sync failed", room=room)

    # --- one room, once a second ---------------------------------------------------------

    async def sync(self, room: str, relay_ms: dict[str, float]) -> None:
        """Say who is here, learn who is elsewhere and what they publish, tell everyone the delays."""
        directory, node = self.s.cluster.directory, self.s.cluster.id
        local = self.s.room_api.rooms.get(room, {})
        access = {pid: self.access_ms(p) for pid, p in local.items()}
        await directory.set_presence(room, node, {
            pid: {"name": p.name, "access_ms": access[pid]} for pid, p in local.items()})
        if not local:
            self.remote_people.pop(room, None)
            self.announced.pop(room, None)
            return
        everyone = await directory.presence(room)
        self._people_changed(room, {pid: d for pid, d in everyone.items() if d["node"] != node})
        if self.s.cluster.clustered:
            await self._tracks_changed(room)
        for pid, participant in local.items():
            delays = {}
            for other, desc in everyone.items():
                if other == pid:
                    continue
                relay = relay_ms.get(desc["node"]) if desc["node"] != node else 0.0
                half = relay / 2 if relay is not None else None
                delays[other] = {"one_way_ms": one_way_ms(desc.get("access_ms"), half, access[pid]),
                                 "theirs_ms": desc.get("access_ms"), "relay_ms": half, "node": desc["node"]}
            self.s.room_api.send(participant, {"type": "delays", "you_ms": access[pid], "delays": delays})

    def access_ms(self, participant: "Participant") -> float | None:
        """Half the round trip between a participant and this node (its receiving sessions':
        RTCP gives a round trip where we send media)."""
        rtts = [s.rtt_ms for sid in participant.sessions
                if (s := self.s.rooms.sessions.get(sid)) is not None and s.rtt_ms is not None]
        return round(min(rtts) / 2, 1) if rtts else None

    def _people_changed(self, room: str, remote: dict[str, dict[str, Any]]) -> None:
        before = self.remote_people.get(room, {})
        for pid, desc in remote.items():
            if pid not in before:
                self.s.room_api.broadcast(room, {"type": "participant_joined", "participant": {
                    "id": pid, "name": desc.get("name", ""), "node": desc["node"]}})
        for pid in before:
            if pid not in remote:
                self.s.room_api.broadcast(room, {"type": "participant_left", "participant": pid})
        self.remote_people[room] = remote

    async def _tracks_changed(self, room: str) -> None:
        """Tracks published at other nodes: into the room (to relay on demand), and told."""
        fresh = {p.id: p for p in await self.s.cluster.remote_producers(room)}
        told = self.announced.setdefault(room, {})
        state = self.s.rooms.room(room)
        if state is None and fresh:
            shard = self.s.place_room(room)
            if shard is None:
                return
            state = self.s.rooms.get_or_create(room, shard)
        if state is None:
            return
        known = {p.id: p for p in state.remote_producers}
        state.remote_producers = [known.get(pid, p) for pid, p in fresh.items()]
        for pid in [pid for pid in told if pid not in fresh]:
            producer = known.get(pid, told[pid])
            del told[pid]
            self.s.relays.producer_ended(producer)
            self.s.remote_track_ended(state, producer)
            self._tell(room, "track_unpublished", producer)
        new = [p for pid, p in fresh.items() if pid not in told]
        for producer in new:
            told[producer.id] = producer
        for track in {p.track_id or p.id: p for p in new}.values():
            self._tell(room, "track_published", track)

    def _tell(self, room: str, event: str, producer: ProducerInfo) -> None:
        self.s.room_api.broadcast(room, {"type": event, "participant": producer.participant or None,
                                         "tracks": [{"track": producer.track_id or producer.id,
                                                     "kind": producer.kind}]})

    async def _relay_rtts(self) -> dict[str, float]:
        """Round trip to each other node over the QUIC relay (by node id), where known."""
        stats = await self.s.cluster.quic_stats()
        if not stats:
            return {}
        peers = stats.get("peers", {})
        out = {}
        for n in await self.s.cluster.directory.nodes():
            rtt = peers.get(f"{n.rtc_host}:{n.quic_port}", {}).get("rtt_ms")
            if rtt is not None:
                out[n.id] = float(rtt)
        return out
