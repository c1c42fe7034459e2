"""Simulcast policy: which layer each consumer should get.

This package decides; it does not forward. ``layer_policy`` holds one
:class:`LayerPolicy` per consumer, a protocol core with no I/O and no clock:
the shard feeds it the viewer's bandwidth estimates (REMB, transport-cc), loss
from RTCP receiver reports, the viewer's requested size and the room's cap, all
with explicit times, and asks for a :class:`Target` (spatial and temporal
layer). The fast path enforces the target per packet, switching spatial layers
only on a keyframe of the target layer (STYLE item 4: policy in Python, bytes in
Cython).
"""

from sfu.simulcast.layer_policy import (
    DEFAULT_DOWN_HOLD_S,
    DEFAULT_HEADROOM,
    DEFAULT_UP_HOLD_S,
    Layer,
    LayerPolicy,
    Target,
    order_layers,
)

__all__ = [
    "DEFAULT_DOWN_HOLD_S",
    "DEFAULT_HEADROOM",
    "DEFAULT_UP_HOLD_S",
    "Layer",
    "LayerPolicy",
    "Target",
    "order_layers",
]
