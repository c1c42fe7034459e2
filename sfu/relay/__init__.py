"""Relays: a published track carried from the shard it arrives on to another one.

``base.Relay`` is the interface; ``loopback.LoopbackRelay`` joins two shards of
one machine with plain RTP over loopback. A relay between nodes or sites (QUIC)
implements the same interface.
"""

from .base import RELAY_EXTENSIONS, Relay
from .loopback import LoopbackRelay

__all__ = ["RELAY_EXTENSIONS", "LoopbackRelay", "Relay"]
