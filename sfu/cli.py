"""The ``sfu`` command: ``sfu serve`` runs the server, ``sfu token`` mints tokens,
``sfu record`` runs a recorder process (what ``sfu serve`` starts for recorded rooms).

Options are parsed as plain strings and handed to load_config, so a bad value
gets the same message whether it came from a flag, the environment or a file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sfu import __version__
from sfu.auth import issue_token
from sfu.config import LOG_LEVELS, ConfigError, load_config

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code instead of exiting."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return int(args.command(args))
    except ConfigError as e:
        print(f"sfu: {e}", file=sys.stderr)
        return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    cli: dict[str, Any] = {
        "http_host": args.http_host,
        "http_port": args.http_port,
        "rtc_host": args.rtc_host,
        "rtc_port": args.rtc_port,
        "shards": args.shards,
        "dev": args.dev,
        "auth_secret": args.auth_secret,
        "log_level": args.log_level,
        "log_levels": args.log_levels,
        "recordings": args.recordings,
        "redis_url": args.redis_url,
        "node_id": args.node_id,
        "public_url": args.public_url,
        "performance_rooms": args.performance_rooms,
    }
    config = load_config(cli, config_path=args.config)
    if not config.node_id:
        import socket

        config.node_id = f"{socket.gethostname()}-{config.http_port}"

    from sfu.logs import configure_logging

    configure_logging(config.log_level, levels=config.log_levels, static={"node": config.node_id})
    from sfu.server import serve  # imported late: pulls in the whole media stack

    return int(serve(config))


def _token(args: argparse.Namespace) -> int:
    config = load_config({"auth_secret": args.auth_secret}, config_path=args.config, validate=False)
    if not config.auth_secret:
        print(
            "sfu: no auth secret: pass --auth-secret, set SFU_AUTH_SECRET, "
            "or put auth_secret in the file given with --config",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.room:
        print("sfu: --room must not be empty", file=sys.stderr)
        return EXIT_USAGE
    if not args.ttl > 0:
        print(f"sfu: --ttl must be a positive number of seconds, not {args.ttl:g}", file=sys.stderr)
        return EXIT_USAGE
    publish, subscribe = args.publish, args.subscribe
    if args.admin and args.room != "*":
        print('sfu: an --admin token is for every room: use --room "*"', file=sys.stderr)
        return EXIT_USAGE
    if not (publish or subscribe or args.admin):
        subscribe = True
        print("sfu: neither --publish nor --subscribe given; granting subscribe only", file=sys.stderr)
    token = issue_token(
        config.auth_secret,
        args.room,
        publish=publish,
        subscribe=subscribe,
        ttl_s=args.ttl,
        identity=args.identity,
        admin=args.admin,
    )
    print(token)
    return 0


def _record(args: argparse.Namespace) -> int:
    from sfu.recording.main import main as recorder_main

    recorder_main(["--control-path", args.control_path, "--recordings", args.recordings, "--host", args.host,
                   "--log-level", args.log_level])
    return 0


def _relay_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sfu.relay.certs import write_cluster_certs

    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    if not nodes:
        print("sfu: --nodes needs at least one node name", file=sys.stderr)
        return EXIT_USAGE
    for node, (cert, key) in write_cluster_certs(Path(args.directory), nodes).items():
        print(f"{node}: relay_cert={cert} relay_key={key}")
    print(f"every node: relay_ca={Path(args.directory) / 'ca.pem'} (keep ca.key offline)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfu", description="WebRTC selective forwarding unit")
    parser.add_argument("--version", action="version", version=f"sfu {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.set_defaults(command=_serve)
    serve.add_argument("--config", metavar="PATH", help="TOML config file (default: $SFU_CONFIG)")
    serve.add_argument("--http-host", metavar="H", help="HTTP listen address (default 127.0.0.1)")
    serve.add_argument("--http-port", metavar="P", help="HTTP port (default 8080)")
    serve.add_argument("--rtc-host", metavar="H", help="media address bound and advertised in ICE candidates")
    serve.add_argument("--rtc-port", metavar="P", help="UDP port of the first shard (default 50000)")
    serve.add_argument("--shards", metavar="N", help="number of shard processes (default: one per core)")
    serve.add_argument(
        "--dev", action="store_const", const=True, default=None,
        help="no authentication; only loopback addresses allowed",
    )
    serve.add_argument("--auth-secret", metavar="S", help="HS256 token secret (or $SFU_AUTH_SECRET)")
    serve.add_argument("--log-level", metavar="L", help=f"one of {', '.join(LOG_LEVELS)}")
    serve.add_argument("--log-levels", metavar="SPEC", help='per module, e.g. "sfu.shard=debug,aiohttp=warning"')
    serve.add_argument("--recordings", metavar="DIR", help="where recordings go (default ./recordings)")
    serve.add_argument("--redis-url", metavar="URL", help="cluster directory (default: in memory, one node)")
    serve.add_argument("--node-id", metavar="ID", help="this node's name in the cluster (default host:port)")
    serve.add_argument("--public-url", metavar="URL", help="how other nodes reach this node's HTTP")
    serve.add_argument("--performance-rooms", metavar="PATTERNS",
                       help='co-performance rooms, e.g. "choir-*,band-*" (performers at every node)')

    record = commands.add_parser(
        "record", help="run a recorder process (sfu serve starts one itself when a room is recorded)")
    record.set_defaults(command=_record)
    record.add_argument("--control-path", required=True, help="the control socket of the signalling to serve")
    record.add_argument("--recordings", default="recordings", help="where the files go (default ./recordings)")
    record.add_argument("--host", default="127.0.0.1", help="address its RTP socket binds")
    record.add_argument("--log-level", default="info", choices=LOG_LEVELS)

    certs = commands.add_parser("relay-certs", help="make a cluster CA and QUIC relay certificates")
    certs.set_defaults(command=_relay_certs)
    certs.add_argument("directory", help="where to write them")
    certs.add_argument("--nodes", required=True, help="comma-separated node names, one certificate each")

    token = commands.add_parser("token", help="print a signed access token")
    token.set_defaults(command=_token)
    token.add_argument("--room", required=True, help='room name, or "*" for every room')
    token.add_argument("--publish", action="store_true", help="allow publishing (WHIP)")
    token.add_argument("--subscribe", action="store_true", help="allow subscribing (WHEP)")
    token.add_argument("--admin", action="store_true", help='the REST admin API (needs --room "*")')
    token.add_argument("--ttl", type=float, default=3600.0, metavar="S", help="lifetime in seconds (default 3600)")
    token.add_argument("--identity", metavar="ID", help="who the token is for (the 'sub' claim)")
    token.add_argument("--auth-secret", metavar="S", help="HS256 token secret (or $SFU_AUTH_SECRET)")
    token.add_argument("--config", metavar="PATH", help="TOML config file to read auth_secret from")
    return parser
