"""Producer: one track a publisher sends into the shard (its packets live in the engine)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from .. import fastpath

if TYPE_CHECKING:
    from .consumer import Consumer
    from .relay_transport import RelayTransport
    from .webrtc_transport import WebRtcTransport

BITRATE_WINDOW_S = 2.0
CODECS = {"VP8": fastpath.CODEC_VP8, "H264": fastpath.CODEC_H264, "opus": fastpath.CODEC_OPUS}


class Producer:
    def __init__(
        self,
        producer_id: str,
        transport: "WebRtcTransport | RelayTransport",
        *,
        kind: str,
        codec: str,
        mid: str,
        payload_type: int,
        clock_rate: int,
        rtx_payload_type: int | None,
        ssrc: int | None,
        rtx_ssrc: int | None,
        rid: str = "",
        red_payload_type: int | None = None,
    ) -> None:
        self.id = producer_id
        self.transport = transport
        self.kind = kind
        self.clock_rate = clock_rate
        self.rid = rid
        self.consumers: list[Consumer] = []
        self.closed = False
        self.bitrate_bps = 0.0  # measured by the shard's simulcast tick, over BITRATE_WINDOW_S
        # Its publisher was asked to stop sending it (nobody watched it): still a layer
        # viewers may climb to, priced at what it cost while it was sent.
        self.paused = False
        self.last_sent_bps = 0.0
        self.size: tuple[int, int] | None = None  # from the last VP8 keyframe
        self.temporal_layers = 1  # VP8 temporal layers seen (highest TID + 1)
        self._samples: deque[tuple[float, int]] = deque()
        self.slot = transport.shard.engine.add_producer(
            transport.slot, video=kind == "video", codec=CODECS.get(codec, fastpath.CODEC_OTHER),
            payload_type=payload_type, clock_rate=clock_rate,
            rtx_payload_type=-1 if rtx_payload_type is None else rtx_payload_type,
            ssrc=ssrc, rtx_ssrc=rtx_ssrc, mid=mid.encode(), rid=rid.encode(),
            red_payload_type=-1 if red_payload_type is None else red_payload_type,
        )

    def request_keyframe(self) -> None:
        self.transport.shard.engine.request_keyframe(self.slot)

    def stats(self) -> dict[str, Any]:
        return self.transport.shard.engine.producer_stats(self.slot)

    def measure_bitrate(self, now: float) -> None:
        """Incoming bitrate over the last couple of seconds: what one simulcast layer costs.

        A layer's rate swings with every keyframe; a window of whole seconds keeps
        one keyframe from reading as a layer twice as expensive.
        """
        stats = self.stats()
        if stats["width"]:
            self.size = (stats["width"], stats["height"])
        self.temporal_layers = min(stats["temporal_layers"], 4)
        self._samples.append((now, stats["bytes"]))
        while len(self._samples) > 2 and now - self._samples[1][0] >= BITRATE_WINDOW_S:
            self._samples.popleft()
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        if end > start:
            self.bitrate_bps = (last - first) * 8 / (end - start)
            if self.bitrate_bps > 0:
                self.last_sent_bps = self.bitrate_bps

    @property
    def policy_bitrate_bps(self) -> float:
        """What choosing this layer costs: measured, or while paused what it last cost."""
        return self.last_sent_bps if self.paused and not self.bitrate_bps else self.bitrate_bps

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for consumer in list(self.consumers):
            consumer.on_producer_closed()
        self.consumers.clear()
        self.transport.shard.engine.remove_producer(self.slot)
