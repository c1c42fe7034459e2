"""Write the Grafana dashboard for the sfu_* metrics: ``python deploy/grafana/dashboard.py``.

The JSON beside this file (sfu-dashboard.json) is this script's output, kept in the
repository so it can be imported as is (Grafana: Dashboards > New > Import) and
shipped as a ConfigMap (kustomization.yaml here). tests/deploy checks that the file
is up to date and that every metric it queries is one the server exports
(sfu/signalling/metrics.py).

Queries assume the labels the Prometheus Operator adds (namespace, pod) and the
``node`` label the PodMonitor of the media nodes adds (deploy/k8s/base/monitoring.yaml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("sfu-dashboard.json")
SEL = 'namespace=~"$namespace", pod=~"$pod"'
RATE = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24


class Layout:
    """Panels left to right, a new line when the row is full; ids in order."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.line_h = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > WIDTH:
            self.x, self.y, self.line_h = 0, self.y + self.line_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.line_h = max(self.line_h, h)
        return pos

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.line_h = 0, self.y + self.line_h, 0
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1, "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = self._place(w, h)
        self.panels.append(panel)


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "range": True, "refId": ref}


def timeseries(title: str, description: str, targets: list[tuple[str, str]], unit: str = "short",
               stack: bool = False, min_zero: bool = True) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                              "showPoints": "never", "spanNulls": False,
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, expr: str, unit: str = "short",
         thresholds: list[tuple[float | None, str]] | None = None) -> dict[str, Any]:
    steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "targets": [target(expr, title, "A")],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


def panels() -> list[dict[str, Any]]:
    p = Layout()

    p.row("Overview")
    p.add(stat("Publishers", "WHIP sessions (sfu_peers{kind=\"whip\"})",
               f'sum(sfu_peers{{kind="whip", {SEL}}})'), 4, 4)
    p.add(stat("Viewers", "WHEP sessions (sfu_peers{kind=\"whep\"})",
               f'sum(sfu_peers{{kind="whep", {SEL}}})'), 4, 4)
    p.add(stat("Rooms", "Rooms with at least one session, summed over nodes (sfu_rooms)",
               f"sum(sfu_rooms{{{SEL}}})"), 4, 4)
    p.add(stat("Shards up", "Share of shards that answered the last scrape (sfu_shard_up)",
               f"sum(sfu_shard_up{{{SEL}}}) / count(sfu_shard_up{{{SEL}}})", "percentunit",
               [(None, "red"), (0.99, "green")]), 4, 4)
    p.add(stat("Shard restarts (1h)", "Shard processes replaced after dying or hanging (sfu_shard_restarts_total)",
               f"sum(increase(sfu_shard_restarts_total{{{SEL}}}[1h]))", "short",
               [(None, "green"), (1, "orange"), (5, "red")]), 4, 4)
    p.add(stat("Recordings", "Rooms being recorded (sfu_recordings_in_progress)",
               f"sum(sfu_recordings_in_progress{{{SEL}}})"), 4, 4)
    p.add(timeseries("Peers", "Live sessions by node and kind (whip: publishers, whep: viewers)",
                     [(f"sum by (pod, kind) (sfu_peers{{{SEL}}})", "{{pod}} {{kind}}")]), 12, 8)
    p.add(timeseries("Rooms", "Rooms with at least one session, by node",
                     [(f"sum by (pod) (sfu_rooms{{{SEL}}})", "{{pod}}")]), 12, 8)
    p.add(timeseries("Transports, producers, consumers", "Per node (sfu_transports, sfu_producers, sfu_consumers)",
                     [(f"sum by (pod) (sfu_transports{{{SEL}}})", "{{pod}} transports"),
                      (f"sum by (pod) (sfu_producers{{{SEL}}})", "{{pod}} producers"),
                      (f"sum by (pod) (sfu_consumers{{{SEL}}})", "{{pod}} consumers")]), 24, 8)

    p.row("Packets")
    p.add(timeseries("RTP packets in / out", "Packets per second received from publishers and sent to viewers",
                     [(f"sum by (pod) (rate(sfu_rtp_packets_received_total{{{SEL}}}[{RATE}]))", "{{pod}} in"),
                      (f"sum by (pod) (rate(sfu_rtp_packets_sent_total{{{SEL}}}[{RATE}]))", "{{pod}} out")],
                     "pps"), 12, 8)
    p.add(timeseries("Bitrate in / out", "SRTP bits per second from publishers and to viewers",
                     [(f"8 * sum by (pod) (rate(sfu_rtp_received_bytes_total{{{SEL}}}[{RATE}]))", "{{pod}} in"),
                      (f"8 * sum by (pod) (rate(sfu_rtp_sent_bytes_total{{{SEL}}}[{RATE}]))", "{{pod}} out")],
                     "bps"), 12, 8)
    p.add(timeseries("Packets per shard out", "Packets per second sent, by node and shard",
                     [(f"sum by (pod, shard) (rate(sfu_rtp_packets_sent_total{{{SEL}}}[{RATE}]))",
                       "{{pod}}/{{shard}}")], "pps"), 12, 8)
    p.add(timeseries("Drops by reason", "Datagrams dropped per second, by reason (sfu_packets_dropped_total)",
                     [(f"sum by (reason) (rate(sfu_packets_dropped_total{{{SEL}}}[{RATE}]))", "{{reason}}")],
                     "pps", stack=True), 12, 8)
    p.add(timeseries("NACKs", "NACK packets from viewers and packets resent to answer them, per second",
                     [(f"sum by (pod) (rate(sfu_nacks_received_total{{{SEL}}}[{RATE}]))", "{{pod}} NACKs received"),
                      (f"sum by (pod) (rate(sfu_nack_retransmissions_total{{{SEL}}}[{RATE}]))",
                       "{{pod}} retransmissions")], "pps"), 12, 8)
    p.add(timeseries("Keyframe requests", "PLI/FIR per second: received from viewers, sent to publishers, "
                     "coalesced; and viewers started from history with no PLI",
                     [(f"sum by (direction) (rate(sfu_keyframe_requests_total{{{SEL}}}[{RATE}]))", "{{direction}}"),
                      (f"sum(rate(sfu_keyframe_history_starts_total{{{SEL}}}[{RATE}]))", "started from history")],
                     "reqps"), 12, 8)
    p.add(timeseries("Publisher jitter (worst)", "Highest RFC 3550 interarrival jitter of a producer, by node",
                     [(f"max by (pod) (sfu_producer_jitter_seconds{{{SEL}}})", "{{pod}}")], "s"), 12, 8)
    p.add(timeseries("Session events", "Server-sent events queued to clients per second (reconnect, ...)",
                     [(f"sum by (pod) (rate(sfu_session_events_total{{{SEL}}}[{RATE}]))", "{{pod}}")]), 12, 8)

    p.row("Shards")
    p.add(timeseries("Shard up", "1 when the shard answered the scrape (sfu_shard_up)",
                     [(f"sum by (pod, shard) (sfu_shard_up{{{SEL}}})", "{{pod}}/{{shard}}")]), 8, 8)
    p.add(timeseries("Shard restarts", "Shard processes replaced after dying or hanging, per 5 minutes",
                     [(f"sum by (pod, shard) (increase(sfu_shard_restarts_total{{{SEL}}}[5m]))",
                       "{{pod}}/{{shard}}")]), 8, 8)
    p.add(timeseries("Shard drains", "Shards drained (peers moved, then restarted fresh), per 5 minutes",
                     [(f"sum by (pod) (increase(sfu_shard_drains_total{{{SEL}}}[5m]))", "{{pod}}")]), 8, 8)

    p.row("Simulcast and bandwidth")
    p.add(timeseries("Simulcast consumers by layer", "Viewers' current layer (0 = lowest)",
                     [(f"sum by (layer) (sfu_simulcast_consumers{{{SEL}}})", "layer {{layer}}")],
                     stack=True), 8, 8)
    p.add(timeseries("Layer switches", "Simulcast layer changes decided per second",
                     [(f"sum by (pod) (rate(sfu_simulcast_layer_switches_total{{{SEL}}}[{RATE}]))", "{{pod}}")],
                     "ops"), 8, 8)
    p.add(timeseries("Layer switch time", "From a layer decision to the switch on that layer's keyframe "
                     "(sfu_simulcast_switch_seconds)",
                     [(f"histogram_quantile({q}, sum by (le) "
                       f"(rate(sfu_simulcast_switch_seconds_bucket{{{SEL}}}[{RATE}])))", f"p{int(q * 100)}")
                      for q in (0.5, 0.95, 0.99)], "s"), 8, 8)
    p.add(timeseries("Bandwidth probing", "Consumers being probed toward a higher layer, and the padding sent",
                     [(f"sum by (pod) (sfu_bandwidth_probing_consumers{{{SEL}}})", "{{pod}} probing consumers")]),
          12, 8)
    p.add(timeseries("Probe bitrate", "RTX padding sent so viewers' estimates can reach a higher layer",
                     [(f"8 * sum by (pod) (rate(sfu_bandwidth_probe_sent_bytes_total{{{SEL}}}[{RATE}]))",
                       "{{pod}}")], "bps"), 12, 8)

    p.row("Relays")
    p.add(timeseries("Relay transports", "Relay transports to other shards (sfu_relays)",
                     [(f"sum by (pod, shard) (sfu_relays{{{SEL}}})", "{{pod}}/{{shard}}")]), 12, 8)
    p.add(timeseries("Relay copies", "Tracks copied to another shard through the relay, per 5 minutes",
                     [(f"sum by (pod) (increase(sfu_relay_copies_total{{{SEL}}}[5m]))", "{{pod}}")]), 12, 8)
    p.add(timeseries("QUIC relay RTT", "Round-trip time to each peer node (relay_transport quic)",
                     [(f"max by (pod, peer) (sfu_relay_rtt_ms{{{SEL}}})", "{{pod}} → {{peer}}")], "ms"), 6, 8)
    p.add(timeseries("QUIC relay datagrams", "Datagrams per second to and from each peer node",
                     [(f"sum by (pod, peer, direction) (rate(sfu_relay_datagrams_total{{{SEL}}}[{RATE}]))",
                       "{{pod}} {{direction}} {{peer}}")], "pps"), 6, 8)
    p.add(timeseries("QUIC relay losses", "RTP packets missing on flows from each peer node, per second",
                     [(f"sum by (pod, peer) (rate(sfu_relay_lost_packets_total{{{SEL}}}[{RATE}]))",
                       "{{pod}} ← {{peer}}")], "pps"), 6, 8)
    p.add(timeseries("QUIC relay redials", "Relay connections dialled again, per 5 minutes",
                     [(f"sum by (pod, peer) (increase(sfu_relay_reconnects_total{{{SEL}}}[5m]))",
                       "{{pod}} → {{peer}}")]), 6, 8)

    p.row("Recordings")
    p.add(timeseries("Recordings in progress", "Rooms being recorded, by node",
                     [(f"sum by (pod) (sfu_recordings_in_progress{{{SEL}}})", "{{pod}}")]), 8, 8)
    p.add(timeseries("Recording write rate", "Bytes written to recording files per second",
                     [(f"sum by (pod) (rate(sfu_recording_written_bytes_total{{{SEL}}}[{RATE}]))", "{{pod}}")],
                     "Bps"), 8, 8)
    p.add(timeseries("Recording lag", "Longest wait of a frame from arrival to the file",
                     [(f"max by (pod) (sfu_recording_lag_seconds{{{SEL}}})", "{{pod}}")], "s"), 8, 8)
    p.add(timeseries("Recording losses", "RTP packets given up before muxing, per second",
                     [(f"sum by (pod) (rate(sfu_recording_lost_packets_total{{{SEL}}}[{RATE}]))", "{{pod}}")],
                     "pps"), 12, 8)
    p.add(timeseries("Recorder restarts", "Recorder processes replaced after dying, per 5 minutes",
                     [(f"sum by (pod) (increase(sfu_recorder_restarts_total{{{SEL}}}[5m]))", "{{pod}}")]), 12, 8)
    return p.panels


def dashboard() -> dict[str, Any]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "definition": query, "query": {"query": query, "refId": f"{name}-query"},
                "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}

    return {
        "title": "SFU",
        "uid": "sfu-overview",
        "description": "sfu_* metrics of the signalling replicas and media nodes (deploy/grafana/dashboard.py)",
        "tags": ["sfu", "webrtc"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            query_var("namespace", "Namespace", "label_values(sfu_shard_up, namespace)"),
            query_var("pod", "Pod", 'label_values(sfu_shard_up{namespace=~"$namespace"}, pod)'),
        ]},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
