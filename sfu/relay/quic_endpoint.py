"""QuicEndpoint: a node's end of the QUIC relay between nodes or sites.

It runs in its own process (``python -m sfu.relay.quic_main``), between the
node's shards and its peers, so the shards' fast path stays as it is: a shard
sends a relayed track's RTP to this process over loopback exactly as it would
to another shard, and receives the far side's as if from one.

Between nodes every RTP and RTCP packet travels as one QUIC datagram (RFC 9221:
unreliable, no head-of-line blocking; the media keeps its own repair, NACK and
RTX end to end, Opus FEC and RED inside the payload), inside TLS 1.3 with the
cluster's certificates. No framing is needed: a packet's SSRC names its flow
(the relay's SSRCs are chosen per track by signalling, random 32-bit). Flows
are registered by signalling: ``out`` (our shard sends SSRC x: carry it to
that peer) and ``in`` (the peer sends SSRC x: hand it to that shard port);
RTCP feedback about a flow goes back the way the flow came.

The side with out-flows connects; a connection that dies (a cut link: no
answer to our pings within ``IDLE_TIMEOUT_S``) is dialled again until it is
back, and the flows carry on: viewers keep their sessions, with a gap.

Control travels on one bidirectional stream per connection (reliable, in order;
one JSON object a line), opened by the dialler:

- ``hello`` {from: "host:port", out: [ssrc], auth}: who we are (the address the
  peer knows us by) and the flows we send it, both ways at the start of every
  connection. The dialler knows whom it reached (TLS: the peer's certificate is
  the cluster CA's); the side dialled knows the dialler by its hello, whose
  ``auth`` (HMAC-SHA256 of ``from`` under a key derived from the cluster's
  secret) it checks: until then, it takes nothing from that connection, and a
  wrong one closes it, so nobody outside the cluster can pose as a node and be
  sent its media. It resubscribes after a cut: each side checks the other still
  sends every flow it expects (``missing_flows``), and a side whose connection is
  new after a lost one asks at once for a keyframe on each flow it receives.
- ``keyframe`` {ssrcs}: the sender asks its shard for a keyframe of each (a PLI,
  as a viewer would): what the cut lost cannot be repaired by NACK. On the
  stream it cannot be lost, as a PLI datagram on a lossy path could.
Per peer we keep RTT (QUIC's smoothed estimate), datagrams each way, RTP
packets lost (sequence gaps on in-flows) and reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.events import (
    ConnectionTerminated, DatagramFrameReceived, HandshakeCompleted, QuicEvent, StreamDataReceived,
)

ALPN = "sfu-relay"
SERVER_NAME = "sfu-relay"  # the name cluster relay certificates carry
IDLE_TIMEOUT_S = 2.0
QUIC_PACKET = 1452  # UDP payload of a 1500-byte IPv4 path: room for a 1,200-byte RTP packet and QUIC's ~40
PING_INTERVAL_S = 0.25
REDIAL_S = (0.1, 0.25, 0.5, 1.0)
MAX_DATAGRAM = 1400  # larger RTP would not fit one QUIC packet: dropped and counted
MAX_CONTROL_LINE = 64 * 1024  # a control message longer than this is a broken or hostile peer
RELAY_RTCP_SSRC = 0x5E1A7001  # the sender SSRC of the keyframe requests the relay makes itself


class MediaPacedControl(QuicCongestionControl):
    """No congestion window of QUIC's own: every datagram goes out at once.

    What crosses the relay is already rate-controlled by its senders (publishers'
    bandwidth estimation, our per-viewer layer choice) and repaired end to end
    (NACK, FEC, keyframes). A loss-based window on top of that (NewReno halves at
    each loss, and a 1 % lossy path keeps it small) does not drop media, it
    queues it: measured, seconds of added delay. Bytes in flight are still
    counted, for QUIC's loss detection.
    """

    WINDOW = 64 * 1024 * 1024

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.congestion_window = self.WINDOW

    def on_packet_acked(self, *, now: float, packet: Any) -> None:
        self.bytes_in_flight -= packet.sent_bytes

    def on_packet_sent(self, *, packet: Any) -> None:
        self.bytes_in_flight += packet.sent_bytes

    def on_packets_expired(self, *, packets: Any) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Any) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_persistent_congestion(self) -> None:
        pass

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        pass


register_congestion_control("sfu-media", MediaPacedControl)
MAX_PENDING_DATAGRAMS = 256  # beyond this, a datagram is dropped rather than queued (late media is lost media)


def flow_ssrc(packet: bytes) -> tuple[int, bool] | None:
    """(SSRC that names the packet's flow, is it feedback) for RTP and RTCP; None if neither.

    RTP: its SSRC. RTCP sender report / SDES / BYE: the sender's SSRC (a flow's own).
    Feedback (RTPFB/PSFB, receiver reports): the media SSRC it is about.
    """
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    pt = packet[1]
    if 192 <= pt <= 223:
        if pt in (205, 206) and len(packet) >= 12:
            return struct.unpack_from("!I", packet, 8)[0], True
        if pt == 201 and (packet[0] & 0x1F) and len(packet) >= 12:  # RR: first report block's source
            return struct.unpack_from("!I", packet, 8)[0], True
        return struct.unpack_from("!I", packet, 4)[0], False
    return struct.unpack_from("!I", packet, 8)[0], False


@dataclass
class PeerStats:
    sent: int = 0
    received: int = 0
    lost: int = 0  # RTP sequence gaps on flows from this peer
    reconnects: int = 0  # connections we dialled again after losing one
    accepted: int = 0  # connections the peer dialled to us (more than one: it lost one)
    keyframe_requests: int = 0  # asked of us on the control stream, one per flow
    missing_flows: int = 0  # flows we receive that the peer's last hello did not list
    bad_control: int = 0  # control lines that were not a message we know
    rtt_ms: float | None = None
    connected: bool = False


@dataclass
class Flow:
    ssrc: int
    direction: str  # "out" | "in"
    peer: tuple[str, int]  # the peer relay's QUIC address
    shard_port: int  # the local shard that sends (out) or receives (in) it
    last_seq: int | None = None


class _Protocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, endpoint: "QuicEndpoint", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint = endpoint
        self.peer: tuple[str, int] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.redial = False  # we dialled this one after losing the previous connection
        self.trusted = False  # we dialled it (TLS checked the peer), or its hello proved it a node
        self.control_stream: int | None = None
        self._control = b""

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.endpoint.from_peer(self, event.data)
        elif isinstance(event, StreamDataReceived):
            if self.control_stream is None:
                self.control_stream = event.stream_id
            if event.stream_id != self.control_stream:
                return
            self._control += event.data
            while b"\n" in self._control:
                line, self._control = self._control.split(b"\n", 1)
                self.endpoint.on_control(self, line)
            if len(self._control) > MAX_CONTROL_LINE:
                self.close()
        elif isinstance(event, HandshakeCompleted):
            pass
        elif isinstance(event, ConnectionTerminated):
            if not self.closed.done():
                self.closed.set_result(event.reason_phrase or str(event.error_code))
            self.endpoint.connection_lost(self)

    def send(self, data: bytes) -> bool:
        if len(self._quic._datagrams_pending) >= MAX_PENDING_DATAGRAMS:
            return False
        self._quic.send_datagram_frame(data)
        self.transmit()
        return True

    def send_control(self, message: dict[str, Any]) -> None:
        if self.control_stream is None:
            self.control_stream = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(self.control_stream, json.dumps(message).encode() + b"\n")
        self.transmit()

    def rtt_ms(self) -> float | None:
        recovery = getattr(self._quic, "_loss", None)
        rtt = getattr(recovery, "_rtt_smoothed", 0.0) if recovery is not None else 0.0
        return round(rtt * 1000, 2) if rtt else None


class QuicEndpoint:
    def __init__(self, *, certificate: str, private_key: str, ca: str, quic_host: str, quic_port: int,
                 local_host: str = "127.0.0.1", public_port: int = 0, hello_key: bytes | None = None,
                 log: Any = None) -> None:
        self.certificate, self.private_key, self.ca = certificate, private_key, ca
        self.quic_host, self.quic_port = quic_host, quic_port
        self.public_port = public_port or quic_port  # the port peers know us by (a NAT may map it)
        # Proves our hello comes from a node of the cluster (None: a dev cluster on one
        # machine, where hellos are taken on trust).
        self.hello_key = hello_key
        self.refused = 0  # connections whose hello did not prove them a node
        self.local_host = local_host
        self.log = log
        self.local: asyncio.DatagramTransport | None = None
        self.local_port = 0
        self.flows: dict[int, Flow] = {}
        self.links: dict[tuple[str, int], _Protocol] = {}  # peer -> live connection (either side dialled)
        self.by_connection: dict[int, tuple[str, int]] = {}
        self.stats: dict[tuple[str, int], PeerStats] = {}
        self._dialers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._server: Any = None
        self.dropped = 0

    def _configuration(self, client: bool) -> QuicConfiguration:
        config = QuicConfiguration(is_client=client, alpn_protocols=[ALPN], max_datagram_frame_size=65536,
                                   idle_timeout=IDLE_TIMEOUT_S, max_datagram_size=QUIC_PACKET,
                                   congestion_control_algorithm="sfu-media")
        config.load_verify_locations(cafile=self.ca)
        config.verify_mode = ssl.CERT_REQUIRED if client else ssl.CERT_NONE
        if client:
            config.server_name = SERVER_NAME
        config.load_cert_chain(self.certificate, self.private_key)
        return config

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        endpoint = self

        class Local(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                endpoint.from_shard(data, addr)

        self.local, _ = await loop.create_datagram_endpoint(Local, local_addr=(self.local_host, 0))
        self.local_port = self.local.get_extra_info("sockname")[1]
        self._server = await serve(self.quic_host, self.quic_port, configuration=self._configuration(False),
                                   create_protocol=lambda *a, **k: _Protocol(*a, endpoint=self, **k))
        self._pinger = loop.create_task(self._ping())

    async def close(self) -> None:
        for task in self._dialers.values():
            task.cancel()
        self._pinger.cancel()
        for protocol in list(self.links.values()):
            protocol.close()
        if self._server is not None:
            self._server.close()
        if self.local is not None:
            self.local.close()

    # --- flows (signalling) ------------------------------------------------------------

    def add_flow(self, ssrcs: list[int], direction: str, peer: tuple[str, int], shard_port: int) -> None:
        for ssrc in ssrcs:
            self.flows[ssrc] = Flow(ssrc, direction, peer, shard_port)
        self.stats.setdefault(peer, PeerStats())
        if direction == "out" and peer not in self._dialers:
            self._dialers[peer] = asyncio.get_running_loop().create_task(self._dial(peer))

    def remove_flow(self, ssrcs: list[int]) -> None:
        for ssrc in ssrcs:
            self.flows.pop(ssrc, None)

    async def _dial(self, peer: tuple[str, int]) -> None:
        """Keep a connection to ``peer`` while we have flows for it, dialling again after a cut."""
        attempt = 0
        while any(f.peer == peer and f.direction == "out" for f in self.flows.values()):
            try:
                async with connect(peer[0], peer[1], configuration=self._configuration(True),
                                   create_protocol=lambda *a, **k: _Protocol(*a, endpoint=self, **k)) as protocol:
                    protocol.peer = peer
                    protocol.trusted = True
                    protocol.redial = attempt > 0
                    self._attach(protocol, peer)
                    protocol.send_control(self._hello(peer))
                    if attempt:
                        self.stats[peer].reconnects += 1
                        self._log("relay peer back", peer=f"{peer[0]}:{peer[1]}", attempts=attempt)
                    attempt = 0
                    reason = await protocol.closed
                    self._log("relay peer lost", peer=f"{peer[0]}:{peer[1]}", reason=reason)
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                self._log("relay dial failed", peer=f"{peer[0]}:{peer[1]}", error=str(exc) or type(exc).__name__)
            attempt += 1
            await asyncio.sleep(REDIAL_S[min(attempt - 1, len(REDIAL_S) - 1)])
        self._dialers.pop(peer, None)

    def _attach(self, protocol: _Protocol, peer: tuple[str, int]) -> None:
        self.links[peer] = protocol
        self.by_connection[id(protocol)] = peer
        self.stats.setdefault(peer, PeerStats()).connected = True

    def connection_lost(self, protocol: _Protocol) -> None:
        peer = self.by_connection.pop(id(protocol), None)
        if peer is not None and self.links.get(peer) is protocol:
            del self.links[peer]
            self.stats[peer].connected = False

    async def _ping(self) -> None:
        """Keep links warm and RTT fresh (a datagram-only link would otherwise go quiet)."""
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            for peer, protocol in list(self.links.items()):
                protocol._quic.send_ping(uid=int(time.monotonic() * 1000) & 0xFFFFFFFF)
                protocol.transmit()
                self.stats[peer].rtt_ms = protocol.rtt_ms()

    # --- packets -------------------------------------------------------------------------

    def from_shard(self, data: bytes, addr: Any) -> None:
        found = flow_ssrc(data)
        flow = self.flows.get(found[0]) if found else None
        if flow is None or len(data) > MAX_DATAGRAM:
            self.dropped += 1
            return
        protocol = self.links.get(flow.peer)
        if protocol is None:
            self.dropped += 1  # the link is down: the media's own repair takes over once it is back
            return
        if protocol.send(data):
            self.stats[flow.peer].sent += 1
        else:
            self.dropped += 1

    def from_peer(self, protocol: _Protocol, data: bytes) -> None:
        peer = self.by_connection.get(id(protocol))
        found = flow_ssrc(data)
        flow = self.flows.get(found[0]) if found else None
        if flow is None:
            self.dropped += 1
            return
        if found[1] and self.log is not None:
            self.log.debug("feedback from peer", ssrc=found[0], pt=data[1], to_port=flow.shard_port)
        if peer is None:
            if self.hello_key is not None:
                self.dropped += 1  # a connection to us whose hello has not proved it a node yet
                return
            # A dev cluster: a connection the peer dialled, known by the flows it carries
            # until its hello comes.
            peer = flow.peer
            self._attach(protocol, peer)
        stats = self.stats.setdefault(peer, PeerStats())
        stats.received += 1
        is_rtp = not 192 <= data[1] <= 223
        if flow.direction == "in" and is_rtp:
            seq = struct.unpack_from("!H", data, 2)[0]
            if flow.last_seq is not None:
                gap = (seq - flow.last_seq) & 0xFFFF
                if 1 < gap < 0x8000:
                    stats.lost += gap - 1
            if flow.last_seq is None or 0 < ((seq - flow.last_seq) & 0xFFFF) < 0x8000:
                flow.last_seq = seq
        if self.local is not None:
            self.local.sendto(data, (self.local_host, flow.shard_port))

    # --- control (the stream) ------------------------------------------------------------

    def _hello(self, peer: tuple[str, int]) -> dict[str, Any]:
        me = f"{self.quic_host}:{self.public_port}"
        return {"type": "hello", "from": me, "auth": self._auth(me),
                "out": sorted(s for s, f in self.flows.items() if f.peer == peer and f.direction == "out")}

    def _auth(self, me: str) -> str:
        return hmac.new(self.hello_key, me.encode(), hashlib.sha256).hexdigest() if self.hello_key else ""

    def on_control(self, protocol: _Protocol, line: bytes) -> None:
        """One control message from the peer of ``protocol``."""
        try:
            message = json.loads(line)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            message, kind = {}, None
        peer = self.by_connection.get(id(protocol))
        if kind == "hello":
            host, _, port = str(message.get("from", "")).rpartition(":")
            if not port.isdigit():
                kind = None
            elif not protocol.trusted and self.hello_key is not None and not hmac.compare_digest(
                    str(message.get("auth", "")), self._auth(f"{host}:{port}")):
                self.refused += 1
                self._log("relay hello refused: not a node of this cluster", claimed=f"{host}:{port}")
                protocol.close()
                return
            else:
                protocol.trusted = True
                self._on_hello(protocol, peer, (host, int(port)), message.get("out", []))
                return
        if kind == "keyframe" and peer is not None and protocol.trusted and isinstance(message.get("ssrcs"), list):
            stats = self.stats.setdefault(peer, PeerStats())
            for ssrc in message["ssrcs"]:
                flow = self.flows.get(ssrc) if isinstance(ssrc, int) else None
                if flow is not None and flow.direction == "out" and flow.peer == peer and self.local is not None:
                    stats.keyframe_requests += 1
                    self.local.sendto(struct.pack("!BBHII", 0x81, 206, 2, RELAY_RTCP_SSRC, ssrc),
                                      (self.local_host, flow.shard_port))
            return
        if peer is not None:
            self.stats.setdefault(peer, PeerStats()).bad_control += 1
        self._log("relay control message not understood", line=line[:200].decode(errors="replace"))

    def _on_hello(self, protocol: _Protocol, known: tuple[str, int] | None, peer: tuple[str, int],
                  out: Any) -> None:
        stats = self.stats.setdefault(peer, PeerStats())
        renewed = protocol.redial
        if protocol.peer is None:  # the peer dialled: this hello says who it is; we answer with ours
            protocol.peer = peer
            stats.accepted += 1
            renewed = stats.accepted > 1
            if known != peer:
                self._attach(protocol, peer)
            protocol.send_control(self._hello(peer))
        expected = {s for s, f in self.flows.items() if f.peer == peer and f.direction == "in"}
        if renewed and expected:
            # Resubscribed: does the peer still send all we expect? (Flows are set up by
            # signalling on both nodes; one the peer forgot stays dark until set up again.)
            listed = {s for s in out if isinstance(s, int)} if isinstance(out, list) else set()
            stats.missing_flows = len(expected - listed)
            if stats.missing_flows:
                self._log("relay flows missing after reconnect", peer=f"{peer[0]}:{peer[1]}",
                          missing=stats.missing_flows)
            # A connection after a lost one: what the cut lost cannot be repaired by NACK.
            protocol.send_control({"type": "keyframe", "ssrcs": sorted(expected)})
            self._log("relay peer back: keyframes requested", peer=f"{peer[0]}:{peer[1]}", flows=len(expected))

    def snapshot(self) -> dict[str, Any]:
        return {"local_port": self.local_port, "flows": len(self.flows), "dropped": self.dropped,
                "refused": self.refused,
                "peers": {f"{h}:{p}": vars(s) for (h, p), s in self.stats.items()}}

    def _log(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.info(event, **fields)

