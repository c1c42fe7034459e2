"""WebRtcTransport: one peer's ICE-lite + DTLS + SRTP association on the shard's port."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pylibsrtp
from aiortc.rtp import (
    RtcpPacket, RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket, RtcpRtpfbPacket, RtcpSrPacket,
    pack_remb_fci,
)

from .. import fastpath
from ..signalling.sdp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID, EXT_REPAIRED_RID, EXT_RID
from .dtls import DtlsCertificate, DtlsEndpoint
from .srtp import SrtpSession

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Producer
    from .shard import Shard

PSFB_PLI, PSFB_FIR, PSFB_APP = 1, 4, 15
RTPFB_NACK = 1
REMB_BITRATE_BPS = 4_000_000  # what we let a publisher ramp up to until issue 4's estimator


def ext_ids(extensions: dict[str, int]) -> "fastpath.ExtIds":
    return fastpath.ExtIds(
        mid=extensions.get(EXT_MID, 0),
        rid=extensions.get(EXT_RID, 0),
        repaired_rid=extensions.get(EXT_REPAIRED_RID, 0),
        abs_send_time=extensions.get(EXT_ABS_SEND_TIME, 0),
        audio_level=extensions.get(EXT_AUDIO_LEVEL, 0),
    )


class WebRtcTransport:
    def __init__(
        self,
        shard: "Shard",
        transport_id: str,
        *,
        room: str,
        peer_id: str,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        dtls_role: str,
        remote_fingerprint: tuple[str, str],
        certificate: DtlsCertificate,
    ) -> None:
        self.shard = shard
        self.id = transport_id
        self.room = room
        self.peer_id = peer_id
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag = remote_ufrag
        self.addr: tuple[str, int] | None = None
        self.dtls = DtlsEndpoint(certificate, dtls_role, remote_fingerprint, shard.dtls_context)
        self.srtp: SrtpSession | None = None
        self.state = "new"
        self.last_seen = shard.loop.time()
        self.rtcp_ssrc = random.getrandbits(32) or 1
        self.ext_ids = fastpath.ExtIds()
        self.producers: dict[int, tuple[Producer, bool]] = {}  # ssrc -> (producer, is_rtx)
        self.producers_by_mid: dict[bytes, Producer] = {}
        self.producer_list: list[Producer] = []
        self.consumers: dict[int, Consumer] = {}  # our send ssrc -> consumer
        self._dtls_timer = None

    # --- ICE ---------------------------------------------------------------------------

    def on_binding_request(self, addr: tuple[str, int], use_candidate: bool) -> None:
        self.last_seen = self.shard.loop.time()
        if self.addr is None or (use_candidate and addr != self.addr):
            if self.addr is not None:
                self.shard.unbind_address(self.addr, self)
            self.addr = addr
            self.shard.bind_address(addr, self)
            if self.state == "new":
                self.state = "connecting"
                self._send_dtls(self.dtls.start())

    # --- DTLS --------------------------------------------------------------------------

    def on_dtls(self, data: bytes) -> None:
        self.last_seen = self.shard.loop.time()
        was = self.dtls.state
        self._send_dtls(self.dtls.receive(data))
        if was != "connected" and self.dtls.state == "connected":
            self.srtp = SrtpSession(self.dtls.srtp_keys)
            self.state = "connected"
            self.shard.on_transport_connected(self)
            for consumer in self.consumers.values():
                consumer.request_keyframe()
        elif self.dtls.state in ("failed", "closed") and self.state != "closed":
            self.shard.close_transport(self, self.dtls.error or "dtls closed")

    def _send_dtls(self, datagrams: list[bytes]) -> None:
        if self.addr is not None:
            for d in datagrams:
                self.shard.sendto(d, self.addr)
        self._arm_dtls_timer()

    def _arm_dtls_timer(self) -> None:
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        timeout = self.dtls.next_timeout_s()
        if timeout is not None:
            self._dtls_timer = self.shard.loop.call_later(max(timeout, 0.01), self._on_dtls_timeout)

    def _on_dtls_timeout(self) -> None:
        self._dtls_timer = None
        self._send_dtls(self.dtls.handle_timeout())

    # --- SRTP / RTP --------------------------------------------------------------------

    def on_rtp(self, data: bytes, now: float) -> None:
        try:
            packet = self.srtp.unprotect(data)
        except pylibsrtp.Error:
            self.shard.count_drop("srtp_unprotect_failed")
            return
        self.last_seen = now
        try:
            info = fastpath.parse_rtp(packet, self.ext_ids)
        except fastpath.RtpError as exc:
            self.shard.count_drop(exc.args[0])
            return
        entry = self.producers.get(info.ssrc)
        if entry is None:
            entry = self._learn_ssrc(info)
            if entry is None:
                self.shard.count_drop("rtp_unknown_ssrc")
                return
        producer, is_rtx = entry
        if is_rtx:
            if info.payload_length <= 2:
                return  # RTX padding used for bandwidth probing
            try:
                packet = fastpath.unwrap_rtx(packet, info, producer.payload_type, producer.ssrc)
                info = fastpath.parse_rtp(packet, self.ext_ids)
            except fastpath.RtpError as exc:
                self.shard.count_drop(exc.args[0])
                return
        elif info.payload_type != producer.payload_type:
            self.shard.count_drop("rtp_unexpected_payload_type")
            return
        if info.payload_length == 0:
            self.shard.count_drop("rtp_padding_only")
            return
        self.shard.packets_in += 1
        self.shard.bytes_in += len(data)
        producer.on_rtp(packet, info, now)

    def _learn_ssrc(self, info: "fastpath.RtpInfo") -> tuple["Producer", bool] | None:
        """Bind an unsignalled SSRC to the producer whose mid it carries (RFC 8843 §9.2)."""
        if info.mid is None:
            return None
        producer = self.producers_by_mid.get(info.mid)
        if producer is None:
            return None
        if info.payload_type == producer.payload_type and producer.ssrc is None:
            producer.ssrc = info.ssrc
            entry = (producer, False)
        elif info.payload_type == producer.rtx_payload_type and producer.rtx_ssrc is None:
            if producer.ssrc is None:
                return None
            producer.rtx_ssrc = info.ssrc
            entry = (producer, True)
        else:
            return None
        self.producers[info.ssrc] = entry
        return entry

    def send_rtp(self, packet: bytes) -> None:
        if self.srtp is None or self.addr is None:
            return
        try:
            data = self.srtp.protect(packet)
        except pylibsrtp.Error:
            self.shard.count_drop("srtp_protect_failed")
            return
        self.shard.packets_out += 1
        self.shard.bytes_out += len(data)
        self.shard.sendto(data, self.addr)

    # --- RTCP --------------------------------------------------------------------------

    def send_rtcp(self, packet: bytes) -> None:
        if self.srtp is None or self.addr is None:
            return
        try:
            self.shard.sendto(self.srtp.protect_rtcp(packet), self.addr)
        except pylibsrtp.Error:
            self.shard.count_drop("srtcp_protect_failed")

    def on_rtcp(self, data: bytes, now: float) -> None:
        try:
            plain = self.srtp.unprotect_rtcp(data)
        except pylibsrtp.Error:
            self.shard.count_drop("srtcp_unprotect_failed")
            return
        self.last_seen = now
        try:
            packets = RtcpPacket.parse(plain)
        except Exception:  # aiortc raises ValueError or struct.error on bad RTCP
            self.shard.count_drop("rtcp_malformed")
            return
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                entry = self.producers.get(packet.ssrc)
                if entry is not None and not entry[1]:
                    producer = entry[0]
                    info = packet.sender_info
                    producer.stats.last_sr_ntp_middle = (info.ntp_timestamp >> 16) & 0xFFFFFFFF
                    producer.stats.last_sr_arrival = now
                    for consumer in producer.consumers:
                        consumer.on_sender_report(info.ntp_timestamp, info.rtp_timestamp)
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTPFB_NACK:
                consumer = self.consumers.get(packet.media_ssrc)
                if consumer is not None:
                    self.shard.nacks_received += 1
                    consumer.on_nack(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (PSFB_PLI, PSFB_FIR):
                media_ssrc = packet.media_ssrc
                if packet.fmt == PSFB_FIR and len(packet.fci) >= 4:
                    media_ssrc = int.from_bytes(packet.fci[:4], "big")
                consumer = self.consumers.get(media_ssrc)
                if consumer is not None:
                    self.shard.keyframe_requests_received += 1
                    consumer.request_keyframe()

    def send_receiver_reports(self, now: float) -> None:
        """RR for each producer stream, plus a REMB so browsers ramp up their bitrate."""
        reports = []
        for producer in self.producer_list:
            if producer.ssrc is None or not producer.stats.started:
                continue
            fraction, lost, ext_max, jitter, lsr, dlsr = producer.stats.report_block(now)
            reports.append(RtcpReceiverInfo(
                ssrc=producer.ssrc, fraction_lost=fraction, packets_lost=lost,
                highest_sequence=ext_max, jitter=jitter, lsr=lsr, dlsr=dlsr,
            ))
        if not reports:
            return
        data = bytes(RtcpRrPacket(ssrc=self.rtcp_ssrc, reports=reports))
        video = [p.ssrc for p in self.producer_list if p.kind == "video" and p.ssrc is not None]
        if video:
            data += bytes(RtcpPsfbPacket(
                fmt=PSFB_APP, ssrc=self.rtcp_ssrc, media_ssrc=0,
                fci=pack_remb_fci(REMB_BITRATE_BPS, video),
            ))
        self.send_rtcp(data)

    # --- lifecycle ---------------------------------------------------------------------

    def add_producer(self, producer: "Producer", extensions: dict[str, int]) -> None:
        self.ext_ids = ext_ids(extensions) if extensions else self.ext_ids
        self.producer_list.append(producer)
        self.producers_by_mid[producer.mid.encode()] = producer
        if producer.ssrc is not None:
            self.producers[producer.ssrc] = (producer, False)
        if producer.rtx_ssrc is not None:
            self.producers[producer.rtx_ssrc] = (producer, True)

    def close(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        if self.addr is not None:
            for d in self.dtls.close():
                self.shard.sendto(d, self.addr)
        for producer in self.producer_list:
            producer.close()
        for consumer in list(self.consumers.values()):
            consumer.close()
        self.consumers.clear()
