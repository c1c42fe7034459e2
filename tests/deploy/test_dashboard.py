"""The Grafana dashboard (deploy/grafana): up to date with its generator, every query
parses as PromQL, queries only metrics the server exports (sfu/signalling/metrics.py)
and uses them as their type allows, and covers the families an operator needs."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Iterator

import promql_parser
import pytest
from prometheus_client import CollectorRegistry

from sfu.signalling.metrics import ShardCollector

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "sfu-dashboard.json"

_spec = importlib.util.spec_from_file_location("sfu_dashboard", ROOT / "deploy" / "grafana" / "dashboard.py")
assert _spec is not None and _spec.loader is not None
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)

# What the dashboard must show (the families of sfu/signalling/metrics.py when it was made).
REQUIRED = {
    "sfu_peers", "sfu_rooms", "sfu_rtp_packets_received_total", "sfu_rtp_packets_sent_total",
    "sfu_rtp_received_bytes_total", "sfu_rtp_sent_bytes_total", "sfu_packets_dropped_total",
    "sfu_nacks_received_total", "sfu_nack_retransmissions_total", "sfu_keyframe_requests_total",
    "sfu_keyframe_history_starts_total", "sfu_shard_up", "sfu_shard_restarts_total", "sfu_shard_drains_total",
    "sfu_simulcast_consumers", "sfu_simulcast_layer_switches_total", "sfu_simulcast_switch_seconds_bucket",
    "sfu_bandwidth_probing_consumers", "sfu_bandwidth_probe_sent_bytes_total", "sfu_relays",
    "sfu_relay_copies_total", "sfu_recordings_in_progress", "sfu_recording_written_bytes_total",
    "sfu_recording_lost_packets_total", "sfu_recording_lag_seconds", "sfu_recorder_restarts_total",
    "sfu_transports", "sfu_producers", "sfu_consumers", "sfu_session_events_total", "sfu_producer_jitter_seconds",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def exported() -> dict[str, str]:
    """Sample name → family type, from the server's collector fed one shard's stats."""
    collector = ShardCollector()
    collector.shard_ids = [0]
    collector.stats = [{"shard": 0, "drops": {"rtp_truncated": 1}, "consumers_by_layer": {"0": 1},
                        "jitter_seconds": {"p": 0.01},
                        "switch_seconds": {"bounds": [0.1, 1.0], "counts": [1, 0, 0], "sum": 0.05}}]
    if hasattr(collector, "quic"):  # the QUIC relay's figures per peer node
        collector.quic = {"peers": {"node-b": {"rtt_ms": 2.0, "sent": 1, "received": 1, "lost": 0,
                                               "reconnects": 0}}}
    registry = CollectorRegistry()
    registry.register(collector)
    return {sample.name: family.type for family in registry.collect() for sample in family.samples}


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def _parse(expr: str) -> Any:
    concrete = expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$pod", ".*")
    return promql_parser.parse(concrete)


def _walk(node: Any, inside: tuple[str, ...] = ()) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(metric name, enclosing function names) for every selector in the expression."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        yield node.name, inside
        return
    if kind == "Call":
        inside = (*inside, node.func.name)
        for arg in node.args.args if hasattr(node.args, "args") else node.args:
            yield from _walk(arg, inside)
        return
    for attr in ("expr", "lhs", "rhs", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None:
            yield from _walk(child, inside)


def test_the_file_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == generator.render(), "run: python deploy/grafana/dashboard.py"


def test_every_query_parses_and_uses_exported_metrics(dashboard) -> None:
    types = exported()
    used = set()
    for title, expr in expressions(dashboard):
        for name, functions in _walk(_parse(expr)):
            assert name in types, f"{title}: {name} is not exported by the server"
            used.add(name)
            counter = types[name] in ("counter", "histogram")
            rated = bool({"rate", "increase", "irate"} & set(functions))
            assert counter == rated, f"{title}: {name} ({types[name]}) {'needs' if counter else 'must not have'} rate()"
            assert 'namespace=~"$namespace"' in expr and 'pod=~"$pod"' in expr, title
    assert REQUIRED <= used, sorted(REQUIRED - used)


def test_a_bad_query_does_not_parse() -> None:
    with pytest.raises(ValueError):
        _parse("sum(rate(sfu_rtp_packets_sent_total[$__rate_interval])")


def test_layout(dashboard) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Packets", "Shards", "Simulcast and bandwidth", "Relays", "Recordings"]
    assert re.fullmatch(r"[a-z0-9-]+", dashboard["uid"])
