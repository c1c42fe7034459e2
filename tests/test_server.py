"""``sfu serve`` as a process: it says where it listens, and SIGTERM frees everything within 2 s."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import peers
from conftest import start_server


async def test_sigterm_closes_peers_and_frees_ports_within_two_seconds(tmp_path):
    server = start_server(tmp_path, "--dev")
    publisher = await peers.publish(server.base_url, "bye")
    viewer = await peers.watch(server.base_url, "bye")
    try:
        await viewer.wait_frames(5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while server.process.poll() is None:
            assert time.monotonic() - started < 2.0, "server still running 2 s after SIGTERM"
            await asyncio.sleep(0.02)
        assert server.process.returncode == 0
        # Peers were told: the viewer's tracks end (RTCP BYE), not just go quiet.
        await asyncio.wait_for(viewer.ended["video"].wait(), 3)
        # Both ports can be bound again at once.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", server.http_port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", server.rtc_port))
    finally:
        await viewer.close()
        await publisher.close()
    events = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    listening = [e for e in events if e["event"] == "listening"]
    assert len(listening) == 1
    assert listening[0]["http"] == server.base_url
    assert listening[0]["rtc_ports"] == [server.rtc_port]
    closed = [e for e in events if e["event"] == "transport closed"]
    assert {e["room"] for e in closed} == {"bye"} and all(e["peer"] for e in closed)


def test_dev_mode_refuses_public_address(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "sfu", "serve", "--dev", "--http-host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_busy_port_is_reported_not_hung(tmp_path):
    import subprocess
    import sys
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "sfu", "serve", "--dev", "--http-port", "0", "--rtc-port", str(port)],
            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot start" in result.stderr + result.stdout
