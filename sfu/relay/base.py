"""The relay interface signalling places viewers with.

A relay joins two media endpoints (shards here; nodes or sites later) and
carries producers from either end to the other: one copy per endpoint and
track, however many viewers the far end has. Signalling decides what to carry;
the relay knows how.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..signalling.rooms import ProducerInfo


class Relay(abc.ABC):
    endpoints: tuple[int, int]

    @abc.abstractmethod
    async def open(self) -> None:
        """Make the path usable both ways (idempotent per relay)."""

    @abc.abstractmethod
    async def carry(self, producer: "ProducerInfo", destination: int) -> str:
        """Start delivering ``producer`` (at one end) to ``destination`` (the other end).

        Returns the id of its copy there, which viewers at ``destination`` consume
        as they would the original: keyframe requests and NACKs flow back.
        """

    @abc.abstractmethod
    async def release(self, copy_id: str, destination: int) -> None:
        """The copy's source ended: end it at the destination too (its viewers get a BYE)."""

    @abc.abstractmethod
    async def close(self, endpoint: int | None = None) -> None:
        """Tear the path down at both ends, or only at ``endpoint`` (the other one died;
        its replacement may already hold a new relay of the same name)."""
