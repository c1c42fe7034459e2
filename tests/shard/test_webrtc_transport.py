"""One transport's ICE-lite, DTLS role, SRTP profile, receiver reports and consent, byte by byte."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from aiortc.rtp import RtcpPsfbPacket, RtcpRrPacket, unpack_remb_fci

import peers
from conftest import start_server, stop_server


def _video_pt(answer: str) -> int:
    return int(answer.split("m=video ")[1].split("\r\n")[0].split()[2])


def _vp8_packet(seq: int, ts: int, ssrc: int, pt: int, keyframe: bool) -> bytes:
    descriptor = bytes([0x10])  # S=1, partition 0
    vp8 = bytes([0x00 if keyframe else 0x01]) + b"\x9d\x01\x2a" + bytes(200)
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + descriptor + vp8


async def test_passive_offer_makes_the_shard_dtls_client(sfu_server):
    peer = peers.RawPeer(sfu_server.rtc_port, setup="passive")
    try:
        await peer.join(sfu_server.base_url, "roles")
        assert "a=setup:active" in peer.answer
        assert peer.dtls.role == "server" and peer.dtls.state == "connected"
    finally:
        peer.close()


@pytest.mark.parametrize("profiles,expected", [
    (None, "SRTP_AEAD_AES_128_GCM"),
    ("SRTP_AES128_CM_SHA1_80", "SRTP_AES128_CM_SHA1_80"),
    ("SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM", "SRTP_AEAD_AES_128_GCM"),
])
async def test_gcm_preferred_aes_cm_accepted(sfu_server, profiles, expected):
    # The peer is DTLS client (setup:active), so the shard's preference decides.
    peer = peers.RawPeer(sfu_server.rtc_port, setup="active", srtp_profiles=profiles)
    try:
        await peer.join(sfu_server.base_url, "profiles")
        assert peer.srtp.profile == expected
    finally:
        peer.close()


async def test_publisher_gets_receiver_reports_and_remb(sfu_server):
    peer = peers.RawPeer(sfu_server.rtc_port)
    try:
        await peer.join(sfu_server.base_url, "reports")
        video_ssrc = peer.media_ssrc["video"]
        pt = _video_pt(peer.answer)
        for i in range(50):
            peer.send(peer.srtp.protect(_vp8_packet(1000 + i, 90000 + i * 3000, video_ssrc, pt, i == 0)))
        deadline = time.monotonic() + 4
        rr = remb = None
        while time.monotonic() < deadline and (rr is None or remb is None):
            for packet in await asyncio.to_thread(peer.recv_rtcp, 1.5):
                if isinstance(packet, RtcpRrPacket):
                    rr = packet
                elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 15:
                    remb = packet
        assert rr is not None, "no receiver report"
        report = next(r for r in rr.reports if r.ssrc == video_ssrc)
        assert report.highest_sequence & 0xFFFF == 1049
        assert report.packets_lost == 0
        assert remb is not None
        bitrate, ssrcs = unpack_remb_fci(remb.fci)
        assert bitrate > 0 and video_ssrc in ssrcs
    finally:
        peer.close()


async def test_wrong_ice_password_gets_no_answer(sfu_server):
    peer = peers.RawPeer(sfu_server.rtc_port)
    try:
        with pytest.raises(Exception):
            peer.answer = "a=ice-ufrag:nosuch a=ice-pwd:0123456789abcdef0123456789"
            await asyncio.to_thread(peer.connect)
        assert sfu_server.metrics()['sfu_packets_dropped_total{reason="stun_unknown_ufrag",shard="0"}'] >= 1
    finally:
        peer.close()


async def test_silent_peer_is_closed_when_consent_expires(tmp_path):
    server = start_server(tmp_path, "--dev", env={"SFU_CONSENT_TIMEOUT_S": "2"})
    peer = peers.RawPeer(server.rtc_port)
    try:
        await peer.join(server.base_url, "quiet")
        assert server.metrics()["sfu_transports"] == 1
        deadline = time.monotonic() + 6
        while server.metrics()["sfu_transports"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        metrics = server.metrics()
        assert metrics["sfu_transports"] == 0
        assert metrics['sfu_peers{kind="whip"}'] == 0
        assert "consent expired" in server.log()
    finally:
        peer.close()
        stop_server(server)


async def test_checks_keep_consent_alive(tmp_path):
    server = start_server(tmp_path, "--dev", env={"SFU_CONSENT_TIMEOUT_S": "2"})
    peer = peers.RawPeer(server.rtc_port)
    try:
        await peer.join(server.base_url, "chatty")
        for _ in range(8):
            await asyncio.sleep(0.5)
            peer.check()
        assert server.metrics()["sfu_transports"] == 1
    finally:
        peer.close()
        stop_server(server)


async def test_dtls_state_released_once_peer_sends_srtp_and_alert_still_closes(sfu_server):
    from aiortc.rtp import RtcpRrPacket

    publisher = await peers.publish(sfu_server.base_url, "release")
    viewer = peers.RawPeer(sfu_server.rtc_port)
    try:
        await viewer.join(sfu_server.base_url, "release", kind="whep")
        viewer.send(viewer.srtp.protect_rtcp(bytes(RtcpRrPacket(ssrc=99, reports=[]))))
        await asyncio.sleep(1.5)  # the shard's once-a-second housekeeping releases OpenSSL's state
        assert sfu_server.metrics()["sfu_transports"] == 2
        # An encrypted alert record (close_notify) from the peer: content type 21.
        viewer.send(bytes([21, 0xFE, 0xFD]) + bytes(8) + (26).to_bytes(2, "big") + bytes(26))
        deadline = time.monotonic() + 3
        while sfu_server.metrics()["sfu_transports"] != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert sfu_server.metrics()["sfu_transports"] == 1
        assert '"reason": "dtls closed"' in sfu_server.log()
    finally:
        viewer.close()
        await publisher.close()
