"""JitterBuffer: one RTP stream put back in order before its frames are rebuilt.

A recorder can wait: it holds packets up to ``depth_s`` for the ones missing
before them (reordering, retransmissions), then gives the hole up as lost and
moves on, so a lost packet costs a frame, never the recording. Sequence numbers
and timestamps are unwrapped to 64 bits (streams outlive 65,536 packets).
"""

from __future__ import annotations

from dataclasses import dataclass


def unwrap(value: int, reference: int, bits: int) -> int:
    """The unwrapped value closest to ``reference`` whose low ``bits`` are ``value``."""
    modulus = 1 << bits
    delta = (value - reference) & (modulus - 1)
    if delta >= modulus // 2:
        delta -= modulus
    return reference + delta


@dataclass
class Packet:
    seq: int  # unwrapped
    timestamp: int  # unwrapped
    marker: bool
    payload: bytes
    arrival: float
    lost_before: bool = False  # set on release: packets just before this one were given up


@dataclass
class JitterStats:
    received: int = 0
    duplicates: int = 0
    late: int = 0  # arrived after their place was given up (or before the stream's start)
    lost: int = 0  # given up
    reordered: int = 0


class JitterBuffer:
    def __init__(self, depth_s: float = 0.2, max_packets: int = 1024) -> None:
        self.depth_s = depth_s
        self.max_packets = max_packets
        self.stats = JitterStats()
        self._packets: dict[int, Packet] = {}
        self._next: int | None = None  # the next sequence number to release
        self._highest_seq: int | None = None
        self._highest_ts: int | None = None
        self._lost_pending = False

    def push(self, seq: int, timestamp: int, marker: bool, payload: bytes, arrival: float) -> None:
        if self._highest_seq is None:
            ext_seq, ext_ts = seq + (1 << 16), timestamp + (1 << 32)  # room to unwrap backwards
            self._next = ext_seq
        else:
            ext_seq = unwrap(seq, self._highest_seq, 16)
            assert self._highest_ts is not None
            ext_ts = unwrap(timestamp, self._highest_ts, 32)
        assert self._next is not None
        if ext_seq < self._next:
            self.stats.late += 1
            return
        if ext_seq in self._packets:
            self.stats.duplicates += 1
            return
        self.stats.received += 1
        if self._highest_seq is not None and ext_seq < self._highest_seq:
            self.stats.reordered += 1
        if self._highest_seq is None or ext_seq > self._highest_seq:
            self._highest_seq = ext_seq
            self._highest_ts = ext_ts
        self._packets[ext_seq] = Packet(ext_seq, ext_ts, marker, payload, arrival)

    def pop(self, now: float) -> list[Packet]:
        """Packets ready in order: every consecutive one, and past a hole once the packet
        after it has waited ``depth_s`` (or the buffer is full)."""
        out: list[Packet] = []
        while self._packets:
            assert self._next is not None
            packet = self._packets.pop(self._next, None)
            if packet is not None:
                packet.lost_before = self._lost_pending
                self._lost_pending = False
                out.append(packet)
                self._next += 1
                continue
            oldest = min(self._packets)
            if now - self._packets[oldest].arrival < self.depth_s and len(self._packets) < self.max_packets:
                break
            self.stats.lost += oldest - self._next
            self._lost_pending = True
            self._next = oldest
        return out

    def flush(self) -> list[Packet]:
        """Everything still held, giving up the holes (the stream ended)."""
        return self.pop(float("inf"))

    def __len__(self) -> int:
        return len(self._packets)
