"""Light load generator: one synthetic publisher and many raw DTLS-SRTP viewers in one process.

Every peer is a plain non-blocking UDP socket with just enough WebRTC: our own
ICE checks (and answers to the server's, for full-ICE servers), a DTLS client
(``sfu.shard.dtls.DtlsEndpoint``) and libsrtp (``sfu.shard.srtp.SrtpSession``).
No WebRTC stack runs per viewer, so one core can drain a few hundred thousand
packets a second, which is what a shard worth measuring sends.

Why it is built the way it is:

- The publisher loops a real VP8 GOP and real Opus (``bench/clip.py``),
  packetized as libwebrtc would (~1,150-byte payloads, marker on a frame's
  last packet, VP8 descriptor with S bit and a 15-bit picture id) and paced at
  2.5x the media rate as libwebrtc's pacer does. A PLI/FIR restarts the GOP,
  so a joining viewer gets its keyframe as it would from a browser.
- Each packet carries, at a fixed place in its payload, the CLOCK_MONOTONIC
  send time (8 bytes) and the stream's packet count (4 bytes); an SFU forwards
  payloads unchanged, so a viewer that decrypts the packet reads them back.
  The place is 10 bytes after the 4-byte VP8 descriptor (the VP8 payload
  header, which keyframe detection reads, stays intact) and the start of the
  Opus payload.
- Viewers do not decrypt everything: the RTP header is in clear, so loss is
  counted from the sequence numbers of every packet (an SFU rewrites them, but
  into one gap-free series per consumer), and one packet in ``sample_every``
  is decrypted to prove the keys work, check the order against the embedded
  count, and give a latency sample.
- Latency samples use the kernel's receive timestamp (SO_TIMESTAMPNS), taken
  when the server's ``sendto`` hands the datagram to loopback, so they measure
  the server's send time and not how late this process got round to reading.
- Sockets are drained in sweeps every few milliseconds (one epoll call, then
  ``recv_into`` until EAGAIN on each ready socket): batching several packets
  per socket per sweep halves the cost per packet compared with waking per
  datagram.
- ``red=True`` (bench/latency, co-performance rooms): the publisher also offers
  RFC 2198 RED wrapping opus and, if the answer lists red first, sends each
  Opus frame as RED with the previous frame as one redundant block (distance 1,
  as Chrome: timestamp offset 960); viewers offer RED too and read every block.
  Each block's data starts with the stamp the frame carried when first sent, so
  a viewer learns every audio frame (by its count) from its primary or from the
  next packet's redundant copy; ``track_frames`` keeps when each became
  available (:meth:`Viewer.audio_frame_stats`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import secrets
import select
import socket
import struct
import time
from typing import Any

import pylibsrtp
from aioice import stun

from sfu.shard.dtls import DtlsCertificate, DtlsEndpoint
from sfu.shard.srtp import SrtpSession

from . import procfs
from .clip import AUDIO_FRAME_MS, FPS, Clip
from .sdp import (AUDIO_MID, AUDIO_PT, EXT_ABS_SEND_TIME_ID, EXT_MID_ID, EXT_RID_ID, VIDEO_MID, VIDEO_PT, LocalPeer,
                  RemotePeer)
from .targets import Target

SO_TIMESTAMPNS = 35  # Linux; the socket module has no constant for it
TIMESPEC = struct.Struct("@qq")
STAMP = struct.Struct("!QI")  # send time (CLOCK_MONOTONIC ns), stream packet count
RTP_FIXED = struct.Struct("!BBHII")
VP8_DESCRIPTOR_BYTES = 4  # X=1, I=1 with a 15-bit picture id
VP8_STAMP_OFFSET = VP8_DESCRIPTOR_BYTES + 10  # after the frame tag + keyframe start code + size
OPUS_STAMP_OFFSET = 0
RED_TS_OFFSET = 48000 * AUDIO_FRAME_MS // 1000  # the redundant block is the previous frame (distance 1)
RED_MAX_BLOCK = 0x3FF  # the 10-bit block length of RFC 2198
MAX_VP8_CHUNK = 1146  # + descriptor = 1,150-byte payloads, ~1,190 bytes on the wire
PACING_FACTOR = 2.5  # libwebrtc's pacer sends at 2.5x the target bitrate
PACER_BURST_S = 0.010
KEYFRAME_REQUEST_MIN_INTERVAL_S = 0.3
CONSENT_INTERVAL_S = 5.0  # servers close peers silent for 30 s
SAMPLE_EVERY = 50
VIEWER_RCVBUF_BYTES = 1 << 19
DRAIN_INTERVAL_S = 0.003
CONNECT_TIMEOUT_S = 15.0


TOTALS = ("video", "audio", "lost", "late", "frames", "rtcp", "other", "decrypted", "decrypt_failures",
          "misordered")


class ConnectError(Exception):
    pass


def rtp_payload_offset(packet: bytes) -> int:
    """Header length: fixed part, CSRCs, and the extension block if X is set."""
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(packet[offset + 2:offset + 4], "big")
    return offset


def red_blocks(payload: bytes | bytearray, pos: int, end: int) -> list[tuple[int, int, int]] | None:
    """The blocks of the RFC 2198 RED payload ``payload[pos:end]``: (PT, start, length) of each,
    the redundant ones in order and the primary last; None if it does not parse.

    Headers of 4 bytes while F is set (F | PT | 14-bit timestamp offset | 10-bit length),
    a 1-byte header (F=0 | PT) for the primary, then the blocks' data in the same order,
    the primary's running to the end."""
    headers: list[tuple[int, int]] = []
    while True:
        if pos >= end:
            return None
        b0 = payload[pos]
        if not b0 & 0x80:
            break
        if pos + 4 > end:
            return None
        headers.append((b0 & 0x7F, (payload[pos + 2] & 0x03) << 8 | payload[pos + 3]))
        pos += 4
    primary_pt = payload[pos] & 0x7F
    pos += 1
    blocks = []
    for pt, length in headers:
        blocks.append((pt, pos, length))
        pos += length
    if pos > end:
        return None
    blocks.append((primary_pt, pos, end - pos))
    return blocks


def vp8_keyframe_start(payload: bytes) -> bool:
    """First packet of a VP8 keyframe: S=1, partition 0, and P=0 in the VP8 payload header."""
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x0F:
        return False
    i = 1
    if b0 & 0x80:
        x = payload[1]
        i = 2
        if x & 0x80:
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:
            i += 1
        if x & 0x30:
            i += 1
    return len(payload) > i and not payload[i] & 0x01


def rtcp_requests_keyframe(packet: bytes) -> bool:
    """A PLI or FIR anywhere in a compound RTCP packet."""
    offset = 0
    while offset + 4 <= len(packet):
        if packet[offset + 1] == 206 and packet[offset] & 0x1F in (1, 4):
            return True
        offset += 4 * (int.from_bytes(packet[offset + 2:offset + 4], "big") + 1)
    return False


def rtcp_keyframe_ssrcs(packet: bytes) -> set[int]:
    """The media SSRCs that the PLIs and FIRs of a compound RTCP packet ask a keyframe of
    (0 for a request that names none)."""
    ssrcs: set[int] = set()
    offset = 0
    while offset + 4 <= len(packet):
        end = offset + 4 * (int.from_bytes(packet[offset + 2:offset + 4], "big") + 1)
        if packet[offset + 1] == 206:
            fmt = packet[offset] & 0x1F
            if fmt == 1:  # PLI: the media source SSRC
                ssrcs.add(int.from_bytes(packet[offset + 8:offset + 12], "big"))
            elif fmt == 4:  # FIR: one 8-byte FCI entry per SSRC
                for fci in range(offset + 12, min(end, len(packet)) - 7, 8):
                    ssrcs.add(int.from_bytes(packet[fci:fci + 4], "big"))
        offset = end
    return ssrcs


def realtime_minus_monotonic_ns() -> int:
    """Offset to turn kernel receive timestamps (CLOCK_REALTIME) into CLOCK_MONOTONIC.

    The tightest of a few bracketing reads; NTP slew over a run is far below a microsecond.
    """
    best = None
    for _ in range(5):
        a = time.monotonic_ns()
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, r - (a + b) // 2)
    assert best is not None
    return best[1]


class RawPeer:
    """A UDP socket (127.0.0.1, or our end of Janus's veth) with our ICE credentials, a DTLS client,
    and SRTP keys once connected."""

    def __init__(self, certificate: DtlsCertificate, context: Any, *, host: str = "127.0.0.1",
                 rcvbuf: int = VIEWER_RCVBUF_BYTES, timestamps: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if timestamps:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.host = host
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.port = self.sock.getsockname()[1]
        self.ufrag = secrets.token_hex(4)
        self.pwd = secrets.token_hex(16)
        self.tiebreaker = random.getrandbits(63)
        self.certificate = certificate
        self.context = context
        self.remote: RemotePeer | None = None
        self.dtls: DtlsEndpoint | None = None
        self.srtp: SrtpSession | None = None

    def local_peer(self, direction: str, *, red: bool = False, **ssrcs: int) -> LocalPeer:
        return LocalPeer(direction=direction, ice_ufrag=self.ufrag, ice_pwd=self.pwd,
                         fingerprint_sha256=self.certificate.fingerprint_sha256, port=self.port, host=self.host,
                         red=red, **ssrcs)

    def send_check(self) -> None:
        """A connectivity (or consent) check, as the controlling agent: we are always the offerer."""
        remote = self.remote
        assert remote is not None
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{remote.ice_ufrag}:{self.ufrag}"
        request.attributes["PRIORITY"] = 0x6E0001FF
        request.attributes["ICE-CONTROLLING"] = self.tiebreaker
        request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(remote.ice_pwd.encode())
        try:
            self.sock.sendto(bytes(request), remote.address)
        except OSError:
            pass

    def on_stun(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Answer a server's check (full ICE, consent); return True for a success response to ours."""
        try:
            message = stun.parse_message(data)
        except Exception:  # aioice raises several types on junk
            return False
        if message.message_method != stun.Method.BINDING:
            return False
        if message.message_class == stun.Class.RESPONSE:
            return True
        if message.message_class != stun.Class.REQUEST:
            return False
        username = message.attributes.get("USERNAME", "")
        if not (isinstance(username, str) and username.startswith(self.ufrag + ":")
                and message.check_message_integrity(self.pwd.encode())):
            return False
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=message.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        response.add_message_integrity(self.pwd.encode())
        try:
            self.sock.sendto(bytes(response), addr)
        except OSError:
            pass
        return False

    def _send_all(self, datagrams: list[bytes]) -> None:
        assert self.remote is not None
        for d in datagrams:
            try:
                self.sock.sendto(d, self.remote.address)
            except OSError:
                pass

    async def connect(self, remote: RemotePeer, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """ICE, then DTLS. Media that follows the handshake stays queued in the socket for the drain."""
        loop = asyncio.get_running_loop()
        self.remote = remote
        dtls = self.dtls = DtlsEndpoint(self.certificate, remote.dtls_role, remote.fingerprint, self.context)
        done: asyncio.Future[None] = loop.create_future()
        ice_ok = False
        # Our first DTLS flight, resent on a short timer until the server answers: some
        # servers (Janus) drop a ClientHello that races their own ICE state change, and
        # OpenSSL would wait a full second to retransmit where libwebrtc waits ~50 ms.
        first_flight: list[bytes] = []
        dtls_heard = False

        def on_readable() -> None:
            nonlocal ice_ok, dtls_heard
            for _ in range(64):
                try:
                    data, addr = self.sock.recvfrom(4096)
                except BlockingIOError:
                    return
                except OSError:
                    continue  # an ICMP error queued on the socket
                if not data or done.done():
                    return
                first = data[0]
                if first < 4:
                    if self.on_stun(data, addr) and not ice_ok:
                        ice_ok = True
                        first_flight.extend(dtls.start())
                        self._send_all(first_flight)
                elif 20 <= first < 64:
                    dtls_heard = True
                    self._send_all(dtls.receive(data))
                    if dtls.state == "connected":
                        done.set_result(None)
                        return
                    if dtls.state in ("failed", "closed"):
                        done.set_exception(ConnectError(f"DTLS {dtls.state}: {dtls.error}"))
                        return
                # SRTP before our handshake finished cannot be decrypted yet: dropped.

        loop.add_reader(self.fd, on_readable)
        try:
            deadline = loop.time() + timeout_s
            next_check = 0.0
            flight_wait = 0.05
            next_flight = loop.time() + flight_wait
            while not done.done():
                now = loop.time()
                if now > deadline:
                    raise ConnectError(f"no {'DTLS' if ice_ok else 'ICE'} connection in {timeout_s:.0f} s")
                # Full-ICE servers need our nominating check after theirs succeeded: keep sending.
                if now >= next_check and (not ice_ok or not remote.ice_lite):
                    self.send_check()
                    next_check = now + (0.1 if not ice_ok else 0.3)
                if first_flight and not dtls_heard and now >= next_flight and flight_wait < 0.5:
                    self._send_all(first_flight)
                    flight_wait *= 2
                    next_flight = now + flight_wait
                if dtls.state == "connecting":
                    wait = dtls.next_timeout_s()
                    if wait is not None and wait <= 0:
                        self._send_all(dtls.handle_timeout())
                await asyncio.wait([done], timeout=0.02)
        finally:
            loop.remove_reader(self.fd)
        done.result()
        assert dtls.srtp_keys is not None
        self.srtp = SrtpSession(dtls.srtp_keys)

    def on_control(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        """STUN and late DTLS after the handshake (a retransmitted flight, close_notify)."""
        first = data[0]
        if first < 4:
            assert self.remote is not None
            self.on_stun(data, addr or self.remote.address)
        elif 20 <= first < 64 and self.dtls is not None:
            self._send_all(self.dtls.receive(data))

    def close(self) -> None:
        self.sock.close()


class _Stream:
    """One outgoing RTP stream of the publisher."""

    def __init__(self, pt: int, ssrc: int, mid: str, clock_rate: int, rid: str = "") -> None:
        self.pt = pt
        self.ssrc = ssrc
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.count = 0  # packets sent: the 4-byte sequence in the stamp
        self.clock_rate = clock_rate
        self.rid = rid
        # One-byte header extensions: mid, abs-send-time (filled per packet), then the rid
        # (simulcast layers, on every packet as Chrome sends it until the SSRC is known) and
        # zero padding to a 32-bit boundary. Without a rid: 2 bytes of padding.
        elements = 1 + len(mid) + 4 + (1 + len(rid) if rid else 0)
        words = -(-elements // 4)
        self.ext_prefix = (b"\xbe\xde" + words.to_bytes(2, "big") + bytes([EXT_MID_ID << 4 | (len(mid) - 1)])
                           + mid.encode() + bytes([EXT_ABS_SEND_TIME_ID << 4 | 2]))
        rid_element = bytes([EXT_RID_ID << 4 | (len(rid) - 1)]) + rid.encode() if rid else b""
        self.ext_suffix = rid_element + bytes(4 * words - elements)


class _VideoLayer:
    """One encoding of the publisher's video: the single stream, or one simulcast layer (rid)."""

    def __init__(self, stream: _Stream, clip: Clip) -> None:
        self.stream = stream
        self.frames = [Publisher._packetize(frame) for frame in clip.video_frames]
        self.bitrate_bps = clip.video_bitrate_bps
        self.frame_index = 0
        self.picture_id = random.getrandbits(15)
        self.keyframe_requested = False
        self.keyframes_sent = 0


class Publisher(RawPeer):
    """The synthetic publisher: loops the clip in real time, paced, answering PLI with a keyframe.

    ``simulcast``: (rid, clip) per layer, lowest first (at most 3, as the server accepts):
    the video goes out as one rid-tagged SSRC per layer, unsignalled as Chrome's are
    (the server learns each from the rid extension), each layer looping its own clip's
    GOP; ``clip`` then only gives the audio. All layers share one pacer, at 2.5x their
    summed rate, and a PLI/FIR restarts the GOP of the layer(s) it names.

    ``red``: also offer RFC 2198 RED for the Opus track (after opus, as Chrome does); if
    the answer lists red first, every audio frame goes out as RED under its PT, with the
    previous frame (as it was sent, stamp included) as one redundant block.
    """

    def __init__(self, clip: Clip, certificate: DtlsCertificate, context: Any, *, stamps: bool,
                 host: str = "127.0.0.1", simulcast: list[tuple[str, Clip]] | None = None,
                 red: bool = False) -> None:
        super().__init__(certificate, context, host=host, rcvbuf=1 << 20)
        self.stamps = stamps
        self.red = red
        self.audio_red_pt = -1  # >= 0: sending RED under this PT (the answer asked for it)
        self._red_previous = b""  # the last frame as sent: the next RED packet's redundant block
        self.red_packets = 0  # RED packets sent with a redundant block
        self.audio = _Stream(AUDIO_PT, random.getrandbits(32) or 1, AUDIO_MID, 48000)
        self.rtx_ssrc = random.getrandbits(32) or 3
        if simulcast:
            self.layers = [_VideoLayer(_Stream(VIDEO_PT, random.getrandbits(32) or 4 + i, VIDEO_MID, 90000, rid),
                                       layer_clip) for i, (rid, layer_clip) in enumerate(simulcast)]
        else:
            self.layers = [_VideoLayer(_Stream(VIDEO_PT, random.getrandbits(32) or 2, VIDEO_MID, 90000), clip)]
        self.rids = [layer.stream.rid for layer in self.layers if layer.stream.rid]
        self.video = self.layers[-1].stream  # the single stream, or the top layer
        self.video_frames = self.layers[-1].frames
        self.audio_frames = [bytearray(frame) for frame in clip.audio_frames]
        self.video_bitrate_bps = sum(layer.bitrate_bps for layer in self.layers)
        self._audio_index = 0
        self._queue: collections.deque[tuple[_Stream, bytearray, bool, int]] = collections.deque()
        self._last_keyframe_request = 0.0
        self._task: asyncio.Task[None] | None = None
        self.paused = False  # the benchmark pauses the source to let a server drain its backlog
        self.started_at = 0.0
        self.keyframe_requests = 0
        self.bytes_sent = 0

    @staticmethod
    def _packetize(frame: bytes) -> list[bytearray]:
        """RFC 7741 payloads of balanced size; picture id patched in at send time."""
        count = -(-len(frame) // MAX_VP8_CHUNK)
        size = -(-len(frame) // count)
        return [bytearray([0x90 if i == 0 else 0x80, 0x80, 0x80, 0x00]) + frame[i * size:(i + 1) * size]
                for i in range(count)]

    async def start(self, target: Target, room: str) -> None:
        if self.rids:
            local = LocalPeer(direction="sendonly", ice_ufrag=self.ufrag, ice_pwd=self.pwd,
                              fingerprint_sha256=self.certificate.fingerprint_sha256, port=self.port, host=self.host,
                              audio_ssrc=self.audio.ssrc, rids=tuple(self.rids), red=self.red)
        else:
            local = self.local_peer("sendonly", red=self.red, audio_ssrc=self.audio.ssrc, video_ssrc=self.video.ssrc,
                                    rtx_ssrc=self.rtx_ssrc)
        remote = await target.publish(room, local)
        if self.rids and remote.simulcast_rids != self.rids:
            await target.end_session(remote)
            raise ConnectError(f"the server accepted simulcast layers {remote.simulcast_rids}, we offered {self.rids}")
        self.audio.pt = remote.audio_pt or AUDIO_PT
        if self.red and remote.audio_red_first and remote.audio_red_pt is not None:
            self.audio_red_pt = remote.audio_red_pt
        for layer in self.layers:
            layer.stream.pt = remote.video_pt or VIDEO_PT
        await self.connect(remote)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self._on_readable)
        self._task = loop.create_task(self._run())

    def packets_sent(self) -> int:
        return self.audio.count + sum(layer.stream.count for layer in self.layers)

    @property
    def keyframes_sent(self) -> int:
        return sum(layer.keyframes_sent for layer in self.layers)

    @property
    def nominal_pps(self) -> float:
        """Packets per second the clip makes when looped untouched (video, every layer, + audio)."""
        video = sum(sum(map(len, layer.frames)) * FPS / len(layer.frames) for layer in self.layers)
        return video + 1000 / AUDIO_FRAME_MS

    def layer_pps(self) -> dict[str, float]:
        """Nominal packets per second of each layer's video (key "" without simulcast)."""
        return {layer.stream.rid: sum(map(len, layer.frames)) * FPS / len(layer.frames) for layer in self.layers}

    def _send(self, stream: _Stream, payload: bytearray, marker: bool, ts: int, stamp_offset: int,
              pt: int = -1) -> int:
        """Stamp, number, protect and send one packet of ``stream`` (under ``pt`` if given: RED)."""
        now = time.monotonic_ns()
        if self.stamps and len(payload) >= stamp_offset + STAMP.size:
            STAMP.pack_into(payload, stamp_offset, now, stream.count & 0xFFFFFFFF)
        abs_send_time = ((now << 18) // 1_000_000_000) & 0xFFFFFF
        packet = (RTP_FIXED.pack(0x90, (0x80 if marker else 0) | (pt if pt >= 0 else stream.pt), stream.seq, ts,
                                 stream.ssrc)
                  + stream.ext_prefix + abs_send_time.to_bytes(3, "big") + stream.ext_suffix + payload)
        stream.seq = (stream.seq + 1) & 0xFFFF
        stream.count += 1
        assert self.srtp is not None and self.remote is not None
        data = self.srtp.protect(packet)
        try:
            self.sock.sendto(data, self.remote.address)
        except OSError:
            pass
        self.bytes_sent += len(data)
        return len(data)

    def _send_audio(self) -> None:
        payload = self.audio_frames[self._audio_index]
        self._audio_index = (self._audio_index + 1) % len(self.audio_frames)
        if self.audio_red_pt >= 0:
            self._send_red(payload)
        else:
            self._send(self.audio, payload, False, self.audio.ts, OPUS_STAMP_OFFSET)
        self.audio.ts = (self.audio.ts + 48000 * AUDIO_FRAME_MS // 1000) & 0xFFFFFFFF

    def _send_red(self, frame: bytearray) -> None:
        """One Opus frame as RFC 2198 RED: the previous frame, as it was sent, in one redundant
        block (timestamp offset 960, one 20 ms frame), then this one as the primary. The
        first packet, or one after a frame too long for a block, carries the primary alone."""
        opus = self.audio.pt
        previous = self._red_previous
        if previous and len(previous) <= RED_MAX_BLOCK:
            header = bytes([0x80 | opus, RED_TS_OFFSET >> 6 & 0xFF, (RED_TS_OFFSET & 0x3F) << 2 | len(previous) >> 8,
                            len(previous) & 0xFF, opus])
            self.red_packets += 1
        else:
            header, previous = bytes([opus]), b""
        start = len(header) + len(previous)
        payload = bytearray(header) + previous + frame
        self._send(self.audio, payload, False, self.audio.ts, start + OPUS_STAMP_OFFSET, pt=self.audio_red_pt)
        self._red_previous = bytes(payload[start:])

    def _queue_frame(self) -> None:
        """The next frame of every layer, lowest layer first."""
        for layer in self.layers:
            if layer.keyframe_requested:
                layer.keyframe_requested = False
                layer.frame_index = 0
            if layer.frame_index == 0:
                layer.keyframes_sent += 1
            packets = layer.frames[layer.frame_index]
            layer.frame_index = (layer.frame_index + 1) % len(layer.frames)
            pid = layer.picture_id
            layer.picture_id = (pid + 1) & 0x7FFF
            stream = layer.stream
            for i, payload in enumerate(packets):
                payload[2] = 0x80 | pid >> 8
                payload[3] = pid & 0xFF
                self._queue.append((stream, payload, i == len(packets) - 1, stream.ts))
            stream.ts = (stream.ts + 90000 // FPS) & 0xFFFFFFFF

    def _pace_from(self, now: float) -> None:
        """(Re)start the media clock at ``now``, with an empty pacing budget."""
        self._next_audio = self._next_video = self._last = now
        self._budget = 0.0

    def _pace(self, now: float) -> float:
        """Send what is due at ``now`` (audio frames; video frames through the pacing
        budget); returns when to come back. Shared by the asyncio loop here and the
        locust users' greenlet."""
        rate_bytes_s = PACING_FACTOR * self.video_bitrate_bps / 8
        if now - self._next_audio > 0.5:  # after a long stall, resume rather than burst
            self._next_audio = self._next_video = now
        while now >= self._next_audio:
            self._send_audio()
            self._next_audio += AUDIO_FRAME_MS / 1000
        while now >= self._next_video:
            self._queue_frame()
            self._next_video += 1 / FPS
        self._budget = min(self._budget + (now - self._last) * rate_bytes_s, rate_bytes_s * PACER_BURST_S)
        self._last = now
        queue = self._queue
        while queue and self._budget > 0:
            stream, payload, marker, ts = queue.popleft()
            self._budget -= self._send(stream, payload, marker, ts, VP8_STAMP_OFFSET)
        return now + 0.002 if queue else min(self._next_audio, self._next_video)

    async def _run(self) -> None:
        clock = time.monotonic
        self.started_at = clock()
        self._pace_from(self.started_at)
        while True:
            if self.paused:
                await asyncio.sleep(0.01)
                self._pace_from(clock())
                continue
            wake = self._pace(clock())
            await asyncio.sleep(max(0.0, wake - clock()))

    def _on_readable(self) -> None:
        """RTCP from the server (PLI/FIR restart the GOP; RR and REMB are ignored), STUN, DTLS."""
        for _ in range(64):
            try:
                data, addr = self.sock.recvfrom(4096)
            except BlockingIOError:
                return
            except OSError:
                continue
            if not data:
                continue
            if 128 <= data[0] < 192 and len(data) > 1 and 192 <= data[1] <= 223:
                assert self.srtp is not None
                try:
                    plain = self.srtp.unprotect_rtcp(data)
                except pylibsrtp.Error:
                    continue
                if rtcp_requests_keyframe(plain):
                    self.keyframe_requests += 1
                    now = time.monotonic()
                    if now - self._last_keyframe_request >= KEYFRAME_REQUEST_MIN_INTERVAL_S:
                        self._last_keyframe_request = now
                        named = rtcp_keyframe_ssrcs(plain) if len(self.layers) > 1 else set()
                        chosen = [layer for layer in self.layers if layer.stream.ssrc in named]
                        for layer in chosen or self.layers:
                            layer.keyframe_requested = True
            else:
                self.on_control(data, addr)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            asyncio.get_running_loop().remove_reader(self.fd)
        except (ValueError, OSError):
            pass
        self.close()


class Viewer(RawPeer):
    """One WHEP viewer: counts every packet from its header, decrypts a sample.

    ``red``: offer RFC 2198 RED for audio too; RED packets (the answer's red PT) count as
    audio, and a decrypted one yields every block's stamp. ``track_frames``: keep, for
    each audio frame (by the count in its stamp), when it first became available, from
    its primary or a later packet's redundant block (every audio packet must be
    decrypted for that: ``sample_every=1``)."""

    def __init__(self, certificate: DtlsCertificate, context: Any, *, stamps: bool, sample_every: int,
                 host: str = "127.0.0.1", red: bool = False, track_frames: bool = False) -> None:
        super().__init__(certificate, context, host=host, timestamps=True)
        self.stamps = stamps
        self.red = red
        self.audio_red_pt = -1  # the answer's RED PT (a RED viewer whose answer kept it)
        self.track_frames = track_frames
        # audio frame count -> (when it first became available, its send time), CLOCK_MONOTONIC ns
        self.frames_ns: dict[int, tuple[int, int]] = {}
        self.frames_floor: int | None = None  # frames below are before the window
        self.frames_top = -1  # the highest frame count seen
        self.red_repaired = 0  # frames first available from a redundant block
        self.audio_pts: collections.Counter[int] = collections.Counter()  # decrypted audio packets by PT
        self.red_blocks = 0  # redundant blocks in the RED packets decrypted
        self.red_malformed = 0  # RED packets that do not parse or carry blocks of another PT than our codec's
        self.other_pts: collections.Counter[int] = collections.Counter()  # RTP of neither stream, by PT
        self.sample_every = sample_every
        self.video_pt = VIDEO_PT
        self.audio_pt = AUDIO_PT
        # Cumulative counters, read by the window accounting.
        self.video = self.audio = self.lost = self.late = self.frames = 0
        self.rtcp = self.other = self.decrypted = self.decrypt_failures = self.misordered = 0
        # Audio alone (bench/latency): its send-to-arrival times, and the longest silence.
        self.audio_latency_ns: list[int] = []
        self.audio_last_ns = 0
        self.audio_max_gap_ns = 0
        self._next_video = self._next_audio = -1
        self._countdown = random.randint(1, sample_every)
        self._seq_delta: list[int | None] = [None, None]  # per stream (video, audio): rtp seq - stamp count
        self._last_count = [-1, -1]
        # First-frame probe: decrypt every video packet until the first keyframe packet.
        self.watch_keyframe = False
        self.joined_ns = 0
        self.first_frame_ns = 0

    def set_remote_payload_types(self) -> None:
        assert self.remote is not None
        self.video_pt = self.remote.video_pt if self.remote.video_pt is not None else VIDEO_PT
        self.audio_pt = self.remote.audio_pt if self.remote.audio_pt is not None else AUDIO_PT
        self.audio_red_pt = self.remote.audio_red_pt if self.remote.audio_red_pt is not None else -1

    def drain(self, buf: bytearray, bufs: list[bytearray], latency_ns: list[int], clock_offset_ns: int) -> None:
        """Read everything queued on the socket. The hot loop: locals only; per packet it reads
        four header bytes, and decrypts only the sampled ones."""
        recv_into = self.sock.recv_into
        recvmsg_into = self.sock.recvmsg_into
        vpt, apt, rpt = self.video_pt, self.audio_pt, self.audio_red_pt
        next_video, next_audio = self._next_video, self._next_audio
        video = audio = lost = late = frames = 0
        countdown = self._countdown
        watch = self.watch_keyframe
        try:
            while True:
                arrival_ns = 0
                if countdown > 0:
                    try:
                        n = recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue
                else:
                    try:
                        n, ancillary, _, _ = recvmsg_into(bufs, 64)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue
                    for _level, kind, data in ancillary:
                        if kind == SO_TIMESTAMPNS:
                            sec, nsec = TIMESPEC.unpack_from(data)
                            arrival_ns = sec * 1_000_000_000 + nsec - clock_offset_ns
                if n < 12:
                    continue
                b1 = buf[1]
                if buf[0] & 0xC0 != 0x80 or 192 <= b1 <= 223:
                    if buf[0] & 0xC0 == 0x80:
                        self.rtcp += 1
                    else:
                        self.on_control(bytes(buf[:n]))
                    continue
                pt = b1 & 0x7F
                seq = buf[2] << 8 | buf[3]
                first = False
                if pt == vpt:
                    first = next_video < 0
                    if seq != next_video and not first:
                        gap = (seq - next_video) & 0xFFFF
                        if gap >= 0x8000:
                            late += 1
                            continue
                        lost += gap
                    next_video = (seq + 1) & 0xFFFF
                    video += 1
                    if b1 & 0x80:
                        frames += 1
                elif pt == apt or pt == rpt:
                    first = next_audio < 0
                    if seq != next_audio and not first:
                        gap = (seq - next_audio) & 0xFFFF
                        if gap >= 0x8000:
                            late += 1
                            continue
                        lost += gap
                    next_audio = (seq + 1) & 0xFFFF
                    audio += 1
                else:
                    self.other += 1
                    self.other_pts[pt] += 1
                    continue
                countdown -= 1
                # A stream's first packet is always decrypted: libsrtp takes the rollover
                # counter to be 0 at the first packet it sees, so starting mid-stream after
                # a sequence wrap would fail every later sample of that stream.
                if arrival_ns or first or (watch and pt == vpt):
                    self._inspect(bytes(buf[:n]), pt == vpt, seq, arrival_ns, latency_ns)
                    watch = self.watch_keyframe
                    if arrival_ns:
                        countdown = self.sample_every - 1  # the next sample is packet sample_every from here
        finally:
            self._next_video, self._next_audio = next_video, next_audio
            self._countdown = countdown
            self.video += video
            self.audio += audio
            self.lost += lost
            self.late += late
            self.frames += frames

    def _inspect(self, data: bytes, is_video: bool, seq: int, arrival_ns: int, latency_ns: list[int]) -> None:
        """Decrypt one packet: check the keys, the order, read the stamp; spot a probe's first keyframe."""
        assert self.srtp is not None
        try:
            plain = self.srtp.unprotect(data)
        except pylibsrtp.Error:
            self.decrypt_failures += 1
            return
        self.decrypted += 1
        offset = rtp_payload_offset(plain)
        if self.watch_keyframe and is_video and len(plain) > offset and vp8_keyframe_start(plain[offset:]):
            self.first_frame_ns = time.monotonic_ns()
            self.watch_keyframe = False
        if not (arrival_ns and self.stamps):
            return
        if is_video:
            offset += VP8_STAMP_OFFSET
        else:
            pt = plain[1] & 0x7F
            self.audio_pts[pt] += 1
            if pt == self.audio_red_pt:
                blocks = red_blocks(plain, offset, len(plain))
                if blocks is None or any(block_pt != self.audio_pt for block_pt, _, _ in blocks):
                    self.red_malformed += 1  # not RED, or blocks not renumbered to our codec PT
                    return
                for _pt, start, length in blocks[:-1]:
                    self.red_blocks += 1
                    if self.track_frames and length >= OPUS_STAMP_OFFSET + STAMP.size:
                        block_sent_ns, block_count = STAMP.unpack_from(plain, start + OPUS_STAMP_OFFSET)
                        self._frame_available(block_count, arrival_ns, block_sent_ns, True)
                offset = blocks[-1][1]
            offset += OPUS_STAMP_OFFSET
        if len(plain) < offset + STAMP.size:
            return
        sent_ns, count = STAMP.unpack_from(plain, offset)
        latency_ns.append(arrival_ns - sent_ns)
        if not is_video:
            if self.track_frames:
                self._frame_available(count, arrival_ns, sent_ns, False)
            self.audio_latency_ns.append(arrival_ns - sent_ns)
            if self.audio_last_ns:
                self.audio_max_gap_ns = max(self.audio_max_gap_ns, arrival_ns - self.audio_last_ns)
            self.audio_last_ns = arrival_ns
        # An SFU shifts each stream's sequence numbers by a constant and never reorders.
        stream = 0 if is_video else 1
        delta = (seq - count) & 0xFFFF
        if self._seq_delta[stream] is None:
            self._seq_delta[stream] = delta
        elif delta != self._seq_delta[stream] or count <= self._last_count[stream]:
            self.misordered += 1
        self._last_count[stream] = count

    def _frame_available(self, count: int, arrival_ns: int, sent_ns: int, redundant: bool) -> None:
        if count in self.frames_ns or (self.frames_floor is not None and count < self.frames_floor):
            return
        self.frames_ns[count] = (arrival_ns, sent_ns)
        self.frames_top = max(self.frames_top, count)
        if redundant:
            self.red_repaired += 1

    def start_frames(self) -> None:
        """A new window of audio frames: from the frame after the newest seen so far."""
        self.frames_floor = self.frames_top + 1 if self.frames_top >= 0 else None
        self.frames_ns = {}
        self.red_repaired = 0

    def audio_frame_stats(self) -> dict[str, Any]:
        """Audio frames of the window (``track_frames``), from the first to the newest seen:
        ``frames`` (that span), ``red_repaired`` (first available from a redundant block),
        ``unrepaired`` (never available: primary and redundant copy lost), ``max_gap_ms``
        (the longest time between two consecutive frames becoming available; a frame never
        available makes the gap span it), where it was (``max_gap_frames``: the counts of
        the frames on either side; ``max_gap_sent_ms``: how far apart the publisher sent
        them; ``max_gap_end_us``: send to arrival of the frame that ended it) and
        ``max_hole_ms`` (the longest run of consecutive frames never available, in audio
        time)."""
        frames = self.frames_ns
        if not frames:
            return {"frames": 0, "red_repaired": 0, "unrepaired": 0, "max_gap_ms": None, "max_gap_frames": None,
                    "max_gap_sent_ms": None, "max_gap_end_us": None, "max_hole_ms": 0}
        lo = self.frames_floor if self.frames_floor is not None else min(frames)
        hi = max(frames)
        last: tuple[int, int] | None = None
        last_count = -1
        gap = missing = run = longest_run = 0
        where: tuple[int, int, int, int] | None = None  # frame counts, send gap (ns), end frame's latency (ns)
        for count in range(lo, hi + 1):
            frame = frames.get(count)
            if frame is None:
                missing += 1
                run += 1
                longest_run = max(longest_run, run)
                continue
            run = 0
            if last is not None and frame[0] - last[0] > gap:
                gap = frame[0] - last[0]
                where = (last_count, count, frame[1] - last[1], frame[0] - frame[1])
            last, last_count = frame, count
        return {"frames": hi - lo + 1, "red_repaired": self.red_repaired, "unrepaired": missing,
                "max_gap_ms": round(gap / 1e6, 2), "max_gap_frames": list(where[:2]) if where else None,
                "max_gap_sent_ms": round(where[2] / 1e6, 2) if where else None,
                "max_gap_end_us": where[3] // 1000 if where else None, "max_hole_ms": longest_run * AUDIO_FRAME_MS}


class LoadGen:
    """The publisher, the viewers, the drain sweep and the consent timer, on one event loop.

    ``clip`` None: viewers only (``publisher`` is None), for a load generator
    process that watches a room published by another one. ``simulcast``: see
    :class:`Publisher`. ``red``: the publisher and (unless ``add_viewers`` says
    otherwise) the viewers offer RFC 2198 RED for audio. ``track_frames``: viewers
    keep when each audio frame became available (:meth:`Viewer.audio_frame_stats`).
    """

    def __init__(self, target: Target, clip: Clip | None, *, room: str = "fanout", sample_every: int = SAMPLE_EVERY,
                 join_concurrency: int = 16, simulcast: list[tuple[str, Clip]] | None = None, red: bool = False,
                 track_frames: bool = False) -> None:
        self.target = target
        self.clip = clip
        self.room = room
        self.sample_every = sample_every
        self.join_concurrency = join_concurrency
        self.red = red
        self.track_frames = track_frames
        self.certificate = DtlsCertificate.generate()  # one for all peers: the fingerprint is per offer anyway
        self.context = self.certificate.context()
        self.publisher: Publisher | None = None
        if clip is not None:
            self.publisher = Publisher(clip, self.certificate, self.context, stamps=target.stamps_survive,
                                       host=target.peer_host, simulcast=simulcast, red=red)
        self.join_ms: list[float] = []  # WHEP POST to DTLS connected, per successful join
        self.joins_attempted = 0
        self.joins_in_flight = 0
        self.first_join_ns = 0  # CLOCK_MONOTONIC (system-wide): the first WHEP POST, the last join completed
        self.last_joined_ns = 0
        self.viewers: list[Viewer] = []
        self._by_fd: dict[int, Viewer] = {}
        self._epoll = select.epoll()
        self._buf = bytearray(4096)
        self._bufs = [self._buf]
        self.latency_ns: list[int] = []
        self.clock_offset_ns = realtime_minus_monotonic_ns()
        self.join_failures = 0
        self.join_errors: collections.Counter[str] = collections.Counter()
        self._retired: collections.Counter[str] = collections.Counter()  # counters of viewers that left
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.publisher is not None:
            await self.publisher.start(self.target, self.room)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._drain_forever()), loop.create_task(self._housekeeping())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.remove_viewers(len(self.viewers))
        if self.publisher is not None:
            await self.publisher.stop()
            if self.publisher.remote is not None:
                await self.target.end_session(self.publisher.remote)
        self._epoll.close()

    # --- viewers -----------------------------------------------------------------------

    async def _join(self, *, probe: bool = False, red: bool | None = None) -> Viewer | None:
        self.joins_attempted += 1
        self.joins_in_flight += 1
        if not self.first_join_ns:
            self.first_join_ns = time.monotonic_ns()
        try:
            return await self._join_one(probe, self.red if red is None else red)
        finally:
            self.joins_in_flight -= 1

    async def _join_one(self, probe: bool, red: bool = False) -> Viewer | None:
        viewer = Viewer(self.certificate, self.context, stamps=self.target.stamps_survive,
                        sample_every=self.sample_every, host=self.target.peer_host, red=red,
                        track_frames=self.track_frames)
        viewer.joined_ns = time.monotonic_ns()
        try:
            remote = await self.target.subscribe(self.room, viewer.local_peer("recvonly", red=red))
            viewer.remote = remote
            viewer.set_remote_payload_types()
            viewer.watch_keyframe = probe
            await viewer.connect(remote)
        except Exception as exc:
            self.join_failures += 1
            self.join_errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            if viewer.remote is not None:
                await self.target.end_session(viewer.remote)
            viewer.close()
            return None
        self.last_joined_ns = time.monotonic_ns()
        self.join_ms.append((self.last_joined_ns - viewer.joined_ns) / 1e6)
        self.viewers.append(viewer)
        self._by_fd[viewer.fd] = viewer
        self._epoll.register(viewer.fd, select.EPOLLIN)
        return viewer

    async def add_viewers(self, count: int, *, red: bool | None = None) -> int:
        """Join ``count`` viewers, ``join_concurrency`` at a time; return how many made it.
        ``red``: whether they offer RED (default: the generator's ``red``)."""
        gate = asyncio.Semaphore(self.join_concurrency)

        async def one() -> Viewer | None:
            async with gate:
                return await self._join(red=red)

        joined = await asyncio.gather(*(one() for _ in range(count)))
        return sum(v is not None for v in joined)

    async def add_viewers_at_rate(self, count: int, rate_per_s: float, max_in_flight: int = 64) -> int:
        """Start ``count`` joins at a fixed rate (one every 1/rate s), at most ``max_in_flight``
        at once (beyond that the schedule slips); return how many made it. Cancelling the
        task stops starting new joins and abandons those in flight."""
        gate = asyncio.Semaphore(max_in_flight)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks: list[asyncio.Task[Viewer | None]] = []

        async def one() -> Viewer | None:
            try:
                return await self._join()
            finally:
                gate.release()

        try:
            for k in range(count):
                delay = start + k / rate_per_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                tasks.append(loop.create_task(one()))
            joined = await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return sum(v is not None for v in joined)

    async def _remove(self, gone: list[Viewer]) -> None:
        for viewer in gone:
            if self._by_fd.pop(viewer.fd, None) is not None:
                self._epoll.unregister(viewer.fd)
        # End the sessions before closing sockets: the server would otherwise keep sending
        # into closed ports until consent expires.
        await asyncio.gather(*(self.target.end_session(v.remote) for v in gone if v.remote is not None))
        for viewer in gone:
            viewer.close()
            for key in TOTALS:
                self._retired[key] += getattr(viewer, key)

    async def remove_viewers(self, count: int) -> None:
        """Remove the newest ``count`` viewers."""
        if count <= 0:
            return
        gone = self.viewers[-count:]
        del self.viewers[-count:]
        await self._remove(gone)

    async def first_frame_ms(self, timeout_s: float = 5.0) -> float | None:
        """One joining viewer: WHEP POST to the first decrypted packet of a keyframe, then it leaves."""
        viewer = await self._join(probe=True)
        if viewer is None:
            return None
        deadline = time.monotonic() + timeout_s
        while viewer.first_frame_ns == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        self.viewers.remove(viewer)
        await self._remove([viewer])
        if viewer.first_frame_ns == 0:
            return None
        return (viewer.first_frame_ns - viewer.joined_ns) / 1e6

    # --- loops -------------------------------------------------------------------------

    async def _drain_forever(self) -> None:
        poll = self._epoll.poll
        by_fd = self._by_fd
        buf, bufs, latency = self._buf, self._bufs, self.latency_ns
        while True:
            offset = self.clock_offset_ns
            for fd, _ in poll(0, len(by_fd) + 1):
                viewer = by_fd.get(fd)
                if viewer is not None:
                    viewer.drain(buf, bufs, latency, offset)
            await asyncio.sleep(DRAIN_INTERVAL_S)

    async def _housekeeping(self) -> None:
        """Consent checks (each viewer every CONSENT_INTERVAL_S, spread out) and the clock offset."""
        tick = 0
        slots = int(CONSENT_INTERVAL_S)
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            self.clock_offset_ns = realtime_minus_monotonic_ns()
            for i, viewer in enumerate(self.viewers):
                if i % slots == tick % slots:
                    viewer.send_check()
            if tick % slots == 0 and self.publisher is not None:
                self.publisher.send_check()

    # --- accounting --------------------------------------------------------------------

    def ports(self) -> set[int]:
        return {v.port for v in self.viewers}

    def counters(self) -> dict[int, tuple[int, int, int, int, int, int]]:
        """Per viewer (by fd): video, audio, lost, late, video frames, decrypt failures, cumulative."""
        return {v.fd: (v.video, v.audio, v.lost, v.late, v.frames, v.decrypt_failures) for v in self.viewers}

    def totals(self) -> dict[str, int]:
        """Counters summed over every viewer of the run, those that already left included."""
        return {k: self._retired[k] + sum(getattr(v, k) for v in self.viewers) for k in TOTALS}


# --- standalone use --------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> None:
    from .clip import build_clip
    from .targets import WhipWhepTarget

    clip = build_clip()
    target = WhipWhepTarget(args.url)
    target.stamps_survive = not args.reencoding
    target.ice_lite = not args.reencoding
    await target.start()
    gen = LoadGen(target, clip, room=args.room)
    assert gen.publisher is not None
    try:
        await gen.start()
        joined = await gen.add_viewers(args.viewers)
        print(f"publisher connected; {joined}/{args.viewers} viewers joined "
              f"({gen.join_failures} failures: {dict(gen.join_errors)})")
        for _ in range(int(args.seconds)):
            before = gen.totals()
            drops0 = procfs.udp_drops(gen.ports())
            sent0, cpu0 = gen.publisher.packets_sent(), procfs.cpu_seconds(os.getpid())
            await asyncio.sleep(1.0)
            after = gen.totals()
            sent, cpu = gen.publisher.packets_sent() - sent0, procfs.cpu_seconds(os.getpid()) - cpu0
            delta = {k: after[k] - before[k] for k in after}
            received = delta["video"] + delta["audio"]
            loss = delta["lost"] / max(1, received + delta["lost"])
            lat = sorted(gen.latency_ns)
            gen.latency_ns.clear()
            p50 = f"{lat[len(lat) // 2] / 1e6:.2f}" if lat else "-"
            print(f"published {sent} pkt/s, generator CPU {100 * cpu:3.0f} %  received {received:7d} pkt/s  loss {100 * loss:5.2f} %  frames/viewer {delta['frames'] / max(1, joined):5.1f}"
                  f"  p50 latency {p50} ms  socket drops {procfs.udp_drops(gen.ports()) - drops0}"
                  f"  decrypt failures {after['decrypt_failures']}  misordered {after['misordered']}")
    finally:
        await gen.close()
        await target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen",
                                     description="Publish a synthetic stream and watch it with N raw viewers")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server with /whip and /whep")
    parser.add_argument("--room", default="fanout")
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reencoding", action="store_true",
                        help="the server re-encodes (aiortc): do not read payload stamps")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("the load generator only talks to 127.0.0.1")
    import uvloop

    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
