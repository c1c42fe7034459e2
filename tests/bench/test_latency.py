"""The cross-site latency bench, briefly, in two network namespaces: what happened, not how fast.

Runs ``python -m bench.latency`` (two namespaces joined by a veth, a node in each, Redis in
A, the QUIC relay between them through the delay relay, 5 % loss each way by iptables; the
publisher in A, viewers in B, in a co-performance room with RFC 2198 RED) for a few
seconds and checks its last line: the JSON parses with the promised keys, viewers in B
received audio (with latency samples), the server asked the publisher for RED and sent
RED to the viewers that offered it (their PT, blocks renumbered to their opus PT), some
frames lost on the path were rebuilt from the next packet's redundant block, the viewer
without RED got the primary alone (its opus PT, no repair), the media crossed the veth
both ways through the delay relay, the loss rules dropped datagrams both ways, and
afterwards nothing of the run is left (namespaces, veths, iptables rules, processes).
Timing is the benchmark's business (bench/README.md), not this test's.

``BENCH_SERVER_SRC=DIR`` runs the nodes from another checkout's ``sfu`` (``--server-src``),
for a machine where the working tree's server is being edited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.netsites import leftovers  # noqa: E402

KEYS = ("added_p50_ms", "added_p99_ms", "max_gap_ms", "path_delay_ms", "path_loss", "viewers", "seconds",
        "video_added_p50_ms", "video_added_p99_ms", "audio_samples", "loss_after_repair", "path_datagrams",
        "path_dropped", "max_arrival_gap_ms", "red_repaired", "unrepaired", "audio_frames", "max_hole_ms", "red",
        "plain")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.mark.timeout(240)
def test_latency_bench_two_namespaces() -> None:
    assert os.geteuid() == 0, "the two-site bench needs root (ip netns, veth, iptables)"
    argv = [sys.executable, "-m", "bench.latency", "--seconds", "4", "--settle", "1", "--viewers", "2",
            "--loss", "0.05"]
    if os.environ.get("BENCH_SERVER_SRC"):
        argv += ["--server-src", os.environ["BENCH_SERVER_SRC"]]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    last = json.loads(run.stdout.strip().splitlines()[-1])

    for key in KEYS:
        assert key in last, key
    assert last["mode"] == "netns"
    assert last["path_delay_ms"] == 30.0 and last["path_loss"] == 0.05

    # Viewers in B got the publisher's audio from A, stamps and all.
    assert last["viewers_with_audio"] == 2
    assert last["audio_received"] > 0 and last["audio_samples"] > 0
    assert isinstance(last["added_p50_ms"], float) and isinstance(last["added_p99_ms"], float)
    assert last["decrypt_failures"] == 0 and last["misordered"] == 0
    assert isinstance(last["max_gap_ms"], float) and isinstance(last["max_arrival_gap_ms"], float)

    # RED: the room is a co-performance room, so the answer asked the publisher for RED
    # (it offered red after opus, as Chrome does) and it sent it.
    assert last["red"] is True and last["room"].startswith("choir-")
    assert last["publisher_red_pt"] is not None and last["publisher_red_packets"] > 0
    # The viewers that offered RED received RED only, under their RED PT, every block of
    # their opus PT, each packet with the previous frame in a redundant block.
    red_pts = [str(pt) for pt in last["viewer_red_pts"]]
    assert len(red_pts) == 1
    assert set(last["audio_pts"]) == set(red_pts), last["audio_pts"]
    assert last["red_malformed"] == 0 and last["red_blocks"] > 0
    assert red_pts[0] not in last["other_pts"]
    # At 5 % loss some frames whose packet was lost came from the next packet's copy.
    assert last["red_repaired"] > 0 and all(n > 0 for n in last["red_repaired_per_viewer"])
    assert last["audio_frames"] > 0
    assert last["red_repaired"] + last["unrepaired"] <= last["audio_frames"]
    # The viewer without RED beside them got the primary encoding alone, unrepaired.
    plain = last["plain"]
    assert last["plain_viewers"] == 1 and plain is not None
    assert set(plain["audio_pts"]) == {"111"}, plain["audio_pts"]
    assert not set(plain["other_pts"]) & set(red_pts)
    assert plain["red_blocks"] == 0 and plain["red_repaired"] == 0
    assert plain["audio_frames"] > 0 and plain["unrepaired"] > 0

    # The media crossed the veth, through the delay relay, both ways (media A->B; QUIC
    # acknowledgements and the viewers' feedback B->A), and the veth saw at least that.
    assert last["path_forward"] > 0 and last["path_back"] > 0
    assert last["veth_a_to_b_packets"] >= last["path_forward"] + last["path_dropped_a_to_b"]
    assert last["veth_b_to_a_packets"] >= last["path_back"] + last["path_dropped_b_to_a"]
    assert last["relay_late_us"]["n"] == last["path_datagrams"]

    # The configured loss dropped datagrams in each direction.
    assert last["path_dropped_a_to_b"] > 0 and last["path_dropped_b_to_a"] > 0
    assert last["path_dropped"] == last["path_dropped_a_to_b"] + last["path_dropped_b_to_a"]

    # Nothing of the run is left: namespaces, interfaces, iptables rules, processes.
    run_id = last["run_id"]
    assert leftovers(run_id) == []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert run_id not in names
    assert _processes_mentioning(f"netsites-{run_id}-") == []
