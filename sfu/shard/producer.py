"""Producer: one track a publisher sends into the shard (its packets live in the engine)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import fastpath

if TYPE_CHECKING:
    from .consumer import Consumer
    from .webrtc_transport import WebRtcTransport

CODECS = {"VP8": fastpath.CODEC_VP8, "H264": fastpath.CODEC_H264, "opus": fastpath.CODEC_OPUS}


class Producer:
    def __init__(
        self,
        producer_id: str,
        transport: "WebRtcTransport",
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
    ) -> None:
        self.id = producer_id
        self.transport = transport
        self.kind = kind
        self.clock_rate = clock_rate
        self.rid = rid
        self.consumers: list[Consumer] = []
        self.closed = False
        self.bitrate_bps = 0.0  # measured by the shard's simulcast tick
        self.size: tuple[int, int] | None = None  # from the last VP8 keyframe
        self._bytes_seen = 0
        self._bytes_at = 0.0
        self.slot = transport.shard.engine.add_producer(
            transport.slot, video=kind == "video", codec=CODECS.get(codec, fastpath.CODEC_OTHER),
            payload_type=payload_type, clock_rate=clock_rate,
            rtx_payload_type=-1 if rtx_payload_type is None else rtx_payload_type,
            ssrc=ssrc, rtx_ssrc=rtx_ssrc, mid=mid.encode(), rid=rid.encode(),
        )

    def request_keyframe(self) -> None:
        self.transport.shard.engine.request_keyframe(self.slot)

    def stats(self) -> dict[str, Any]:
        return self.transport.shard.engine.producer_stats(self.slot)

    def measure_bitrate(self, now: float) -> None:
        """Incoming bitrate since the last call: what one simulcast layer costs a viewer."""
        stats = self.stats()
        if stats["width"]:
            self.size = (stats["width"], stats["height"])
        received = stats["bytes"]
        if self._bytes_at:
            elapsed = now - self._bytes_at
            if elapsed > 0:
                self.bitrate_bps = (received - self._bytes_seen) * 8 / elapsed
        self._bytes_seen, self._bytes_at = received, now

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for consumer in list(self.consumers):
            consumer.on_producer_closed()
        self.consumers.clear()
        self.transport.shard.engine.remove_producer(self.slot)
