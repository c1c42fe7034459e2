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
