"""Room registry: rooms, their sessions (WHIP/WHEP resources) and published producers.

Embedded in memory; a later issue puts the same interface on Redis for clusters.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field

from .sdp import Codec


@dataclass
class ProducerInfo:
    """One published RTP stream; the simulcast layers of one track share ``track_id``."""

    id: str
    kind: str
    codec: Codec
    cname: str
    stream_id: str
    track_id: str = ""
    rid: str = ""
    room: str = ""
    shard: int = 0  # where the publisher's packets arrive (a shard of ``node``)
    copies: dict[int, str] = field(default_factory=dict)  # our shard -> id of the relayed copy there
    node: str = ""  # "" = this node; else published on that node of the cluster
    participant: str = ""  # the room API participant publishing it, when on another node
    relayed_to_nodes: set[str] = field(default_factory=set)  # consumer ids of its relays to other nodes

    def id_on(self, shard: int) -> str | None:
        """This producer's id on our ``shard``: itself at home, else its relayed copy, if any."""
        return self.id if not self.node and shard == self.shard else self.copies.get(shard)


@dataclass
class Session:
    """One WHIP or WHEP resource: a peer with one WebRtcTransport on one shard."""

    id: str
    kind: str  # "whip" | "whep"
    room: str
    shard: int
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str
    etag: str = field(default_factory=lambda: f'"{secrets.token_hex(8)}"')
    producers: list[ProducerInfo] = field(default_factory=list)
    consumer_ids: list[str] = field(default_factory=list)
    connected: bool = False
    participant: str = ""  # the room API participant it belongs to ("" for plain WHIP/WHEP)
    last_n: int | None = None  # video of the N most recent speakers (a viewer's choice)
    # consumer id -> (kind, track id it shows, mid): what last-N moves between tracks
    slots: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    rtt_ms: float | None = None  # round trip to the peer from RTCP (co-performance rooms)

    @property
    def transport_id(self) -> str:
        return self.id

    @property
    def location(self) -> str:
        return f"/{self.kind}/{self.room}/{self.id}"


@dataclass
class Room:
    name: str
    shard: int
    sessions: dict[str, Session] = field(default_factory=dict)
    remote_producers: list[ProducerInfo] = field(default_factory=list)  # published on other nodes

    def producers(self) -> list[ProducerInfo]:
        return [p for s in self.sessions.values() if s.kind == "whip" for p in s.producers]


class RoomRegistry:
    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.sessions: dict[str, Session] = {}
        # Per shard, kept as sessions come and go: placement reads them on every join.
        self.viewers_by_shard: Counter[int] = Counter()
        self.sessions_by_shard: Counter[int] = Counter()
        self.producers: dict[str, ProducerInfo] = {}  # every published producer, by id
        self.consumers_by_shard: Counter[int] = Counter()

    def room(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def get_or_create(self, name: str, shard: int) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, shard)
        return room

    def add(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.rooms[session.room].sessions[session.id] = session
        self.sessions_by_shard[session.shard] += 1
        for producer in session.producers:
            self.producers[producer.id] = producer
        if session.kind == "whep":
            self.viewers_by_shard[session.shard] += 1
        self.consumers_by_shard[session.shard] += len(session.consumer_ids)

    def remove(self, session_id: str) -> Session | None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        self.sessions_by_shard[session.shard] -= 1
        for producer in session.producers:
            self.producers.pop(producer.id, None)
        if session.kind == "whep":
            self.viewers_by_shard[session.shard] -= 1
        self.consumers_by_shard[session.shard] -= len(session.consumer_ids)
        room = self.rooms.get(session.room)
        if room is not None:
            room.sessions.pop(session_id, None)
            if not room.sessions:
                del self.rooms[room.name]
        return session
