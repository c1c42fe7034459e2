"""Placement: which shard a new peer goes to.

A publisher goes to the least busy shard. Viewers fill their publisher's shard
(no relay needed) until it is full, then spill to the shards already carrying
the room, then to the least busy other one, which then receives the room's
tracks through the inter-shard relay: one copy per shard, not per viewer.

"Full" follows what the shards report each second (their CPU), extrapolated to
the viewers placed since the report, so a join wave of a hundred viewers a
second does not pile onto a shard for the whole second its report is stale.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import control

MIN_CONSUMERS_TO_EXTRAPOLATE = 20
"""Below this many consumers a shard's CPU is mostly its fixed cost (timers, RTCP),
and dividing it among them would call a quiet shard full."""


@dataclass
class ShardState:
    """What placement knows of one shard at the moment of a join."""

    id: int
    available: bool  # running, connected, not draining
    viewers: int  # WHEP sessions placed on it
    sessions: int  # every session (publishers too)
    consumers: int  # their consumers (one per track), as placed by signalling
    load: control.LoadReport | None

    def estimated_cpu(self) -> float:
        """The last reported CPU, plus the consumers placed since at the reported cost each."""
        if self.load is None:
            return 0.0
        added = self.consumers - self.load.consumers
        if self.load.consumers < MIN_CONSUMERS_TO_EXTRAPOLATE or added <= 0:
            return self.load.cpu
        return self.load.cpu * self.consumers / self.load.consumers

    def busy(self) -> tuple[float, float, int]:
        """Ordering key: packets sent per second, then CPU, then sessions (for shards not yet
        reporting, and ties)."""
        if self.load is None:
            return (0.0, 0.0, self.sessions)
        return (round(self.load.packets_out_per_s, -2), round(self.estimated_cpu(), 1), self.sessions)


def is_full(shard: ShardState, max_cpu: float, max_viewers: int) -> bool:
    if max_viewers and shard.viewers >= max_viewers:
        return True
    return shard.estimated_cpu() >= max_cpu


def place_publisher(shards: list[ShardState]) -> int | None:
    """The least busy available shard (None: none is available)."""
    candidates = [s for s in shards if s.available]
    return min(candidates, key=ShardState.busy).id if candidates else None


def place_viewer(shards: list[ShardState], home: int, carrying: set[int], *, max_cpu: float,
                 max_viewers: int) -> int | None:
    """Home while it has room; else a shard already carrying the room; else the least busy.

    ``home`` is where the room's publishers are; ``carrying`` the shards that already
    hold relayed copies of its tracks. When every shard is full the viewer still gets
    one (the least loaded): refusing a viewer of a company meeting is worse than a
    slower forward.
    """
    available = [s for s in shards if s.available]
    if not available:
        return None
    free = [s for s in available if not is_full(s, max_cpu, max_viewers)]
    home_state = next((s for s in free if s.id == home), None)
    if home_state is not None:
        return home
    relayed = [s for s in free if s.id in carrying]
    if relayed:
        return min(relayed, key=ShardState.busy).id
    if free:
        return min(free, key=ShardState.busy).id
    return min(available, key=lambda s: (s.estimated_cpu(), s.viewers)).id
