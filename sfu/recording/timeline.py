"""TrackClock: an RTP timestamp to seconds on the publisher's own clock, shared by its tracks.

Audio and video of one publisher have unrelated RTP timestamp bases; their RTCP
sender reports tie each base to the sender's NTP clock, which both share: that is
what keeps a recording's audio and video in sync. A track whose report has not
come yet can wait a little (``hold_s``); after that it is placed by its packets'
arrival times instead, good to a few tens of milliseconds on loopback.

The mapping is fixed by the first report and never moved: a later report that
disagrees by a few milliseconds (clock drift) must not make the file's
timestamps jump back.
"""

from __future__ import annotations

from .jitter_buffer import unwrap

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970


def ntp_to_seconds(ntp: int) -> float:
    """A 64-bit NTP timestamp as Unix seconds."""
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / 2**32


class TrackClock:
    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._ref: tuple[int, float] | None = None  # (unwrapped RTP ts, seconds)
        self.from_report = False
        self._last_ts: int | None = None

    @property
    def ready(self) -> bool:
        return self._ref is not None

    def note_timestamp(self, ts: int) -> None:
        """The newest unwrapped timestamp seen: what a report's 32-bit one is unwrapped near."""
        self._last_ts = ts

    def on_sender_report(self, ntp: int, rtp_ts: int) -> None:
        if self._ref is not None:
            return
        reference = self._last_ts if self._last_ts is not None else rtp_ts + (1 << 32)
        self._ref = (unwrap(rtp_ts, reference, 32), ntp_to_seconds(ntp))
        self.from_report = True

    def on_arrival(self, ts: int, wall_seconds: float) -> None:
        """Fallback once ``hold_s`` passed with no report: the packet with timestamp ``ts``
        arrived at ``wall_seconds``."""
        if self._ref is None:
            self._ref = (ts, wall_seconds)

    def seconds(self, ts: int) -> float:
        assert self._ref is not None
        return self._ref[1] + (ts - self._ref[0]) / self.clock_rate
