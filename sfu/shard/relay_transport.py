"""RelayTransport: plain RTP and RTCP with another shard of this machine, over loopback.

mediasoup's pipeToRouter idea: a producer on shard A reaches viewers on shard B as
one consumer on A's side of the relay and one producer on B's side, so each
relayed track crosses once per shard, never once per viewer. The relay is an
ordinary engine transport without SRTP (the packets never leave the host), whose
address is the other shard's UDP port: the engine's address map already routes
its datagrams, and keyframe requests and NACKs flow back as plain RTCP.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ..relay.base import RELAY_EXTENSIONS

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Producer
    from .shard import Shard

class RelayTransport:
    def __init__(self, shard: "Shard", relay_id: str, peer_host: str, peer_port: int) -> None:
        from .webrtc_transport import extension_ids

        self.shard = shard
        self.id = relay_id
        self.room = ""
        self.peer_id = relay_id
        self.addr = (peer_host, peer_port)
        self.producers: list[Producer] = []
        self.consumers: dict[str, Consumer] = {}
        self.ready = True
        engine = shard.engine
        self.slot = engine.add_transport(secure=False, rtcp_ssrc=random.getrandbits(32) or 1)
        engine.set_transport_extensions(self.slot, **extension_ids(RELAY_EXTENSIONS))
        engine.set_transport_address(self.slot, peer_host, peer_port)

    def add_producer(self, producer: "Producer", extensions: dict[str, int]) -> None:
        self.producers.append(producer)  # the relay's extension ids are fixed at creation

    def close(self) -> None:
        for producer in list(self.producers):
            producer.close()
        self.producers.clear()
        for consumer in list(self.consumers.values()):
            consumer.close()
        self.shard.engine.remove_transport(self.slot)
