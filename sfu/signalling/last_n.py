"""Last-N: in a room with many publishers, each viewer gets the video of the N most
recent speakers only (its m-lines are N "slots"); audio of everyone still flows.

When the active speaker changes, a slot showing someone no longer among the N is
moved to the newcomer: the shard switches it on the newcomer's keyframe and the
viewer's stream continues (same SSRC, continuous numbering), so the client only
relabels the tile (a ``slots`` event on the room API).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import control
from ..logs import get_logger

if TYPE_CHECKING:
    from .app import Signalling
    from .rooms import ProducerInfo, Session

log = get_logger("sfu.signalling.last_n")


def assign(slots: list[tuple[str, str]], wanted: list[str]) -> list[tuple[str, str]]:
    """Moves ``(slot, track)`` that make ``slots`` (slot, track shown) show every track in
    ``wanted``, touching only slots whose track is not wanted, in slot order."""
    showing = {track for _, track in slots}
    missing = [t for t in wanted if t not in showing]
    moves = []
    for slot, track in slots:
        if not missing:
            break
        if track not in wanted:
            moves.append((slot, missing.pop(0)))
    return moves


class LastN:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling
        self.moves = 0

    def video_tracks(self, room: str) -> dict[str, list["ProducerInfo"]]:
        """Video tracks (their layers), most recent speaker first, then by publishing order."""
        state = self.s.rooms.room(room)
        tracks: dict[str, list[ProducerInfo]] = {}
        for p in state.producers() if state is not None else []:
            if p.kind == "video":
                tracks.setdefault(p.track_id or p.id, []).append(p)
        order = {stream: i for i, stream in enumerate(self.s.speakers.order(room))}
        return dict(sorted(tracks.items(), key=lambda kv: order.get(kv[1][0].stream_id, len(order))))

    async def update_room(self, room: str) -> None:
        state = self.s.rooms.room(room)
        if state is None:
            return
        tracks = self.video_tracks(room)
        for session in list(state.sessions.values()):
            if session.kind == "whep" and session.last_n:
                try:
                    await self._update(session, tracks)
                except control.ControlError as exc:
                    log.warning("last-N move failed", room=room, peer=session.id, error=str(exc))

    async def _update(self, session: "Session", tracks: dict[str, list["ProducerInfo"]]) -> None:
        own = {sid for sid, s in self.s.rooms.sessions.items() if session.participant
               and s.participant == session.participant and s.kind == "whip"}
        candidates = [t for t, layers in tracks.items() if layers[0].stream_id not in own]
        slots = [(consumer, track) for consumer, (kind, track, _) in session.slots.items() if kind == "video"]
        moves = assign(slots, candidates[:len(slots)])
        for consumer, track in moves:
            layers = tracks[track]
            local = [await self.s.relays.copy_on(p, session.shard) for p in layers]
            start = local[len(local) // 2]
            await self.s.shards[session.shard].request(control.Retarget(
                consumer_id=consumer, producer_id=start, layer_producer_ids=local if len(local) > 1 else []))
            kind, _, mid = session.slots[consumer]
            session.slots[consumer] = (kind, track, mid)
            self.moves += 1
        if moves:
            log.info("last-N slots moved", room=session.room, peer=session.id, moves=len(moves))
            self.s.room_api.to_session(session.id, {"type": "slots", "session": session.id,
                                                    "slots": self.s.room_api.slots(session)})
