"""loadtest/locustfile.py end to end, small: locust (its own process) against a dev server.

Locust monkey-patches the standard library with gevent when imported, so it never
runs in this process: the test starts ``python -m locust`` headless with a publisher,
viewers, room WebSocket churn users and an admin user, and reads its ``--csv`` output.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_server, stop_server

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"

USERS = 12
CHURN = 2
ADMIN = 1
PUBLISHERS = 1
VIEWERS = USERS - CHURN - ADMIN - PUBLISHERS


def read_stats(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


@pytest.mark.timeout(90)
def test_locust_run_with_viewers_publisher_churn_and_admin(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--dev")
    try:
        env = {**os.environ, "LOADTEST_CHURN_USERS": str(CHURN), "LOADTEST_ADMIN_USERS": str(ADMIN),
               "LOADTEST_ROOMS": str(PUBLISHERS), "LOADTEST_ADMIN_INTERVAL_S": "1",
               "LOADTEST_SUMMARY_JSON": str(tmp_path / "media.json")}
        run = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(USERS), "-r", "6",
             "-t", "20s", "--host", server.base_url, "--csv", str(tmp_path / "run"), "--only-summary"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=75)
    finally:
        stop_server(server)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]

    stats = read_stats(tmp_path / "run_stats.csv")
    aggregated = stats[("", "Aggregated")]
    assert int(aggregated["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()

    # Every viewer connected and saw a keyframe, once (they watch for the whole run).
    first_frame = stats[("WEBRTC", "first_frame")]
    assert int(first_frame["Request Count"]) == VIEWERS, first_frame
    assert 0 < float(first_frame["95%"]) < 5000
    assert int(stats[("WEBRTC", "connect")]["Request Count"]) == VIEWERS
    assert int(stats[("POST", "/whep/[room]")]["Request Count"]) >= VIEWERS
    assert int(stats[("WEBRTC", "publisher_connect")]["Request Count"]) == PUBLISHERS
    # Media flowed and was counted: loss windows (5 s each), latency samples of decrypted packets.
    assert int(stats[("WEBRTC", "loss_permille")]["Request Count"]) >= VIEWERS
    assert int(stats[("WEBRTC", "media_latency")]["Request Count"]) > 0
    media = json.loads((tmp_path / "media.json").read_text())
    assert media["sessions"] == VIEWERS
    assert media["video"] > 0 and media["audio"] > 0
    assert media["decrypt_failures"] == 0

    # The churn users went round the room API and the admin user polled.
    for step in ("connect", "join", "ping", "leave"):
        assert int(stats[("WS", step)]["Request Count"]) > 0, step
    assert int(stats[("GET", "/api/rooms")]["Request Count"]) > 0
