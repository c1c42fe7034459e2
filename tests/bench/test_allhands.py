"""The all-hands benchmark end to end, tiny: a simulcast presenter, 20 low-layer viewers, a few seconds.

Runs ``bench.allhands.main`` in this process (the server and the load-generator
process are its children) and checks its last line: the JSON keys the README
promises, and that the viewers got media.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import allhands  # noqa: E402

KEYS = ("viewers", "join_rate_per_s", "p99_added_latency_ms", "kib_per_viewer", "bound_by", "max_viewers",
        "viewers_receiving", "consumers_per_shard", "loss", "udp_rcvbuf_errors", "udp_sndbuf_errors",
        "cpu_cores", "join_failures")


@pytest.mark.timeout(90)
def test_allhands_tiny_run(capsys: pytest.CaptureFixture[str]) -> None:
    result = allhands.main(["--quick", "--viewers", "20", "--rate", "40", "--procs", "1", "--settle", "1",
                            "--window", "3", "--clip", "small", "--deadline", "80"])
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result))
    for key in KEYS:
        assert key in last, key
    assert last["viewers"] == 20
    assert last["join_failures"] == 0
    assert last["viewers_receiving"] > 0  # audio and video both arrived in the window
    assert last["received_pkt_per_s"] > 0 and last["fps_per_viewer"] > 20
    assert last["decrypt_failures"] == 0 and last["misordered"] == 0
    assert last["p99_added_latency_ms"] is not None and last["latency_samples"] > 0
    assert sum(last["consumers_per_shard"].values()) >= 2 * 20  # audio + video per viewer, wherever placed
    assert last["layer"] == "l" and last["server_shards"] == 2
