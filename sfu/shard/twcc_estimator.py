"""TwccEstimator: a viewer's link rate, estimated on our side from its transport-cc feedback.

A viewer that negotiated transport-wide congestion control (draft-holmer-rmcat-
transport-wide-cc-extensions-01) tells us, for every packet we sent its transport,
whether and when it arrived; Chrome then sends no REMB at all. The engine keeps
when each packet left and how big it was, and hands over (send time, arrival time
or -1 if lost, size) per packet (``Engine.take_twcc``). This module turns that into
a rate, the way the sender half of Google Congestion Control does (draft-ietf-
rmcat-gcc-02; libwebrtc's goog_cc), in four parts:

1. **Acked bitrate**: bytes that arrived over the last half second of arrivals.
2. **Delay gradient**: packets are grouped into bursts sent within 5 ms of each
   other; between consecutive groups, (arrival delta - send delta) is how much the
   queue on the path grew. Its running sum, smoothed, is fitted with a line over
   the last 20 groups (the trendline); the slope, scaled, is compared with an
   adaptive threshold (it follows the signal: slowly up, faster down, 6-600 ms):
   above it for more than 10 ms is **overuse**, below its negative **underuse**,
   otherwise **normal**.
3. **AIMD rate control** on that signal: overuse cuts the rate to 0.85 x the acked
   bitrate; normal grows it, by 8 % a second (multiplicative) while the rate is far
   from where the last cuts happened, by about a packet per response time (additive)
   near it; underuse holds. It never exceeds 1.5 x the acked bitrate + 10 kbit/s: it
   cannot know about capacity nothing was sent to find.
4. **Loss**: more than 10 % of packets lost cuts the rate to (1 - loss / 2) of
   itself (at most every 0.4 s); under 2 % lets it grow (at most 8 % a second above
   the lowest of the last second); in between it holds. The estimate is the lower
   of the loss-based and the delay-based rate.

Before it has seen a second of feedback (or its first overuse) it says nothing:
the layer policy treats that as a blind start and probes.

No I/O and no clock: the shard calls :meth:`TwccEstimator.update` with the
engine's reports and the time, every 250 ms. Times are seconds; arrival times are
on the receiver's clock, send times on ours, and only differences of each are used.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

# --- delay gradient (libwebrtc's InterArrivalDelta and TrendlineEstimator) -----------

GROUP_SPAN_S = 0.005
"""Packets sent within 5 ms of a group's first belong to it (a burst, one frame)."""

BURST_ARRIVAL_S = 0.005
"""A packet arriving within 5 ms of its group's last, earlier than its send spacing
says, was queued behind it: same group, whatever its send time."""

MAX_BURST_S = 0.1
"""... but a burst lasts at most this long."""

REORDER_RESET_GROUPS = 3
"""Groups arriving before the previous one this many times in a row: start over."""

CLOCK_JUMP_S = 3.0
"""A delay variation this large is a clock jump or a pause, not a queue: start over."""

TRENDLINE_WINDOW = 20
"""Groups the trendline is fitted over."""

TRENDLINE_SMOOTHING = 0.9
"""Weight of the old value in the smoothed accumulated delay."""

TRENDLINE_GAIN = 4.0
"""The slope is multiplied by this and by the number of deltas (at most 60)."""

MIN_NUM_DELTAS = 60

INITIAL_THRESHOLD_MS = 12.5
THRESHOLD_UP = 0.0087
"""How fast the threshold follows a signal above it (per ms)..."""
THRESHOLD_DOWN = 0.039
"""... and one below it: it settles where the normal jitter of the path is."""
THRESHOLD_MIN_MS, THRESHOLD_MAX_MS = 6.0, 600.0
MAX_ADAPT_OFFSET_MS = 15.0
"""A signal this far above the threshold is a spike: the threshold does not follow it."""

OVERUSE_TIME_MS = 10.0
"""The signal must stay above the threshold this long (and for two groups) to be overuse."""

# --- rate control (libwebrtc's AimdRateControl, LinkCapacityEstimator) ----------------

BETA = 0.85
"""Overuse: the rate becomes this times the acked bitrate."""

INCREASE_PER_S = 1.08
"""Multiplicative increase: 8 % a second."""

MIN_INCREASE_BPS = 1_000.0

THROUGHPUT_LIMIT_FACTOR = 1.5
THROUGHPUT_LIMIT_EXTRA_BPS = 10_000.0
"""Never above 1.5 x what arrives + 10 kbit/s."""

RESPONSE_TIME_S = 0.3
"""Round trip plus 100 ms, for the additive increase. The engine does not measure a
viewer's round trip; 200 ms is libwebrtc's default too."""

MIN_ADDITIVE_BPS_PER_S = 4_000.0

LINK_CAPACITY_ALPHA = 0.05
"""Weight of each decrease's acked bitrate in the link capacity estimate."""

INIT_S = 1.0
"""Feedback spanning this long (arrival times) gives the first estimate: the acked bitrate."""

MIN_BITRATE_BPS = 30_000.0
"""The estimate never goes below this (one low-rate video layer's worth)."""

# --- acked bitrate ----------------------------------------------------------------------

ACKED_WINDOW_S = 0.5
"""The acked bitrate is what arrived over the last half second of arrivals."""

# --- loss (libwebrtc's SendSideBandwidthEstimation) ---------------------------------------

LOSS_HIGH_FRACTION = 0.10
LOSS_LOW_FRACTION = 0.02
LOSS_MIN_PACKETS = 20
"""Loss is judged over at least this many reported packets."""

LOSS_DECREASE_INTERVAL_S = 0.4
"""At most one loss-driven decrease per 300 ms + a round trip."""

LOSS_INCREASE_WINDOW_S = 1.0
"""Low loss lets the rate grow to 1.08 x the lowest it was over the last second."""

NORMAL, OVERUSE, UNDERUSE = "normal", "overuse", "underuse"


@dataclass
class _Group:
    first_send: float
    send: float  # the latest send time in the group
    first_arrival: float
    arrival: float  # when its last packet arrived
    size: int


class _InterArrival:
    """Groups packets by send time and yields (send delta, arrival delta, arrival) between groups."""

    def __init__(self) -> None:
        self.current: _Group | None = None
        self.previous: _Group | None = None
        self.reordered = 0

    def reset(self) -> None:
        self.current = self.previous = None
        self.reordered = 0

    def _in_burst(self, send: float, arrival: float) -> bool:
        g = self.current
        assert g is not None
        arrival_delta = arrival - g.arrival
        send_delta = send - g.send
        if send_delta == 0:
            return True
        return (arrival_delta - send_delta < 0 and arrival_delta <= BURST_ARRIVAL_S
                and arrival - g.first_arrival < MAX_BURST_S)

    def add(self, send: float, arrival: float, size: int) -> tuple[float, float, float] | None:
        g = self.current
        if g is None:
            self.current = _Group(send, send, arrival, arrival, size)
            return None
        if send < g.first_send:
            return None  # sent before the group it arrived in: reordered, left out
        deltas = None
        if send - g.first_send > GROUP_SPAN_S and not self._in_burst(send, arrival):
            # A new group: the current one is complete.
            prev = self.previous
            if prev is not None:
                send_delta, arrival_delta = g.send - prev.send, g.arrival - prev.arrival
                if arrival_delta < 0:
                    self.reordered += 1
                    if self.reordered >= REORDER_RESET_GROUPS:
                        self.reset()
                        self.current = _Group(send, send, arrival, arrival, size)
                        return None
                else:
                    self.reordered = 0
                    deltas = (send_delta, arrival_delta, g.arrival)
            self.previous = g
            self.current = _Group(send, send, arrival, arrival, size)
            return deltas
        g.send = max(g.send, send)
        g.arrival = arrival
        g.size += size
        return None


class _Trendline:
    """The delay gradient's trend and the overuse detector on it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.num_deltas = 0
        self.first_arrival_ms: float | None = None
        self.accumulated_ms = 0.0
        self.smoothed_ms = 0.0
        self.history: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self.prev_trend = 0.0
        self.threshold_ms = INITIAL_THRESHOLD_MS
        self.last_threshold_update_ms: float | None = None
        self.time_over_using_ms = -1.0
        self.overuse_count = 0
        self.usage = NORMAL
        self.modified_trend = 0.0

    def update(self, send_delta_s: float, arrival_delta_s: float, arrival_s: float) -> str:
        """One group's deltas; returns the usage it leads to."""
        send_delta_ms, arrival_ms = send_delta_s * 1000.0, arrival_s * 1000.0
        self.num_deltas = min(self.num_deltas + 1, 1000)
        if self.first_arrival_ms is None:
            self.first_arrival_ms = arrival_ms
        self.accumulated_ms += (arrival_delta_s - send_delta_s) * 1000.0
        self.smoothed_ms = TRENDLINE_SMOOTHING * self.smoothed_ms + (1 - TRENDLINE_SMOOTHING) * self.accumulated_ms
        self.history.append((arrival_ms - self.first_arrival_ms, self.smoothed_ms))
        trend = self.prev_trend
        if len(self.history) == TRENDLINE_WINDOW:
            slope = _slope(self.history)
            if slope is not None:
                trend = slope
        self._detect(trend, send_delta_ms, arrival_ms)
        return self.usage

    def _detect(self, trend: float, send_delta_ms: float, now_ms: float) -> None:
        if self.num_deltas < 2:
            self.usage = NORMAL
            return
        modified = min(self.num_deltas, MIN_NUM_DELTAS) * trend * TRENDLINE_GAIN
        self.modified_trend = modified
        if modified > self.threshold_ms:
            if self.time_over_using_ms == -1:
                self.time_over_using_ms = send_delta_ms / 2  # a sample lasts half its interval
            else:
                self.time_over_using_ms += send_delta_ms
            self.overuse_count += 1
            if self.time_over_using_ms > OVERUSE_TIME_MS and self.overuse_count > 1 and trend >= self.prev_trend:
                self.time_over_using_ms = 0.0
                self.overuse_count = 0
                self.usage = OVERUSE
        elif modified < -self.threshold_ms:
            self.time_over_using_ms = -1.0
            self.overuse_count = 0
            self.usage = UNDERUSE
        else:
            self.time_over_using_ms = -1.0
            self.overuse_count = 0
            self.usage = NORMAL
        self.prev_trend = trend
        self._adapt_threshold(modified, now_ms)

    def _adapt_threshold(self, modified: float, now_ms: float) -> None:
        if self.last_threshold_update_ms is None:
            self.last_threshold_update_ms = now_ms
        if abs(modified) > self.threshold_ms + MAX_ADAPT_OFFSET_MS:
            self.last_threshold_update_ms = now_ms
            return
        k = THRESHOLD_DOWN if abs(modified) < self.threshold_ms else THRESHOLD_UP
        dt = min(max(now_ms - self.last_threshold_update_ms, 0.0), 100.0)
        self.threshold_ms += k * (abs(modified) - self.threshold_ms) * dt
        self.threshold_ms = min(max(self.threshold_ms, THRESHOLD_MIN_MS), THRESHOLD_MAX_MS)
        self.last_threshold_update_ms = now_ms


def _slope(points: Iterable[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (None when every x is the same)."""
    pts = list(points)
    x_mean = sum(x for x, _ in pts) / len(pts)
    y_mean = sum(y for _, y in pts) / len(pts)
    num = sum((x - x_mean) * (y - y_mean) for x, y in pts)
    den = sum((x - x_mean) ** 2 for x, _ in pts)
    return None if den == 0 else num / den


class _LinkCapacity:
    """Where decreases happened (kbit/s, with a deviation): near it, grow additively."""

    def __init__(self) -> None:
        self.estimate_kbps: float | None = None
        self.deviation_kbps = 0.4

    def _spread(self) -> float:
        assert self.estimate_kbps is not None
        return math.sqrt(self.deviation_kbps * self.estimate_kbps)

    def upper_bps(self) -> float | None:
        return None if self.estimate_kbps is None else (self.estimate_kbps + 3 * self._spread()) * 1000

    def lower_bps(self) -> float | None:
        return None if self.estimate_kbps is None else max(0.0, self.estimate_kbps - 3 * self._spread()) * 1000

    def on_overuse(self, acked_bps: float) -> None:
        sample = acked_bps / 1000
        if self.estimate_kbps is None:
            self.estimate_kbps = sample
        else:
            self.estimate_kbps = (1 - LINK_CAPACITY_ALPHA) * self.estimate_kbps + LINK_CAPACITY_ALPHA * sample
        error = self.estimate_kbps - sample
        self.deviation_kbps = (1 - LINK_CAPACITY_ALPHA) * self.deviation_kbps + \
            LINK_CAPACITY_ALPHA * error * error / max(self.estimate_kbps, 1.0)
        self.deviation_kbps = min(max(self.deviation_kbps, 0.4), 2.5)

    def reset(self) -> None:
        self.estimate_kbps = None


class TwccEstimator:
    """One viewer's send-side estimate; see the module docstring."""

    def __init__(self) -> None:
        self._arrivals = _InterArrival()
        self._trendline = _Trendline()
        self._link = _LinkCapacity()
        self._acked: deque[tuple[float, int]] = deque()  # (arrival, size) of the last window
        self._acked_bytes = 0
        self._first_arrival: float | None = None
        self._newest_arrival: float | None = None
        self.acked_bps: float | None = None
        """Bytes that arrived over the last half second of arrivals, as bit/s."""
        self.delay_based_bps: float | None = None
        self.loss_based_bps: float | None = None
        self.estimate_bps: float | None = None
        """The estimate: the lower of the two (None until initialised)."""
        self.usage = NORMAL
        """The delay gradient's verdict after the last update."""
        self.loss_fraction: float | None = None
        """Lost over reported, over the last LOSS_MIN_PACKETS or more."""
        self._state = "hold"
        self._last_change: float | None = None
        self._lost = self._expected = 0
        self._last_loss_decrease: float | None = None
        self._history: deque[tuple[float, float]] = deque()  # (time, estimate) for the loss increase
        self.overuses = 0
        """Decreases on overuse so far."""

    def update(self, reports: Iterable[tuple[float, float, int]], now: float) -> float | None:
        """Feed ``(send_time_s, arrival_time_s or -1, size_bytes)`` per reported packet,
        in sending order; returns the estimate (bit/s, None until there is one)."""
        received = []
        for send, arrival, size in reports:
            self._expected += 1
            if arrival < 0:
                self._lost += 1
            else:
                received.append((arrival, send, size))
        if not received and self._expected < LOSS_MIN_PACKETS:
            return self.estimate_bps
        received.sort(key=lambda r: r[0])  # by arrival, stable: what the path did, in order
        overused = False
        for arrival, send, size in received:
            self._on_acked(arrival, size)
            deltas = self._arrivals.add(send, arrival, size)
            if deltas is None:
                continue
            send_delta, arrival_delta, at = deltas
            if abs(arrival_delta - send_delta) > CLOCK_JUMP_S:
                self._arrivals.reset()
                self._trendline.reset()
                continue
            if self._trendline.update(send_delta, arrival_delta, at) == OVERUSE and \
                    self._trendline.time_over_using_ms == 0.0:
                overused = True  # it just crossed into overuse with this group
        self.usage = OVERUSE if overused else self._trendline.usage
        self._rate_control(now)
        self._loss_control(now)
        return self.estimate_bps

    # --- acked bitrate -------------------------------------------------------------

    def _on_acked(self, arrival: float, size: int) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrival
        if self._newest_arrival is None or arrival > self._newest_arrival:
            self._newest_arrival = arrival
        self._acked.append((arrival, size))
        self._acked_bytes += size
        horizon = self._newest_arrival - ACKED_WINDOW_S
        while self._acked and self._acked[0][0] <= horizon:
            self._acked_bytes -= self._acked.popleft()[1]
        if self._newest_arrival - self._first_arrival >= ACKED_WINDOW_S:
            self.acked_bps = self._acked_bytes * 8 / ACKED_WINDOW_S

    # --- delay-based: AIMD -----------------------------------------------------------

    def _rate_control(self, now: float) -> None:
        acked = self.acked_bps
        rate = self.delay_based_bps
        if rate is None:
            if self.usage == OVERUSE and acked is not None:
                self._decrease(acked, now)  # a queue built before a second of feedback: start there
            elif acked is not None and self._newest_arrival is not None and self._first_arrival is not None \
                    and self._newest_arrival - self._first_arrival >= INIT_S:
                self.delay_based_bps = max(acked, MIN_BITRATE_BPS)
                self._last_change = now
            return
        if self.usage == OVERUSE:
            self._decrease(acked if acked is not None else rate, now)
            return
        if self.usage == UNDERUSE:
            self._state = "hold"
            return
        if self._state == "hold":
            self._state = "increase"
            self._last_change = now
            return
        limit = math.inf if acked is None else THROUGHPUT_LIMIT_FACTOR * acked + THROUGHPUT_LIMIT_EXTRA_BPS
        upper = self._link.upper_bps()
        if acked is not None and upper is not None and acked > upper:
            self._link.reset()  # well above where it fell before: the link got faster
        elapsed = 0.0 if self._last_change is None else max(0.0, now - self._last_change)
        if rate < limit:
            if self._link.estimate_kbps is not None:
                increase = self._additive_bps_per_s(rate) * elapsed
            else:
                increase = max(rate * (INCREASE_PER_S ** min(elapsed, 1.0) - 1.0), MIN_INCREASE_BPS)
            self.delay_based_bps = min(rate + increase, limit)
        self._last_change = now

    @staticmethod
    def _additive_bps_per_s(rate: float) -> float:
        """About one packet per response time: libwebrtc's near-capacity increase."""
        frame_bits = rate / 30.0
        packets_per_frame = math.ceil(frame_bits / (1200 * 8)) or 1
        return max(MIN_ADDITIVE_BPS_PER_S, frame_bits / packets_per_frame / RESPONSE_TIME_S)

    def _decrease(self, acked: float, now: float) -> None:
        rate = self.delay_based_bps
        target = BETA * acked
        if rate is not None and target > rate and self._link.estimate_kbps is not None:
            target = BETA * self._link.estimate_kbps * 1000
        if rate is None or target < rate:
            self.delay_based_bps = max(target, MIN_BITRATE_BPS)
        lower = self._link.lower_bps()
        if lower is not None and acked < lower:
            self._link.reset()  # far below: the link changed, forget where it was
        self._link.on_overuse(acked)
        self.overuses += 1
        self._state = "hold"
        self._last_change = now

    # --- loss-based, and the final estimate -----------------------------------------------

    def _loss_control(self, now: float) -> None:
        delay = self.delay_based_bps
        if delay is None:
            return
        target = self.estimate_bps if self.estimate_bps is not None else delay
        if self.loss_based_bps is None:
            self.loss_based_bps = target
        if self._expected >= LOSS_MIN_PACKETS:
            self.loss_fraction = self._lost / self._expected
            self._lost = self._expected = 0
            while self._history and now - self._history[0][0] > LOSS_INCREASE_WINDOW_S:
                self._history.popleft()
            lowest = min([target] + [v for _, v in self._history])
            if self.loss_fraction <= LOSS_LOW_FRACTION:
                self.loss_based_bps = max(self.loss_based_bps, lowest * INCREASE_PER_S + MIN_INCREASE_BPS)
            elif self.loss_fraction > LOSS_HIGH_FRACTION and (
                    self._last_loss_decrease is None or now - self._last_loss_decrease >= LOSS_DECREASE_INTERVAL_S):
                self._last_loss_decrease = now
                self.loss_based_bps = max(target * (1 - 0.5 * self.loss_fraction), MIN_BITRATE_BPS)
        self.estimate_bps = min(self.loss_based_bps, delay)
        self._history.append((now, self.estimate_bps))
