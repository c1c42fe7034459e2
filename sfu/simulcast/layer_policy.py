"""Per-consumer simulcast layer policy: a protocol core with no I/O and no clock.

The shard owns one :class:`LayerPolicy` per video consumer. It passes in what it
learns (bandwidth estimates, RTCP loss, the viewer's requested size, the room
cap), always with the time ``now`` in seconds from any monotonic clock, and
calls :meth:`LayerPolicy.decide` with the publisher's current layers. The answer
is a :class:`Target`; the fast path switches to it on the next keyframe of that
layer. Same inputs, same outputs: nothing here reads a clock or draws a random
number, so tests drive time by hand.

The rules, in the order ``decide`` applies them:

1. **Candidates.** Only active layers, at or below the caps: the room cap, the
   viewer's requested spatial index, and its requested size (the smallest layer
   that fills the requested box; see :meth:`LayerPolicy.set_requested_max`). If
   the caps exclude every active layer, the lowest active layer is used: a cap
   is a ceiling, not a reason to show nothing.
2. **Steps.** The candidates form a ladder of steps, low to high: every temporal
   layer of the lowest candidate, then each higher spatial layer with all its
   temporal layers ("highest spatial that fits, then highest temporal"): a
   spatial layer that fits is sent at full frame rate, so frame rate is given up
   only on the lowest layer, when even that does not fit. A step's cost is its layer's measured bitrate (never less than a lower
   layer's) times the temporal share in :data:`TEMPORAL_RATE_SHARE`.
3. **Start.** Before the first decision the target is ``start_spatial`` (or the
   nearest active layer to it), else the lowest, with all temporal layers.
4. **Down, at once.** When the estimate falls below the current step's bare
   cost, the target drops in the same call to the highest step whose cost times
   ``headroom`` fits, however many steps that is. When loss stays above
   :data:`LOSS_HIGH_FRACTION` for ``down_hold_s``, it drops one step even if the
   estimate says the link is fine (a lossy Wi-Fi link often reads as fast).
5. **Up, carefully.** One step at a time, and only when the estimate has stayed
   at or above the next step's cost times ``headroom`` for the up hold, loss is
   at most :data:`LOSS_LOW_FRACTION`, and the latest estimate is not lower than
   the one before. The band between ``cost`` (stay) and ``cost * headroom``
   (go up) is the hysteresis that keeps a noisy estimate from flapping. The one
   exception is the **first estimate**: it may lift the viewer straight to the
   highest step it would let a viewer stay on (rule 4's ``STAY_FACTOR``), since the start was a guess made blind and the first
   estimate sums up seconds of measured arrivals, offered the next step's rate by
   the start probe (rule 7).
7. **Probe.** Estimators cannot see capacity they are not offered, so while a
   higher step is allowed the policy names a rate to probe toward
   (:attr:`LayerPolicy.probe_target_bps`, the next step's cost times
   ``headroom``): from the first decision until the first estimate (at most
   :data:`START_PROBE_S`), and afterwards whenever the current step is carried,
   loss is low, the estimate is not falling and the last down-switch is
   :data:`PROBE_PAUSE_AFTER_DOWN_S` old.
6. **Backoff.** A down-switch within :data:`FLAP_WINDOW_S` of an up-switch marks
   that up-switch as failed and multiplies the up hold by
   :data:`UP_HOLD_BACKOFF_FACTOR` (at most :data:`MAX_UP_HOLD_BACKOFFS` times);
   an up-switch that lasts the window resets it. A genuine drop long after the
   last climb costs nothing, but an estimate that keeps bouncing off a
   threshold stops dragging the viewer through keyframe-costing switches.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

DEFAULT_HEADROOM = 1.2
# A layer is kept while the estimate covers this share of its bitrate. Receivers
# estimate from what they receive (aiortc's REMB sits near the incoming rate, and a
# layer's own rate swings with keyframes), so "estimate < bitrate" is true half the
# time on a link that carries the layer fine; real congestion shows as loss, which
# steps down on its own. Measured in the Chromium simulcast test: top-layer REMB
# 1.43-2.04 Mbit/s against a layer swinging 1.0-2.6 Mbit/s per half second.
STAY_FACTOR = 0.8
"""Going up needs ``estimate >= cost * 1.2``; staying needs ``estimate >= cost``.

The 20 % covers what the layer's measured media bitrate leaves out (SRTP tag,
UDP/IP headers, RTX repairs, keyframe bursts) and, more importantly, is wider
than one multiplicative decrease of a GCC-style estimator (x0.85, draft-ietf-
rmcat-gcc-02 §5.5): 1.2 * 0.85 > 1, so the first backoff after a climb does not
bounce the viewer straight back down. With layers at 150k/500k/1.7M a viewer
needs 600 kbit/s of estimate for the middle layer and 2.04 Mbit/s for the top.
"""

DEFAULT_UP_HOLD_S = 1.5
"""How long the estimate must hold above the next step before going up.

Chrome sends video receiver reports every 0.5-1.5 s (1 s, randomised), so 1.5 s
guarantees at least one loss report lands inside the hold and can veto the
climb. Three layers are climbed in 3 s, inside the issue's 5 s to settle.
"""

DEFAULT_DOWN_HOLD_S = 0.5
"""How long loss must stay above :data:`LOSS_HIGH_FRACTION` before a loss-driven
down-switch: from the first lossy report to the latest, with no good report
between. Chrome never sends two receiver reports closer than 0.5 s, so this
means two lossy reports in a row: one burst on Wi-Fi is forgiven, a second
second of loss is not.
"""

LOSS_HIGH_FRACTION = 0.10
"""Loss above this is congestion (GCC's loss controller decreases above 10 %)."""

LOSS_LOW_FRACTION = 0.02
"""Loss above this blocks going up (GCC's loss controller only increases below 2 %);
between the two the policy neither climbs nor drops on loss."""

FLAP_WINDOW_S = 10.0
"""A down-switch this soon after an up-switch means the climb failed."""

UP_HOLD_BACKOFF_FACTOR = 4
MAX_UP_HOLD_BACKOFFS = 2
"""Each failed climb multiplies the up hold by 4, at most twice: 1.5 s, 6 s, 24 s.

Any disturbance that recurs within the flap window gets at most two retries
(four switches) before the hold outgrows it; doubling would allow a third. The
24 s ceiling is the worst wait to climb back after a flapping spell, on a viewer
that is still watching, just a smaller layer."""

TEMPORAL_RATE_SHARE: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (0.6, 1.0),
    3: (0.4, 0.6, 1.0),
    4: (0.25, 0.4, 0.6, 1.0),
}
"""Cumulative share of a layer's bitrate carried by TIDs 0..t, by number of temporal
layers: libwebrtc's VP8 allocation (``kLayerRateAllocation`` in
simulcast_rate_allocator.cc), which is what Chrome publishers actually do. We only
measure a layer's total bitrate, so this is how we price its lower frame rates."""

MAX_TEMPORAL_LAYERS = 4  # VP8's TID is two bits

PROBE_PAUSE_AFTER_DOWN_S = 2.0
"""No probing for this long after a down-switch: the link just overflowed, and padding
would only refill the queue the lower layer's keyframe has to get through (measured
in the Chromium simulcast test: probing straight after a move down sent 0.6 Mbit/s of
padding into a 0.6 Mbit/s link and lost that keyframe's packets)."""

START_PROBE_S = 4.0
"""How long a new viewer is probed toward the next step while no estimate has come.

aiortc sends its first REMB after 3 s of arrivals (and earlier only on overuse);
Chrome's comes sooner. A receiver that never sends one (no REMB, no transport-cc)
is not padded for ever."""


@dataclass(frozen=True)
class Layer:
    """One simulcast encoding of a producer, as the SFU sees it."""

    spatial: int  # rank, 0 = lowest (see order_layers)
    rid: str
    bitrate_bps: float  # measured incoming bitrate of the whole layer (all TIDs)
    width: int | None = None  # from the last keyframe, if known
    height: int | None = None
    temporal_layers: int = 1  # VP8 temporal layers present (TIDs 0..n-1); 1 for H264
    active: bool = True  # the publisher is sending it

    def __post_init__(self) -> None:
        if self.spatial < 0:
            raise ValueError(f"layer {self.rid!r}: spatial must be >= 0, got {self.spatial}")
        if not (math.isfinite(self.bitrate_bps) and self.bitrate_bps >= 0):
            raise ValueError(f"layer {self.rid!r}: bitrate_bps must be finite and >= 0, got {self.bitrate_bps}")
        if not 1 <= self.temporal_layers <= MAX_TEMPORAL_LAYERS:
            raise ValueError(f"layer {self.rid!r}: temporal_layers must be 1..{MAX_TEMPORAL_LAYERS}")


@dataclass(frozen=True, order=True)
class Target:
    """The layer a consumer should receive; orders low to high (spatial, then temporal)."""

    spatial: int
    temporal: int


@dataclass(frozen=True)
class _Step:
    target: Target
    cost_bps: float  # bare bitrate of the stream at this step


class LayerPolicy:
    """Picks the simulcast layer of one consumer; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        room_max_spatial: int | None = None,
        start_spatial: int | None = None,
        up_hold_s: float = DEFAULT_UP_HOLD_S,
        down_hold_s: float = DEFAULT_DOWN_HOLD_S,
        headroom: float = DEFAULT_HEADROOM,
    ) -> None:
        _check_spatial("room_max_spatial", room_max_spatial)
        _check_spatial("start_spatial", start_spatial)
        if not (math.isfinite(up_hold_s) and up_hold_s >= 0 and math.isfinite(down_hold_s) and down_hold_s >= 0):
            raise ValueError("up_hold_s and down_hold_s must be finite and >= 0")
        if not (math.isfinite(headroom) and headroom >= 1.0):
            raise ValueError(f"headroom must be finite and >= 1, got {headroom}")
        self._room_cap = room_max_spatial
        self._start_spatial = start_spatial
        self._up_hold_s = up_hold_s
        self._down_hold_s = down_hold_s
        self._headroom = headroom
        self._req_width: int | None = None
        self._req_height: int | None = None
        self._req_spatial: int | None = None
        self._estimate_bps: float | None = None
        self._estimate_falling = False
        self._loss: float | None = None  # latest reported fraction
        self._loss_high_since: float | None = None  # first report of the current lossy run
        self._loss_high_last: float | None = None  # latest report of that run
        self._target: Target | None = None
        self._up_step: Target | None = None  # the step the up timer is running for
        self._up_need_bps: float | None = None  # its cost * headroom, as of the last decide
        self._up_since: float | None = None  # estimate at or above _up_need_bps since then
        self._last_up_at: float | None = None  # the latest climb not yet judged
        self._up_hold_backoffs = 0
        self._probe_bps: float | None = None
        self._first_decide_at: float | None = None
        self._fresh_estimate = False  # the first estimate, not yet acted on
        self._went_down = False  # the last decide moved down on the estimate or on loss
        self._last_down_at: float | None = None

    # -- inputs ------------------------------------------------------------------

    def set_requested_max(
        self, *, width: int | None = None, height: int | None = None, spatial: int | None = None
    ) -> None:
        """The viewer's wish (WHEP query, room API, or the watch page's video element size).

        Replaces any earlier wish; all ``None`` means no limit. ``width``/``height``
        (device pixels) cap the target at the smallest active layer of known size
        that fills the box in either dimension: the page letterboxes
        (``object-fit: contain``), so a layer as wide *or* as tall as the box is
        shown without upscaling, and anything larger is wasted bandwidth. Layers
        whose size is not yet known (no keyframe seen) cannot be judged; if no
        known layer fills the box, size does not cap. ``spatial`` caps by index.
        Applies at the next :meth:`decide`: lowering is immediate, raising climbs
        with the usual hold.
        """
        for name, value in (("width", width), ("height", height)):
            if value is not None and value <= 0:
                raise ValueError(f"requested {name} must be > 0, got {value}")
        _check_spatial("spatial", spatial)
        self._req_width, self._req_height, self._req_spatial = width, height, spatial

    def set_room_cap(self, spatial: int | None) -> None:
        """Room-wide ceiling on the spatial layer (``None``: none)."""
        _check_spatial("room cap", spatial)
        self._room_cap = spatial

    def on_bandwidth_estimate(self, bps: float, now: float) -> None:
        """A REMB or transport-cc estimate of what the viewer's link carries."""
        if not (math.isfinite(bps) and bps >= 0):
            raise ValueError(f"bandwidth estimate must be finite and >= 0, got {bps}")
        self._estimate_falling = self._estimate_bps is not None and bps < self._estimate_bps
        if self._estimate_bps is None:
            self._fresh_estimate = True
        self._estimate_bps = bps
        # Keep the up timer exact between decides: any dip below the pending step's
        # need restarts the hold.
        if self._up_need_bps is not None:
            if bps < self._up_need_bps:
                self._up_since = None
            elif self._up_since is None and self._loss_allows_up():
                self._up_since = now

    def on_loss(self, fraction_lost: float, now: float) -> None:
        """Fraction lost (0..1) from a viewer's RTCP receiver report."""
        if not (0.0 <= fraction_lost <= 1.0):
            raise ValueError(f"fraction_lost must be within 0..1, got {fraction_lost}")
        self._loss = fraction_lost
        if fraction_lost > LOSS_HIGH_FRACTION:
            if self._loss_high_since is None:
                self._loss_high_since = now
            self._loss_high_last = now
        else:
            self._loss_high_since = self._loss_high_last = None
        if fraction_lost > LOSS_LOW_FRACTION:
            self._up_since = None

    # -- outputs -----------------------------------------------------------------

    @property
    def target(self) -> Target | None:
        """The answer of the last :meth:`decide`."""
        return self._target

    @property
    def went_down(self) -> bool:
        """Whether the last :meth:`decide` moved down because the link no longer carries
        the step (the estimate, or sustained loss), not because a cap changed: the
        caller's cue that the link is congested now."""
        return self._went_down

    @property
    def probing(self) -> bool:
        """Whether the policy would climb if the estimate showed room for the next step.

        True when a higher step is allowed, the current one is carried and loss is
        low. Estimators cannot see capacity they are not offered (Chrome's REMB
        stays within about 1.5x of what it receives), so the caller's pacer should
        then probe toward :attr:`probe_target_bps` with short padding/RTX clusters,
        not a steady stream, and stop once the estimate gets there.
        """
        return self._probe_bps is not None

    @property
    def probe_target_bps(self) -> float | None:
        """The estimate the next step up needs (its cost times headroom), while :attr:`probing`."""
        return self._probe_bps

    # -- the decision ------------------------------------------------------------

    def decide(self, layers: list[Layer], now: float) -> Target | None:
        """The target now, given the producer's layers (any order).

        ``None`` only when no layer is active: there is nothing to forward and
        the consumer waits (the fast path keeps its stream continuous for later).
        """
        spatials = [layer.spatial for layer in layers]
        if len(set(spatials)) != len(spatials):
            raise ValueError(f"layers repeat a spatial index: {sorted(spatials)}")
        if self._first_decide_at is None:
            self._first_decide_at = now
        active = sorted((layer for layer in layers if layer.active), key=lambda layer: layer.spatial)
        if not active:
            self._went_down = False
            self._target = None
            self._arm_up(None, now)
            self._probe_bps = None
            return None

        cap = self._cap(active)
        ladder = [layer for layer in active if cap is None or layer.spatial <= cap] or active[:1]
        steps = self._steps(ladder)
        pos, forced = self._position(steps)
        estimate = self._estimate_bps

        # Down: the estimate no longer carries the current step (within STAY_FACTOR:
        # a receiver's estimate hovers around what it receives, see the constant).
        new_pos = pos
        if estimate is not None and estimate < steps[pos].cost_bps * STAY_FACTOR:
            fitting = [i for i in range(pos) if steps[i].cost_bps * self._headroom <= estimate]
            new_pos = fitting[-1] if fitting else 0
        # Down: sustained loss, one step; the lossy run is spent on it.
        if self._loss_sustained():
            new_pos = min(new_pos, max(pos - 1, 0))
            self._loss_high_since = self._loss_high_last = None
        went_down = new_pos < pos
        self._went_down = went_down
        if went_down:
            self._last_down_at = now
            self._fresh_estimate = False
            if self._last_up_at is not None and now - self._last_up_at < FLAP_WINDOW_S:
                self._up_hold_backoffs = min(self._up_hold_backoffs + 1, MAX_UP_HOLD_BACKOFFS)
            self._last_up_at = None
            pos = new_pos
        elif self._last_up_at is not None and now - self._last_up_at >= FLAP_WINDOW_S:
            self._up_hold_backoffs = 0  # the last climb held
            self._last_up_at = None

        # Up: as far as the first estimate reaches, else one step after the hold.
        if not went_down and self._fresh_estimate and estimate is not None:
            self._fresh_estimate = False
            # No headroom here: the estimate measured what arrived while the start probe
            # offered more than the step. Any step this estimate would let a viewer stay
            # on (STAY_FACTOR) is one it may start on.
            reached = [i for i in range(pos + 1, len(steps)) if steps[i].cost_bps * STAY_FACTOR <= estimate]
            if reached and self._loss_allows_up():
                pos = reached[-1]
                self._last_up_at = now
                self._up_step = None
        elif not (forced or went_down) and self._ready_to_climb(steps, pos, now):
            pos += 1
            self._last_up_at = now
            self._up_step = None  # the hold for the next step starts now

        nxt = steps[pos + 1] if pos + 1 < len(steps) else None
        self._arm_up(nxt, now)
        blind_start = estimate is None and now - self._first_decide_at < START_PROBE_S
        carried = estimate is not None and estimate >= steps[pos].cost_bps and not (
            self._estimate_falling or (
                self._last_down_at is not None and now - self._last_down_at < PROBE_PAUSE_AFTER_DOWN_S))
        self._probe_bps = (
            nxt.cost_bps * self._headroom
            if nxt is not None and self._loss_allows_up() and (blind_start or carried)
            else None
        )
        self._target = steps[pos].target
        return self._target

    # -- helpers -----------------------------------------------------------------

    def _cap(self, active: list[Layer]) -> int | None:
        caps = [c for c in (self._room_cap, self._req_spatial, self._size_cap(active)) if c is not None]
        return min(caps) if caps else None

    def _size_cap(self, active: list[Layer]) -> int | None:
        w, h = self._req_width, self._req_height
        if w is None and h is None:
            return None
        for layer in active:
            fills_w = w is not None and layer.width is not None and layer.width >= w
            fills_h = h is not None and layer.height is not None and layer.height >= h
            if fills_w or fills_h:
                return layer.spatial
        return None

    @staticmethod
    def _steps(ladder: list[Layer]) -> list[_Step]:
        steps: list[_Step] = []
        rate = 0.0
        for i, layer in enumerate(ladder):
            rate = max(rate, layer.bitrate_bps)  # a higher layer never counts as cheaper
            shares = TEMPORAL_RATE_SHARE[layer.temporal_layers]
            temporals = range(len(shares)) if i == 0 else (len(shares) - 1,)
            steps.extend(_Step(Target(layer.spatial, t), rate * shares[t]) for t in temporals)
        return steps

    def _position(self, steps: list[_Step]) -> tuple[int, bool]:
        """Index of the current target in ``steps``, and whether it had to move there
        (first decision, its layer gone or capped out): no climbing in that call."""
        by_spatial: dict[int, list[int]] = {}
        for i, step in enumerate(steps):
            by_spatial.setdefault(step.target.spatial, []).append(i)
        current = self._target
        if current is not None and current.spatial in by_spatial:
            indices = by_spatial[current.spatial]
            return indices[min(current.temporal, len(indices) - 1)], False
        wanted = current.spatial if current is not None else self._start_spatial
        if wanted is None:
            return len(by_spatial[steps[0].target.spatial]) - 1, True  # lowest layer, full frame rate
        nearest = min(by_spatial, key=lambda s: (abs(s - wanted), s))  # a tie goes to the cheaper one
        return by_spatial[nearest][-1], True

    def _ready_to_climb(self, steps: list[_Step], pos: int, now: float) -> bool:
        if pos + 1 >= len(steps) or self._estimate_bps is None or self._estimate_falling:
            return False
        nxt = steps[pos + 1]
        hold_s = self._up_hold_s * UP_HOLD_BACKOFF_FACTOR**self._up_hold_backoffs
        return (
            self._up_step == nxt.target
            and self._up_since is not None
            and now - self._up_since >= hold_s
            and self._estimate_bps >= nxt.cost_bps * self._headroom
            and self._loss_allows_up()
        )

    def _arm_up(self, nxt: _Step | None, now: float) -> None:
        """Point the up timer at the next step, restarting it if the step changed."""
        if nxt is None:
            self._up_step = self._up_need_bps = self._up_since = None
            return
        if nxt.target != self._up_step:
            self._up_step, self._up_since = nxt.target, None
        self._up_need_bps = nxt.cost_bps * self._headroom
        if self._estimate_bps is None or self._estimate_bps < self._up_need_bps or not self._loss_allows_up():
            self._up_since = None
        elif self._up_since is None:
            self._up_since = now

    def _loss_allows_up(self) -> bool:
        return self._loss is None or self._loss <= LOSS_LOW_FRACTION

    def _loss_sustained(self) -> bool:
        return (
            self._loss_high_since is not None
            and self._loss_high_last is not None
            and self._loss_high_last - self._loss_high_since >= self._down_hold_s
        )


def _check_spatial(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


_NAME_LADDERS: tuple[tuple[str, ...], ...] = (
    ("q", "h", "f"),  # quarter, half, full (LiveKit's client)
    ("l", "m", "h"),  # low, mid, high (Janus demos)
    ("low", "mid", "high"),
    ("low", "medium", "high"),
)
_NUMBERED = re.compile(r"(\D*)(\d+)")  # "0/1/2", mediasoup-client's "r0/r1/r2"


def order_layers(rids: list[str], bitrates: dict[str, float], sizes: dict[str, tuple[int, int]]) -> list[Layer]:
    """A publisher's encodings as :class:`Layer` s ranked low to high (``spatial`` = rank).

    Rid names are arbitrary, so measurements decide: frame size (area) when every
    rid's size is known, else measured bitrate when every rid has one (> 0).
    Without either (just after publish), a recognised naming ladder (q/h/f,
    l/m/h, low/mid/high, or numbered rids such as 0/1/2 and r0/r1/r2, by number)
    decides, and failing that
    the order the publisher listed them in, which is low to high by convention.
    A partial measurement is not used: an unmeasured rid cannot be placed.
    """
    if len(set(rids)) != len(rids):
        raise ValueError(f"duplicate rids: {rids}")
    listed = {rid: i for i, rid in enumerate(rids)}
    ranked: list[str]
    if rids and all(rid in sizes for rid in rids):
        ranked = sorted(rids, key=lambda r: (sizes[r][0] * sizes[r][1], bitrates.get(r, 0.0), listed[r]))
    elif rids and all(bitrates.get(rid, 0.0) > 0 for rid in rids):
        ranked = sorted(rids, key=lambda r: (bitrates[r], listed[r]))
    else:
        ranked = _rank_by_name(rids) or list(rids)
    return [
        Layer(
            spatial=rank,
            rid=rid,
            bitrate_bps=bitrates.get(rid, 0.0),
            width=sizes[rid][0] if rid in sizes else None,
            height=sizes[rid][1] if rid in sizes else None,
        )
        for rank, rid in enumerate(ranked)
    ]


def _rank_by_name(rids: list[str]) -> list[str] | None:
    numbered = [_NUMBERED.fullmatch(rid) for rid in rids]
    if all(numbered) and len({m.group(1) for m in numbered if m}) == 1:
        number = {m.string: int(m.group(2)) for m in numbered if m}
        return sorted(rids, key=number.__getitem__)
    lowered = {rid: rid.lower() for rid in rids}
    for ladder in _NAME_LADDERS:
        if set(lowered.values()) <= set(ladder):
            return sorted(rids, key=lambda r: ladder.index(lowered[r]))
    return None
