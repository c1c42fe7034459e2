"""Keyframe requests from viewers reach the publisher at most once per 500 ms."""

from __future__ import annotations

import asyncio
import time

from aiortc.rtp import RtcpPsfbPacket

import peers


def _video_send_ssrc(answer: str) -> int:
    video = answer.split("m=video ")[1]
    return int(video.split("a=ssrc:")[1].split()[0])


async def test_pli_storm_from_a_viewer_is_rate_limited(sfu_server):
    publisher = await peers.publish(sfu_server.base_url, "storm")
    viewer = peers.RawPeer(sfu_server.rtc_port)
    try:
        await viewer.join(sfu_server.base_url, "storm", kind="whep")
        consumer_ssrc = _video_send_ssrc(viewer.answer)
        await asyncio.sleep(0.6)  # let the join's own keyframe request pass its window
        before = sfu_server.metrics()
        started = time.monotonic()
        for _ in range(40):
            pli = RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=consumer_ssrc)
            viewer.send(viewer.srtp.protect_rtcp(bytes(pli)))
            await asyncio.sleep(0.025)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.6)  # the coalesced request still goes out at the window's end
        after = sfu_server.metrics()

        def delta(direction: str) -> float:
            key = f'sfu_keyframe_requests_total{{direction="{direction}",shard="0"}}'
            return after[key] - before[key]

        assert delta("received") == 40
        allowed = int(elapsed / 0.5) + 2
        assert 1 <= delta("sent") <= allowed, (delta("sent"), elapsed)
        assert delta("coalesced") >= 40 - allowed
    finally:
        viewer.close()
        await publisher.close()
