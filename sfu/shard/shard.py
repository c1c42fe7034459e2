"""Shard: one UDP port, demultiplexed (RFC 7983) to the transports of all its peers."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import structlog

from .. import control
from .consumer import Consumer
from .dtls import DtlsCertificate
from .producer import Producer
from .stun import StunError, binding_success, parse_binding_request
from .webrtc_transport import WebRtcTransport, ext_ids

log = structlog.get_logger("sfu.shard")


class Shard(asyncio.DatagramProtocol):
    def __init__(
        self,
        shard_id: int,
        *,
        consent_timeout_s: float = 30.0,
        keyframe_min_interval_ms: int = 500,
    ) -> None:
        self.id = shard_id
        self.loop = asyncio.get_running_loop()
        self.consent_timeout_s = consent_timeout_s
        self.keyframe_min_interval_s = keyframe_min_interval_ms / 1000
        self.certificate = DtlsCertificate.generate()
        self.dtls_context = self.certificate.context()
        self.transports: dict[str, WebRtcTransport] = {}
        self.by_ufrag: dict[str, WebRtcTransport] = {}
        self.by_addr: dict[tuple[str, int], WebRtcTransport] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.drops: Counter[str] = Counter()
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.nacks_received = 0
        self.keyframe_requests_received = 0
        self.udp: asyncio.DatagramTransport | None = None
        self.channel: control.Channel | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self.log = log.bind(shard=shard_id)

    # --- UDP ---------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> int:
        self.udp, _ = await self.loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._tick_task = self.loop.create_task(self._tick())
        return self.udp.get_extra_info("sockname")[1]

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.udp is not None:
            self.udp.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from a peer that went away: consent expiry closes it.
        self.drops["udp_error"] += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        if not data:
            self.drops["empty_datagram"] += 1
            return
        first = data[0]
        if first < 4:
            self._on_stun(data, addr)
            return
        transport = self.by_addr.get(addr)
        if transport is None:
            self.drops["unknown_address"] += 1
            return
        if 20 <= first < 64:
            transport.on_dtls(data)
        elif 128 <= first < 192:
            if transport.srtp is None:
                self.drops["srtp_not_ready"] += 1
            elif len(data) >= 2 and 192 <= data[1] <= 223:
                transport.on_rtcp(data, self.loop.time())
            else:
                transport.on_rtp(data, self.loop.time())
        else:
            self.drops["unknown_protocol"] += 1

    def _on_stun(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = parse_binding_request(data, self._pwd_for_ufrag)
        except StunError as exc:
            self.drops[exc.reason] += 1
            return
        transport = self.by_ufrag[request.local_ufrag]
        if request.remote_ufrag != transport.remote_ufrag:
            self.drops["stun_wrong_remote_ufrag"] += 1
            return
        self.sendto(binding_success(request, addr, transport.local_pwd), addr)
        transport.on_binding_request(addr, request.use_candidate)

    def _pwd_for_ufrag(self, ufrag: str) -> str | None:
        transport = self.by_ufrag.get(ufrag)
        return transport.local_pwd if transport is not None else None

    def bind_address(self, addr: tuple[str, int], transport: WebRtcTransport) -> None:
        old = self.by_addr.get(addr)
        if old is not None and old is not transport:
            # A peer reusing an address another transport had: newest wins.
            old.addr = None
        self.by_addr[addr] = transport

    def unbind_address(self, addr: tuple[str, int], transport: WebRtcTransport) -> None:
        if self.by_addr.get(addr) is transport:
            del self.by_addr[addr]

    def count_drop(self, reason: str) -> None:
        self.drops[reason] += 1

    # --- periodic work -----------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for transport in list(self.transports.values()):
                if now - transport.last_seen > self.consent_timeout_s:
                    self.close_transport(transport, "consent expired")
                elif transport.srtp is not None:
                    transport.send_receiver_reports(now)

    # --- control -----------------------------------------------------------------------

    def on_transport_connected(self, transport: WebRtcTransport) -> None:
        self.log.info("transport connected", transport=transport.id, room=transport.room,
                      peer=transport.peer_id, addr=f"{transport.addr[0]}:{transport.addr[1]}",
                      srtp=transport.srtp.profile if transport.srtp else None)
        self._notify(control.TransportStateChanged(transport_id=transport.id, state="connected"))

    def close_transport(self, transport: WebRtcTransport, reason: str) -> None:
        if self.transports.pop(transport.id, None) is None:
            return
        self.by_ufrag.pop(transport.local_ufrag, None)
        if transport.addr is not None:
            self.unbind_address(transport.addr, transport)
        for producer in transport.producer_list:
            self.producers.pop(producer.id, None)
            for consumer in producer.consumers:
                self.consumers.pop(consumer.id, None)
        for consumer in list(transport.consumers.values()):
            self.consumers.pop(consumer.id, None)
        transport.close()
        self.log.info("transport closed", transport=transport.id, room=transport.room,
                      peer=transport.peer_id, reason=reason)
        self._notify(control.TransportStateChanged(transport_id=transport.id, state="closed", reason=reason))

    def _notify(self, body: Any) -> None:
        if self.channel is not None:
            try:
                self.channel.notify(body)
            except control.ControlError:
                pass

    def on_notification(self, body: Any) -> None:
        pass

    async def on_request(self, body: Any) -> Any:
        if isinstance(body, control.CreateWebRtcTransport):
            if body.transport_id in self.transports or body.local_ufrag in self.by_ufrag:
                raise ValueError("transport id or ufrag already in use")
            transport = WebRtcTransport(
                self, body.transport_id, room=body.room, peer_id=body.peer_id,
                local_ufrag=body.local_ufrag, local_pwd=body.local_pwd,
                remote_ufrag=body.remote_ufrag, dtls_role=body.dtls_role,
                remote_fingerprint=body.remote_fingerprint, certificate=self.certificate,
            )
            self.transports[transport.id] = transport
            self.by_ufrag[transport.local_ufrag] = transport
            return None
        if isinstance(body, control.Produce):
            transport = self._transport(body.transport_id)
            producer = Producer(
                body.producer_id, transport, kind=body.kind, codec=body.codec, mid=body.mid,
                payload_type=body.payload_type, clock_rate=body.clock_rate,
                rtx_payload_type=body.rtx_payload_type, ssrc=body.ssrc, rtx_ssrc=body.rtx_ssrc,
                keyframe_min_interval_s=self.keyframe_min_interval_s,
            )
            transport.add_producer(producer, body.extensions)
            self.producers[producer.id] = producer
            return None
        if isinstance(body, control.Consume):
            transport = self._transport(body.transport_id)
            producer = self.producers.get(body.producer_id)
            if producer is None:
                raise KeyError(f"unknown producer {body.producer_id}")
            consumer = Consumer(
                body.consumer_id, transport, producer, mid=body.mid, payload_type=body.payload_type,
                ssrc=body.ssrc, rtx_payload_type=body.rtx_payload_type, rtx_ssrc=body.rtx_ssrc,
                ext_ids=ext_ids(body.extensions), nack=body.nack,
            )
            transport.consumers[consumer.ssrc] = consumer
            producer.consumers.append(consumer)
            self.consumers[consumer.id] = consumer
            if transport.srtp is not None:
                consumer.request_keyframe()
            return None
        if isinstance(body, control.RestartIce):
            transport = self._transport(body.transport_id)
            self.by_ufrag.pop(transport.local_ufrag, None)
            transport.local_ufrag, transport.local_pwd = body.local_ufrag, body.local_pwd
            transport.remote_ufrag = body.remote_ufrag
            self.by_ufrag[transport.local_ufrag] = transport
            return None
        if isinstance(body, control.CloseTransport):
            transport = self.transports.get(body.transport_id)
            if transport is not None:
                self.close_transport(transport, "closed by signalling")
            return None
        if isinstance(body, control.GetStats):
            return self.stats()
        raise ValueError(f"unsupported request {type(body).__name__}")

    def _transport(self, transport_id: str) -> WebRtcTransport:
        transport = self.transports.get(transport_id)
        if transport is None:
            raise KeyError(f"unknown transport {transport_id}")
        return transport

    def stats(self) -> dict[str, Any]:
        producers = list(self.producers.values())
        return {
            "shard": self.id,
            "pid": os.getpid(),
            "transports": len(self.transports),
            "producers": len(producers),
            "consumers": len(self.consumers),
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "drops": dict(self.drops),
            "nacks_received": self.nacks_received,
            "nacks_served": sum(c.nacks_served for c in self.consumers.values()),
            "keyframe_requests_received": self.keyframe_requests_received,
            "keyframe_requests_sent": sum(p.keyframe_requests_sent for p in producers),
            "keyframe_requests_coalesced": sum(p.keyframe_requests_coalesced for p in producers),
            "jitter_seconds": {p.id: p.stats.jitter / p.clock_rate for p in producers if p.clock_rate},
        }

    def close(self) -> None:
        for transport in list(self.transports.values()):
            self.close_transport(transport, "shard shutting down")
        if self._tick_task is not None:
            self._tick_task.cancel()
        if self.udp is not None:
            self.udp.close()
