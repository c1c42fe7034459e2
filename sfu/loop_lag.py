"""Event-loop lag: how late a 100 ms timer fires, logged when it is late by a lot.

A shard or signalling process that stalls (a long synchronous stretch, a GC
pause, a starved core) shows up here with its duration, next to the effects
(pings unanswered, media gaps).
"""

from __future__ import annotations

import asyncio
from typing import Any

INTERVAL_S = 0.1
REPORT_OVER_S = 0.25


async def watch(log: Any, **ids: Any) -> None:
    loop = asyncio.get_running_loop()
    worst = 0.0
    while True:
        start = loop.time()
        await asyncio.sleep(INTERVAL_S)
        lag = loop.time() - start - INTERVAL_S
        if lag > REPORT_OVER_S:
            worst = max(worst, lag)
            log.warning("event loop stalled", lag_s=round(lag, 3), worst_s=round(worst, 3), **ids)


GC_REPORT_OVER_S = 0.05


def watch_gc(log: Any, **ids: Any) -> None:
    """Log garbage-collector passes long enough to delay packets (they run inside any
    allocation, so they show up as stalls with no Python frame of ours on the stack)."""
    import gc
    import time

    if any(getattr(cb, "_sfu_gc_watch", False) for cb in gc.callbacks):
        return  # one watcher per process (tests run several shards in one)
    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
            return
        took = time.perf_counter() - started.get("t", time.perf_counter())
        if took > GC_REPORT_OVER_S:
            log.warning("garbage collection pause", seconds=round(took, 3), generation=info["generation"],
                        collected=info["collected"], objects=len(gc.get_objects(info["generation"])), **ids)

    callback._sfu_gc_watch = True  # type: ignore[attr-defined]
    gc.callbacks.append(callback)
