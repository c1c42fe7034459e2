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


async def test_viewers_choose_a_simulcast_layer(sfu_server):
    publisher = peers.RawPeer(sfu_server.rtc_port)
    publisher.offer_filter = simulcast_offer
    await publisher.join(sfu_server.base_url, "sim")
    answer = publisher.answer
    assert "a=simulcast:recv l;h" in answer
    video = answer.split("m=video ")[1]
    pt = int(video.split()[2])
    mid = video.split("a=mid:")[1].split()[0].encode()
    mid_id = int(video.split(" urn:ietf:params:rtp-hdrext:sdes:mid")[0].rsplit("a=extmap:", 1)[1])
    frames = {rid: vp8_packets(w, h, 90) for rid, (w, h, _) in LAYERS.items()}
    viewers = {}
    try:
        async def send() -> None:
            seq = {rid: 0 for rid in LAYERS}
            for n in range(90):
                for rid, (_, _, ssrc) in LAYERS.items():
                    payloads = frames[rid][n]
                    for i, payload in enumerate(payloads):
                        packet = rtp(seq[rid], n * 3000, ssrc, pt, i == len(payloads) - 1, mid_id, mid, rid.encode(),
                                     payload)
                        publisher.send(publisher.srtp.protect(packet))
                        seq[rid] += 1
                await asyncio.sleep(1 / 30)

        sender = asyncio.ensure_future(send())
        await asyncio.sleep(0.3)
        for rid in LAYERS:
            viewers[rid] = await peers.watch(sfu_server.base_url, "sim", query=f"layer={rid}")
        default = await peers.watch(sfu_server.base_url, "sim")
        await asyncio.gather(*(v.wait_frames(10, timeout_s=10) for v in [*viewers.values(), default]))
        for rid, viewer in viewers.items():
            assert set(viewer.frame_sizes) == {LAYERS[rid][:2]}, (rid, set(viewer.frame_sizes))
        # With no choice given, the layer listed last (publishers list low to high).
        assert set(default.frame_sizes) == {LAYERS["h"][:2]}
        sender.cancel()
        await default.close()
    finally:
        for viewer in viewers.values():
            await viewer.close()
        publisher.close()
