"""``sfu serve``: signalling in this process, shards as child processes, on uvloop."""

from __future__ import annotations

import asyncio
import signal

import uvloop
from aiohttp import web

from .config import Config
from .logs import get_logger
from .signalling.app import Signalling

log = get_logger("sfu.server")


async def run(config: Config) -> None:
    signalling = Signalling(config)
    await signalling.start_shards()
    runner = web.AppRunner(signalling.app(), access_log=None, handle_signals=False,
                           shutdown_timeout=0.25)
    await runner.setup()
    site = web.TCPSite(runner, config.http_host, config.http_port)
    try:
        await site.start()
    except OSError:
        await signalling.stop_shards()
        raise
    log.info("listening", http=f"http://{config.http_host}:{config.http_port}",
             rtc_host=config.rtc_host, rtc_ports=[s.rtc_port for s in signalling.shards],
             dev=config.dev, shards=len(signalling.shards))
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    log.info("shutting down")
    await signalling.stop_shards()
    await runner.cleanup()
    log.info("stopped")


def serve(config: Config) -> int:
    try:
        uvloop.run(run(config))
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    except RuntimeError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    return 0
