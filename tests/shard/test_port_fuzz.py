"""10,000 hostile datagrams at a live shard port: it keeps serving and counts every drop.

The fuzzing peer completes real ICE and DTLS first, so its mutated RTP and RTCP
are SRTP-protected with valid keys and reach the parsers behind decryption,
not just the demultiplexer in front of it.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import aiohttp
import pytest
from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peers
from sfu.shard.dtls import DtlsCertificate, DtlsEndpoint
from sfu.shard.srtp import SrtpSession

EXAMPLES = 10_000


class FuzzPeer:
    """A hand-made WHIP publisher: raw UDP socket, our own DTLS client, libsrtp keys."""

    def __init__(self, rtc_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.server = ("127.0.0.1", rtc_port)
        self.cert = DtlsCertificate.generate()
        self.ufrag, self.pwd = "fuzz", "fuzzfuzzfuzzfuzzfuzzfuzz"
        self.srtp: SrtpSession | None = None
        self.ssrcs: list[int] = []

    async def join(self, base_url: str, room: str) -> None:
        offer = await _aiortc_offer()
        lines = []
        for line in offer.splitlines():
            if line.startswith("a=ice-ufrag:"):
                line = f"a=ice-ufrag:{self.ufrag}"
            elif line.startswith("a=ice-pwd:"):
                line = f"a=ice-pwd:{self.pwd}"
            elif line.startswith("a=fingerprint:"):
                line = f"a=fingerprint:sha-256 {self.cert.fingerprint_sha256}"
            elif line.startswith("a=setup:"):
                line = "a=setup:active"
            elif line.startswith("a=ssrc:") and " cname:" in line:
                self.ssrcs.append(int(line.split()[0].split(":")[1]))
            lines.append(line)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/whip/{room}", data="\r\n".join(lines) + "\r\n",
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
        server_ufrag = answer.split("a=ice-ufrag:")[1].split()[0]
        server_pwd = answer.split("a=ice-pwd:")[1].split()[0]
        fingerprint = answer.split("a=fingerprint:sha-256 ")[1].split()[0]
        await asyncio.to_thread(self._connect, server_ufrag, server_pwd, fingerprint)

    def _connect(self, server_ufrag: str, server_pwd: str, fingerprint: str) -> None:
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{server_ufrag}:{self.ufrag}"
        request.attributes["PRIORITY"] = 1
        request.attributes["ICE-CONTROLLING"] = 1
        request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(server_pwd.encode())
        self.sock.sendto(bytes(request), self.server)
        response = stun.parse_message(self.sock.recv(1500))
        assert response.message_class == stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == self.sock.getsockname()
        dtls = DtlsEndpoint(self.cert, "client", ("sha-256", fingerprint))
        for d in dtls.start():
            self.sock.sendto(d, self.server)
        while dtls.state == "connecting":
            data = self.sock.recv(1500)
            if 20 <= data[0] < 64:
                for d in dtls.receive(data):
                    self.sock.sendto(d, self.server)
        assert dtls.state == "connected", dtls.error
        self.srtp = SrtpSession(dtls.srtp_keys)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)


async def _aiortc_offer() -> str:
    pc = peers.new_peer_connection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


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
    fuzz = FuzzPeer(sfu_server.rtc_port)
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
        fuzz.sock.close()
        await viewer.close()
        await publisher.close()
