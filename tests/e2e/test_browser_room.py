"""The built-in room page (room.html, the room WebSocket API) in headless Chromium.

Two pages join one room and publish their fake camera and microphone: each shows
the other's video in a tile labelled with the other's participant id, decoding
(its framesDecoded grows), and both list the same participants. Then an aiortc
participant (peers.RoomClient) publishes a loud tone: both pages show it as the
active speaker. The pages run in ``browser.mjs --control`` (a browser context
each); the test reads each page's ``window.roomState`` through ``sfuStats()``.
Needs what test_browser.py needs.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import peers
from conftest import SfuServer
from test_browser_failover import BrowserControl, wait_for

PAGES = {"ana": "Ana", "ben": "Ben"}
LOUD_AMPLITUDE = 20000  # about -4 dBov: louder than Chromium's fake microphone


async def room_state(browser: BrowserControl, page: str) -> dict[str, Any]:
    return await browser.stats(page)  # room.html's sfuStats(): roomState with fresh tile stats


async def report(browser: BrowserControl) -> str:
    out = {}
    for page in PAGES:
        out[page] = {"state": await room_state(browser, page), "log": await browser.call("log", name=page),
                     "activity": await browser.call(
                         "eval", name=page,
                         expression="[...document.querySelectorAll('#log li')].map((item) => item.textContent)")}
    return json.dumps(out, indent=1)


async def test_two_room_pages_publish_see_each_other_and_the_active_speaker(sfu_server: SfuServer) -> None:
    server, room = sfu_server, f"e2e-room-{uuid.uuid4().hex[:8]}"
    browser = await BrowserControl.start(server.base_url)
    loud = peers.RoomClient(server.base_url, room)
    try:
        ids: dict[str, str] = {}
        for page, name in PAGES.items():
            await browser.call("open", name=page, page="room.html", params={"room": room, "name": name})

            async def joined(page: str = page) -> dict[str, Any] | None:
                state = await room_state(browser, page)
                return state if state["joined"] else None

            ids[page] = (await wait_for(f"{page} joined", joined, 10))["participant"]
            await browser.call("eval", name=page, expression="document.getElementById('publish').click()")

        other = {"ana": "ben", "ben": "ana"}

        async def tile_of_other(page: str) -> dict[str, Any] | None:
            state = await room_state(browser, page)
            tiles = [t for t in state["tiles"] if t["participant"] == ids[other[page]]]
            return tiles[0] if state["publishing"] and tiles and tiles[0]["framesDecoded"] >= 10 else None

        first: dict[str, dict[str, Any]] = {}
        for page in PAGES:
            try:
                first[page] = await wait_for(f"{page} decoding {other[page]}'s tile", lambda: tile_of_other(page), 20)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{await report(browser)}") from None
        for page in PAGES:  # still decoding: the count grows
            later = await wait_for(
                f"{page}'s tile decoding on", lambda: _grown(tile_of_other(page), first[page]["framesDecoded"] + 15),
                10)
            assert later["name"] == PAGES[other[page]], later
            # The tile in the page says whose it is.
            label = await browser.call("eval", name=page, expression=(
                f"document.querySelector('.tile[data-participant=\"{ids[other[page]]}\"] .label').textContent"))
            assert label == PAGES[other[page]], label

        states = {page: await room_state(browser, page) for page in PAGES}
        for page, state in states.items():
            assert state["participant"] == ids[page]
            assert {p["id"]: p["name"] for p in state["participants"]} == {ids[p]: n for p, n in PAGES.items()}, state
            assert [p["id"] for p in state["participants"] if p["self"]] == [ids[page]], state
            assert all(p["publishing"] for p in state["participants"]), state
            assert [t["participant"] for t in state["tiles"]] == [ids[other[page]]], state

        # A third participant speaks loudly: both pages show it as the active speaker.
        await loud.join("Loud")
        published, _ = await loud.publish(amplitude=LOUD_AMPLITUDE)
        assert published["type"] == "published", published
        for page in PAGES:
            async def speaker_shown(page: str = page) -> dict[str, Any] | None:
                state = await room_state(browser, page)
                return state if state["speaker"] == loud.participant else None

            try:
                state = await wait_for(f"{page} showing Loud as the speaker", speaker_shown, 15)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{await report(browser)}") from None
            assert {p["id"] for p in state["participants"]} == {*ids.values(), loud.participant}, state
            highlighted = await browser.call("eval", name=page, expression=(
                "[...document.querySelectorAll('#participants li.speaking')].map((li) => li.dataset.participant)"))
            assert highlighted == [loud.participant], highlighted

        # And its video in a tile of its own, the other page's still there.
        for page in PAGES:
            async def both_tiles(page: str = page) -> dict[str, Any] | None:
                state = await room_state(browser, page)
                shown = {t["participant"]: t for t in state["tiles"] if t["framesDecoded"] > 0}
                return state if set(shown) == {ids[other[page]], loud.participant} else None

            state = await wait_for(f"{page} showing both others", both_tiles, 20)
            loud_tile = await browser.call("eval", name=page, expression=(
                f"document.querySelector('.tile[data-participant=\"{loud.participant}\"]').classList"
                ".contains('speaking')"))
            assert loud_tile, state

        for page in PAGES:
            state = await room_state(browser, page)
            assert not state["errors"], await report(browser)
            assert not (await browser.call("log", name=page))["errors"], await report(browser)
    finally:
        await loud.close()
        await browser.close()


async def _grown(tile: Any, frames: int) -> dict[str, Any] | None:
    value = await tile
    return value if value and value["framesDecoded"] >= frames else None
