"""A shard child process seen from signalling: spawn it, talk to it, stop it."""

from __future__ import annotations

from typing import Any, Callable

from .. import control
from ..config import Config
from .child_process import ChildProcess


class ShardProcess(ChildProcess):
    def __init__(self, shard_id: int, config: Config, on_notification: Callable[[int, Any], None]) -> None:
        self.name = f"shard-{shard_id}"
        super().__init__(lambda body: on_notification(shard_id, body))
        self.id = shard_id
        self.config = config
        self.rtc_port = config.rtc_port + shard_id
        self.load: control.LoadReport | None = None  # the shard's latest report (each second)

    def arguments(self) -> list[str]:
        c = self.config
        return ["sfu.shard.main", "--shard-id", str(self.id), "--rtc-host", c.rtc_host,
                "--rtc-port", str(self.rtc_port), "--log-level", c.log_level,
                "--consent-timeout-s", str(c.consent_timeout_s),
                "--keyframe-min-interval-ms", str(c.keyframe_min_interval_ms),
                "--pacer", "on" if c.pacer else "off", "--pacer-rate-kbps", str(c.pacer_rate_kbps),
                "--pacer-burst-bytes", str(c.pacer_burst_bytes), "--drain-timeout-s", str(c.drain_timeout_s),
                "--node-id", c.node_id, "--log-levels", c.log_levels]

    async def start(self) -> None:
        try:
            await super().start()
        except RuntimeError:
            raise RuntimeError(f"shard {self.id} did not start (UDP port {self.rtc_port} in use?)") from None

    def on_notification(self, body: Any) -> None:
        if isinstance(body, control.LoadReport):
            self.load = body
            return
        super().on_notification(body)
