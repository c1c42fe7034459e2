"""A shard child process seen from signalling: spawn it, talk to it, stop it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from typing import Any, Callable

from .. import control
from ..config import Config
from ..logs import get_logger

log = get_logger("sfu.signalling.shard")
HELLO_TIMEOUT_S = 15.0


class ShardProcess:
    def __init__(self, shard_id: int, config: Config, on_notification: Callable[[int, Any], None]) -> None:
        self.id = shard_id
        self.config = config
        self.rtc_port = config.rtc_port + shard_id
        self.fingerprint_sha256 = ""
        self.load: control.LoadReport | None = None  # the shard's latest report (each second)
        self.process: asyncio.subprocess.Process | None = None
        self.channel: control.Channel | None = None
        self._on_notification = on_notification
        self._dir = tempfile.mkdtemp(prefix="sfu-")
        self._path = os.path.join(self._dir, f"shard-{shard_id}.sock")
        self._hello: asyncio.Future[control.Hello] | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._server = await asyncio.start_unix_server(self._accept, path=self._path)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfu.shard.main",
            "--shard-id", str(self.id),
            "--rtc-host", self.config.rtc_host,
            "--rtc-port", str(self.rtc_port),
            "--control-path", self._path,
            "--log-level", self.config.log_level,
            "--consent-timeout-s", str(self.config.consent_timeout_s),
            "--keyframe-min-interval-ms", str(self.config.keyframe_min_interval_ms),
            "--pacer", "on" if self.config.pacer else "off",
            "--pacer-rate-kbps", str(self.config.pacer_rate_kbps),
            "--pacer-burst-bytes", str(self.config.pacer_burst_bytes),
            "--drain-timeout-s", str(self.config.drain_timeout_s),
        )
        wait_exit = loop.create_task(self.process.wait())
        done, _ = await asyncio.wait([self._hello, wait_exit], timeout=HELLO_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._hello not in done:
            wait_exit.cancel()
            await self.stop()
            raise RuntimeError(f"shard {self.id} did not start (UDP port {self.rtc_port} in use?)")
        wait_exit.cancel()
        hello = self._hello.result()
        self.fingerprint_sha256 = hello.fingerprint_sha256
        self.rtc_port = hello.rtc_port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.channel is not None:
            writer.close()
            return
        self.channel = control.Channel(reader, writer, self)

    async def on_request(self, body: Any) -> Any:
        raise ValueError("signalling serves no requests from shards")

    def on_notification(self, body: Any) -> None:
        if isinstance(body, control.Hello):
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(body)
            return
        if isinstance(body, control.LoadReport):
            self.load = body
            return
        self._on_notification(self.id, body)

    async def request(self, body: control.Request, timeout_s: float = 5.0) -> Any:
        if self.channel is None:
            raise control.ControlError(f"shard {self.id} not connected")
        return await self.channel.request(body, timeout_s)

    async def stop(self, timeout_s: float = 1.5) -> None:
        """Close the control channel: the shard closes its peers and frees its port; SIGKILL
        if it dawdles. (SIGTERM to a shard means "drain", which is for operators.)"""
        if self.process is not None and self.process.returncode is None:
            if self.channel is not None:
                self.channel.close()
            else:
                self.process.send_signal(signal.SIGTERM)  # not connected yet: no drain to do
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except asyncio.TimeoutError:
                log.warning("shard did not stop in time, killing", shard=self.id)
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
