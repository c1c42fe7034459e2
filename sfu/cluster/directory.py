"""The directory nodes share: who is up, where each room lives, what it publishes.

A node heartbeats every ``HEARTBEAT_S``; one silent for ``NODE_TTL_S`` is gone,
and so are its room claims and published tracks (readers skip what belongs to a
node that is not up). Claiming a room is first-come: every node and every
signalling replica asking where a room lives gets the same answer.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import Any

HEARTBEAT_S = 2.0
NODE_TTL_S = 10.0


@dataclass
class NodeRecord:
    id: str
    http_url: str  # how other nodes reach its signalling (internal API, proxying)
    rtc_host: str  # its shards' media address
    shard_ports: list[int] = field(default_factory=list)  # [] for a signalling-only replica
    load: dict[str, Any] = field(default_factory=dict)  # viewers, cpu per shard...
    seen_at: float = 0.0
    quic_port: int = 0  # its QUIC relay, if it relays over QUIC

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NodeRecord":
        return cls(**{k: data[k] for k in ("id", "http_url", "rtc_host", "shard_ports", "load", "seen_at",
                                           "quic_port") if k in data})


@dataclass
class RoomHome:
    node: str
    shard: int


class Directory(abc.ABC):
    @abc.abstractmethod
    async def heartbeat(self, node: NodeRecord) -> None:
        """Announce ``node`` (and its load) as up for the next NODE_TTL_S."""

    @abc.abstractmethod
    async def leave(self, node_id: str) -> None:
        """A clean shutdown: gone at once, with its rooms and tracks."""

    @abc.abstractmethod
    async def nodes(self) -> list[NodeRecord]:
        """Every node up, by id."""

    @abc.abstractmethod
    async def claim_room(self, room: str, home: RoomHome) -> RoomHome:
        """Make ``home`` the room's home unless a node that is up has it; the home that holds."""

    @abc.abstractmethod
    async def room_home(self, room: str) -> RoomHome | None:
        """Where the room lives, if its node is up."""

    @abc.abstractmethod
    async def release_room(self, room: str, node_id: str) -> None:
        """The room's last publisher left ``node_id``: the room may live elsewhere next time."""

    @abc.abstractmethod
    async def publish_tracks(self, room: str, node_id: str, tracks: dict[str, dict[str, Any]]) -> None:
        """Add producers (id -> description) published on ``node_id``."""

    @abc.abstractmethod
    async def unpublish_tracks(self, room: str, producer_ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def tracks(self, room: str) -> dict[str, dict[str, Any]]:
        """The room's producers on nodes that are up (each description names its node)."""

    @abc.abstractmethod
    async def set_presence(self, room: str, node_id: str, people: dict[str, dict[str, Any]]) -> None:
        """The room's participants at ``node_id`` (id -> name, access delay...), replacing
        what that node said before; ``{}`` removes them. Co-performance rooms span nodes:
        each node learns the others' participants from here."""

    @abc.abstractmethod
    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        """The room's participants on nodes that are up (each description names its node)."""

    async def close(self) -> None:
        pass


class MemoryDirectory(Directory):
    """One process's directory: the embedded default, and the reference for RedisDirectory."""

    def __init__(self, clock: Any = time.time, ttl_s: float = NODE_TTL_S) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self._nodes: dict[str, NodeRecord] = {}
        self._homes: dict[str, RoomHome] = {}
        self._tracks: dict[str, dict[str, dict[str, Any]]] = {}
        self._presence: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # room -> node -> people

    def _up(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and self.clock() - node.seen_at < self.ttl_s

    async def heartbeat(self, node: NodeRecord) -> None:
        node.seen_at = self.clock()
        self._nodes[node.id] = NodeRecord.from_json(node.to_json())

    async def leave(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def nodes(self) -> list[NodeRecord]:
        return sorted((n for n in self._nodes.values() if self._up(n.id)), key=lambda n: n.id)

    async def claim_room(self, room: str, home: RoomHome) -> RoomHome:
        current = self._homes.get(room)
        if current is None or not self._up(current.node):
            self._homes[room] = current = home
        return current

    async def room_home(self, room: str) -> RoomHome | None:
        current = self._homes.get(room)
        return current if current is not None and self._up(current.node) else None

    async def release_room(self, room: str, node_id: str) -> None:
        current = self._homes.get(room)
        if current is not None and current.node == node_id:
            del self._homes[room]

    async def publish_tracks(self, room: str, node_id: str, tracks: dict[str, dict[str, Any]]) -> None:
        self._tracks.setdefault(room, {}).update({k: {**v, "node": node_id} for k, v in tracks.items()})

    async def unpublish_tracks(self, room: str, producer_ids: list[str]) -> None:
        tracks = self._tracks.get(room, {})
        for producer_id in producer_ids:
            tracks.pop(producer_id, None)
        if not tracks:
            self._tracks.pop(room, None)

    async def tracks(self, room: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self._tracks.get(room, {}).items() if self._up(v["node"])}

    async def set_presence(self, room: str, node_id: str, people: dict[str, dict[str, Any]]) -> None:
        nodes = self._presence.setdefault(room, {})
        if people:
            nodes[node_id] = {k: dict(v) for k, v in people.items()}
        else:
            nodes.pop(node_id, None)
            if not nodes:
                del self._presence[room]

    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        return {k: {**v, "node": node} for node, people in self._presence.get(room, {}).items() if self._up(node)
                for k, v in people.items()}
