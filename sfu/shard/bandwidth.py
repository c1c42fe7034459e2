"""ViewerBandwidth: what one viewer's link carries, from its REMB, transport-cc and loss reports.

The receiver's REMB is a delay-based estimate; it reacts to queues building up,
and before its first value (aiortc sends one after 3 s) it says nothing at all.
A viewer that negotiated transport-cc (Chrome, Firefox) sends no REMB; it reports
every packet's arrival instead, and ``twcc_estimator.TwccEstimator`` makes the
same kind of estimate on our side (delay gradient, AIMD, loss). Loss says
something sooner and more bluntly: a receiver report with 40 % lost while we sent
1 Mbit/s means about 600 kbit/s arrived. Like GCC (draft-ietf-rmcat-gcc-02 §6),
the estimate is the lowest of those it has, and the loss-based one only speaks
when loss is high and only for a while after the report that said so. With a
transport-cc estimate the receiver reports' loss is left out: that estimate has
its own loss control, from every packet's fate a quarter of a second old, where a
receiver report covers the second before it (after a switch down, mostly the loss
of the layer just left).

The estimate also sets how fast the engine lets packets go to the viewer: paced
at a multiple of it, a keyframe waits in our queue for a narrow link instead of
being cut to pieces by a full router queue (which turns one keyframe into a
storm of NACKs and PLIs). No I/O and no clock here; the shard feeds it.
"""

from __future__ import annotations

LOSS_HIGH_FRACTION = 0.10
"""Loss above this makes the loss-based estimate speak (GCC decreases above 10 %)."""

LOSS_ESTIMATE_TTL_S = 2.0
"""A loss-based estimate holds this long after the report that made it (two
report intervals of Chrome's), or until a report with low loss."""

PACING_FACTOR = 1.5
"""Viewers are paced at 1.5x their estimate: enough above what their layer sends that
steady media never waits, low enough that a keyframe burst does not overflow a link
that carries the layer."""

CONGESTED_PACING_FACTOR = 1.0
CONGESTED_PACING_S = 2.0
"""For this long after a move down on a congested link, pace at the estimate itself:
the link's queue is full of the layer just left, and the lower layer's keyframe must
not arrive on top of it faster than the estimate (itself still above what the link
carries: a receiver's estimate lags a sudden narrowing) says the link drains."""

MIN_PACING_BPS = 100_000.0
"""Never pace below this: an estimate can be briefly very low, and audio-sized links
are not what video viewers sit on."""



TWCC_ESTIMATE_TTL_S = 5.0
"""A transport-cc estimate counts this long after the feedback behind it: feedback
that stops (the viewer went away, or its link did) leaves REMB and loss to speak."""

SEND_RATE_SMOOTHING = 0.5
"""Weight of the newest sample in the smoothed send rate (samples every 250 ms)."""


class ViewerBandwidth:
    def __init__(self) -> None:
        self.send_rate_bps: float | None = None
        self.remb_bps: float | None = None
        self._sent_bytes: int | None = None
        self._sent_at: float | None = None
        self._loss_bps: float | None = None
        self._loss_at: float | None = None
        self.twcc_bps: float | None = None
        self._twcc_at: float | None = None
        self._congested_at: float | None = None

    def on_sent(self, total_bytes: int, now: float) -> None:
        """The transport's sent-bytes counter, sampled; updates the smoothed send rate."""
        if self._sent_at is not None and self._sent_bytes is not None and now > self._sent_at:
            rate = max(0, total_bytes - self._sent_bytes) * 8 / (now - self._sent_at)
            self.send_rate_bps = rate if self.send_rate_bps is None else (
                SEND_RATE_SMOOTHING * rate + (1 - SEND_RATE_SMOOTHING) * self.send_rate_bps)
        self._sent_bytes, self._sent_at = total_bytes, now

    def on_remb(self, bps: float) -> None:
        """The latest REMB (0: none received yet)."""
        self.remb_bps = bps if bps > 0 else None

    def on_twcc(self, bps: float, now: float) -> None:
        """The transport-cc estimate after new feedback (``TwccEstimator.update``)."""
        self.twcc_bps = bps
        self._twcc_at = now

    def on_loss_report(self, fraction_lost: float, now: float) -> None:
        """A new receiver report about one of the viewer's video streams."""
        if fraction_lost > LOSS_HIGH_FRACTION and self.send_rate_bps is not None:
            arrived = self.send_rate_bps * (1 - fraction_lost)
            # Several streams report separately: the worst recent one counts.
            if self._loss_bps is None or self._loss_at is None or now - self._loss_at > 0.5 or arrived < self._loss_bps:
                self._loss_bps = arrived
            self._loss_at = now
        elif fraction_lost <= LOSS_HIGH_FRACTION and (self._loss_at is None or now - self._loss_at > 0.5):
            self._loss_bps = self._loss_at = None

    def on_congestion(self, now: float) -> None:
        """A viewer of this transport moved down because its link is congested."""
        self._congested_at = now

    def estimate_bps(self, now: float) -> float | None:
        """What the link carries, as far as anyone can tell (None: no idea yet)."""
        loss = self._loss_bps if self._loss_at is not None and now - self._loss_at <= LOSS_ESTIMATE_TTL_S else None
        twcc = self.twcc_bps if self._twcc_at is not None and now - self._twcc_at <= TWCC_ESTIMATE_TTL_S else None
        known = [v for v in (self.remb_bps, twcc, None if twcc is not None else loss) if v is not None]
        return min(known) if known else None

    def pacing_bps(self, now: float) -> float:
        """The rate to pace this viewer at (0: the engine's default, no estimate yet).

        A layer bigger than this queues in the pacer until the layer policy moves the
        viewer down, and the engine drops that backlog at the switch: the viewer gets
        the smaller layer's keyframe at once rather than seconds of stale packets.
        """
        estimate = self.estimate_bps(now)
        if estimate is None:
            return 0.0
        congested = self._congested_at is not None and now - self._congested_at < CONGESTED_PACING_S
        return max(MIN_PACING_BPS, estimate * (CONGESTED_PACING_FACTOR if congested else PACING_FACTOR))
