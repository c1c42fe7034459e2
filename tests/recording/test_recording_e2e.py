"""Recording through the real server: an aiortc publisher, the recorder process, files on disk."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import av

import peers
from av_sync import BeepTrack, FlashTrack, analyse, offsets
from conftest import start_server, stop_server


async def _api(base_url: str, method: str, path: str):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, base_url + path) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body


def _recorder_pid(server) -> int:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.process.pid and b"sfu.recording.main" in cmdline:
            return int(pid)
    raise AssertionError("no recorder process")


async def test_twenty_seconds_recorded_in_sync(tmp_path) -> None:
    recordings = tmp_path / "rec"
    server = start_server(tmp_path, "--dev", "--recordings", str(recordings))
    try:
        start = time.monotonic()
        publisher = await peers.publish(server.base_url, "lecture", query="record=1",
                                        tracks=[BeepTrack(start), FlashTrack(start)])
        await asyncio.sleep(20.0)
        assert await publisher.delete() == 200
        await publisher.close()
        await asyncio.sleep(1.0)  # the recorder closes the file once the publisher is gone
        status, listing = await _api(server.base_url, "GET", "/api/recordings")
        assert status == 200 and len(listing) == 1, listing
        recording = listing[0]
        assert recording["room"] == "lecture" and recording["tracks"] == ["audio/opus", "video/VP8"]
        [segment] = recording["segments"]
        assert segment["complete"] and segment["size"] > 50_000
        path = recordings / recording["id"] / segment["file"]
        container = av.open(str(path))
        duration = container.duration / 1e6
        container.close()
        result = analyse(str(path))
        print(f"duration {duration:.2f} s; {len(result['flashes'])} flashes, {len(result['beeps'])} beeps; "
              f"offsets {[round(o * 1000) for o in offsets(result['flashes'], result['beeps'])]} ms")
        assert abs(duration - 20.0) <= 0.5, duration
        assert len(result["flashes"]) >= 11 and len(result["beeps"]) >= 11, result
        assert result["video_frames"] > 20 * 20  # decodes end to end
        worst = max(abs(o) for o in offsets(result["flashes"], result["beeps"]))
        assert worst < 0.080, worst

        # Download with Range, as a player seeking does.
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base_url + segment["url"], headers={"Range": "bytes=0-99"}) as r:
                assert r.status == 206 and len(await r.read()) == 100
                assert r.headers["Content-Range"].endswith(f"/{segment['size']}")
            async with http.get(server.base_url + f"/recordings/{recording['id']}") as r:
                assert r.status == 200 and len(await r.read()) == segment["size"]
            async with http.get(server.base_url + "/recordings/nope/../../etc/passwd") as r:
                assert r.status == 404
        metrics = server.metrics()
        assert metrics["sfu_recording_written_bytes_total"] >= segment["size"]
        assert metrics["sfu_recordings_in_progress"] == 1  # the room stays recorded until stopped
        status, _ = await _api(server.base_url, "DELETE", "/api/rooms/lecture/recording")
        assert status == 200
        assert server.metrics()["sfu_recordings_in_progress"] == 0
    finally:
        stop_server(server)


async def test_killed_recorder_leaves_a_playable_file_and_continues_in_a_new_segment(tmp_path) -> None:
    recordings = tmp_path / "rec"
    server = start_server(tmp_path, "--dev", "--recordings", str(recordings))
    publisher = None
    try:
        start = time.monotonic()
        publisher = await peers.publish(server.base_url, "crashy", tracks=[BeepTrack(start), FlashTrack(start)])
        status, body = await _api(server.base_url, "POST", "/api/rooms/crashy/recording")
        assert status == 201, body
        await asyncio.sleep(15.0)
        os.kill(_recorder_pid(server), signal.SIGKILL)
        await asyncio.sleep(4.0)  # restarted, recording a second segment
        _, listing = await _api(server.base_url, "GET", "/api/recordings")
        [recording] = listing
        first, second = sorted(recording["segments"], key=lambda s: s["file"])
        assert not first["complete"]
        result = analyse(str(recordings / recording["id"] / first["file"]))
        print(f"killed at 15 s: the partial file plays to {result['last_video']:.2f} s")
        assert result["last_video"] >= 12.0, result["last_video"]
        assert server.metrics()["sfu_recorder_restarts_total"] == 1
        await _api(server.base_url, "DELETE", "/api/rooms/crashy/recording")
        _, listing = await _api(server.base_url, "GET", "/api/recordings")
        second = next(s for s in listing[0]["segments"] if s["file"] == second["file"])
        assert second["complete"] and second["duration"] > 1.0
        assert analyse(str(recordings / recording["id"] / second["file"]))["video_frames"] > 30
        manifest = json.loads((recordings / recording["id"] / "recording.json").read_text())
        assert manifest["room"] == "crashy"
    finally:
        if publisher is not None:
            await publisher.close()
        stop_server(server)
