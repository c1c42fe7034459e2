"""5 % random loss on the path from the shard to its peers: NACKs are answered, video keeps decoding.

The kernel here has no netem, so the loss is an iptables ``statistic`` rule on
the INPUT chain, matching only datagrams from this test's shard port on loopback.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import peers


def iptables(*args: str) -> None:
    subprocess.run(["iptables", *args], check=True, capture_output=True)


async def test_nacks_answered_under_five_percent_loss(sfu_server):
    tag = f"sfu-test-{uuid.uuid4().hex[:8]}"
    rule = ["INPUT", "-p", "udp", "-s", "127.0.0.1", "--sport", str(sfu_server.rtc_port),
            "-m", "statistic", "--mode", "random", "--probability", "0.05",
            "-m", "comment", "--comment", tag, "-j", "DROP"]
    publisher = await peers.publish(sfu_server.base_url, "lossy", size=(640, 480))
    viewer = await peers.watch(sfu_server.base_url, "lossy")
    try:
        await viewer.wait_frames(10)
        iptables("-I", *rule)
        try:
            start = viewer.video_frames
            await asyncio.sleep(8)
            during = viewer.video_frames - start
            metrics = sfu_server.metrics()
        finally:
            iptables("-D", *rule)
        # ~30 fps for 8 s: with retransmissions nearly every frame still decodes.
        assert during >= 120, f"only {during} frames decoded in 8 s under loss"
        assert metrics["sfu_nacks_received_total"] > 0
        assert metrics["sfu_nack_retransmissions_total"] > 0
        # And it keeps going once the loss stops. aiortc NACKs a missing packet
        # once, re-NACKing only when a newer loss happens; if a retransmission
        # sent just before the rule was removed is lost too, its jitter buffer
        # waits until 128 newer packets push the hole out (~4 s of this small
        # stream) and then sends a PLI. Allow for that, plus 30 frames.
        after = viewer.video_frames
        await viewer.wait_frames(after + 30, timeout_s=10)
    finally:
        await viewer.close()
        await publisher.close()
