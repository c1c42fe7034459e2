"""The relay interface signalling places viewers with.

A relay joins two media endpoints (shards here; nodes or sites later) and
carries producers from either end to the other: one copy per endpoint and
track, however many viewers the far end has. Signalling decides what to carry;
the relay knows how.
"""

from __future__ import annotations

import abc
import random
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import control
from ..signalling.sdp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL

if TYPE_CHECKING:
    from ..signalling.rooms import ProducerInfo
    from ..signalling.sdp import Codec

RELAY_EXTENSIONS = {EXT_AUDIO_LEVEL: 1, EXT_ABS_SEND_TIME: 2}
"""Header extensions on every relay (and the recorder's feed), fixed: both ends know
them without an SDP. No mid: each relayed stream's SSRC is told to both ends."""


@dataclass
class Copy:
    """One relayed stream of a track: its id at the far end and the SSRCs it travels with
    (chosen here, told to both ends)."""

    id: str
    ssrc: int
    rtx_ssrc: int | None

    @classmethod
    def of(cls, producer: "ProducerInfo") -> "Copy":
        rtx = producer.kind == "video" and producer.codec.rtx_payload_type is not None
        return cls(secrets.token_urlsafe(12), random.randint(1, 0xFFFFFFFF),
                   random.randint(1, 0xFFFFFFFF) if rtx else None)

    @property
    def ssrcs(self) -> list[int]:
        return [self.ssrc] + ([self.rtx_ssrc] if self.rtx_ssrc else [])

    def produce(self, relay_id: str, producer: "ProducerInfo") -> control.Produce:
        """The copy at the receiving end, on its relay transport."""
        codec = producer.codec
        return control.Produce(
            transport_id=relay_id, producer_id=self.id, kind=producer.kind, codec=codec.name, mid="",
            payload_type=codec.payload_type, clock_rate=codec.clock_rate,
            rtx_payload_type=codec.rtx_payload_type if self.rtx_ssrc else None, ssrc=self.ssrc,
            rtx_ssrc=self.rtx_ssrc, extensions=RELAY_EXTENSIONS, rid=producer.rid,
            red_payload_type=codec.red_payload_type)


def relay_consume(relay_id: str, consumer_id: str, producer_id: str, codec: "Codec", ssrc: int,
                  rtx_ssrc: int | None, *, keep_red: bool = True) -> control.Consume:
    """A producer sent out on a relay transport (to another shard, node or the recorder)
    in the SSRCs the far end expects, answering its NACKs. RED audio crosses relays as
    sent (``keep_red``); the recorder takes the primary only."""
    rtx = rtx_ssrc is not None and codec.rtx_payload_type is not None
    return control.Consume(
        transport_id=relay_id, consumer_id=consumer_id, producer_id=producer_id, mid="",
        payload_type=codec.payload_type, ssrc=ssrc, rtx_payload_type=codec.rtx_payload_type if rtx else None,
        rtx_ssrc=rtx_ssrc if rtx else None, extensions=RELAY_EXTENSIONS, nack=True,
        red_payload_type=codec.red_payload_type if keep_red else None)


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
