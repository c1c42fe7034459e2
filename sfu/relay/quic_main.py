"""QUIC relay process entry point: ``python -m sfu.relay.quic_main``.

Started by signalling when the node relays over QUIC (``relay_transport =
"quic"``); like a shard it connects back to a control socket and says Hello
with the loopback port its shards send relayed tracks to.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
from typing import Any

import uvloop

from .. import control, loop_lag
from ..logs import configure_logging, get_logger
from .quic_endpoint import QuicEndpoint

log = get_logger("sfu.relay.quic")

HELLO_KEY_ENV = "SFU_RELAY_HELLO_KEY"  # hex; set by signalling from the cluster's secret
HELLO_KEY_LABEL = b"sfu quic relay hello"


class _Listener:
    def __init__(self, endpoint: QuicEndpoint) -> None:
        self.endpoint = endpoint

    async def on_request(self, body: Any) -> Any:
        if isinstance(body, control.QuicFlow):
            self.endpoint.add_flow(body.ssrcs, body.direction, (body.peer_host, body.peer_port), body.shard_port)
            return None
        if isinstance(body, control.QuicFlowClose):
            self.endpoint.remove_flow(body.ssrcs)
            return None
        if isinstance(body, control.GetStats):
            return self.endpoint.snapshot()
        if isinstance(body, control.Ping):
            return None
        raise ValueError(f"unsupported request {type(body).__name__}")

    def on_notification(self, body: Any) -> None:
        pass


async def run(args: argparse.Namespace) -> None:
    endpoint = QuicEndpoint(certificate=args.cert, private_key=args.key, ca=args.ca, quic_host=args.quic_host,
                            quic_port=args.quic_port, local_host=args.local_host, public_port=args.public_port,
                            hello_key=bytes.fromhex(os.environ[HELLO_KEY_ENV]) if os.environ.get(HELLO_KEY_ENV)
                            else None, log=log)
    await endpoint.start()
    # Every relayed packet crosses this process: a stall here is a gap at every site. Stalls
    # and long collector passes are logged; what start-up made is frozen out of the
    # collector's way (aioquic allocates per datagram, so its passes come often).
    lag = asyncio.get_running_loop().create_task(loop_lag.watch(log, process="quic-relay"))
    loop_lag.watch_gc(log, process="quic-relay")
    gc.freeze()
    reader, writer = await asyncio.open_unix_connection(args.control_path)
    channel = control.Channel(reader, writer, _Listener(endpoint))
    channel.notify(control.Hello(shard_id=-2, pid=os.getpid(), rtc_port=endpoint.local_port, fingerprint_sha256=""))
    log.info("quic relay listening", quic=f"{args.quic_host}:{args.quic_port}", local_port=endpoint.local_port)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await asyncio.wait([stop, channel.closed], return_when=asyncio.FIRST_COMPLETED)
    lag.cancel()
    await endpoint.close()
    channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sfu-quic-relay")
    parser.add_argument("--control-path", required=True)
    parser.add_argument("--quic-host", required=True, help="address peers reach this relay on")
    parser.add_argument("--quic-port", type=int, required=True)
    parser.add_argument("--local-host", default="127.0.0.1", help="where this node's shards send relayed tracks")
    parser.add_argument("--public-port", type=int, default=0,
                        help="the port other nodes dial, if a NAT or relay maps it (default --quic-port)")
    parser.add_argument("--cert", required=True, help="this node's relay certificate (PEM)")
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True, help="the cluster CA that signs every relay certificate")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-levels", default="")
    parser.add_argument("--node-id", default="")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, levels=args.log_levels, static={"node": args.node_id} if args.node_id else None)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
