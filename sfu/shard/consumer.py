"""Consumer: one producer's track as delivered to one viewer, with its own SSRC and numbering."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from dataclasses import replace

from aiortc.rtp import RtcpByePacket

from ..simulcast.layer_policy import Layer, LayerPolicy, order_layers

if TYPE_CHECKING:
    from .producer import Producer
    from .relay_transport import RelayTransport
    from .webrtc_transport import WebRtcTransport


PROBE_OVERSHOOT = 1.1
"""Offer 10 % more than the step needs: an estimate lands near what arrives, and
arrivals count payload only (no RTP/SRTP/UDP overhead)."""

PROBE_LEAD = 0.9
"""Once there is an estimate, offer at most estimate / 0.9 (11 % above it). GCC-style
estimators (libwebrtc's and aiortc's AIMD) grow only additively (a few tens of kbit/s
per second) near the rate of their last decrease, and return to multiplicative growth
(8 %/s) only when what arrives clearly exceeds it (by 3 sigma, ~6 % at 1 Mbit/s);
offering a little more is what unlocks that. A link that cannot take it shows a
delay rise, the estimate falls, and the probe stops (none on a falling estimate)."""


PROBE_DOUBLING_S = 1.0
"""With no estimate yet, the offer starts at the media rate and doubles every second:
a link that cannot take it shows loss in the first receiver report, while the offer
is still small, instead of being flooded at once."""


def probe_padding_bps(probe_target_bps: float | None, media_bps: float, estimate_bps: float,
                      probing_for_s: float) -> float:
    """Padding to add on top of the media so the viewer's estimate can reach the next step.

    ``probing_for_s``: how long this probe has been going (the ramp, with no estimate).
    """
    if probe_target_bps is None:
        return 0.0
    offer = probe_target_bps * PROBE_OVERSHOOT
    if estimate_bps > 0:
        offer = min(offer, max(media_bps, estimate_bps / PROBE_LEAD))
    else:
        offer = min(offer, media_bps * 2 ** (max(0.0, probing_for_s) / PROBE_DOUBLING_S))
    return max(0.0, offer - media_bps)


def rank_layers(producers: list["Producer"]) -> list[Layer]:
    """A track's live layers, low to high, as the policy sees them now: a layer paused
    at the publisher counts as live (choosing it brings it back)."""
    bitrates = {p.rid: p.policy_bitrate_bps for p in producers}
    sizes = {p.rid: p.size for p in producers if p.size is not None}
    temporals = {p.rid: p.temporal_layers for p in producers}
    return [replace(layer, active=bitrates[layer.rid] > 0, temporal_layers=temporals[layer.rid])
            for layer in order_layers([p.rid for p in producers], bitrates, sizes)]


class Consumer:
    def __init__(
        self,
        consumer_id: str,
        transport: "WebRtcTransport | RelayTransport",
        producer: "Producer",
        *,
        mid: str,
        payload_type: int,
        ssrc: int,
        rtx_payload_type: int | None,
        rtx_ssrc: int | None,
        extensions: dict[str, int],
        nack: bool,
        red_payload_type: int | None = None,
    ) -> None:
        """``red_payload_type``: the viewer negotiated RFC 2198 RED under this PT and gets
        a RED producer's packets as sent; None: they reach it stripped to their primary."""
        from .webrtc_transport import extension_ids

        self.id = consumer_id
        self.transport = transport
        self.producer = producer
        self.ssrc = ssrc
        self.closed = False
        # Simulcast: the track's layers, the one being sent, and who decides.
        self.layers: list[Producer] = []
        self.layer: Producer = producer
        self.max_layer_rid = ""
        self.max_width: int | None = None
        self.max_height: int | None = None
        self.room_max_layer: int | None = None
        self.policy: LayerPolicy | None = None
        self.simulcast = False
        self.layer_switches = 0
        self._switch_asked_at: float | None = None  # decided, waiting for the layer's keyframe
        self._reports_seen = 0
        self.probe_bps = 0.0  # padding asked of the engine
        self._probing_since: float | None = None
        self.tid_max: int | None = -1  # VP8 temporal cap asked of the engine (-1: all; None: the engine's)
        ids = extension_ids(extensions)
        # Random starting points (RFC 3550 §5.1) that then never jump: the viewer
        # sees one continuous stream whatever happens upstream.
        self.slot = transport.shard.engine.add_consumer(
            transport.slot, producer.slot, payload_type=payload_type, ssrc=ssrc,
            rtx_payload_type=-1 if rtx_payload_type is None else rtx_payload_type,
            rtx_ssrc=rtx_ssrc if rtx_payload_type is not None else None, nack=nack,
            mid=ids["mid"], abs_send_time=ids["abs_send_time"], audio_level=ids["audio_level"],
            mid_value=mid.encode(), first_seq=random.getrandbits(16), first_ts=random.getrandbits(32),
            first_rtx_seq=random.getrandbits(16), transport_cc=ids["transport_cc"],
            red_payload_type=-1 if red_payload_type is None else red_payload_type,
        )
        producer.consumers.append(self)

    def request_keyframe(self) -> None:
        self.layer.request_keyframe()

    def start(self) -> None:
        """The viewer's transport is ready: begin from the history's GOP, else ask for a keyframe."""
        self.transport.shard.engine.start_consumer(self.slot)

    def enable_simulcast(self, layers: list["Producer"], max_layer_rid: str = "", *, max_width: int | None = None,
                         max_height: int | None = None, room_max_layer: int | None = None) -> None:
        self.layers = layers
        self.max_layer_rid = max_layer_rid
        self.max_width, self.max_height = max_width, max_height
        self.room_max_layer = room_max_layer
        self.policy = None  # made at the first estimate, starting from the layer joined on
        self.simulcast = True

    def update_layer(self, now: float, ranked_by_track: dict[tuple[int, ...], list[Layer]] | None = None) -> None:
        """Feed the policy what the engine saw, and move to the layer it picks.

        ``ranked_by_track`` lets one tick rank each track's layers once for all its viewers.
        """
        if not self.simulcast or self.closed:
            return
        engine = self.transport.shard.engine
        if self._switch_asked_at is not None and engine.consumer_producer(self.slot) == self.layer.slot:
            # The engine made the move on the layer's keyframe: that wait is the switch time.
            self.transport.shard.record_switch(now - self._switch_asked_at)
            self._switch_asked_at = None
        switching = self._switch_asked_at is not None
        estimate = self.transport.bandwidth.estimate_bps(now) or 0.0
        live = [p for p in self.layers if not p.closed]
        if not live:
            return
        key = tuple(p.slot for p in live)
        ranked = ranked_by_track.get(key) if ranked_by_track is not None else None
        if ranked is None:
            ranked = rank_layers(live)
            if ranked_by_track is not None:
                ranked_by_track[key] = ranked
        if self.policy is None:
            # Start from the layer joined on: with no estimate yet (aiortc's first REMB
            # comes after ~3 s) only loss can move the viewer, and only down.
            current = next((layer.spatial for layer in ranked if layer.rid == self.layer.rid), None)
            self.policy = LayerPolicy(start_spatial=current, room_max_spatial=(
                None if self.room_max_layer is None else min(self.room_max_layer, len(ranked) - 1)))
        if estimate:
            self.policy.on_bandwidth_estimate(estimate, now)
        stats = engine.consumer_stats(self.slot)
        if stats["reports"] != self._reports_seen:
            # One receiver report is one loss sample: feeding it again each tick would
            # turn a single lossy report into "sustained" loss.
            self._reports_seen = stats["reports"]
            self.policy.on_loss(stats["fraction_lost"], now)
        cap = next((layer.spatial for layer in ranked if layer.rid == self.max_layer_rid), None)
        self.policy.set_requested_max(width=self.max_width, height=self.max_height, spatial=cap)
        target = self.policy.decide(ranked, now)
        if self.policy.probe_target_bps is None:
            self._probing_since = None
        elif self._probing_since is None:
            self._probing_since = now
        self._set_probe(probe_padding_bps(self.policy.probe_target_bps, self.layer.bitrate_bps, estimate,
                                          now - self._probing_since if self._probing_since is not None else 0.0))
        if target is None:
            return
        rid = ranked[target.spatial].rid
        want = next(p for p in live if p.rid == rid)
        # The temporal cap applies at once (no keyframe needed); top temporal layer = all.
        # Left alone while a down-switch holds the old layer at its base layer.
        tid_max = target.temporal if target.temporal < ranked[target.spatial].temporal_layers - 1 else -1
        if tid_max != self.tid_max and not (switching and self.tid_max is None):
            self.tid_max = tid_max
            engine.set_consumer_temporal(self.slot, tid_max)
        if want is not self.layer:
            current = next((layer for layer in ranked if layer.rid == self.layer.rid), None)
            down = current is not None and current.spatial > target.spatial
            # Down because the link no longer carries the layer: nothing more of it until
            # the lower layer's keyframe (the engine's hold), so the queue it filled in the
            # network drains while that keyframe is on its way and the keyframe gets
            # through whole (its base temporal layer alone still overfilled a link that
            # narrowed to 40 % of it: the keyframe queued behind it, freezing the viewer
            # for up to 1.1 s; docs/architecture.md, Switching).
            # Not when the lower layer is paused at the publisher: its keyframe waits for the
            # encoder to start again, and the old layer's base carries the viewer meanwhile.
            hold = down and self.policy.went_down and not want.paused
            if down and not hold and current.temporal_layers > 1:
                # Down because a cap came down: until the lower layer's keyframe arrives,
                # only the current layer's base temporal layer goes out (no keyframe needed
                # for that); the engine lifts the cap at the switch.
                engine.set_consumer_temporal(self.slot, 0, until_switch=True)
                self.tid_max = None
            engine.set_consumer_producer(self.slot, want.slot, hold=hold)
            if hold:
                self.transport.on_congested_switch(now)
            self.transport.shard.log.info(
                "layer switch", room=self.transport.room, peer=self.transport.peer_id, consumer=self.id,
                frm=self.layer.rid, to=want.rid, temporal=target.temporal, held=hold, estimate_bps=round(estimate),
                fraction_lost=stats["fraction_lost"], layer_bps=round(want.policy_bitrate_bps), paused=want.paused)
            self._switch_asked_at = now
            self.layer = want
            self.layer_switches += 1
            self.transport.shard.layer_switches += 1

    def retarget(self, producer: "Producer", layers: list["Producer"]) -> None:
        """Show another track (last-N): from its next keyframe, continuing our numbering.

        A simulcast track starts on the layer of the same rank as the one shown now,
        or its highest if it has fewer; the policy adapts from there.
        """
        if self.closed or producer is self.producer:
            return
        rank = next((i for i, p in enumerate(self.layers) if p is self.layer), 0) if self.simulcast else None
        if self in self.producer.consumers:
            self.producer.consumers.remove(self)
        self.producer = producer
        producer.consumers.append(self)
        if layers:
            self.layers = layers
            self.simulcast = True
            self.policy = None
            self.layer = layers[min(rank if rank is not None else len(layers) // 2, len(layers) - 1)]
        else:
            self.layers, self.simulcast, self.policy = [], False, None
            self.layer = producer
            self._set_probe(0.0)
        if self.tid_max != -1:
            self.tid_max = -1
            self.transport.shard.engine.set_consumer_temporal(self.slot, -1)
        self.transport.shard.engine.set_consumer_producer(self.slot, self.layer.slot)

    def _set_probe(self, bps: float) -> None:
        # Rounded, so a steady answer is not re-sent to the engine every tick.
        bps = round(bps, -4)
        shard = self.transport.shard
        if bps > 0 and self.probe_bps == 0 and shard.probing >= shard.max_probing:
            bps = 0.0  # the shard's probe budget is taken: this one waits for a later tick
        if bps != self.probe_bps:
            shard.probing += (bps > 0) - (self.probe_bps > 0)
            self.probe_bps = bps
            shard.engine.set_consumer_probe(self.slot, bps)

    def on_producer_closed(self) -> None:
        """Tell the viewer the stream ended (RTCP BYE) so its track ends cleanly."""
        if not self.closed:
            self.transport.shard.engine.send_rtcp(self.transport.slot, bytes(RtcpByePacket(sources=[self.ssrc])))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.probe_bps > 0:
            self.transport.shard.probing -= 1
            self.probe_bps = 0.0
        if self in self.producer.consumers:
            self.producer.consumers.remove(self)
        self.transport.consumers.pop(self.id, None)
        self.transport.shard.consumers.pop(self.id, None)
        self.transport.shard.engine.remove_consumer(self.slot)
