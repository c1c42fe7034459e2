"""Per-producer history of recent packets, to answer viewers' NACKs (RFC 4585)."""

from __future__ import annotations


class RetransmissionBuffer:
    """A ring indexed by sequence number; a slot holds the packet only if its seq matches."""

    __slots__ = ("size", "_seqs", "_packets")

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._seqs = [-1] * size
        self._packets: list[bytes | None] = [None] * size

    def store(self, seq: int, packet: bytes) -> None:
        i = seq % self.size
        self._seqs[i] = seq
        self._packets[i] = packet

    def get(self, seq: int) -> bytes | None:
        i = seq % self.size
        return self._packets[i] if self._seqs[i] == seq else None
