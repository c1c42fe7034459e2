"""Prometheus exposition of the shards' counters, fetched fresh on each scrape."""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from prometheus_client.registry import Collector


class ShardCollector(Collector):
    """Turns the latest GetStats replies (one dict per shard) into ``sfu_*`` families."""

    def __init__(self) -> None:
        self.stats: list[dict[str, Any]] = []
        self.sessions: dict[str, int] = {}
        self.rooms = 0
        self.shard_restarts: dict[int, int] = {}
        self.shard_ids: list[int] = []
        self.drains = 0
        self.relay_copies = 0
        self.events_sent = 0
        self.layers_paused = 0
        self.recorder: dict[str, Any] | None = None
        self.recordings_active = 0
        self.recorder_restarts = 0
        self.quic: dict[str, Any] | None = None

    def collect(self) -> Iterable[Any]:
        sessions = GaugeMetricFamily("sfu_peers", "Peers with a live session", labels=["kind"])
        for kind in ("whip", "whep"):
            sessions.add_metric([kind], self.sessions.get(kind, 0))
        yield sessions
        yield GaugeMetricFamily("sfu_rooms", "Rooms with at least one session", value=self.rooms)
        restarts = CounterMetricFamily("sfu_shard_restarts", "Shard processes replaced after dying or hanging",
                                       labels=["shard"])
        for shard_id in self.shard_ids:
            restarts.add_metric([str(shard_id)], self.shard_restarts.get(shard_id, 0))
        yield restarts
        up = GaugeMetricFamily("sfu_shard_up", "1 when the shard answered this scrape", labels=["shard"])
        answered = {s["shard"] for s in self.stats}
        for shard_id in self.shard_ids:
            up.add_metric([str(shard_id)], 1 if shard_id in answered else 0)
        yield up
        yield CounterMetricFamily("sfu_shard_drains", "Shards drained (peers moved, then restarted fresh)",
                                  value=self.drains)
        yield CounterMetricFamily("sfu_relay_copies", "Tracks copied to another shard through the relay",
                                  value=self.relay_copies)
        yield GaugeMetricFamily("sfu_recordings_in_progress", "Rooms being recorded", value=self.recordings_active)
        yield CounterMetricFamily("sfu_recorder_restarts", "Recorder processes replaced after dying",
                                  value=self.recorder_restarts)
        peers = (self.quic or {}).get("peers", {})
        rtt = GaugeMetricFamily("sfu_relay_rtt_ms", "QUIC relay round-trip time per peer node", labels=["peer"])
        sent = CounterMetricFamily("sfu_relay_datagrams", "QUIC relay datagrams per peer", labels=["peer", "direction"])
        lost = CounterMetricFamily("sfu_relay_lost_packets", "RTP packets missing on flows from a peer", labels=["peer"])
        redials = CounterMetricFamily("sfu_relay_reconnects", "QUIC relay connections dialled again", labels=["peer"])
        keyframes = CounterMetricFamily("sfu_relay_keyframe_requests", "Keyframes a peer asked of us after a "
                                        "reconnect (control stream), one per flow", labels=["peer"])
        for peer, p in peers.items():
            if p.get("rtt_ms") is not None:
                rtt.add_metric([peer], p["rtt_ms"])
            sent.add_metric([peer, "out"], p.get("sent", 0))
            sent.add_metric([peer, "in"], p.get("received", 0))
            lost.add_metric([peer], p.get("lost", 0))
            redials.add_metric([peer], p.get("reconnects", 0))
            keyframes.add_metric([peer], p.get("keyframe_requests", 0))
        yield from (rtt, sent, lost, redials, keyframes)
        yield CounterMetricFamily("sfu_relay_hellos_refused", "QUIC relay connections closed: their hello did not "
                                  "prove them a node of this cluster", value=(self.quic or {}).get("refused", 0))
        rec = self.recorder or {}
        yield CounterMetricFamily("sfu_recording_written_bytes", "Bytes written to recording files",
                                  value=rec.get("bytes_written", 0))
        yield CounterMetricFamily("sfu_recording_lost_packets", "RTP packets lost before muxing (given up)",
                                  value=rec.get("lost_packets", 0))
        yield GaugeMetricFamily("sfu_recording_lag_seconds", "Longest wait of a frame from arrival to the file",
                                value=rec.get("lag_seconds", 0.0))
        yield CounterMetricFamily("sfu_session_events", "Server-sent events queued to clients (reconnect, ...)",
                                  value=self.events_sent)
        yield CounterMetricFamily("sfu_simulcast_layers_paused", "Simulcast layers publishers were told nobody "
                                  "watches (those that can stop encoding them)", value=self.layers_paused)

        def family(cls: type, name: str, doc: str, key: str) -> Any:
            metric = cls(name, doc, labels=["shard"])
            for s in self.stats:
                metric.add_metric([str(s["shard"])], s.get(key, 0))
            return metric

        yield family(GaugeMetricFamily, "sfu_transports", "WebRTC transports", "transports")
        yield family(GaugeMetricFamily, "sfu_relays", "Relay transports to other shards", "relays")
        yield family(GaugeMetricFamily, "sfu_producers", "Producers (published tracks)", "producers")
        yield family(GaugeMetricFamily, "sfu_consumers", "Consumers (delivered tracks)", "consumers")
        yield family(CounterMetricFamily, "sfu_rtp_packets_received", "RTP packets received from publishers", "packets_in")
        yield family(CounterMetricFamily, "sfu_rtp_received_bytes", "SRTP bytes received from publishers", "bytes_in")
        yield family(CounterMetricFamily, "sfu_rtp_packets_sent", "RTP packets sent to viewers", "packets_out")
        yield family(CounterMetricFamily, "sfu_rtp_sent_bytes", "SRTP bytes sent to viewers", "bytes_out")
        yield family(CounterMetricFamily, "sfu_nacks_received", "RTCP NACK packets received from viewers", "nacks_received")
        yield family(CounterMetricFamily, "sfu_twcc_feedbacks", "transport-cc feedback packets read from viewers",
                     "twcc_feedbacks")
        yield family(CounterMetricFamily, "sfu_simulcast_layer_switches", "Simulcast layer changes decided for consumers",
                     "layer_switches")
        layers = GaugeMetricFamily("sfu_simulcast_consumers", "Simulcast consumers by current layer (0 = lowest)",
                                   labels=["shard", "layer"])
        for s in self.stats:
            for layer, count in sorted(s.get("consumers_by_layer", {}).items()):
                layers.add_metric([str(s["shard"]), layer], count)
        yield layers
        # Each shard keeps its own cumulative histogram; the server's is their sum.
        bounds: list[float] = []
        counts: list[int] = []
        total = 0.0
        for s in self.stats:
            hist = s.get("switch_seconds")
            if not hist:
                continue
            bounds = hist["bounds"]
            counts = [a + b for a, b in zip(counts or [0] * len(hist["counts"]), hist["counts"])]
            total += hist["sum"]
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, bounds), "+Inf"], counts or [0]):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("sfu_simulcast_switch_seconds",
                                    "From a layer decision to the switch on that layer's keyframe",
                                    buckets=buckets, sum_value=total)
        yield family(CounterMetricFamily, "sfu_nack_retransmissions", "Packets resent to answer NACKs", "nacks_served")
        keyframes = CounterMetricFamily("sfu_keyframe_requests", "Keyframe requests (PLI/FIR)",
                                        labels=["shard", "direction"])
        for s in self.stats:
            keyframes.add_metric([str(s["shard"]), "received"], s.get("keyframe_requests_received", 0))
            keyframes.add_metric([str(s["shard"]), "sent"], s.get("keyframe_requests_sent", 0))
            keyframes.add_metric([str(s["shard"]), "coalesced"], s.get("keyframe_requests_coalesced", 0))
        yield keyframes
        yield family(CounterMetricFamily, "sfu_bandwidth_probe_sent_bytes",
                     "Padding (RTX copies) sent so viewers' bandwidth estimates can reach a higher layer",
                     "probe_bytes")
        yield family(GaugeMetricFamily, "sfu_bandwidth_probing_consumers",
                     "Simulcast consumers being probed toward a higher layer", "probing_consumers")
        yield family(CounterMetricFamily, "sfu_keyframe_history_starts",
                     "Viewers started from the history's last keyframe, with no PLI", "keyframe_history_starts")
        drops = CounterMetricFamily("sfu_packets_dropped", "Datagrams dropped, by reason",
                                    labels=["shard", "reason"])
        for s in self.stats:
            for reason, count in sorted(s.get("drops", {}).items()):
                drops.add_metric([str(s["shard"]), reason], count)
        yield drops
        jitter = GaugeMetricFamily("sfu_producer_jitter_seconds", "RFC 3550 interarrival jitter",
                                   labels=["shard", "producer"])
        for s in self.stats:
            for producer, value in s.get("jitter_seconds", {}).items():
                jitter.add_metric([str(s["shard"]), producer], value)
        yield jitter
