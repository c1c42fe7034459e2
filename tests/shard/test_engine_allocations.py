"""No Python object per forwarded packet: 100,000 packets through the compiled engine.

A publisher socket sends pre-built RTP packets to the engine's socket; the test
calls ``engine.on_readable()`` as the event loop would; two viewer sockets are
drained with ``recv_into`` a preallocated buffer. The measured loop itself
allocates nothing (pre-bound methods, small ints, a connected sender, blocking
reads with a timeout instead of exceptions), so a block the interpreter holds
more at the end than after the warm-up would come from the engine: one per
packet would be 100,000. tracemalloc's peak over the run also bounds what is
made and freed again: it stays below the size of one packet's ``bytes``.

The same measurement over a short run of the pure-Python twin, which does
allocate per packet, shows that the check can fail.
"""

from __future__ import annotations

import ctypes
import gc
import socket
import struct
import sys
import tracemalloc
from typing import Any, Iterator

import pytest

from fixtures import make_red_payload, make_rtp, make_vp8_payload

import sfu.fastpath  # noqa: F401  (gives the compiled engine libsrtp's entry points)
import sfu._fastpath as cython_impl
import sfu.fastpath_reference as python_impl

GROUP = 16                 # datagrams sent between two readable events
WARMUP_PACKETS = 5_120
MEASURED_PACKETS = 100_000
VIEWERS = 2
BLOCK_SLACK = 8            # interpreter noise, not per-packet growth (that would be 100,000)
PEAK_SLACK_BYTES = 256     # the measurement's own overhead (~150 B); a packet's bytes is ~230 B more


def _udp(timeout_s: float | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    if timeout_s is None:
        s.setblocking(False)
    else:
        s.settimeout(timeout_s)  # a lost packet fails the test instead of hanging it
    return s


class Bench:
    """A publisher, an engine with a VP8 producer, ``VIEWERS`` consumers. ``red``: an Opus
    producer sending RFC 2198 RED instead, passed through to viewer 0, stripped for the others."""

    def __init__(self, engine_cls: type, twcc: bool = False, red: bool = False) -> None:
        self.sock = _udp()
        self.publisher = _udp(5.0)
        self.publisher.connect(self.sock.getsockname())  # send() parses no address
        self.viewers = [_udp(5.0) for _ in range(VIEWERS)]
        self.engine = engine_cls(self.sock.fileno(), self._slow_path, pacer_enabled=False)
        e = self.engine
        t = e.add_transport(secure=False, mid=4)
        e.set_transport_address(t, *self.publisher.getsockname())
        if red:
            self.producer = e.add_producer(t, video=False, codec=cython_impl.CODEC_OPUS, payload_type=111,
                                           clock_rate=48000, ssrc=0x1111, mid=b"0", red_payload_type=63)
        else:
            self.producer = e.add_producer(t, video=True, codec=cython_impl.CODEC_VP8, payload_type=96,
                                           clock_rate=90000, ssrc=0x1111, mid=b"0")
        self.consumers = []
        self.viewer_transports = []
        for v, viewer in enumerate(self.viewers):
            tv = e.add_transport(secure=False)
            self.viewer_transports.append(tv)
            e.set_transport_address(tv, *viewer.getsockname())
            self.consumers.append(e.add_consumer(tv, self.producer, payload_type=100 + v, ssrc=0x2000 + v,
                                                 mid=1, mid_value=b"v", first_seq=v * 1000,
                                                 transport_cc=5 if twcc else 0,
                                                 red_payload_type=120 if red and v == 0 else -1))
        # With transport-cc, viewer 0 also sends a feedback packet per group: one run-length
        # chunk saying the group's 16 packets arrived 250 us apart.
        self.feedback: list[bytes] | None = None
        if twcc:
            self.viewers[0].connect(self.sock.getsockname())
            self.feedback = [struct.pack("!BBHIIHHIH", 0x8F, 205, 9, 0xA, 0x2000, (k * GROUP) & 0xFFFF, GROUP, k,
                                         (1 << 13) | GROUP) + bytes([1] * GROUP) + bytes(2) for k in range(4096)]
        # One full cycle of sequence numbers, so the stream stays continuous as it repeats.
        # Datagrams stay under 256 bytes: the sizes send/recv_into return are cached ints.
        if red:
            self.packets = [
                make_rtp(seq=seq, ts=seq * 960, ssrc=0x1111, pt=63, extensions={4: b"0", 3: b"\x00\x01"},
                         payload=make_red_payload(111, b"\xfc" + bytes([seq & 0xFF]) * 80,
                                                  [(111, 960, b"\xfc" + bytes([(seq - 1) & 0xFF]) * 80)]))
                for seq in range(65536)]
        else:
            self.packets = [
                make_rtp(seq=seq, ts=(seq // 4) * 3000, ssrc=0x1111, pt=96, marker=seq % 4 == 3,
                         extensions={4: b"0", 3: b"\x00\x01"},
                         payload=make_vp8_payload(seq == 0, frame=bytes([seq & 0xFF]) * 150))
                for seq in range(65536)]
        assert max(map(len, self.packets)) < 256
        self.groups = [self.packets[i:i + GROUP] for i in range(0, 65536, GROUP)]
        self.buf = bytearray(2048)
        self.sent = 0
        self.red = red

    def engine_transport(self, c: int) -> int:
        return self.viewer_transports[self.consumers.index(c)]

    def _slow_path(self, data: bytes, addr: Any) -> None:
        raise AssertionError("no datagram here is for the slow path")

    def prepare(self, packets: int) -> tuple:
        """Everything a run of ``packets`` (a multiple of GROUP) needs, made beforehand."""
        n_groups = len(self.groups)
        start = (self.sent // GROUP) % n_groups
        order = [self.groups[(start + i) % n_groups] for i in range(packets // GROUP)]
        feedback = None
        if self.feedback is not None:
            fb_start = (self.sent // GROUP) % len(self.feedback)
            feedback = (self.viewers[0].send, iter([self.feedback[(fb_start + i) % len(self.feedback)]
                                                    for i in range(packets // GROUP)]))
        self.sent += packets
        return (iter(order), self.publisher.send, self.engine.on_readable,
                [v.recv_into for v in self.viewers], self.buf, feedback)

    def run(self, packets: int) -> None:
        """Forward ``packets``; every viewer receives each one (or the test fails)."""
        self.forward(*self.prepare(packets))

    @staticmethod
    def forward(order: Iterator[list], send: Any, on_readable: Any, receivers: list, buf: bytearray,
                feedback: tuple | None) -> None:
        # Nothing in here allocates: the iterator exists already, ``i`` and the byte
        # counts returned stay below 257 (cached ints), the methods are pre-bound.
        for group in order:
            i = 0
            while i < GROUP:
                send(group[i])
                i += 1
            if feedback is not None:
                feedback[0](next(feedback[1]))
            on_readable()
            for recv_into in receivers:
                i = 0
                while i < GROUP:
                    recv_into(buf)
                    i += 1

    def close(self) -> None:
        for s in (self.sock, self.publisher, *self.viewers):
            s.close()


@pytest.fixture(params=["plain", "transport-cc", "red"])
def bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    b = Bench(cython_impl.Engine, twcc=request.param == "transport-cc", red=request.param == "red")
    yield b
    b.close()


def _measure(bench: Bench, packets: int) -> tuple[int, int, int]:
    """(blocks gained, traced bytes gained, transient peak above the start) over the run."""
    run = bench.prepare(packets)
    gc.collect()
    gc.disable()
    try:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            blocks_before = sys.getallocatedblocks()
            traced_before = tracemalloc.get_traced_memory()[0]
            bench.forward(*run)
            traced_after, peak = tracemalloc.get_traced_memory()
            blocks_after = sys.getallocatedblocks()
        finally:
            tracemalloc.stop()
    finally:
        gc.enable()
    return blocks_after - blocks_before, traced_after - traced_before, peak - traced_before


def test_forwarding_allocates_no_python_object_per_packet(bench: Bench) -> None:
    bench.run(WARMUP_PACKETS)  # first-use allocations (history ring, caches) happen here
    blocks, traced, peak = _measure(bench, MEASURED_PACKETS)
    totals = bench.engine.totals()
    assert totals["packets_in"] == WARMUP_PACKETS + MEASURED_PACKETS
    assert totals["packets_out"] == VIEWERS * (WARMUP_PACKETS + MEASURED_PACKETS)
    assert bench.engine.drop_counts() == {}
    for c in bench.consumers:
        assert bench.engine.consumer_stats(c)["packets_sent"] == WARMUP_PACKETS + MEASURED_PACKETS
    # The last datagram in the buffer is the last packet, rewritten for the last viewer.
    last_seq = (WARMUP_PACKETS + MEASURED_PACKETS - 1) % 65536
    assert bench.buf[2:4] == (((VIEWERS - 1) * 1000 + last_seq) & 0xFFFF).to_bytes(2, "big")
    assert bench.buf[8:12] == (0x2000 + VIEWERS - 1).to_bytes(4, "big")
    if bench.red:  # ... stripped to its primary
        assert bench.buf[1] == 100 + VIEWERS - 1 and bench.buf[20:101] == b"\xfc" + bytes([last_seq & 0xFF]) * 80
    if bench.feedback is not None:
        # Every packet numbered, every feedback read (and used: the last 1,024 reported).
        for c in bench.consumers:
            assert bench.engine.transport_twcc(bench.engine_transport(c))["sent"] == WARMUP_PACKETS + MEASURED_PACKETS
        assert totals["twcc_feedbacks"] == (WARMUP_PACKETS + MEASURED_PACKETS) // GROUP
        assert len(bench.engine.take_twcc(bench.engine_transport(bench.consumers[0]))) == 1024
    # Flat: nothing kept per packet, nothing even made and freed per packet.
    assert blocks <= BLOCK_SLACK, f"{blocks} more blocks after {MEASURED_PACKETS} packets"
    assert traced <= PEAK_SLACK_BYTES, f"{traced} more bytes traced"
    assert peak <= PEAK_SLACK_BYTES, f"a transient {peak} bytes while forwarding"


def test_the_measurement_sees_per_packet_allocations() -> None:
    # The pure-Python twin makes bytes objects per packet: the same measurement must show it.
    bench = Bench(python_impl.Engine)
    try:
        bench.run(WARMUP_PACKETS // 4)
        blocks, traced, peak = _measure(bench, 2_048)
        assert bench.engine.totals()["packets_out"] == VIEWERS * (WARMUP_PACKETS // 4 + 2_048)
        assert peak > PEAK_SLACK_BYTES
    finally:
        bench.close()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _malloc_in_use() -> int:
    """Bytes the C heap has handed out (glibc), where the engine's records live."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def test_removing_records_frees_their_c_memory() -> None:
    # Producers and consumers come and go with sessions; what they malloc must go with them.
    sock = _udp()
    try:
        e = cython_impl.Engine(sock.fileno(), lambda data, addr: None, pacer_enabled=False)
        t = e.add_transport(secure=False)
        viewer = e.add_transport(secure=False)

        def cycles(n: int) -> None:
            for _ in range(n):
                p = e.add_producer(t, video=False, codec=cython_impl.CODEC_OPUS, payload_type=111,
                                   clock_rate=48000, ssrc=5)
                c = e.add_consumer(viewer, p, payload_type=111, ssrc=6)
                e.remove_consumer(c)
                e.remove_producer(p)

        cycles(1_000)
        gc.collect()
        before = _malloc_in_use()
        cycles(20_000)
        gc.collect()
        grown = _malloc_in_use() - before
        assert grown < 64 * 1024, f"{grown} bytes kept after 20,000 producer/consumer lifetimes"
    finally:
        sock.close()


def test_removing_a_transport_cc_transport_frees_its_history() -> None:
    # A transport-cc viewer's send history (about 18 KB) lives as long as its transport.
    sock = _udp()
    try:
        e = cython_impl.Engine(sock.fileno(), lambda data, addr: None, pacer_enabled=False)
        t = e.add_transport(secure=False)
        p = e.add_producer(t, video=False, codec=cython_impl.CODEC_OPUS, payload_type=111, clock_rate=48000, ssrc=5)

        def cycles(n: int) -> None:
            for _ in range(n):
                viewer = e.add_transport(secure=False)
                e.add_consumer(viewer, p, payload_type=111, ssrc=6, transport_cc=3)
                e.set_transport_extensions(viewer, transport_cc=0)  # and back, as a relay would
                e.set_transport_extensions(viewer, transport_cc=4)
                e.remove_transport(viewer)

        cycles(100)
        gc.collect()
        before = _malloc_in_use()
        cycles(5_000)
        gc.collect()
        grown = _malloc_in_use() - before
        assert grown < 64 * 1024, f"{grown} bytes kept after 5,000 transport-cc transports"
    finally:
        sock.close()
