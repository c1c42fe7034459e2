"""Typed control messages between signalling and shards, over a unix socket.

Requests carry an id and get exactly one Response; notifications flow either
way with no reply. Frames are msgpack with a 4-byte length prefix. Control is
rare (peer joins, leaves, keyframe asks), so clarity beats speed here.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any, Union

import msgspec

MAX_FRAME_BYTES = 4 * 1024 * 1024


class Struct(msgspec.Struct, tag=True, kw_only=True):
    pass


# --- requests (signalling -> shard) --------------------------------------------------


class CreateWebRtcTransport(Struct):
    transport_id: str
    room: str
    peer_id: str
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str
    dtls_role: str  # our role: "client" | "server"
    remote_fingerprint: tuple[str, str]
    report_rtt: bool = False  # send its round-trip time in RoundTrips, once a second


class RestartIce(Struct):
    transport_id: str
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str


class CloseTransport(Struct):
    transport_id: str


class Produce(Struct):
    transport_id: str
    producer_id: str
    kind: str
    codec: str
    mid: str
    payload_type: int
    clock_rate: int
    rtx_payload_type: int | None = None
    ssrc: int | None = None  # None: learnt from the first packet carrying our mid (and rid)
    rtx_ssrc: int | None = None
    extensions: dict[str, int] = {}
    rid: str = ""  # one simulcast layer of the m-line (RFC 8853), or "" for a single encoding
    red_payload_type: int | None = None  # RFC 2198 redundancy wrapping payload_type (audio)


class Consume(Struct):
    transport_id: str
    consumer_id: str
    producer_id: str
    mid: str
    payload_type: int
    ssrc: int
    rtx_payload_type: int | None = None
    rtx_ssrc: int | None = None
    extensions: dict[str, int] = {}
    nack: bool = True
    # Simulcast: every layer of the track (publisher's listed order) and the viewer's cap.
    layer_producer_ids: list[str] = []
    max_layer_rid: str = ""
    max_width: int | None = None  # the viewer's screen: no layer larger than needed to fill it
    max_height: int | None = None
    room_max_layer: int | None = None  # room-wide ceiling, 0 = the lowest layer
    red_payload_type: int | None = None  # RED as sent, under this PT; None: stripped to its primary


class OpenRelay(Struct):
    """Plain RTP and RTCP with another shard on this machine, both ways, over loopback.

    One per pair of shards: the peer's UDP port is its address, as a viewer's would be.
    """

    relay_id: str
    peer_host: str
    peer_port: int


class CloseRelay(Struct):
    relay_id: str


class CloseProducer(Struct):
    """A relayed copy whose source ended (its viewers here get an RTCP BYE)."""

    producer_id: str


class Retarget(Struct):
    """Show another track on a consumer (last-N: a new speaker), switching on its keyframe."""

    consumer_id: str
    producer_id: str
    layer_producer_ids: list[str] = []  # the new track's layers, if simulcast


class CloseConsumer(Struct):
    consumer_id: str


class RecordTrack(Struct):
    """One RTP stream the recorder will receive (the shard's consumer numbering)."""

    ssrc: int
    kind: str
    codec: str
    payload_type: int
    clock_rate: int
    rtx_ssrc: int | None = None
    rtx_payload_type: int | None = None


class StartRecording(Struct):
    """Record one publisher's tracks of a room recording into the next segment file."""

    recording_id: str
    room: str
    publisher_id: str
    tracks: list[RecordTrack]
    shard_host: str
    shard_port: int  # where its packets come from, and keyframe requests and NACKs go


class StopRecording(Struct):
    recording_id: str
    publisher_id: str = ""  # "": every publisher of the recording


class QuicFlow(Struct):
    """QUIC relay process: carry these SSRCs to a peer (``out``) or take them from one (``in``)."""

    ssrcs: list[int]
    direction: str  # "out" | "in"
    peer_host: str
    peer_port: int  # the peer relay's QUIC port
    shard_port: int  # our shard that sends (out) or receives (in) them


class QuicFlowClose(Struct):
    ssrcs: list[int]


class GetStats(Struct):
    pass


class Ping(Struct):
    """Are you there? Answered with None; no side effects (GetStats drains samples)."""


class LayersPaused(Struct):
    """Layers their publisher was asked to stop sending: still candidates for this
    shard's viewers (at their last measured bitrate), so one can climb to a layer and
    bring it back. Replaces the previous list."""

    producer_ids: list[str]


Request = Union[CreateWebRtcTransport, RestartIce, CloseTransport, Produce, Consume, OpenRelay, CloseRelay,
                CloseProducer, Retarget, CloseConsumer, StartRecording, StopRecording, QuicFlow, QuicFlowClose, GetStats,
                Ping, LayersPaused]

# --- notifications (shard -> signalling) ----------------------------------------------


class Hello(Struct):
    shard_id: int
    pid: int
    rtc_port: int
    fingerprint_sha256: str


class TransportStateChanged(Struct):
    transport_id: str
    state: str  # "connected" | "closed" | "failed"
    reason: str = ""


class LoadReport(Struct):
    """A shard's load, once a second: what placement weighs shards by."""

    shard_id: int
    transports: int
    consumers: int
    packets_in_per_s: float
    packets_out_per_s: float
    cpu: float  # the shard process's CPU time per second of wall time (1.0 = one core)


class Draining(Struct):
    """The shard was told to stop (SIGTERM): move its peers away before it exits."""

    shard_id: int


class AudioLevels(Struct):
    """Each half second: the published audio tracks heard on this shard (RFC 6464),
    as (producer id, mean dBov, fraction of packets marked voice)."""

    levels: list[tuple[str, float, float]]


class LayerDemand(Struct):
    """The producers (simulcast layers, relayed copies too) this shard's viewers receive
    or are moving to, once a second: signalling pauses the layers nobody wants at
    publishers that can (sfu/signalling/layer_demand.py)."""

    shard_id: int
    producer_ids: list[str]


class RoundTrips(Struct):
    """Each second: the round-trip time of each transport created with ``report_rtt``
    whose viewer echoed one of our sender reports (RFC 3550 §6.4.1), as (transport id,
    milliseconds); transports with no measurement yet are left out."""

    rtts: list[tuple[str, float]]


Notification = Union[Hello, TransportStateChanged, LoadReport, Draining, AudioLevels, RoundTrips, LayerDemand]


class RequestFrame(msgspec.Struct, tag="req"):
    id: int
    body: Request


class ResponseFrame(msgspec.Struct, tag="res"):
    id: int
    ok: bool
    result: Any = None
    error: str = ""


class NotificationFrame(msgspec.Struct, tag="note"):
    body: Notification


Frame = Union[RequestFrame, ResponseFrame, NotificationFrame]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)
_LEN = struct.Struct("!I")


class ControlError(Exception):
    pass


class Channel:
    """One end of a control connection: request/response with ids and timeouts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener: Any) -> None:
        """``listener`` has ``async on_request(body) -> result`` and ``on_notification(body)``."""
        self._reader = reader
        self._writer = writer
        self._listener = listener
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._serving: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self.closed = asyncio.get_running_loop().create_future()

    async def request(self, body: Request, timeout_s: float = 5.0) -> Any:
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._send(RequestFrame(id=rid, body=body))
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            raise ControlError(f"{type(body).__name__} timed out after {timeout_s} s") from None
        finally:
            self._pending.pop(rid, None)

    def notify(self, body: Notification) -> None:
        self._send(NotificationFrame(body=body))

    def _send(self, frame: Frame) -> None:
        if self._writer.is_closing():
            raise ControlError("control channel closed")
        data = _encoder.encode(frame)
        self._writer.write(_LEN.pack(len(data)) + data)

    async def _read_loop(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(4)
                (length,) = _LEN.unpack(header)
                if length > MAX_FRAME_BYTES:
                    raise ControlError("control frame too large")
                frame = _decoder.decode(await self._reader.readexactly(length))
                if isinstance(frame, ResponseFrame):
                    fut = self._pending.get(frame.id)
                    if fut is not None and not fut.done():
                        if frame.ok:
                            fut.set_result(frame.result)
                        else:
                            fut.set_exception(ControlError(frame.error))
                elif isinstance(frame, RequestFrame):
                    task = asyncio.get_running_loop().create_task(self._serve(frame))
                    self._serving.add(task)
                    task.add_done_callback(self._serving.discard)
                else:
                    self._listener.on_notification(frame.body)
        except (asyncio.IncompleteReadError, ConnectionError, ControlError, msgspec.DecodeError):
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ControlError("control channel closed"))
            self._writer.close()
            if not self.closed.done():
                self.closed.set_result(None)

    async def _serve(self, frame: RequestFrame) -> None:
        try:
            result = await self._listener.on_request(frame.body)
            reply = ResponseFrame(id=frame.id, ok=True, result=result)
        except Exception as exc:  # the error goes back to the caller, the shard lives on
            reply = ResponseFrame(id=frame.id, ok=False, error=f"{type(exc).__name__}: {exc}")
        try:
            self._send(reply)
        except ControlError:
            pass

    def close(self) -> None:
        self._writer.close()
