"""A child process of signalling that talks over the control channel (shards, the recorder).

Signalling makes a unix socket, spawns the child with its path, and waits for
its ``Hello`` (its UDP port); from then on requests, responses and
notifications flow as ``sfu/control.py`` defines them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from typing import Any, Callable

from .. import control
from ..logs import get_logger

log = get_logger("sfu.signalling.child")
HELLO_TIMEOUT_S = 15.0


class ChildProcess:
    name = "child"

    def __init__(self, on_notification: Callable[[Any], None]) -> None:
        self.rtc_port = 0
        self.fingerprint_sha256 = ""
        self.process: asyncio.subprocess.Process | None = None
        self.channel: control.Channel | None = None
        self._on_notification = on_notification
        self._dir = tempfile.mkdtemp(prefix="sfu-")
        self._path = os.path.join(self._dir, f"{self.name}.sock")
        self._hello: asyncio.Future[control.Hello] | None = None
        self._server: asyncio.AbstractServer | None = None

    def arguments(self) -> list[str]:
        """The module and arguments after ``python -m`` (the control path is appended)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment, when it needs more than ours (secrets stay off argv)."""
        return None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._server = await asyncio.start_unix_server(self._accept, path=self._path)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *self.arguments(), "--control-path", self._path, env=self.environment())
        wait_exit = loop.create_task(self.process.wait())
        done, _ = await asyncio.wait([self._hello, wait_exit], timeout=HELLO_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        wait_exit.cancel()
        if self._hello not in done:
            await self.stop()
            raise RuntimeError(f"{self.name} did not start")
        hello = self._hello.result()
        self.fingerprint_sha256 = hello.fingerprint_sha256
        self.rtc_port = hello.rtc_port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.channel is not None:
            writer.close()
            return
        self.channel = control.Channel(reader, writer, self)

    async def on_request(self, body: Any) -> Any:
        raise ValueError("signalling serves no requests from its children")

    def on_notification(self, body: Any) -> None:
        if isinstance(body, control.Hello):
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(body)
            return
        self._on_notification(body)

    async def request(self, body: control.Request, timeout_s: float = 5.0) -> Any:
        if self.channel is None:
            raise control.ControlError(f"{self.name} not connected")
        return await self.channel.request(body, timeout_s)

    async def stop(self, timeout_s: float = 1.5) -> None:
        """Close the control channel: the child shuts down cleanly; SIGKILL if it dawdles.
        (SIGTERM to a shard means "drain", which is for operators.)"""
        if self.process is not None and self.process.returncode is None:
            if self.channel is not None:
                self.channel.close()
            else:
                self.process.send_signal(signal.SIGTERM)  # not connected yet: nothing to drain
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except asyncio.TimeoutError:
                log.warning("child did not stop in time, killing", child=self.name)
                self.process.kill()
                await self.process.wait()
        if self.channel is not None:
            self.channel.close()
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self._path)
            os.rmdir(self._dir)
        except OSError:
            pass
