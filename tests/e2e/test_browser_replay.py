"""The built-in replay page (replay.html) in headless Chromium, over real recordings.

An aiortc publisher records about 6 s in one room (``?record=1``) while a second
one records about 2 s in another; the publishers leave and the rooms' recordings
are stopped. replay.html lists the recordings (newest first, ``?room=`` filtering),
plays a segment in its <video controls> from the segment's url, and seeks in it
(the server answers the browser's Range requests with 206). With auth on, the
page's ``?token=`` reaches both the listing API and the media URL. The page runs
in ``browser.mjs --control``; the test reads ``window.replayState``. Needs what
test_browser.py needs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp

import peers
from conftest import TEST_SECRET, SfuServer, start_server, stop_server
from sfu.auth import ADMIN_ROOM, issue_token
from test_browser_failover import BrowserControl, wait_for

RECORD_S = 6.0
STATE_JS = "JSON.parse(JSON.stringify(window.replayState))"  # its getters read the <video> now
# Set the <video>'s currentTime to 4 s; where it landed and how long that took.
SEEK_JS = """new Promise((resolve) => {
  const video = document.getElementById('video'), asked = performance.now();
  video.addEventListener('seeked', () => resolve({at: video.currentTime, ms: performance.now() - asked}), {once: true});
  video.currentTime = 4;
})"""
# Status of every response the page received for a recording's file (its media requests included).
MEDIA_STATUS_JS = ("performance.getEntriesByType('resource').filter((e) => e.name.includes('/recordings/'))"
                   ".map((e) => ({url: e.name, status: e.responseStatus}))")


async def api(base_url: str, method: str, path: str, token: str | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, base_url + path, headers=headers) as r:
            body = await r.json() if r.content_type == "application/json" else await r.read()
            return r.status, body, r.headers


async def record(server: SfuServer, room: str, seconds: float, token: str | None = None,
                 admin: str | None = None) -> None:
    """An aiortc publisher recorded for ``seconds``; then it leaves and the room's recording stops."""
    publisher = await peers.publish(server.base_url, room, query="record=1", token=token)
    try:
        await asyncio.sleep(seconds)
        status, _, _ = await api(server.base_url, "DELETE", publisher.location, token)
        assert status == 200, status
    finally:
        await publisher.close()
    status, body, _ = await api(server.base_url, "DELETE", f"/api/rooms/{room}/recording", admin)
    assert status == 200, body


async def state(browser: BrowserControl, page: str) -> dict[str, Any]:
    return await browser.call("eval", name=page, expression=STATE_JS)


async def listed(browser: BrowserControl, page: str) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        s = await state(browser, page)
        return s if s["status"] != "loading" else None

    return await wait_for(f"{page} listing recordings", ready, 10)


async def report(browser: BrowserControl, page: str) -> str:
    return json.dumps({"state": await state(browser, page), "log": await browser.call("log", name=page),
                       "media": await browser.call("eval", name=page, expression=MEDIA_STATUS_JS)}, indent=1)


async def plays(browser: BrowserControl, page: str, past_s: float, timeout_s: float = 10) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        s = await state(browser, page)
        if s["errors"]:
            raise AssertionError(f"the page failed: {s['errors']}\n{await report(browser, page)}")
        return s if s["currentTime"] > past_s and s["videoWidth"] > 0 else None

    try:
        return await wait_for(f"{page} playing past {past_s} s", check, timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await report(browser, page)}") from None


async def test_replay_page_lists_plays_and_seeks_a_recording(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--dev", "--recordings", str(tmp_path / "rec"))
    browser = None
    try:
        room, other = f"e2e-replay-{uuid.uuid4().hex[:8]}", f"e2e-other-{uuid.uuid4().hex[:8]}"

        async def other_later() -> None:
            await asyncio.sleep(1.0)  # started after the first: the newest
            await record(server, other, 2.0)

        await asyncio.gather(record(server, room, RECORD_S), other_later())
        _, listing, _ = await api(server.base_url, "GET", "/api/recordings")
        assert [r["room"] for r in listing] == [other, room], listing
        [recording] = [r for r in listing if r["room"] == room]
        [segment] = recording["segments"]
        assert segment["complete"], recording

        browser = await BrowserControl.start(server.base_url)
        # All rooms, newest first, with ?token= passed on (dev mode ignores it).
        await browser.call("open", name="all", page="replay.html", params={"token": "t0ken"})
        everything = await listed(browser, "all")
        assert everything["status"] == "ready" and not everything["errors"], everything
        assert [r["room"] for r in everything["recordings"]] == [other, room], everything
        shown = await browser.call("eval", name="all", expression=(
            "[...document.querySelectorAll('#recordings .recording .title')].map((t) => t.textContent)"))
        assert shown[0].startswith(other) and shown[1].startswith(room), shown

        # One room: its recording alone, as the API tells it, each segment marked.
        await browser.call("open", name="one", page="replay.html", params={"room": room})
        one = await listed(browser, "one")
        assert one["status"] == "ready" and not one["errors"], one
        [shown_recording] = one["recordings"]
        assert shown_recording["room"] == room and shown_recording["id"] == recording["id"]
        assert abs(shown_recording["duration"] - RECORD_S) <= 1.0, shown_recording
        assert shown_recording["tracks"] == ["audio/opus", "video/VP8"], shown_recording
        marks = await browser.call("eval", name="one", expression=(
            "[...document.querySelectorAll('.segment')].map((b) => b.textContent)"))
        assert len(marks) == 1 and "complete" in marks[0] and "lost packets" in marks[0], marks

        # Click the segment: the <video> plays it from its url.
        await browser.call("eval", name="one", expression="document.querySelector('.segment').click()")
        playing = await plays(browser, "one", 1.0)
        assert playing["playing"] == segment["url"], playing
        assert playing["videoWidth"] == peers.VIDEO_WIDTH and not playing["paused"], playing
        assert playing["duration"] is not None and abs(playing["duration"] - segment["duration"]) <= 1.0, playing

        # Seek to 4 s: it lands there at once and plays on.
        before = playing["currentTime"]
        landed = await browser.call("eval", name="one", expression=SEEK_JS)
        assert before < 3.0 and 4.0 <= landed["at"] < 4.25 and landed["ms"] < 2000, (before, landed)
        seeked = await plays(browser, "one", 4.5)
        assert seeked["seeks"] >= 1 and seeked["currentTime"] < segment["duration"] + 0.5, seeked
        media = await browser.call("eval", name="one", expression=MEDIA_STATUS_JS)
        print(f"media requests: {media}; seek landed at {landed['at']:.2f} s in {landed['ms']:.0f} ms; "
              f"played to {seeked['currentTime']:.2f} of {seeked['duration']:.2f} s")
        # Chromium's media requests are Range requests (bytes=0- and on), answered 206.
        assert media and all(m["status"] == 206 for m in media), media
        status, body, headers = await api(server.base_url, "GET", segment["url"],
                                          headers={"Range": f"bytes={segment['size'] // 2}-"})
        assert status == 206 and len(body) == segment["size"] - segment["size"] // 2, (status, headers)
        assert headers["Content-Range"] == f"bytes {segment['size'] // 2}-{segment['size'] - 1}/{segment['size']}"

        # The token the page was given rides on the media URL too.
        await browser.call("eval", name="all", expression=(
            f"document.querySelector('.recording[data-id=\"{recording['id']}\"] .segment').click()"))
        tokened = await plays(browser, "all", 1.0)
        assert tokened["playing"] == segment["url"] + "?token=t0ken", tokened

        for page in ("all", "one"):
            assert not (await browser.call("log", name=page))["errors"], await report(browser, page)
            assert not (await state(browser, page))["errors"], await report(browser, page)
    finally:
        if browser is not None:
            await browser.close()
        stop_server(server)


async def test_replay_page_passes_its_token_to_the_api_and_the_media(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--auth-secret", TEST_SECRET, "--recordings", str(tmp_path / "rec"))
    browser = None
    try:
        room = f"e2e-replay-{uuid.uuid4().hex[:8]}"
        admin = issue_token(TEST_SECRET, ADMIN_ROOM, admin=True)
        await record(server, room, 3.0, token=issue_token(TEST_SECRET, room, publish=True), admin=admin)
        viewer = issue_token(TEST_SECRET, room, subscribe=True)

        browser = await BrowserControl.start(server.base_url)
        await browser.call("open", name="none", page="replay.html", params={"room": room})
        refused = await listed(browser, "none")
        assert refused["status"] == "error" and "401" in refused["errors"][0], refused

        await browser.call("open", name="viewer", page="replay.html", params={"room": room, "token": viewer})
        shown = await listed(browser, "viewer")
        assert shown["status"] == "ready" and [r["room"] for r in shown["recordings"]] == [room], shown
        await browser.call("eval", name="viewer", expression="document.querySelector('.segment').click()")
        playing = await plays(browser, "viewer", 1.0)  # a <video src> sends no header: ?token= it is
        assert playing["playing"].endswith(f"?token={viewer}"), playing
        assert not (await browser.call("log", name="viewer"))["errors"], await report(browser, "viewer")
    finally:
        if browser is not None:
            await browser.close()
        stop_server(server)
