"""Shard: one UDP port for all its peers; the engine forwards, Python keeps control.

Datagrams reach the fast-path engine first (``add_reader`` → ``recvmmsg``). It
forwards media itself and hands STUN and DTLS up here, where ICE-lite checks
and DTLS handshakes run, then installs each peer's address and SRTP keys back
into the engine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from typing import Any

import structlog

from .. import control, fastpath, loop_lag
from .consumer import Consumer
from .dtls import DtlsCertificate
from .producer import Producer
from .relay_transport import RelayTransport
from .stun import StunError, binding_success, parse_binding_request
from .webrtc_transport import WebRtcTransport

log = structlog.get_logger("sfu.shard")
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
RTCP_REPORT_INTERVAL_S = 1.0
MAX_PROBING_CONSUMERS = 64
SWITCH_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
SIMULCAST_INTERVAL_S = 0.25  # how often each simulcast consumer's layer is reconsidered
AUDIO_LEVEL_INTERVAL_S = 0.5  # how often published audio levels go to signalling (active speaker)


class Shard:
    def __init__(
        self,
        shard_id: int,
        *,
        consent_timeout_s: float = 30.0,
        keyframe_min_interval_ms: int = 500,
        pacer: bool = True,
        pacer_rate_kbps: int = 25_000,
        pacer_burst_bytes: int = 48_000,
    ) -> None:
        self.id = shard_id
        self.loop = asyncio.get_running_loop()
        self.consent_timeout_s = consent_timeout_s
        self.certificate = DtlsCertificate.generate()
        self.dtls_context = self.certificate.context()
        self.transports: dict[str, WebRtcTransport] = {}
        self.relays: dict[str, RelayTransport] = {}  # to other shards, by relay id
        self.by_ufrag: dict[str, WebRtcTransport] = {}
        self.by_addr: dict[tuple[str, int], WebRtcTransport] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.drops: Counter[str] = Counter()  # drops decided in Python (STUN, DTLS)
        self.layer_switches = 0
        # Decision -> switch times, as a cumulative histogram: any number of stats readers.
        self.switch_counts = [0] * (len(SWITCH_BUCKETS_S) + 1)
        self.switch_sum = 0.0
        self.sock: socket.socket | None = None
        self.engine: Any = None
        self._engine_options = dict(
            keyframe_min_interval_s=keyframe_min_interval_ms / 1000, pacer_enabled=pacer,
            pacer_rate_bps=pacer_rate_kbps * 1000, pacer_burst_bytes=pacer_burst_bytes,
        )
        self.channel: control.Channel | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._engine_timer: asyncio.TimerHandle | None = None
        self._remb_falls_seen = 0
        self._last_load: tuple[float, float, int, int] | None = None
        # Consumers padded at once, at most: an all-hands where hundreds join within
        # seconds must not send each of them a probe's worth of padding at the same time.
        self.max_probing = MAX_PROBING_CONSUMERS
        self.probing = 0
        self.log = log.bind(shard=shard_id)

    # --- UDP ---------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.engine = fastpath.Engine(sock.fileno(), self._on_slow_path, **self._engine_options)
        self.loop.add_reader(sock.fileno(), self._on_readable)
        self._engine_timer = self.loop.call_later(0.02, self._engine_tick)
        self._tick_task = self.loop.create_task(self._tick())
        self._simulcast_task = self.loop.create_task(self._simulcast_tick())
        self._audio_level_task = self.loop.create_task(self._audio_level_tick())
        self._lag_task = self.loop.create_task(loop_lag.watch(self.log))
        loop_lag.watch_gc(self.log)
        return sock.getsockname()[1]

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """STUN and DTLS replies; media leaves through the engine."""
        if self.sock is not None:
            try:
                self.sock.sendto(data, addr)
            except OSError:
                self.drops["send_failed"] += 1

    def _on_readable(self) -> None:
        self.engine.on_readable()
        # A REMB that fell sharply came in this batch: decide at once rather than at
        # the engine's next tick (up to 50 ms): every millisecond more of the old layer
        # on a congested link lengthens the viewer's freeze.
        if self.engine.remb_falls != self._remb_falls_seen:
            self._on_remb_falls()

    def _engine_tick(self) -> None:
        self._engine_timer = self.loop.call_later(self.engine.tick(), self._engine_tick)
        if self.engine.remb_falls != self._remb_falls_seen:
            self._on_remb_falls()

    def _on_remb_falls(self) -> None:
        """A viewer's REMB fell sharply: decide its layers now, not at the next tick.

        The tick is 250 ms; a link that just narrowed is dropping packets all that
        time, and every one of them lengthens the viewer's freeze.
        """
        self._remb_falls_seen = self.engine.remb_falls
        now = self.loop.time()
        by_slot = {t.slot: t for t in self.transports.values()}
        for slot in self.engine.take_remb_falls():
            transport = by_slot.get(slot)
            if transport is None or not any(c.simulcast for c in transport.consumers.values()):
                continue
            try:
                transport.update_bandwidth(now)
                for consumer in list(transport.consumers.values()):
                    consumer.update_layer(now)
            except Exception:  # as in the tick: one viewer's bug must not stop the rest
                self.log.exception("layer update failed", transport=transport.id, room=transport.room)

    def _on_slow_path(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[0] < 4:
            self._on_stun(data, addr)
            return
        transport = self.by_addr.get(addr)
        if transport is None:
            self.drops["unknown_address"] += 1
            return
        transport.on_dtls(data)

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
            old.addr = None  # a peer reusing an address another transport had: newest wins
        self.by_addr[addr] = transport

    def unbind_address(self, addr: tuple[str, int], transport: WebRtcTransport) -> None:
        if self.by_addr.get(addr) is transport:
            del self.by_addr[addr]

    # --- periodic work -----------------------------------------------------------------

    def _report_load(self, now: float) -> None:
        """Tell signalling how busy this shard is (rates over the last tick)."""
        cpu, totals = time.process_time(), self.engine.totals()
        last = self._last_load
        self._last_load = (now, cpu, totals["packets_in"], totals["packets_out"])
        if last is None or now <= last[0]:
            return
        elapsed = now - last[0]
        self._notify(control.LoadReport(
            shard_id=self.id, transports=len(self.transports), consumers=len(self.consumers),
            packets_in_per_s=(totals["packets_in"] - last[2]) / elapsed,
            packets_out_per_s=(totals["packets_out"] - last[3]) / elapsed,
            cpu=(cpu - last[1]) / elapsed))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(RTCP_REPORT_INTERVAL_S)
            now = self.loop.time()
            self._report_load(now)
            for transport in list(self.transports.values()):
                if now - transport.last_seen > self.consent_timeout_s:
                    self.close_transport(transport, "consent expired")
                else:
                    transport.send_receiver_reports()
                    transport.release_dtls_if_done()
            self._report_round_trips()
            self._report_layer_demand()

    def _report_layer_demand(self) -> None:
        """Tell signalling which simulcast layers our viewers receive or are moving to (relays
        to other shards and nodes do not count: their viewers are reported where they are),
        so it can pause the rest at publishers that can stop encoding them."""
        by_slot = {p.slot: p for p in self.producers.values()}
        wanted: set[str] = set()
        for consumer in self.consumers.values():
            if not consumer.simulcast or not isinstance(consumer.transport, WebRtcTransport):
                continue
            wanted.add(consumer.layer.id)
            sending = by_slot.get(self.engine.consumer_producer(consumer.slot))
            if sending is not None:
                wanted.add(sending.id)
        # Every second, even when empty: signalling's clock for pausing runs on these.
        self._notify(control.LayerDemand(shard_id=self.id, producer_ids=sorted(wanted)))

    def _report_round_trips(self) -> None:
        """Tell signalling the round trip of each transport that asked (``report_rtt``) and
        has one: a co-performance room's delay estimate for its participants."""
        rtts = [(t.id, round(rtt * 1000.0, 1)) for t in self.transports.values()
                if t.report_rtt and (rtt := t.rtt_s) is not None]
        if rtts:
            self._notify(control.RoundTrips(rtts=rtts))

    async def _simulcast_tick(self) -> None:
        while True:
            await asyncio.sleep(SIMULCAST_INTERVAL_S)
            now = self.loop.time()
            for producer in self.producers.values():
                if producer.kind == "video":
                    producer.measure_bitrate(now)
            for transport in list(self.transports.values()):
                # Only simulcast viewers have a layer (and pacing) the estimate decides;
                # an all-hands' thousands of single-layer viewers cost nothing here.
                if any(c.simulcast for c in transport.consumers.values()):
                    try:
                        transport.update_bandwidth(now)
                    except Exception:
                        self.log.exception("bandwidth update failed", transport=transport.id, room=transport.room)
            ranked_by_track: dict[tuple[int, ...], Any] = {}
            for consumer in list(self.consumers.values()):
                try:
                    consumer.update_layer(now, ranked_by_track)
                except Exception:  # one consumer's bug must not stop every other's adaptation
                    self.log.exception("layer update failed", consumer=consumer.id, room=consumer.transport.room)

    async def _audio_level_tick(self) -> None:
        while True:
            await asyncio.sleep(AUDIO_LEVEL_INTERVAL_S)
            levels = self.engine.take_audio_levels()
            if not levels:
                continue
            by_slot = {p.slot: p for p in self.producers.values()}
            # Publishers' own tracks only: a relayed copy's levels are its source's,
            # which that source's shard reports.
            out = [(by_slot[slot].id, dbov, voiced) for slot, dbov, voiced in levels
                   if slot in by_slot and isinstance(by_slot[slot].transport, WebRtcTransport)]
            if out:
                self._notify(control.AudioLevels(levels=out))

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
        for producer in transport.producers:
            self.producers.pop(producer.id, None)
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
                report_rtt=body.report_rtt,
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
                rid=body.rid, red_payload_type=body.red_payload_type,
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
                extensions=body.extensions, nack=body.nack, red_payload_type=body.red_payload_type,
            )
            transport.consumers[consumer.id] = consumer
            self.consumers[consumer.id] = consumer
            layers = [self.producers[i] for i in body.layer_producer_ids if i in self.producers]
            if len(layers) > 1:
                consumer.enable_simulcast(layers, body.max_layer_rid, max_width=body.max_width,
                                          max_height=body.max_height, room_max_layer=body.room_max_layer)
            if transport.ready:
                consumer.start()
            return None
        if isinstance(body, control.OpenRelay):
            relay = self.relays.get(body.relay_id)
            if relay is not None and relay.addr == (body.peer_host, body.peer_port):
                return None
            if relay is not None:  # the other end was restarted on another port
                relay.close()
            self.relays[body.relay_id] = RelayTransport(self, body.relay_id, body.peer_host, body.peer_port)
            self.log.info("relay opened", relay=body.relay_id, peer=f"{body.peer_host}:{body.peer_port}")
            return None
        if isinstance(body, control.CloseRelay):
            relay = self.relays.pop(body.relay_id, None)
            if relay is not None:
                for producer in relay.producers:
                    self.producers.pop(producer.id, None)
                relay.close()
                self.log.info("relay closed", relay=body.relay_id)
            return None
        if isinstance(body, control.CloseProducer):
            producer = self.producers.pop(body.producer_id, None)
            if producer is not None:
                if producer in producer.transport.producers:
                    producer.transport.producers.remove(producer)
                producer.close()
            return None
        if isinstance(body, control.Retarget):
            consumer = self.consumers.get(body.consumer_id)
            producer = self.producers.get(body.producer_id)
            if consumer is None or producer is None:
                raise KeyError(f"unknown consumer {body.consumer_id} or producer {body.producer_id}")
            layers = [self.producers[i] for i in body.layer_producer_ids if i in self.producers]
            consumer.retarget(producer, layers if len(layers) > 1 else [])
            return None
        if isinstance(body, control.LayersPaused):
            paused = set(body.producer_ids)
            for producer in self.producers.values():
                producer.paused = producer.id in paused
            return None
        if isinstance(body, control.CloseConsumer):
            consumer = self.consumers.get(body.consumer_id)
            if consumer is not None:
                consumer.close()
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
        if isinstance(body, control.Ping):
            return None
        raise ValueError(f"unsupported request {type(body).__name__}")

    def _transport(self, transport_id: str) -> WebRtcTransport | RelayTransport:
        transport = self.transports.get(transport_id) or self.relays.get(transport_id)
        if transport is None:
            raise KeyError(f"unknown transport {transport_id}")
        return transport

    def stats(self) -> dict[str, Any]:
        drops = Counter(self.engine.drop_counts())
        drops.update(self.drops)
        return {
            "shard": self.id,
            "pid": os.getpid(),
            "fastpath": fastpath.IMPLEMENTATION,
            "transports": len(self.transports),
            "relays": len(self.relays),
            "producers": len(self.producers),
            "consumers": len(self.consumers),
            **self.engine.totals(),
            "layer_switches": self.layer_switches,
            "switch_seconds": {"bounds": list(SWITCH_BUCKETS_S), "counts": list(self.switch_counts),
                               "sum": self.switch_sum},
            "consumers_by_layer": self._consumers_by_layer(),
            "probing_consumers": self.probing,
            "drops": dict(drops),
            "jitter_seconds": {p.id: p.stats()["jitter_seconds"] for p in self.producers.values()},
        }

    def record_switch(self, seconds: float) -> None:
        """One layer switch: from the decision to the keyframe that made it."""
        self.switch_counts[next((i for i, b in enumerate(SWITCH_BUCKETS_S) if seconds <= b),
                                len(SWITCH_BUCKETS_S))] += 1
        self.switch_sum += seconds

    def _consumers_by_layer(self) -> dict[str, int]:
        """Simulcast consumers per layer rank (0 = lowest), as last decided."""
        counts: dict[str, int] = {}
        for consumer in self.consumers.values():
            if consumer.policy is not None and consumer.policy.target is not None:
                key = str(consumer.policy.target.spatial)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def close(self) -> None:
        for transport in list(self.transports.values()):
            self.close_transport(transport, "shard shutting down")
        for relay in list(self.relays.values()):
            relay.close()
        self.relays.clear()
        if self._tick_task is not None:
            self._tick_task.cancel()
            self._simulcast_task.cancel()
            self._audio_level_task.cancel()
            self._lag_task.cancel()
        if self._engine_timer is not None:
            self._engine_timer.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
