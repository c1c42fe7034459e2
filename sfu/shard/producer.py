"""Producer: one track a publisher sends into the shard, and the consumers it feeds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiortc.rtp import RtcpPsfbPacket

from .. import fastpath
from .retransmission_buffer import RetransmissionBuffer
from .rtp_stream_stats import RtpStreamStats

if TYPE_CHECKING:
    from .consumer import Consumer
    from .webrtc_transport import WebRtcTransport

CODECS = {"VP8": fastpath.CODEC_VP8, "H264": fastpath.CODEC_H264, "opus": fastpath.CODEC_OPUS}
PLI_FMT = 1


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
        keyframe_min_interval_s: float,
    ) -> None:
        self.id = producer_id
        self.transport = transport
        self.kind = kind
        self.codec = CODECS.get(codec, fastpath.CODEC_OTHER)
        self.mid = mid
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.rtx_payload_type = rtx_payload_type
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.consumers: list[Consumer] = []
        self.stats = RtpStreamStats(clock_rate)
        self.buffer = RetransmissionBuffer() if kind == "video" else None
        self.keyframe_min_interval_s = keyframe_min_interval_s
        self._last_keyframe_request = -1e9
        self._keyframe_timer = None
        self.keyframe_requests_sent = 0
        self.keyframe_requests_coalesced = 0
        self.closed = False

    def on_rtp(self, packet: bytes, info: "fastpath.RtpInfo", now: float) -> None:
        """A media packet from the publisher, already decrypted (and un-RTX'd)."""
        self.stats.update(info.sequence, info.timestamp, now, len(packet))
        if self.buffer is not None:
            self.buffer.store(info.sequence, packet)
        keyframe = self.codec in (fastpath.CODEC_VP8, fastpath.CODEC_H264) and fastpath.is_keyframe(
            self.codec, packet, info
        )
        for consumer in self.consumers:
            consumer.send_rtp(packet, info, keyframe)

    def request_keyframe(self, now: float) -> None:
        """Ask the publisher for a keyframe, at most once per interval.

        Requests inside the interval are coalesced into one sent when it ends,
        so a burst of joining viewers costs the publisher a single keyframe.
        """
        if self.kind != "video" or self.closed:
            return
        if self._keyframe_timer is not None:
            self.keyframe_requests_coalesced += 1
            return
        wait = self._last_keyframe_request + self.keyframe_min_interval_s - now
        if wait > 0:
            self.keyframe_requests_coalesced += 1
            loop = self.transport.shard.loop
            self._keyframe_timer = loop.call_later(wait, self._send_keyframe_request)
            return
        self._send_keyframe_request()

    def _send_keyframe_request(self) -> None:
        self._keyframe_timer = None
        if self.closed or self.ssrc is None:
            return
        self._last_keyframe_request = self.transport.shard.loop.time()
        self.keyframe_requests_sent += 1
        pli = RtcpPsfbPacket(fmt=PLI_FMT, ssrc=self.transport.rtcp_ssrc, media_ssrc=self.ssrc)
        self.transport.send_rtcp(bytes(pli))

    def close(self) -> None:
        self.closed = True
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
            self._keyframe_timer = None
        for consumer in list(self.consumers):
            consumer.on_producer_closed()
        self.consumers.clear()
