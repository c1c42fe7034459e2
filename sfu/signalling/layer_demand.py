"""Simulcast layers nobody watches are paused at the publisher, where it can do that.

Each shard reports which producers (simulcast layers, relayed copies included) its
viewers receive or are moving to (``control.LayerDemand``). A layer is wanted when
a viewer on any shard wants it or one of its copies, when it is relayed to another
node (whose viewers we do not see), or when it is recorded (the recorder takes the
top layer); the layer a new viewer starts on is always wanted, so a joiner never
waits. A publisher that follows its session's events gets ``layers`` {active:
[rid, ...]} when that set changes, and stops encoding the others (the publish
page sets ``encodings[i].active``): a presenter's laptop does not encode 720p
for a room that watches 360p. A layer unwanted for ``simulcast_pause_after_s`` (10 s: a viewer's
policy may step down and climb back within seconds, and a pause costs a keyframe to
undo; 0: never) is paused; a
wanted one resumes at once, and the viewer moving to it switches on the keyframe
the encoder starts with. Shards keep paused layers as candidates for their viewers
(``control.LayersPaused``), priced at their last measured bitrate, so a viewer can
still climb to one.

Publishers that cannot pause (OBS, GStreamer over plain WHIP) keep sending every
layer; the shard still forwards none nobody watches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import control
from ..logs import get_logger

if TYPE_CHECKING:
    from .app import Signalling
    from .rooms import ProducerInfo, Session

log = get_logger("sfu.signalling.layer_demand")



class LayerDemand:
    def __init__(self, signalling: "Signalling") -> None:
        self.s = signalling
        self.by_shard: dict[int, set[str]] = {}  # producer ids wanted by each shard's viewers
        self.unwanted_since: dict[str, float] = {}  # producer id -> when it stopped being wanted
        # (session, track) -> (the active rids told, whether a client heard it)
        self.told: dict[tuple[str, str], tuple[frozenset[str], bool]] = {}
        self.paused: dict[int, frozenset[str]] = {}  # shard -> producer ids paused there (as told)
        self.pauses = 0  # layers paused (a count of transitions, for metrics)

    def report(self, shard_id: int, producer_ids: list[str], now: float) -> None:
        self.by_shard[shard_id] = set(producer_ids)
        self.update(now)

    def shard_gone(self, shard_id: int) -> None:
        self.by_shard.pop(shard_id, None)
        self.paused.pop(shard_id, None)

    def wanted(self, producer: "ProducerInfo", layers: list["ProducerInfo"]) -> bool:
        ids = {producer.id, *producer.copies.values()}
        if any(ids & wanted for wanted in self.by_shard.values()):
            return True
        if producer.relayed_to_nodes:
            return True  # the viewers there are not ours to see
        recording = self.s.recordings.active.get(producer.room)
        if recording is not None and producer is layers[-1]:
            return True
        start = min(len(layers) // 2, self.s.config.simulcast_max_layer
                    if self.s.config.simulcast_max_layer is not None else len(layers))
        return producer is layers[min(start, len(layers) - 1)]

    def update(self, now: float) -> None:
        """Decide each simulcast publisher's active layers; tell publishers and shards what changed."""
        paused_by_shard: dict[int, set[str]] = {}
        for session in list(self.s.rooms.sessions.values()):
            if session.kind != "whip":
                continue
            for layers in _simulcast_tracks(session):
                active = set()
                for p in layers:
                    if self.wanted(p, layers):
                        self.unwanted_since.pop(p.id, None)
                        active.add(p.rid)
                        continue
                    since = self.unwanted_since.setdefault(p.id, now)
                    after = self.s.config.simulcast_pause_after_s
                    if after <= 0 or now - since < after:
                        active.add(p.rid)
                    else:
                        for shard, pid in [(p.shard, p.id), *p.copies.items()]:
                            paused_by_shard.setdefault(shard, set()).add(pid)
                self._tell(session, layers, frozenset(active))
        for shard in self.s.shards:
            paused = frozenset(paused_by_shard.get(shard.id, ()))
            if self.paused.get(shard.id, frozenset()) != paused:
                self.paused[shard.id] = paused
                self.s._spawn(_tell_shard(shard, paused))

    def _tell(self, session: "Session", layers: list["ProducerInfo"], active: frozenset[str]) -> None:
        key = (session.id, layers[0].track_id)
        before = self.told.get(key)
        if before is not None and before[0] == active and before[1]:
            return  # told, and someone heard it
        if before is not None and before[0] != active:
            self.pauses += len(before[0] - active)
            log.info("simulcast layers", room=session.room, peer=session.id, active=sorted(active),
                     paused=sorted({p.rid for p in layers} - active))
        # Told again until a client listens: it may follow the session's events a moment
        # after publishing.
        heard = self.s.events.send(session.id, "layers", {
            "track": layers[0].track_id, "active": [p.rid for p in layers if p.rid in active]}) > 0
        self.told[key] = (active, heard)

    def session_ended(self, session: "Session") -> None:
        for key in [k for k in self.told if k[0] == session.id]:
            del self.told[key]
        for p in session.producers:
            self.unwanted_since.pop(p.id, None)


def _simulcast_tracks(session: "Session") -> list[list["ProducerInfo"]]:
    tracks: dict[str, list[Any]] = {}
    for p in session.producers:
        if p.rid and p.kind == "video":
            tracks.setdefault(p.track_id, []).append(p)
    return [layers for layers in tracks.values() if len(layers) > 1]


async def _tell_shard(shard: Any, paused: frozenset[str]) -> None:
    try:
        await shard.request(control.LayersPaused(producer_ids=sorted(paused)))
    except control.ControlError:
        pass  # a dead shard's replacement starts with nothing paused
