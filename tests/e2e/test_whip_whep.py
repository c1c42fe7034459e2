"""Real aiortc peers publish through WHIP and watch through WHEP, over real DTLS-SRTP."""

from __future__ import annotations

import asyncio
import time

import peers

ROOM = "allhands"


async def test_three_viewers_decode_video_and_audio(sfu_server):
    publisher = await peers.publish(sfu_server.base_url, ROOM)
    viewers = [await peers.watch(sfu_server.base_url, ROOM) for _ in range(3)]
    try:
        await asyncio.gather(*(v.wait_frames(60, timeout_s=30) for v in viewers))
        for v in viewers:
            assert v.video_frames >= 60
            assert set(v.frame_sizes) == {(peers.VIDEO_WIDTH, peers.VIDEO_HEIGHT)}
            assert v.audio_frames > 0
        metrics = sfu_server.metrics()
        assert metrics['sfu_peers{kind="whep"}'] == 3
        assert metrics["sfu_consumers"] == 6
        assert metrics["sfu_rtp_packets_sent_total"] > 3 * 60
    finally:
        for v in viewers:
            await v.close()
        await publisher.close()


async def test_viewer_rejoins_and_gets_video_within_one_second(sfu_server):
    publisher = await peers.publish(sfu_server.base_url, ROOM)
    try:
        first = await peers.watch(sfu_server.base_url, ROOM)
        await first.wait_frames(10)
        assert await first.delete() == 200
        await first.close()
        started = time.monotonic()
        again = await peers.watch(sfu_server.base_url, ROOM)
        try:
            await again.wait_frames(1, timeout_s=5)
            assert again.frame_times[0] - started < 1.0
        finally:
            await again.close()
    finally:
        await publisher.close()


async def test_publisher_delete_ends_viewer_tracks(sfu_server):
    publisher = await peers.publish(sfu_server.base_url, ROOM)
    viewer = await peers.watch(sfu_server.base_url, ROOM)
    try:
        await viewer.wait_frames(10)
        assert await publisher.delete() == 200
        await asyncio.wait_for(viewer.ended["video"].wait(), 5)
        await asyncio.wait_for(viewer.ended["audio"].wait(), 5)
        metrics = sfu_server.metrics()
        assert metrics['sfu_peers{kind="whip"}'] == 0
        assert metrics["sfu_producers"] == 0
        # A new viewer now finds nothing to watch.
        try:
            await peers.watch(sfu_server.base_url, ROOM)
        except peers.WhipError as exc:
            assert exc.status == 409
        else:
            raise AssertionError("WHEP succeeded with no publisher")
    finally:
        await viewer.close()
        await publisher.close()


async def test_joining_viewers_start_from_history_without_keyframe_requests(sfu_server):
    publisher = await peers.publish(sfu_server.base_url, ROOM)
    try:
        first = await peers.watch(sfu_server.base_url, ROOM)
        await first.wait_frames(5)
        before = sfu_server.metrics()
        started = time.monotonic()
        crowd = await asyncio.gather(*(peers.watch(sfu_server.base_url, ROOM) for _ in range(8)))
        await asyncio.gather(*(v.wait_frames(5) for v in crowd))
        after = sfu_server.metrics()

        def delta(key: str) -> float:
            return after[key] - before[key]

        # The history holds the GOP the first viewer's keyframe began: the crowd starts
        # from it and the publisher is asked for nothing.
        assert delta('sfu_keyframe_requests_total{direction="sent",shard="0"}') == 0
        assert delta("sfu_keyframe_history_starts_total") == 8
        assert all(v.frame_times[0] - started < 1.0 for v in crowd)
        for v in [first, *crowd]:
            await v.close()
    finally:
        await publisher.close()


async def test_viewer_of_video_only_publisher_gets_an_idle_audio_line(sfu_server):
    publisher = await peers.publish(sfu_server.base_url, "silent", audio=False)
    viewer = await peers.watch(sfu_server.base_url, "silent")
    try:
        await viewer.wait_frames(10)
        assert viewer.audio_frames == 0
    finally:
        await viewer.close()
        await publisher.close()


async def test_audio_only_viewer_gets_audio_and_costs_no_video(sfu_server):
    """Large rooms: a listener who offers only audio gets only audio (no video consumer)."""
    publisher = await peers.publish(sfu_server.base_url, "radio")
    listener = await peers.watch(sfu_server.base_url, "radio", video=False)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while listener.audio_frames < 50 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert listener.audio_frames >= 50
        assert listener.video_frames == 0 and "video" not in listener.ended
        metrics = sfu_server.metrics()
        assert metrics['sfu_consumers{shard="0"}'] == 1  # the audio track only
    finally:
        await listener.close()
        await publisher.close()
