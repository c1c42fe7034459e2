"""Receive statistics of one incoming RTP stream (RFC 3550 §6.4.1, appendix A.3 and A.8)."""

from __future__ import annotations


class RtpStreamStats:
    """Sequence tracking, loss and interarrival jitter for RTCP receiver reports."""

    __slots__ = (
        "clock_rate", "base_seq", "max_seq", "cycles", "received", "expected_prior",
        "received_prior", "jitter", "_last_transit", "last_sr_ntp_middle", "last_sr_arrival",
        "bytes", "started",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.started = False
        self.base_seq = self.max_seq = self.cycles = 0
        self.received = self.expected_prior = self.received_prior = 0
        self.jitter = 0.0
        self._last_transit: float | None = None
        self.last_sr_ntp_middle = 0
        self.last_sr_arrival = 0.0
        self.bytes = 0

    def update(self, seq: int, timestamp: int, arrival_s: float, size: int) -> None:
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = seq
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if seq < self.max_seq:
                    self.cycles += 1 << 16
                self.max_seq = seq
        self.received += 1
        self.bytes += size
        transit = arrival_s * self.clock_rate - timestamp
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            # Wrap of the 32-bit timestamp shows as a huge jump: ignore it.
            if d < self.clock_rate * 10:
                self.jitter += (d - self.jitter) / 16.0
        self._last_transit = transit

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    def report_block(self, now_s: float) -> tuple[int, int, int, int, int, int]:
        """(fraction_lost, cumulative_lost, extended_max, jitter, lsr, dlsr) for an RR."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        dlsr = 0
        if self.last_sr_arrival:
            dlsr = int((now_s - self.last_sr_arrival) * 65536) & 0xFFFFFFFF
        cumulative = min(self.lost, 0x7FFFFF)
        return (min(fraction, 255), cumulative, self.extended_max & 0xFFFFFFFF,
                int(self.jitter), self.last_sr_ntp_middle, dlsr)
