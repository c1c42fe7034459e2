"""Consumer: one producer's track as delivered to one viewer, with its own SSRC and numbering."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from aiortc.rtp import RtcpByePacket, RtcpSenderInfo, RtcpSrPacket

from .. import fastpath

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
        ext_ids: "fastpath.ExtIds",
        nack: bool,
    ) -> None:
        self.id = consumer_id
        self.transport = transport
        self.producer = producer
        self.kind = producer.kind
        self.mid = mid.encode()
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.rtx_payload_type = rtx_payload_type if rtx_ssrc is not None else None
        self.rtx_ssrc = rtx_ssrc
        self.ext_ids = ext_ids
        self.nack = nack
        # Random starting points (RFC 3550 §5.1) that then never jump: the
        # viewer sees one continuous stream whatever happens upstream.
        self.started = False
        self._next_seq = random.getrandbits(16)
        self._next_ts = random.getrandbits(32)
        self.seq_offset = 0
        self.ts_offset = 0
        self._rtx_seq = random.getrandbits(16)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.nacks_served = 0
        self.closed = False

    def send_rtp(self, packet: bytes, info: "fastpath.RtpInfo", keyframe: bool) -> None:
        transport = self.transport
        if transport.srtp is None or self.closed:
            return
        if not self.started:
            if self.kind == "video" and not keyframe:
                # A decoder cannot start on a delta frame: wait for a keyframe.
                transport.shard.count_drop("waiting_for_keyframe")
                return
            self.started = True
            self.seq_offset = (self._next_seq - info.sequence) & 0xFFFF
            self.ts_offset = (self._next_ts - info.timestamp) & 0xFFFFFFFF
        out = fastpath.rewrite_rtp(
            packet, info, self.payload_type,
            (info.sequence + self.seq_offset) & 0xFFFF,
            (info.timestamp + self.ts_offset) & 0xFFFFFFFF,
            self.ssrc, self.ext_ids, self.mid,
        )
        self.packets_sent += 1
        self.bytes_sent += info.payload_length
        transport.send_rtp(out)

    def on_nack(self, lost: list[int]) -> None:
        """Resend what the viewer lost from the producer's history, as RTX when negotiated."""
        buffer = self.producer.buffer
        if buffer is None or not self.started or not self.nack:
            return
        src_ids = self.producer.transport.ext_ids
        for seq in lost:
            packet = buffer.get((seq - self.seq_offset) & 0xFFFF)
            if packet is None:
                self.transport.shard.count_drop("nack_not_in_buffer")
                continue
            info = fastpath.parse_rtp(packet, src_ids)
            out = fastpath.rewrite_rtp(
                packet, info, self.payload_type, seq,
                (info.timestamp + self.ts_offset) & 0xFFFFFFFF,
                self.ssrc, self.ext_ids, self.mid,
            )
            if self.rtx_ssrc is not None and self.rtx_payload_type is not None:
                offset = fastpath.parse_rtp(out, self.ext_ids).payload_offset
                out = fastpath.wrap_rtx(out, offset, self.rtx_payload_type, self._rtx_seq, self.rtx_ssrc)
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            self.nacks_served += 1
            self.transport.send_rtp(out)

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """Forward the publisher's SR in our numbering, so the viewer can lip-sync."""
        if not self.started or self.transport.srtp is None:
            return
        sr = RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp_timestamp,
                rtp_timestamp=(rtp_timestamp + self.ts_offset) & 0xFFFFFFFF,
                packet_count=self.packets_sent & 0xFFFFFFFF,
                octet_count=self.bytes_sent & 0xFFFFFFFF,
            ),
        )
        self.transport.send_rtcp(bytes(sr))

    def request_keyframe(self) -> None:
        self.producer.request_keyframe(self.transport.shard.loop.time())

    def on_producer_closed(self) -> None:
        """Tell the viewer the stream ended (RTCP BYE) so its track ends cleanly."""
        if self.transport.srtp is not None and not self.closed:
            self.transport.send_rtcp(bytes(RtcpByePacket(sources=[self.ssrc])))
        self.closed = True
        self.transport.consumers.pop(self.ssrc, None)

    def close(self) -> None:
        self.closed = True
        if self in self.producer.consumers:
            self.producer.consumers.remove(self)
