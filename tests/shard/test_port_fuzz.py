"""10,000 hostile datagrams at a live shard port: it keeps serving and counts every drop.

The fuzzing peer completes real ICE and DTLS first, so its mutated RTP and RTCP
are SRTP-protected with valid keys and reach the parsers behind decryption,
not just the demultiplexer in front of it.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peers

EXAMPLES = 10_000


def rtp_shaped(ssrcs: list[int]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        cc = draw(st.integers(0, 15))
        b0 = 0x80 | draw(st.sampled_from([0, 0x10, 0x20, 0x30])) | cc
        pt = draw(st.sampled_from([96, 97, 111, 0, 127]))
        ssrc = draw(st.sampled_from(ssrcs) | st.integers(0, 2**32 - 1))
        header = struct.pack("!BBHII", b0, draw(st.sampled_from([0, 0x80])) | pt,
                             draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 2**32 - 1)), ssrc)
        return header + draw(st.binary(max_size=300))
    return build()


def rtcp_shaped() -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        pt = draw(st.integers(192, 223))
        count = draw(st.integers(0, 31))
        body = draw(st.binary(max_size=120))
        length = draw(st.integers(0, 0xFFFF) | st.just(len(body) // 4 + 1))
        return struct.pack("!BBHI", 0x80 | count, pt, length, draw(st.integers(0, 2**32 - 1))) + body
    return build()


def mutate(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        b = bytearray(draw(data))
        for _ in range(draw(st.integers(0, 3))):
            if b:
                b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b[: draw(st.integers(0, len(b)))]) if draw(st.booleans()) else bytes(b)
    return build()


def stun_shaped() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda t, body, tid: struct.pack("!HHI12s", t, len(body), 0x2112A442, tid) + body,
        st.sampled_from([0x0001, 0x0011, 0x0101, 0x0111, 0x0002]),
        st.binary(max_size=100), st.binary(min_size=12, max_size=12))


def _try(protect):
    def wrapped(data: bytes) -> bytes:
        try:
            return protect(data)
        except Exception:
            return data
    return wrapped


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_garbage_at_shard_port_is_dropped_and_counted(sfu_server):
    publisher = await peers.publish(sfu_server.base_url, "live")
    viewer = await peers.watch(sfu_server.base_url, "live")
    fuzz = peers.RawPeer(sfu_server.rtc_port)
    try:
        await viewer.wait_frames(10)
        await fuzz.join(sfu_server.base_url, "fuzzroom")
        srtp = fuzz.srtp
        datagram = st.one_of(
            st.binary(max_size=200),
            mutate(stun_shaped()),
            mutate(st.builds(lambda b, r: bytes([b]) + r, st.integers(20, 63), st.binary(max_size=200))),
            mutate(rtp_shaped(fuzz.ssrcs)),
            mutate(rtcp_shaped()),
            # Authenticated garbage: valid SRTP around mutated RTP/RTCP reaches the parsers.
            mutate(rtp_shaped(fuzz.ssrcs)).filter(lambda d: len(d) >= 12).map(_try(srtp.protect)),
            mutate(rtcp_shaped()).filter(lambda d: len(d) >= 8).map(_try(srtp.protect_rtcp)),
        )

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(datagram)
        def blast(data: bytes) -> None:
            fuzz.send(data)

        before = sfu_server.metrics()
        frames_before = viewer.video_frames
        await asyncio.to_thread(blast)
        await asyncio.sleep(0.5)
        after = sfu_server.metrics()
        # The existing viewer was served all along and still is.
        await viewer.wait_frames(viewer.video_frames + 30, timeout_s=5)
        assert viewer.video_frames - frames_before > 30
        assert sfu_server.process.poll() is None
        drops = {k: after[k] - before.get(k, 0) for k in after if k.startswith("sfu_packets_dropped_total{")}
        reasons = {k.split('reason="')[1].split('"')[0] for k, v in drops.items() if v > 0}
        assert sum(drops.values()) > EXAMPLES / 3, drops
        # Drops land in distinct, named buckets at every layer.
        for expected in ("stun_malformed", "srtp_unprotect_failed", "srtcp_unprotect_failed"):
            assert expected in reasons, reasons
        assert reasons & {"rtp_unknown_ssrc", "rtp_truncated", "rtp_bad_version", "rtp_bad_padding",
                          "rtp_bad_extension", "rtp_unexpected_payload_type", "rtcp_malformed"}, reasons
    finally:
        fuzz.close()
        await viewer.close()
        await publisher.close()
