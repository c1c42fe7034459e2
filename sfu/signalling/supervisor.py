"""ShardSupervisor: notices a shard that died or hangs, and puts a fresh one in its place.

One crashed process must not end a company meeting. A shard is dead when its
process exits, or when it stops answering the control channel: a ``Ping`` every
half second, and none answered for 1.5 s means it is stuck (a busy shard
answers late but answers: the ping is one small message on its event loop). A
stuck shard is killed. Either way its sessions are
ended (their transports died with it), each client listening to its session's
events is told to ``reconnect`` (placement then skips the dead shard), and a new
shard process takes the same id and UDP port.

Draining (SIGTERM to a shard, or the admin API) is the planned version: the
shard takes no new peers, its clients are told to reconnect while their old
session still plays (make-before-break), and once they have all moved, or the
drain timeout passed, it is stopped and replaced by a fresh process.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING, Callable

from .. import control
from ..logs import get_logger
from .shard_process import ShardProcess

if TYPE_CHECKING:
    from .app import Signalling

log = get_logger("sfu.signalling.supervisor")

PING_INTERVAL_S = 0.5
DEAD_AFTER_S = 1.5  # no answer to any ping for this long: stuck (checked each 0.5 s: dead within 2 s)
RESTART_BACKOFF_S = (0.0, 0.5, 2.0, 5.0)  # a shard that keeps dying is restarted less eagerly


class ShardSupervisor:
    def __init__(self, signalling: "Signalling", make_shard: Callable[[int], ShardProcess]) -> None:
        self.s = signalling
        self._make_shard = make_shard
        self.restarts: dict[int, int] = {}
        self.deaths: dict[int, float] = {}  # shard id -> when its last death was noticed (monotonic)
        self.dead: set[int] = set()  # died, not yet replaced
        self.draining: set[int] = set()
        self.drains = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def watch(self, shard_id: int) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._run(shard_id)))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, shard_id: int) -> None:
        while not self._stopping:
            reason = await self._until_dead(self.s.shards[shard_id])
            if self._stopping:
                return
            await self._replace(shard_id, reason)

    async def _until_dead(self, shard: ShardProcess) -> str:
        """Until the shard's process exits, or no ping has been answered for DEAD_AFTER_S.

        Pings go out every PING_INTERVAL_S without waiting for each other, so a shard
        whose loop is merely busy (a join wave, a keyframe to hundreds) answers late
        but in time; only one that answers nothing for 1.5 s is killed.
        """
        assert shard.process is not None
        loop = asyncio.get_running_loop()
        exited = asyncio.ensure_future(shard.process.wait())
        answered_at = loop.time()
        pings: set[asyncio.Task[None]] = set()

        async def ping() -> None:
            nonlocal answered_at
            try:
                await shard.request(control.Ping(), timeout_s=DEAD_AFTER_S)
                answered_at = max(answered_at, loop.time())
            except control.ControlError:
                pass

        try:
            while True:
                done, _ = await asyncio.wait([exited], timeout=PING_INTERVAL_S)
                if done:
                    return f"exited with status {shard.process.returncode}"
                silent_s = loop.time() - answered_at
                if silent_s > DEAD_AFTER_S:
                    shard.process.send_signal(signal.SIGUSR1)  # its stack to the log first
                    await asyncio.sleep(0.05)
                    shard.process.kill()
                    await shard.process.wait()
                    return f"stopped answering (no ping answered for {silent_s:.1f} s); killed"
                task = loop.create_task(ping())
                pings.add(task)
                task.add_done_callback(pings.discard)
        finally:
            exited.cancel()
            for task in list(pings):
                task.cancel()

    def start_drain(self, shard_id: int, reason: str) -> bool:
        """Begin draining ``shard_id`` in the background; False if it already is."""
        if shard_id in self.draining or shard_id in self.dead or not 0 <= shard_id < len(self.s.shards):
            return False
        self.draining.add(shard_id)
        self._tasks.append(asyncio.get_running_loop().create_task(self._drain(shard_id, reason)))
        self._tasks.append(asyncio.get_running_loop().create_task(self.s.cluster.drain_started()))
        return True

    async def _drain(self, shard_id: int, reason: str) -> None:
        shard = self.s.shards[shard_id]
        sessions = [s for s in self.s.rooms.sessions.values() if s.shard == shard_id]
        log.info("shard draining", shard=shard_id, reason=reason, sessions=len(sessions),
                 timeout_s=self.s.config.drain_timeout_s)
        # Viewers first: a publisher that moves ends its tracks here, and the viewers
        # still on this shard would see that as a gap rather than a move.
        for session in sorted(sessions, key=lambda s: s.kind == "whip"):
            why = f"shard {shard_id} is draining"
            self.s.events.send(session.id, "reconnect", {"url": f"/{session.kind}/{session.room}", "reason": why})
            self.s.room_api.session_reconnect(session, why)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.s.config.drain_timeout_s
        while loop.time() < deadline and self.s.rooms.viewers_by_shard[shard_id] + sum(
                1 for s in self.s.rooms.sessions.values() if s.shard == shard_id and s.kind == "whip"):
            await asyncio.sleep(0.1)
        left = [s for s in self.s.rooms.sessions.values() if s.shard == shard_id]
        log.info("shard drained", shard=shard_id, seconds=round(loop.time() - started, 3), stayed=len(left))
        self.drains += 1
        if self.s.shards[shard_id] is shard:
            await shard.stop(self.s.config.shutdown_timeout_s)  # the watch loop replaces it

    async def _replace(self, shard_id: int, reason: str) -> None:
        old = self.s.shards[shard_id]
        died_at = time.monotonic()
        drained = shard_id in self.draining
        count = self.restarts.get(shard_id, 0)
        if drained:
            log.info("shard stopped after draining", shard=shard_id, pid=old.process.pid if old.process else None)
        else:
            log.error("shard died", shard=shard_id, pid=old.process.pid if old.process else None, reason=reason,
                      restarts=count)
            self.deaths[shard_id] = died_at
        self.dead.add(shard_id)
        ended = self.s.end_sessions_on_shard(
            shard_id, f"shard {shard_id} drained" if drained else f"shard {shard_id} died")
        await old.stop(0.1)
        if not drained:
            await asyncio.sleep(RESTART_BACKOFF_S[min(count, len(RESTART_BACKOFF_S) - 1)])
        while not self._stopping:
            fresh = self._make_shard(shard_id)
            try:
                await fresh.start()
            except RuntimeError as exc:
                log.error("shard restart failed", shard=shard_id, error=str(exc))
                await asyncio.sleep(RESTART_BACKOFF_S[-1])
                continue
            self.s.shards[shard_id] = fresh
            self.dead.discard(shard_id)
            if drained:
                self.draining.discard(shard_id)
            else:
                self.restarts[shard_id] = count + 1
            log.info("shard restarted", shard=shard_id, pid=fresh.process.pid if fresh.process else None,
                     sessions_ended=ended, seconds=round(time.monotonic() - died_at, 3))
            return
