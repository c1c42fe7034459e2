"""A co-performance room (``--performance-rooms``) in headless Chromium: two room pages
publish their fake camera and microphone, each decodes the other, and each shows the
estimated one-way delay from the other beside its name.

Chromium offers RED (RFC 2198) for Opus; in a co-performance room the answer lists it
first, so the pages send redundant audio: a lost packet is rebuilt from the next one,
no retransmission round trip. Chromium reports its audio codec as Opus either way, so
what shows RED is the payload: twice the bytes per audio packet, and an aiortc viewer
(which offers no RED) getting half of that, the primary only, and decoding it. Needs
what test_browser.py needs.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

import peers
from conftest import SfuServer, start_server, stop_server
from test_browser_failover import BrowserControl, wait_for

PAGES = {"ana": "Ana", "ben": "Ben"}
OTHER = {"ana": "ben", "ben": "ana"}


@pytest.fixture
def performance_server(tmp_path: Path) -> Iterator[SfuServer]:
    server = start_server(tmp_path, "--dev", "--performance-rooms", "choir-*")
    yield server
    stop_server(server)


async def test_two_room_pages_perform_with_red_audio_and_see_their_delay(performance_server: SfuServer) -> None:
    server, room = performance_server, f"choir-{uuid.uuid4().hex[:8]}"
    browser = await BrowserControl.start(server.base_url)
    viewer = None
    try:
        ids: dict[str, str] = {}
        for page, name in PAGES.items():
            await browser.call("open", name=page, page="room.html", params={"room": room, "name": name})

            async def joined(page: str = page) -> dict[str, Any] | None:
                state = await browser.stats(page)
                return state if state["joined"] else None

            ids[page] = (await wait_for(f"{page} joined", joined, 10))["participant"]
            await browser.call("eval", name=page, expression="document.getElementById('publish').click()")

        async def report() -> str:
            return json.dumps({page: await browser.stats(page) for page in PAGES}, indent=1)[:6000]

        for page in PAGES:
            async def performing(page: str = page) -> dict[str, Any] | None:
                state = await browser.stats(page)
                tiles = [t for t in state["tiles"] if t["participant"] == ids[OTHER[page]]]
                delay = state["delays"].get(ids[OTHER[page]], {})
                heard = (state["receiving"] or {}).get("audioSamplesReceived", 0)
                return state if tiles and tiles[0]["framesDecoded"] >= 10 and heard > 48000 and \
                    delay.get("one_way_ms") is not None else None

            try:
                state = await wait_for(f"{page} decoding {OTHER[page]} with a delay estimate", performing, 30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{await report()}") from None
            delay = state["delays"][ids[OTHER[page]]]
            # One node: no path between sites, only both pages' round trips to it.
            assert delay["relay_ms"] == 0 and delay["node"], delay
            assert state["you_ms"] is not None and 0 <= delay["one_way_ms"] < 100, delay
            shown = await browser.call("eval", name=page, expression=(
                f"document.querySelector('#participants li[data-participant=\"{ids[OTHER[page]]}\"] .tag').textContent"))
            # The page renders each `delays` event as it comes: a newer one may differ by a ms.
            assert re.search(r"\b\d+ ms to you", shown), shown
            print(f"{page}: {shown!r}")

        # RED: the pages send about twice the Opus payload per packet...
        sent = {page: (await browser.stats(page))["sending"] for page in PAGES}
        sent_per_packet = {p: s["audioBytesSent"] / max(1, s["audioPacketsSent"]) for p, s in sent.items()}
        # ... which a viewer without RED gets as its primary only, and decodes.
        viewer = await peers.watch(server.base_url, room, video=False)
        payloads: list[tuple[int, int]] = []  # (payload type, bytes) of each audio packet it gets
        for transceiver in viewer.pc.getTransceivers():
            handle = transceiver.receiver._handle_rtp_packet

            async def tap(packet: Any, arrival_time_ms: int, handle: Any = handle) -> None:
                payloads.append((packet.payload_type, len(packet.payload)))
                await handle(packet, arrival_time_ms=arrival_time_ms)

            transceiver.receiver._handle_rtp_packet = tap
        frames = viewer.audio_frames
        for _ in range(100):
            if viewer.audio_frames >= frames + 100:
                break
            await asyncio.sleep(0.1)
        assert viewer.audio_frames >= frames + 100 and len(payloads) >= 100, (viewer.audio_frames, len(payloads))
        opus_pt = {pt for pt, _ in payloads}
        assert len(opus_pt) == 1, opus_pt  # one payload type: its Opus, never the RED one
        got_per_packet = sum(n for _, n in payloads) / len(payloads)
        print(f"audio bytes per packet: sent as RED {sent_per_packet}, received stripped {got_per_packet:.1f}")
        for page, per_packet in sent_per_packet.items():
            assert 0.3 < got_per_packet / per_packet < 0.7, (sent_per_packet, got_per_packet)

        for page in PAGES:
            assert not (await browser.stats(page))["errors"], await report()
            assert not (await browser.call("log", name=page))["errors"], await report()
    finally:
        if viewer is not None:
            await viewer.close()
        await browser.close()
