"""Active speaker per room, from the RFC 6464 audio levels publishers put on their packets.

Shards sum the levels in C and report each audio producer's mean level (and the
share of packets whose voice-activity bit was set) every half second. A
participant becomes the room's speaker after leading for HOLD_S: a cough or a
door slam in someone's office must not throw the room's video around.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

SPEECH_DBOV = -50.0
"""Quieter than this is background: typical speech at a headset is -20..-40 dBov."""

VOICED_BONUS_DB = 10.0
"""Packets the sender's VAD marked as voice count this much louder (browsers set the
V bit; aiortc never does, so levels alone must also work)."""

HOLD_S = 1.0


@dataclass
class RoomSpeakers:
    order: list[str] = field(default_factory=list)  # stream ids, most recent speaker first
    current: str | None = None
    candidate: str | None = None
    candidate_since: float = 0.0


class ActiveSpeakers:
    def __init__(self, on_change: Callable[[str, str, float], None]) -> None:
        """``on_change(room, stream_id, level_dbov)`` when a room's speaker changes."""
        self._on_change = on_change
        self.rooms: dict[str, RoomSpeakers] = {}

    def order(self, room: str) -> list[str]:
        """Streams (publisher sessions) by how recently they were the speaker, newest first."""
        state = self.rooms.get(room)
        return list(state.order) if state is not None else []

    def report(self, room: str, levels: dict[str, tuple[float, float]], now: float) -> None:
        """One round of levels for a room: stream id -> (mean dBov, voiced fraction)."""
        state = self.rooms.setdefault(room, RoomSpeakers())
        scores = {stream: dbov + VOICED_BONUS_DB * voiced for stream, (dbov, voiced) in levels.items()
                  if dbov >= SPEECH_DBOV}
        if not scores:
            state.candidate = None
            return
        loudest = max(scores, key=lambda s: scores[s])
        if loudest == state.current:
            state.candidate = None
            return
        if loudest != state.candidate:
            state.candidate, state.candidate_since = loudest, now
            # The first voice in a silent room needs no hold: there is nobody to flap with.
            if state.current is not None:
                return
        elif now - state.candidate_since < HOLD_S:
            return
        state.current, state.candidate = loudest, None
        if loudest in state.order:
            state.order.remove(loudest)
        state.order.insert(0, loudest)
        self._on_change(room, loudest, levels[loudest][0])

    def forget(self, room: str, stream: str) -> None:
        """A publisher left."""
        state = self.rooms.get(room)
        if state is None:
            return
        if stream in state.order:
            state.order.remove(stream)
        if state.current == stream:
            state.current = None
        if state.candidate == stream:
            state.candidate = None
        if not state.order and state.current is None:
            del self.rooms[room]
