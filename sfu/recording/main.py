"""Recorder process entry point: ``python -m sfu.recording.main`` (``sfu record``).

Started by signalling when a room is first recorded; like a shard it connects
back to a control socket and says Hello with its UDP port. It writes until told
to stop or until its control channel closes, closing every file cleanly then.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import uvloop

from .. import control
from ..logs import configure_logging, get_logger
from .recorder import Recorder

TICK_S = 0.02
log = get_logger("sfu.recording")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, recorder: "RecorderProcess") -> None:
        self.recorder = recorder

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.recorder.core.on_datagram(data, time.monotonic())


class RecorderProcess:
    def __init__(self, root: Path) -> None:
        self.core = Recorder(root, self._send)
        self.transport: asyncio.DatagramTransport | None = None

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    async def on_request(self, body: Any) -> Any:
        if isinstance(body, control.StartRecording):
            name = self.core.start(body)
            log.info("recording started", recording=body.recording_id, room=body.room,
                     peer=body.publisher_id, file=name, tracks=len(body.tracks))
            return name
        if isinstance(body, control.StopRecording):
            stopped = self.core.stop(body.recording_id, body.publisher_id)
            log.info("recording stopped", recording=body.recording_id, peer=body.publisher_id or None,
                     files=stopped)
            return stopped
        if isinstance(body, control.GetStats):
            return self.core.stats()
        if isinstance(body, control.Ping):
            return None
        raise ValueError(f"unsupported request {type(body).__name__}")

    def on_notification(self, body: Any) -> None:
        pass

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.core.tick(time.monotonic())
            except Exception:  # one bad frame must not end every recording
                log.exception("recorder tick failed")


async def run(args: argparse.Namespace) -> None:
    root = Path(args.recordings)
    root.mkdir(parents=True, exist_ok=True)
    process = RecorderProcess(root)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(process), local_addr=(args.host, 0))
    process.transport = transport
    port = transport.get_extra_info("sockname")[1]
    reader, writer = await asyncio.open_unix_connection(args.control_path)
    channel = control.Channel(reader, writer, process)
    channel.notify(control.Hello(shard_id=-1, pid=os.getpid(), rtc_port=port, fingerprint_sha256=""))
    log.info("recorder listening", host=args.host, port=port, recordings=str(root), pid=os.getpid())
    ticking = loop.create_task(process.tick())
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await asyncio.wait([stop, channel.closed], return_when=asyncio.FIRST_COMPLETED)
    ticking.cancel()
    process.core.close()
    transport.close()
    channel.close()
    log.info("recorder stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sfu-record")
    parser.add_argument("--control-path", required=True, help="signalling's unix socket for this recorder")
    parser.add_argument("--recordings", required=True, help="directory the files go to")
    parser.add_argument("--host", default="127.0.0.1", help="address the RTP socket binds")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-levels", default="", help='per module, e.g. "sfu.recording=debug"')
    parser.add_argument("--node-id", default="")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, levels=args.log_levels, static={"node": args.node_id} if args.node_id else None)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
