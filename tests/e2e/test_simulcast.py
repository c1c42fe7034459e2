"""A simulcast publisher (two rid layers of real VP8) through WHIP; WHEP viewers pick a layer.

The publisher is hand-made so the test controls the layers exactly: VP8 from
aiortc's encoder at two sizes, each layer on its own SSRC carrying the mid and
rid header extensions, as Chrome sends them (RFC 8852/8853).
"""

from __future__ import annotations

import asyncio
import fractions
import struct

import numpy as np
from aiortc.codecs.vpx import Vp8Encoder
from av import VideoFrame

import peers
from conftest import SfuServer, start_server, stop_server

LAYERS = {"l": (160, 120, 0x51), "h": (320, 240, 0x52)}  # rid: width, height, SSRC
RID_ID = 10


def simulcast_offer(offer: str) -> str:
    """aiortc's sendonly offer, turned into a two-layer simulcast one with the rid extension."""
    out = []
    for line in offer.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=ssrc") and out and any(x.startswith("m=video") for x in out):
            continue  # layers have no signalled SSRCs: the server learns them from rid
        out.append(line)
        if line.startswith("a=mid:") and any(x.startswith("m=video") for x in out):
            out += [f"a=extmap:{RID_ID} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                    "a=rid:l send", "a=rid:h send", "a=simulcast:send l;h"]
    return "\r\n".join(out)


def vp8_packets(width: int, height: int, frames: int) -> list[list[bytes]]:
    """Real VP8 payloads (RFC 7741 descriptors included) of a moving square, per frame."""
    encoder = Vp8Encoder()
    out = []
    for n in range(frames):
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[height // 3: height // 3 + height // 4, (n * 3) % (width // 2): (n * 3) % (width // 2) + width // 4] = 255
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=n % 30 == 0)
        out.append(payloads)
    return out


def rtp(seq: int, ts: int, ssrc: int, pt: int, marker: bool, mid_id: int, mid: bytes, rid: bytes,
        payload: bytes) -> bytes:
    ext = bytes([(mid_id << 4) | (len(mid) - 1)]) + mid + bytes([(RID_ID << 4) | (len(rid) - 1)]) + rid
    ext += bytes(-len(ext) % 4)
    header = struct.pack("!BBHII", 0x90, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, ssrc)
    return header + struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext + payload


class SimulcastPublisher:
    """The two-layer publisher over WHIP, sending its layers at 30 fps until stopped."""

    def __init__(self, server: SfuServer, frames: int = 60) -> None:
        self.server = server
        self.peer = peers.RawPeer(server.rtc_port)
        self.peer.offer_filter = simulcast_offer
        self.frames = {rid: vp8_packets(w, h, frames) for rid, (w, h, _) in LAYERS.items()}
        self.task: asyncio.Task[None] | None = None

    async def start(self, room: str, loops: bool = True) -> None:
        await self.peer.join(self.server.base_url, room)
        video = self.peer.answer.split("m=video ")[1]
        self.pt = int(video.split()[2])
        self.mid = video.split("a=mid:")[1].split()[0].encode()
        self.mid_id = int(video.split(" urn:ietf:params:rtp-hdrext:sdes:mid")[0].rsplit("a=extmap:", 1)[1])
        self.task = asyncio.ensure_future(self._send(loops))

    async def _send(self, loops: bool) -> None:
        seq = {rid: 0 for rid in LAYERS}
        count = len(self.frames["l"])
        n = 0
        while loops or n < count:
            for rid, (_, _, ssrc) in LAYERS.items():
                payloads = self.frames[rid][n % count]
                for i, payload in enumerate(payloads):
                    packet = rtp(seq[rid], n * 3000, ssrc, self.pt, i == len(payloads) - 1, self.mid_id, self.mid,
                                 rid.encode(), payload)
                    self.peer.send(self.peer.srtp.protect(packet))
                    seq[rid] += 1
            n += 1
            await asyncio.sleep(1 / 30)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.peer.close()


async def test_viewers_choose_a_simulcast_layer(sfu_server):
    publisher = SimulcastPublisher(sfu_server, frames=90)
    viewers = {}
    try:
        await publisher.start("sim", loops=False)
        assert "a=simulcast:recv l;h" in publisher.peer.answer
        await asyncio.sleep(0.3)
        for rid in LAYERS:
            viewers[rid] = await peers.watch(sfu_server.base_url, "sim", query=f"layer={rid}")
        default = await peers.watch(sfu_server.base_url, "sim")
        await asyncio.gather(*(v.wait_frames(10, timeout_s=10) for v in [*viewers.values(), default]))
        for rid, viewer in viewers.items():
            assert set(viewer.frame_sizes) == {LAYERS[rid][:2]}, (rid, set(viewer.frame_sizes))
        # With no choice given, the middle of the listed layers (of two: the upper).
        assert set(default.frame_sizes) == {LAYERS["h"][:2]}
        await default.close()
    finally:
        for viewer in viewers.values():
            await viewer.close()
        publisher.close()


async def test_viewer_follows_its_bandwidth_between_layers(sfu_server):
    from aiortc.rtp import RtcpPsfbPacket, pack_remb_fci

    publisher = SimulcastPublisher(sfu_server)
    await publisher.start("adaptive")
    viewer = peers.RawPeer(sfu_server.rtc_port)
    viewer.ufrag = "view"
    try:
        await asyncio.sleep(0.3)
        await viewer.join(sfu_server.base_url, "adaptive", kind="whep")
        consumer_ssrc = int(viewer.answer.split("m=video ")[1].split("a=ssrc:")[1].split()[0])

        def remb(bps: int) -> None:
            viewer.send(viewer.srtp.protect_rtcp(bytes(RtcpPsfbPacket(
                fmt=15, ssrc=7, media_ssrc=0, fci=pack_remb_fci(bps, [consumer_ssrc])))))

        def layer_counts() -> dict[str, float]:
            m = sfu_server.metrics()
            return {k.split('layer="')[1].split('"')[0]: v for k, v in m.items()
                    if k.startswith("sfu_simulcast_consumers{")}

        async def watch(seconds: float, bps: int) -> list[tuple[int, int, bytes]]:
            got: list[tuple[int, int, bytes]] = []
            for _ in range(int(seconds / 0.25)):
                remb(bps)
                got += await asyncio.to_thread(viewer.recv_rtp, 0.25)
            return got

        before = await watch(1.5, 10_000_000)  # plenty: stays on the top layer it joined on
        assert layer_counts() == {"1": 1}
        squeezed = await watch(2.5, 8_000)     # below any layer (they run at ~20-30 kbit/s): down to the lowest
        assert layer_counts() == {"0": 1}
        recovered = await watch(5.0, 10_000_000)
        assert layer_counts() == {"1": 1}
        metrics = sfu_server.metrics()
        assert metrics["sfu_simulcast_layer_switches_total"] == 2
        # Each switch waited for the new layer's keyframe: at most the 1 s GOP plus a tick.
        assert metrics["sfu_simulcast_switch_seconds_count"] == 2
        assert 0 < metrics["sfu_simulcast_switch_seconds_sum"] < 2 * 1.5
        # One continuous stream for the viewer: same SSRC, no gap in sequence numbers.
        video_packets = [p for p in before + squeezed + recovered if p[0] == consumer_ssrc]
        seqs = [p[1] for p in video_packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), "gap in the viewer's sequence"
        assert len(video_packets) > 100
    finally:
        viewer.close()
        publisher.close()


async def test_viewer_gets_no_layer_larger_than_its_screen(sfu_server):
    """?max_width/max_height (the watch page sends its video element's size): the
    smallest layer that fills the box, even with bandwidth for more."""
    publisher = SimulcastPublisher(sfu_server)
    small = large = None
    try:
        await publisher.start("screen")
        await asyncio.sleep(0.5)  # a keyframe of each layer: their sizes are known
        small = await peers.watch(sfu_server.base_url, "screen", query="max_width=150&max_height=100")
        large = await peers.watch(sfu_server.base_url, "screen", query="max_width=1920&max_height=1080")
        await asyncio.gather(small.wait_frames(60, timeout_s=15), large.wait_frames(60, timeout_s=15))
        # The small screen starts on the default (upper) layer and is moved down within a tick
        # and a keyframe (the 1 s GOP); the large one keeps the top layer.
        assert set(small.frame_sizes[-20:]) == {LAYERS["l"][:2]}, small.frame_sizes
        assert set(large.frame_sizes) == {LAYERS["h"][:2]}
    finally:
        for viewer in (small, large):
            if viewer is not None:
                await viewer.close()
        publisher.close()


async def test_room_ceiling_keeps_every_viewer_at_or_below_its_layer(tmp_path):
    """simulcast_max_layer (an all-hands keeps thousands of viewers off the top layer)."""
    server = start_server(tmp_path, "--dev", env={"SFU_SIMULCAST_MAX_LAYER": "0"})
    publisher = SimulcastPublisher(server)
    viewer = None
    try:
        await publisher.start("allhands")
        await asyncio.sleep(0.3)
        viewer = await peers.watch(server.base_url, "allhands", query="layer=h")  # asks for the top: capped
        await viewer.wait_frames(60, timeout_s=15)
        assert set(viewer.frame_sizes) == {LAYERS["l"][:2]}
    finally:
        if viewer is not None:
            await viewer.close()
        publisher.close()
        stop_server(server)
