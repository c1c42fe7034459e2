"""Simulcast layers nobody watches are paused at the publisher, and come back on demand.

Headless Chromium publishes three layers with publish.html?simulcast=1 (which follows
its session's ``layers`` event). With nobody watching, the server keeps only the
layer a new viewer would start on (the middle one) and, after
``simulcast_pause_after_s``, tells the page the others are unwatched: the page stops
encoding them (``encodings[i].active = false``), and the browser's own stats show
those layers no longer sent. A viewer asking for the top layer (``?layer=h``) brings
it back: the page encodes it again and the viewer decodes full-size frames. Needs
what test_simulcast_browser.py needs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import peers
from conftest import SfuServer, start_server, stop_server
from simulcast_browser import LAYER_WIDTHS, start_publisher

PAUSE_AFTER_S = 3.0


@pytest.fixture
def pausing_server(tmp_path: Path) -> Iterator[SfuServer]:
    server = start_server(tmp_path, "--dev", env={"SFU_SIMULCAST_PAUSE_AFTER_S": str(PAUSE_AFTER_S)})
    yield server
    stop_server(server)


def sent_bytes(publisher: Any) -> dict[str, int]:
    return {rid: layer["bytesSent"] for rid, layer in publisher.layers().items()}


async def wait_until(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.mark.timeout(150)
async def test_unwatched_layers_pause_at_the_publisher_and_resume_for_a_viewer(pausing_server: SfuServer,
                                                                              tmp_path: Path) -> None:
    server = pausing_server
    publisher = await start_publisher(server, "pause", tmp_path)
    viewer = None
    try:
        def paused() -> list[str] | None:
            latest = publisher.stats[-1]["publish"] if publisher.stats else {}
            return latest.get("pausedLayers") or None

        got = await wait_until("the page pausing the unwatched layers", paused, PAUSE_AFTER_S + 10)
        assert sorted(got) == ["h", "l"], got
        # The browser stopped sending them (its own stats say so: inactive encodings, and
        # their byte counts stand still); the middle layer (where viewers start) goes on.
        await wait_until("the browser reporting them inactive", lambda: [
            rid for rid, layer in publisher.layers().items() if not layer["active"]] == ["l", "h"], 5)
        await asyncio.sleep(1.0)
        before = sent_bytes(publisher)
        await asyncio.sleep(2.0)
        after = sent_bytes(publisher)
        assert after["h"] - before["h"] < 2000 and after["l"] - before["l"] < 2000, (before, after)
        assert after["m"] - before["m"] > 20000, (before, after)

        # A viewer wants the top layer: it is sent again, and the viewer shows it.
        viewer = await peers.watch(server.base_url, "pause", query="layer=h")
        await wait_until("the top layer back at the publisher", lambda: "h" not in (paused() or []), 10)
        await wait_until("the viewer decoding the top layer",
                         lambda: any(w == LAYER_WIDTHS["h"] for w, _ in viewer.frame_sizes[-5:]), 15)
        assert server.metrics().get("sfu_simulcast_layers_paused_total", 0) >= 2
    finally:
        if viewer is not None:
            await viewer.close()
        await publisher.stop()
