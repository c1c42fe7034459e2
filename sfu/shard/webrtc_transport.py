"""WebRtcTransport: one peer's ICE-lite + DTLS association; its SRTP packets are the engine's."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ..signalling.sdp import (
    EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC,
)
from .bandwidth import ViewerBandwidth
from .dtls import DtlsCertificate, DtlsEndpoint
from .srtp import SrtpSession
from .twcc_estimator import TwccEstimator

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Producer
    from .shard import Shard

REMB_BITRATE_BPS = 4_000_000  # what we let a publisher ramp up to until issue 4's estimator


def extension_ids(extensions: dict[str, int]) -> dict[str, int]:
    return {
        "mid": extensions.get(EXT_MID, 0),
        "abs_send_time": extensions.get(EXT_ABS_SEND_TIME, 0),
        "audio_level": extensions.get(EXT_AUDIO_LEVEL, 0),
        "rid": extensions.get(EXT_RID, 0),
        "repaired_rid": extensions.get(EXT_REPAIRED_RID, 0),
        # What we stamp on everything we send a viewer (negotiated with viewers only).
        "transport_cc": extensions.get(EXT_TRANSPORT_CC, 0),
    }


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
        report_rtt: bool = False,
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
        self.producers: list[Producer] = []
        self.consumers: dict[str, Consumer] = {}
        self._dtls_timer = None
        self.bandwidth = ViewerBandwidth()
        self._pacing_bps = 0.0
        self._reports_seen: dict[int, int] = {}  # consumer slot -> receiver reports taken
        self._extension_ids: dict[str, int] = {}  # the union over the peer's m-lines
        self.twcc: TwccEstimator | None = None  # made at the viewer's first transport-cc feedback
        self.report_rtt = report_rtt  # its round trip goes to signalling (RoundTrips) once a second
        self.slot = shard.engine.add_transport(secure=True, rtcp_ssrc=random.getrandbits(32) or 1)

    # --- ICE ---------------------------------------------------------------------------

    def on_binding_request(self, addr: tuple[str, int], use_candidate: bool) -> None:
        self.shard.engine.touch_transport(self.slot)
        if self.addr is None or (use_candidate and addr != self.addr):
            if self.addr is not None:
                self.shard.unbind_address(self.addr, self)
            self.addr = addr
            self.shard.bind_address(addr, self)
            self.shard.engine.set_transport_address(self.slot, addr[0], addr[1])
            if self.state == "new":
                self.state = "connecting"
                self._send_dtls(self.dtls.start())

    # --- DTLS --------------------------------------------------------------------------

    def on_dtls(self, data: bytes) -> None:
        self.shard.engine.touch_transport(self.slot)
        was = self.dtls.state
        self._send_dtls(self.dtls.receive(data))
        if was != "connected" and self.dtls.state == "connected":
            self.srtp = SrtpSession(self.dtls.srtp_keys)
            self.shard.engine.set_transport_srtp(self.slot, self.srtp.rx, self.srtp.tx)
            self.state = "connected"
            self.shard.on_transport_connected(self)
            for consumer in self.consumers.values():
                consumer.start()
        elif self.dtls.state in ("failed", "closed") and self.state != "closed":
            self.shard.close_transport(self, self.dtls.error or "dtls closed")

    def _send_dtls(self, datagrams: list[bytes]) -> None:
        if self.addr is not None:
            for d in datagrams:
                self.shard.sendto(d, self.addr)
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        timeout = self.dtls.next_timeout_s()
        if timeout is not None:
            self._dtls_timer = self.shard.loop.call_later(max(timeout, 0.01), self._on_dtls_timeout)

    def _on_dtls_timeout(self) -> None:
        self._dtls_timer = None
        self._send_dtls(self.dtls.handle_timeout())

    # --- RTCP we originate -------------------------------------------------------------

    def release_dtls_if_done(self) -> None:
        """Free OpenSSL's state once the peer's SRTP shows it completed the handshake."""
        if self.state == "connected" and self.shard.engine.transport_received(self.slot):
            self.dtls.release()

    def send_receiver_reports(self) -> None:
        """RR for each producer stream, plus a REMB so browsers ramp up their bitrate."""
        if self.producers and self.srtp is not None:
            video = any(p.kind == "video" for p in self.producers)
            self.shard.engine.send_receiver_reports(self.slot, REMB_BITRATE_BPS if video else 0)

    def update_bandwidth(self, now: float) -> None:
        """Feed the viewer's estimate what the engine saw, and pace the viewer by it."""
        engine = self.shard.engine
        self.bandwidth.on_sent(engine.transport_sent_bytes(self.slot), now)
        self.bandwidth.on_remb(engine.transport_remb_bps(self.slot))
        reports = engine.take_twcc(self.slot)
        if reports:
            # A transport-cc viewer (Chrome sends it no REMB then): our own estimate.
            if self.twcc is None:
                self.twcc = TwccEstimator()
            estimate = self.twcc.update(reports, now)
            if estimate is not None:
                if self.bandwidth.twcc_bps is None:
                    self.shard.log.info("transport-cc estimate", room=self.room, peer=self.peer_id,
                                        estimate_bps=round(estimate), acked_bps=round(self.twcc.acked_bps or 0),
                                        remb_bps=self.bandwidth.remb_bps or 0)
                self.bandwidth.on_twcc(estimate, now)
        for consumer in self.consumers.values():
            if consumer.producer.kind != "video":
                continue
            stats = engine.consumer_stats(consumer.slot)
            if stats["reports"] != self._reports_seen.get(consumer.slot):
                self._reports_seen[consumer.slot] = stats["reports"]
                self.bandwidth.on_loss_report(stats["fraction_lost"], now)
        self._update_pacing(now)

    def on_congested_switch(self, now: float) -> None:
        """A consumer moved down on a congested link (its old layer held): pace at the
        estimate at once, not from the next tick (``ViewerBandwidth.on_congestion``)."""
        self.bandwidth.on_congestion(now)
        self._update_pacing(now)

    def _update_pacing(self, now: float) -> None:
        # Only a viewer with a simulcast track has a smaller layer to move to; pacing a
        # single-layer viewer below what its publisher sends would only add delay.
        simulcast = any(c.simulcast for c in self.consumers.values())
        pacing = self.bandwidth.pacing_bps(now) if simulcast else 0.0
        # Re-set only on a 10 % change: the estimate wobbles every report.
        if (pacing == 0) != (self._pacing_bps == 0) or abs(pacing - self._pacing_bps) > 0.1 * self._pacing_bps:
            self._pacing_bps = pacing
            self.shard.engine.set_transport_pacing(self.slot, pacing)

    # --- lifecycle ---------------------------------------------------------------------

    def add_producer(self, producer: "Producer", extensions: dict[str, int]) -> None:
        # One bundle, one id per extension (RFC 8285 asks senders to keep them consistent
        # across m-lines), but each m-line lists only its own: audio-level is on the audio
        # line, abs-send-time often only on video. The transport parses the union.
        if extensions:
            merged = {**extension_ids(extensions)}
            # Set by a viewer's consumers only; a publisher's offer never has it answered.
            del merged["transport_cc"]
            for name, value in self._extension_ids.items():
                merged[name] = merged[name] or value
            self._extension_ids = merged
            self.shard.engine.set_transport_extensions(self.slot, **merged)
        self.producers.append(producer)

    @property
    def ready(self) -> bool:
        """Keys are in: consumers can start."""
        return self.srtp is not None

    @property
    def last_seen(self) -> float:
        return self.shard.engine.transport_last_seen(self.slot)

    @property
    def rtt_s(self) -> float | None:
        """The newest round trip to this peer: a receiver report of its echoing the last
        sender report we relayed to one of its consumers (None before the first)."""
        rtt = self.shard.engine.transport_rtt(self.slot)
        return rtt if rtt >= 0 else None

    def close(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        if self.addr is not None:
            for d in self.dtls.close():
                self.shard.sendto(d, self.addr)
        for producer in self.producers:
            producer.close()
        for consumer in list(self.consumers.values()):
            consumer.close()
        self.shard.engine.remove_transport(self.slot)
