"""Shard process entry point: ``python -m sfu.shard.main``, started by signalling.

It connects back to signalling's control socket, says Hello, and lives until
that channel closes or it is told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys

import uvloop

from .. import control
from ..logs import configure_logging, get_logger
from .shard import Shard


async def run(args: argparse.Namespace) -> None:
    log = get_logger("sfu.shard", shard=args.shard_id)
    shard = Shard(args.shard_id, consent_timeout_s=args.consent_timeout_s,
                  keyframe_min_interval_ms=args.keyframe_min_interval_ms,
                  pacer=args.pacer == "on", pacer_rate_kbps=args.pacer_rate_kbps,
                  pacer_burst_bytes=args.pacer_burst_bytes)
    port = await shard.listen(args.rtc_host, args.rtc_port)
    reader, writer = await asyncio.open_unix_connection(args.control_path)
    channel = control.Channel(reader, writer, shard)
    shard.channel = channel
    channel.notify(control.Hello(shard_id=args.shard_id, pid=os.getpid(), rtc_port=port,
                                 fingerprint_sha256=shard.certificate.fingerprint_sha256))
    log.info("shard listening", rtc_host=args.rtc_host, rtc_port=port, pid=os.getpid())
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def drain() -> None:
        # SIGTERM: an operator (or Kubernetes) wants this shard gone. Signalling moves
        # its peers away and then closes the channel; the deadline covers a signalling
        # that never does.
        log.info("draining", timeout_s=args.drain_timeout_s)
        try:
            channel.notify(control.Draining(shard_id=args.shard_id))
        except control.ControlError:
            pass
        loop.call_later(args.drain_timeout_s + 5.0, lambda: stop.done() or stop.set_result(None))

    loop.add_signal_handler(signal.SIGTERM, drain)
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    await asyncio.wait([stop, channel.closed], return_when=asyncio.FIRST_COMPLETED)
    shard.close()
    await asyncio.sleep(0)  # let the BYE/close_notify datagrams go out
    channel.close()
    log.info("shard stopped")


def main() -> None:
    # The supervisor sends SIGUSR1 before killing a shard that stopped answering: the
    # stack of whatever held it goes to the log.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    parser = argparse.ArgumentParser(prog="sfu-shard")
    parser.add_argument("--shard-id", type=int, required=True)
    parser.add_argument("--rtc-host", required=True)
    parser.add_argument("--rtc-port", type=int, required=True)
    parser.add_argument("--control-path", required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--consent-timeout-s", type=float, default=30.0)
    parser.add_argument("--keyframe-min-interval-ms", type=int, default=500)
    parser.add_argument("--pacer", choices=("on", "off"), default="on")
    parser.add_argument("--pacer-rate-kbps", type=int, default=25_000)
    parser.add_argument("--pacer-burst-bytes", type=int, default=48_000)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--node-id", default="")
    parser.add_argument("--log-levels", default="")
    args = parser.parse_args()
    configure_logging(args.log_level, levels=args.log_levels, static={"node": args.node_id} if args.node_id else None)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
