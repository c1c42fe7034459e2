"""The built-in pages follow the server's session events when a shard drains or dies.

Two shards, one viewer per shard (``SFU_SHARD_MAX_VIEWERS=1``), an aiortc
publisher (``peers.publish``) and two watch pages in headless Chromium: the first
lands on the publisher's shard, the second on the other one through the
inter-shard relay. Draining the second page's shard must move it make-before-break
(no freeze over a second); killing that shard with SIGKILL must bring its video
back within 3 s. A publish page whose shard drains or dies re-publishes the same
tracks on a new connection; a watch page told ``inactive`` waits for ``active``
and then watches again at once.

The pages run in ``browser.mjs --control`` (one browser context each), which
samples every page's decoded-frame total (``framesDecodedTotal``: across the
page's moves) every 100 ms and records the time of each frame its <video>
presents (requestVideoFrameCallback). A freeze is the longest time the decoded
total did not grow, at that 100 ms resolution; presented-frame gaps are printed
beside it (run with -s for the figures). Needs what test_browser.py needs.

Not asserted, printed: what a viewer of a re-publishing publisher sees. When the
publisher's shard drains, the viewer moves first (onto copies of the old
publisher's tracks), then the publisher moves and DELETEs its old session: the
viewer's tracks end, and the server sends it no event (the room never became
inactive), so only the page's 6 s stall fallback brings it back (measured
6.7-7.9 s without video).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import aiohttp
import pytest

import peers
from chromium import E2E_DIR, missing_browser_dependencies
from conftest import SfuServer, start_server, stop_server

BROWSER_SCRIPT = E2E_DIR / "browser.mjs"
SAMPLE_INTERVAL_MS = 100
MAX_FREEZE_S = 1.0  # a drain moves a viewer make-before-break: no freeze longer than this
KILL_VIDEO_AGAIN_S = 3.0  # after kill -9 of its shard, a viewer shows video again within this
CALL_TIMEOUT_S = 30.0
ACTIVITY_JS = "[...document.querySelectorAll('#log li')].map((item) => item.textContent)"


def check_dependencies() -> None:
    missing = missing_browser_dependencies()
    if missing:
        pytest.fail("browser test dependencies missing: " + "; ".join(missing), pytrace=False)


class BrowserControl:
    """``node browser.mjs <base_url> --control``: pages that play while the test acts on the server."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._ids = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, base_url: str) -> BrowserControl:
        check_dependencies()
        process = await asyncio.create_subprocess_exec(
            "node", str(BROWSER_SCRIPT), base_url, "--control", cwd=E2E_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        control = cls(process)
        try:
            await asyncio.wait_for(asyncio.shield(control._ready), CALL_TIMEOUT_S)
        except asyncio.TimeoutError:
            await control.close()
            pytest.fail(f"browser.mjs --control did not start: {await control.stderr()}")
        return control

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if message.get("event") == "ready" and not self._ready.done():
                self._ready.set_result(None)
            future = self._waiting.pop(message.get("id"), None) if "id" in message else None
            if future is not None and not future.done():
                future.set_result(message)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("browser.mjs exited"))
        if not self._ready.done():
            self._ready.set_exception(RuntimeError("browser.mjs exited before it was ready"))

    async def call(self, op: str, **args: Any) -> Any:
        assert self.process.stdin is not None
        self._ids += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._ids] = future
        self.process.stdin.write((json.dumps({"id": self._ids, "op": op, **args}) + "\n").encode())
        await self.process.stdin.drain()
        answer = await asyncio.wait_for(future, CALL_TIMEOUT_S)
        if not answer["ok"]:
            raise RuntimeError(f"browser.mjs {op} {args}: {answer['error']}")
        return answer["value"]

    async def stats(self, name: str) -> dict[str, Any]:
        return await self.call("stats", name=name)

    async def stderr(self) -> str:
        if self.process.stderr is None or self.process.returncode is None:
            return ""
        return (await self.process.stderr.read()).decode(errors="replace")[-3000:]

    async def close(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()


async def api(base_url: str, path: str, method: str = "GET") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, base_url + path) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()


async def wait_for(what: str, check: Callable[[], Awaitable[Any]], timeout_s: float, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s (last: {value!r})")
        await asyncio.sleep(interval_s)


async def decoding(browser: BrowserControl, name: str, frames: int = 10, timeout_s: float = 20.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        s = await browser.stats(name)
        return s if s.get("framesDecoded", 0) >= frames and s.get("connectionState") == "connected" else None

    try:
        return await wait_for(f"{name} decoding video", check, timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{json.dumps(await browser.call('log', name=name), indent=1)}") from None


@dataclass
class Playback:
    """A page's samples: decoded-frame totals every 100 ms and presented-frame times (seconds)."""

    samples: list[dict[str, Any]]
    presented: list[float]

    @classmethod
    async def of(cls, browser: BrowserControl, name: str) -> Playback:
        raw = await browser.call("samples", name=name)
        samples = [{**s, "t": s["t"] / 1000} for s in raw["samples"]]
        return cls(samples, [t / 1000 for t in raw["presented"]])

    def decoded_at(self, t: float) -> int:
        return max((s["decoded"] for s in self.samples if s["t"] <= t), default=0)

    def longest_freeze(self, since: float, until: float) -> float:
        """Longest time within [since, until] in which the decoded total reached no new high."""
        rises, best = [], None
        for s in self.samples:
            if best is None or s["decoded"] > best:
                best = s["decoded"]
                rises.append(s["t"])
        marks = [since, *[t for t in rises if since < t < until], until]
        before = [t for t in rises if t <= since]
        if before:
            marks[0] = before[-1]
        return max(b - a for a, b in zip(marks, marks[1:]))

    def longest_presented_gap(self, since: float, until: float) -> float:
        times = [t for t in self.presented if since <= t <= until]
        earlier = [t for t in self.presented if t < since]
        times = earlier[-1:] + times
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))

    def first_move_at(self) -> float | None:
        return next((s["t"] for s in self.samples if s["moves"] >= 1), None)

    def statuses(self, since: float) -> list[str]:
        out: list[str] = []
        for s in self.samples:
            if s["t"] >= since and (not out or out[-1] != s["status"]):
                out.append(s["status"])
        return out


@pytest.fixture
def two_shards(tmp_path: Path) -> Iterator[SfuServer]:
    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2", "SFU_SHARD_MAX_VIEWERS": "1"})
    yield server
    stop_server(server)


async def spilled_watch_pages(server: SfuServer, browser: BrowserControl, room: str) -> tuple[int, int, str]:
    """Two watch pages of ``room``: "home" on the publisher's shard, "away" on the other one.

    Returns (home shard, away shard, the away page's resource path).
    """
    await browser.call("open", name="home", page="watch.html", params={"room": room})
    home_stats = await decoding(browser, "home")
    await browser.call("open", name="away", page="watch.html", params={"room": room})
    away_stats = await decoding(browser, "away")
    status, info = await api(server.base_url, f"/api/rooms/{room}")
    assert status == 200, info
    shard_of = {p["location"]: p["shard"] for p in info["peers"]}
    home = info["shard"]
    assert shard_of.get(home_stats["resource"]) == home, (home_stats["resource"], info)
    assert shard_of.get(away_stats["resource"]) == 1 - home, (away_stats["resource"], info)
    for name in ("home", "away"):
        assert await browser.call("sample", name=name, intervalMs=SAMPLE_INTERVAL_MS)
    # Both pages follow their session's events before anything happens to a shard.
    await wait_for("both pages following their events",
                   lambda: _all_live(browser, ("home", "away")), 10)
    return home, 1 - home, away_stats["resource"]


async def _all_live(browser: BrowserControl, names: tuple[str, ...]) -> bool:
    return all([(await browser.stats(name)).get("eventsLive") for name in names])


async def shard_pids(server: SfuServer) -> dict[int, int]:
    _, shards = await api(server.base_url, "/api/shards")
    return {s["id"]: s["pid"] for s in shards}


async def text_of(browser: BrowserControl, name: str, element_id: str) -> str:
    return await browser.call("eval", name=name, expression=f"document.getElementById({element_id!r}).textContent")


async def page_report(browser: BrowserControl, name: str) -> str:
    return json.dumps({"stats": await browser.stats(name), "log": await browser.call("log", name=name)}, indent=1)


async def test_watch_page_moves_make_before_break_when_its_shard_drains(two_shards: SfuServer) -> None:
    server, room = two_shards, f"e2e-drain-{uuid.uuid4().hex[:8]}"
    publisher = await peers.publish(server.base_url, room)
    browser = await BrowserControl.start(server.base_url)
    try:
        home, away, old_resource = await spilled_watch_pages(server, browser, room)
        await asyncio.sleep(1.5)  # some steady playback before the drain
        drained_at = time.time()
        status, body = await api(server.base_url, f"/api/shards/{away}/drain", "POST")
        assert status == 202 and body["peers"] == 1, body

        async def moved() -> dict[str, Any] | None:
            s = await browser.stats("away")
            return s if s["moves"] >= 1 and not s["moving"] else None

        try:
            after = await wait_for("the away page moved", moved, 10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await page_report(browser, 'away')}") from None
        await asyncio.sleep(2.0)  # playback after the move
        until = time.time()
        away_play = await Playback.of(browser, "away")
        home_play = await Playback.of(browser, "home")
        final = await browser.stats("away")
        report = await page_report(browser, "away")

        freeze = away_play.longest_freeze(drained_at - 0.5, until)
        presented_gap = away_play.longest_presented_gap(drained_at - 0.5, until)
        home_freeze = home_play.longest_freeze(drained_at - 0.5, until)
        move_at = away_play.first_move_at()
        print(f"drain: the page was told to move and showed the new session's first frame in "
              f"{after['lastMoveMs']} ms (page's own figure); sampled move at "
              f"{(move_at - drained_at) if move_at else float('nan'):.2f} s after the drain request; "
              f"longest freeze (decoded frames, 100 ms samples) {freeze:.2f} s; "
              f"longest gap between presented frames {presented_gap:.3f} s; "
              f"home page's longest freeze {home_freeze:.2f} s; statuses {away_play.statuses(drained_at)}")

        assert after["lastMoveReason"] and "drain" in after["lastMoveReason"], report
        assert "reconnect" in after["events"], report
        assert freeze <= MAX_FREEZE_S, f"froze {freeze:.2f} s\n{report}"
        assert away_play.decoded_at(until) >= away_play.decoded_at(drained_at) + 30, report  # 2 s+ at 30 fps
        assert home_freeze <= MAX_FREEZE_S, home_freeze
        assert final["status"] == "live" and final["connectionState"] == "connected", report
        assert final["resource"] != old_resource, report
        assert final["eventsLive"], report  # it follows the new session's events
        # The page shows the move in its status line and moves counter.
        moves_text = await text_of(browser, "away", "moves")
        assert moves_text.startswith("1 ·") and "drain" in moves_text, moves_text
        # The old session was DELETEd; the new one is on the shard that stayed up.
        _, info = await api(server.base_url, f"/api/rooms/{room}")
        shard_of = {p["location"]: p["shard"] for p in info["peers"]}
        assert old_resource not in shard_of, info
        assert shard_of.get(final["resource"]) == home, info
        assert not (await browser.call("log", name="away"))["errors"], report
    finally:
        await browser.close()
        await publisher.close()


async def test_watch_page_shows_video_again_within_3_s_when_its_shard_is_killed(two_shards: SfuServer) -> None:
    server, room = two_shards, f"e2e-kill-{uuid.uuid4().hex[:8]}"
    publisher = await peers.publish(server.base_url, room)
    browser = await BrowserControl.start(server.base_url)
    try:
        home, away, old_resource = await spilled_watch_pages(server, browser, room)
        await asyncio.sleep(1.5)
        killed_at = time.time()
        os.kill((await shard_pids(server))[away], signal.SIGKILL)

        async def moved() -> dict[str, Any] | None:
            s = await browser.stats("away")
            return s if s["moves"] >= 1 and not s["moving"] else None

        try:
            after = await wait_for("the away page moved", moved, 10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await page_report(browser, 'away')}") from None
        await asyncio.sleep(2.0)
        until = time.time()
        away_play = await Playback.of(browser, "away")
        home_play = await Playback.of(browser, "home")
        final = await browser.stats("away")
        report = await page_report(browser, "away")

        move_at = away_play.first_move_at()
        assert move_at is not None, report
        video_again = move_at - killed_at  # the new session had decoded a frame when it was shown
        freeze = away_play.longest_freeze(killed_at - 0.5, until)
        presented_gap = away_play.longest_presented_gap(killed_at - 0.5, until)
        presented_again = min((t for t in away_play.presented if t > move_at - 0.2), default=float("inf")) - killed_at
        home_freeze = home_play.longest_freeze(killed_at - 0.5, until)
        print(f"kill -9: video again {video_again:.2f} s after the kill (sampled; the page's own move figure "
              f"{after['lastMoveMs']} ms from the reconnect event); first presented frame of the new session "
              f"{presented_again:.2f} s after; longest freeze (decoded) {freeze:.2f} s; longest presented gap "
              f"{presented_gap:.2f} s; home page's longest freeze {home_freeze:.2f} s; "
              f"statuses {away_play.statuses(killed_at)}")

        assert video_again < KILL_VIDEO_AGAIN_S, f"{video_again:.2f} s\n{report}"
        assert freeze < KILL_VIDEO_AGAIN_S, f"{freeze:.2f} s\n{report}"
        assert "reconnect" in after["events"], report
        assert "died" in after["lastMoveReason"], report
        assert away_play.decoded_at(until) >= away_play.decoded_at(move_at) + 30, report
        assert final["status"] == "live" and final["connectionState"] == "connected", report
        _, info = await api(server.base_url, f"/api/rooms/{room}")
        shard_of = {p["location"]: p["shard"] for p in info["peers"]}
        assert old_resource not in shard_of and shard_of.get(final["resource"]) == home, info
        # The publisher's shard never stopped: the home page did not notice.
        assert home_freeze <= MAX_FREEZE_S, home_freeze
        assert not (await browser.call("log", name="away"))["errors"], report
    finally:
        await browser.close()
        await publisher.close()


@pytest.mark.parametrize("how", ["drain", "kill"])
async def test_publish_page_republishes_when_its_shard_drains_or_dies(tmp_path: Path, how: str) -> None:
    server = start_server(tmp_path, "--dev", env={"SFU_SHARDS": "2"})
    room = f"e2e-republish-{uuid.uuid4().hex[:8]}"
    browser = await BrowserControl.start(server.base_url)
    try:
        await browser.call("open", name="publish", page="publish.html", params={"room": room})

        async def sending() -> dict[str, Any] | None:
            s = await browser.stats("publish")
            return s if s.get("framesSent", 0) > 10 and s.get("eventsLive") else None

        before = await wait_for("the publish page sending and following its events", sending, 20)
        await browser.call("open", name="viewer", page="watch.html", params={"room": room})
        await decoding(browser, "viewer")
        assert await browser.call("sample", name="viewer", intervalMs=SAMPLE_INTERVAL_MS)
        status, info = await api(server.base_url, f"/api/rooms/{room}")
        home = info["shard"]
        assert {p["location"]: p["shard"] for p in info["peers"]}.get(before["resource"]) == home, info
        await asyncio.sleep(1.0)
        drained_at = time.time()
        if how == "drain":
            status, body = await api(server.base_url, f"/api/shards/{home}/drain", "POST")
            assert status == 202, body
        else:
            os.kill((await shard_pids(server))[home], signal.SIGKILL)

        async def moved() -> dict[str, Any] | None:
            s = await browser.stats("publish")
            return s if s["moves"] >= 1 and not s["moving"] else None

        try:
            after = await wait_for("the publish page moved", moved, 10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await page_report(browser, 'publish')}") from None
        report = await page_report(browser, "publish")
        assert ("drain" if how == "drain" else "died") in after["lastMoveReason"], report
        assert after["resource"] != before["resource"] and after["status"] == "live", report
        sent = after["framesSent"]
        await asyncio.sleep(1.0)
        later = await browser.stats("publish")
        assert later["framesSent"] >= sent + 15 and later["connectionState"] == "connected", report
        # One publisher left in the room: the new session (on the other shard: the old one
        # drains, or is dead until its replacement is up); the old one DELETEd or gone.
        _, info = await api(server.base_url, f"/api/rooms/{room}")
        publishers = [p for p in info["peers"] if p["kind"] == "whip"]
        assert [(p["location"], p["shard"]) for p in publishers] == [(after["resource"], 1 - home)], info
        moves_text = await text_of(browser, "publish", "moves")
        assert moves_text.startswith("1 ·") and after["lastMoveReason"] in moves_text, moves_text
        assert not (await browser.call("log", name="publish"))["errors"], report

        # What the viewer sees (it moved off the draining shard too): video again, by its
        # events or by its stall fallback.
        async def viewer_back() -> float | None:
            play = await Playback.of(browser, "viewer")
            rises = [s["t"] for s, prev in zip(play.samples[1:], play.samples)
                     if s["t"] > drained_at and s["decoded"] > prev["decoded"]]
            # Video "again": decoding that keeps on for a second after the publisher moved.
            moved_at = drained_at + after["lastMoveMs"] / 1000
            steady = [t for t in rises if t > moved_at + 0.5]
            return steady[0] if len(steady) > 5 else None

        try:
            await wait_for("the viewer decoding again", viewer_back, 15, interval_s=0.5)
        finally:
            play = await Playback.of(browser, "viewer")
            freeze = play.longest_freeze(drained_at - 0.5, time.time())
            viewer = await browser.stats("viewer")
            activity = await browser.call("eval", name="viewer", expression=ACTIVITY_JS)
            print("viewer activity:\n  " + "\n  ".join(activity))
            print(f"republish ({how}): the publish page moved in {after['lastMoveMs']} ms (reconnect to new connection "
                  f"up); its viewer's longest freeze {freeze:.2f} s, {viewer['moves']} moves, events "
                  f"{viewer['events']}, statuses {play.statuses(drained_at)}")
    finally:
        await browser.close()
        stop_server(server)


async def test_watch_page_watches_again_at_once_when_the_room_gets_a_publisher_again(sfu_server: SfuServer) -> None:
    server, room = sfu_server, f"e2e-active-{uuid.uuid4().hex[:8]}"
    publisher = await peers.publish(server.base_url, room)
    browser = await BrowserControl.start(server.base_url)
    second = None
    try:
        await browser.call("open", name="viewer", page="watch.html", params={"room": room})
        await decoding(browser, "viewer")
        await wait_for("the page following its events", lambda: _all_live(browser, ("viewer",)), 10)
        assert await browser.call("sample", name="viewer", intervalMs=SAMPLE_INTERVAL_MS)
        assert await publisher.delete() == 200
        await publisher.close()

        async def told(event: str) -> bool:
            return event in (await browser.stats("viewer"))["events"]

        await wait_for("the page told the room is inactive", lambda: told("inactive"), 5)
        left_at = time.time()

        async def status_waiting() -> bool:
            return (await browser.stats("viewer"))["status"] == "waiting"

        try:
            await wait_for("the page saying it waits for a publisher", status_waiting, 5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await page_report(browser, 'viewer')}") from None
        # Past the 6 s stall fallback: told the room is empty, the page waits for `active`
        # on its session instead of re-watching (which would meet 409s until the publisher returns).
        await asyncio.sleep(max(0.0, left_at + 7.0 - time.time()))
        waiting = await browser.stats("viewer")
        assert waiting["status"] == "waiting" and waiting["notPublishedRetries"] == 0, \
            await page_report(browser, "viewer")
        resource = waiting["resource"]
        published_at = time.time()
        second = await peers.publish(server.base_url, room)

        async def moved() -> dict[str, Any] | None:
            s = await browser.stats("viewer")
            return s if s["moves"] >= 1 and not s["moving"] else None

        try:
            after = await wait_for("the page watching the new publisher", moved, 5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await page_report(browser, 'viewer')}") from None
        await asyncio.sleep(1.0)
        play = await Playback.of(browser, "viewer")
        report = await page_report(browser, "viewer")
        move_at = play.first_move_at()
        assert move_at is not None, report
        print(f"active: video again {move_at - published_at:.2f} s after the new publisher's POST "
              f"(the page's own figure: {after['lastMoveMs']} ms from the event)")
        assert move_at - published_at < 2.0, report
        assert after["events"][-2:] == ["inactive", "active"], report
        assert after["lastMoveReason"] == "the room has a publisher again", report
        assert after["resource"] != resource, report
        assert play.decoded_at(time.time()) >= play.decoded_at(move_at) + 15, report
        assert after["status"] == "live", report
        assert not (await browser.call("log", name="viewer"))["errors"], report
    finally:
        await browser.close()
        if second is not None:
            await second.close()
