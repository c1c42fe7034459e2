"""Consumer: one producer's track as delivered to one viewer, with its own SSRC and numbering."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from aiortc.rtp import RtcpByePacket

if TYPE_CHECKING:
    from .producer import Producer
    from .webrtc_transport import WebRtcTransport


class Consumer:
    def __init__(
        self,
        consumer_id: str,
        transport: "WebRtcTransport",
        producer: "Producer",
        *,
        mid: str,
        payload_type: int,
        ssrc: int,
        rtx_payload_type: int | None,
        rtx_ssrc: int | None,
        extensions: dict[str, int],
        nack: bool,
    ) -> None:
        from .webrtc_transport import extension_ids

        self.id = consumer_id
        self.transport = transport
        self.producer = producer
        self.ssrc = ssrc
        self.closed = False
        ids = extension_ids(extensions)
        # Random starting points (RFC 3550 §5.1) that then never jump: the viewer
        # sees one continuous stream whatever happens upstream.
        self.slot = transport.shard.engine.add_consumer(
            transport.slot, producer.slot, payload_type=payload_type, ssrc=ssrc,
            rtx_payload_type=-1 if rtx_payload_type is None else rtx_payload_type,
            rtx_ssrc=rtx_ssrc if rtx_payload_type is not None else None, nack=nack,
            mid=ids["mid"], abs_send_time=ids["abs_send_time"], audio_level=ids["audio_level"],
            mid_value=mid.encode(), first_seq=random.getrandbits(16), first_ts=random.getrandbits(32),
            first_rtx_seq=random.getrandbits(16),
        )
        producer.consumers.append(self)

    def request_keyframe(self) -> None:
        self.producer.request_keyframe()

    def on_producer_closed(self) -> None:
        """Tell the viewer the stream ended (RTCP BYE) so its track ends cleanly."""
        if not self.closed:
            self.transport.shard.engine.send_rtcp(self.transport.slot, bytes(RtcpByePacket(sources=[self.ssrc])))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self in self.producer.consumers:
            self.producer.consumers.remove(self)
        self.transport.consumers.pop(self.id, None)
        self.transport.shard.consumers.pop(self.id, None)
        self.transport.shard.engine.remove_consumer(self.slot)
