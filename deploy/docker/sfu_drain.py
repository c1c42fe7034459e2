#!/usr/bin/env python3
"""sfu-drain: move a node's peers away before it stops (the Kubernetes preStop hook).

Installed in the image as /usr/local/bin/sfu-drain. It asks the local ``sfu serve``
to drain every shard that has peers (``POST /api/shards/{id}/drain``, see
docs/admin-api.md), all at once, then waits until each of them has finished (the
shard was restarted fresh: ``draining`` is false again in ``GET /api/shards``) or
until ``--timeout``. Then it exits and the kubelet sends SIGTERM.

Draining tells every session on a shard to ``reconnect`` (session events, the room
WebSocket API); clients POST again to the URL they came from and keep the old
session playing until the new one plays (make-before-break). Where they land is
up to whatever is in front: a Service or load balancer stops sending new
connections to a terminating pod (``--settle`` gives it the time to notice), so
they reach another node. All shards drain at once, so that no shard of this node
takes them back while the others drain: a peer moves once, off the node, instead
of hopping from shard to shard of a node that is about to stop. What that gives
with today's code is in deploy/README.md ("Rolling updates").

The admin token is ``$SFU_ADMIN_TOKEN`` when set, otherwise one minted for two
minutes from ``$SFU_AUTH_SECRET`` (the secret the server itself reads); with
neither, requests go without a token (``sfu serve --dev``).

Standard library plus ``sfu.auth`` only; exit status 0 when every drain finished,
1 when the server could not be asked or a drain did not finish in time (the
kubelet goes on with SIGTERM either way; a failed hook is a pod event).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

DEFAULT_DRAIN_TIMEOUT_S = 30.0  # sfu.config.Config.drain_timeout_s


def default_url(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The local server's HTTP base URL, from the same SFU_* variables it reads."""
    host = environ.get("SFU_HTTP_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = environ.get("SFU_HTTP_PORT") or "8080"
    return f"http://{host}:{port}"


def default_timeout(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """The server's drain_timeout_s plus a margin for the shard's restart."""
    raw = environ.get("SFU_DRAIN_TIMEOUT_S") or ""
    try:
        drain = float(raw) if raw else DEFAULT_DRAIN_TIMEOUT_S
    except ValueError:
        drain = DEFAULT_DRAIN_TIMEOUT_S
    return drain + 10.0


def admin_token(environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    token = environ.get("SFU_ADMIN_TOKEN")
    if token:
        return token.strip()
    secret = environ.get("SFU_AUTH_SECRET")
    if not secret:
        return None
    from sfu.auth import ADMIN_ROOM, issue_token

    return issue_token(secret, ADMIN_ROOM, admin=True, ttl_s=120, identity="sfu-drain")


class Api:
    def __init__(self, base_url: str, token: str | None, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str) -> tuple[int, Any]:
        request = urllib.request.Request(self.base_url + path, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        text = body.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.strip()


def drain(api: Api, *, timeout_s: float, poll_s: float = 0.5, log: Callable[..., None],
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    status, shards = api.call("GET", "/api/shards")
    if status != 200 or not isinstance(shards, list):
        log("cannot list shards", status=status, answer=shards)
        return 1
    busy = [s["id"] for s in shards if s.get("peers", 0) > 0]
    if not busy:
        log("nothing to drain", shards=len(shards))
        return 0
    started = clock()
    waiting: set[int] = set()
    for shard_id in busy:
        status, answer = api.call("POST", f"/api/shards/{shard_id}/drain")
        if status == 202:
            waiting.add(shard_id)
            log("drain started", shard=shard_id, peers=answer.get("peers") if isinstance(answer, dict) else None)
        else:  # 409: the only shard of its node, or already draining/down; 404: gone
            log("drain refused", shard=shard_id, status=status, answer=answer)
    deadline = started + timeout_s
    while waiting and clock() < deadline:
        sleep(poll_s)
        status, shards = api.call("GET", "/api/shards")
        if status != 200 or not isinstance(shards, list):
            continue
        for shard in shards:
            if shard["id"] in waiting and not shard.get("draining"):
                waiting.discard(shard["id"])
                log("drain finished", shard=shard["id"], seconds=round(clock() - started, 2))
    if waiting:
        log("drain timed out", shards=sorted(waiting), seconds=round(clock() - started, 2))
        return 1
    log("node drained", shards=len(busy), seconds=round(clock() - started, 2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sfu-drain", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=default_url(), help="the local server (default from SFU_HTTP_HOST/PORT)")
    parser.add_argument("--timeout", type=float, default=default_timeout(), metavar="S",
                        help="give up after S seconds (default: SFU_DRAIN_TIMEOUT_S + 10)")
    parser.add_argument("--poll", type=float, default=0.5, metavar="S", help="how often to look (default 0.5)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="S",
                        help="wait S seconds first, so that Services and load balancers stop sending new "
                             "clients here before the old ones are told to come back (default 0)")
    parser.add_argument("--log", metavar="PATH",
                        help="also append the log lines here (/proc/1/fd/2: the container's log)")
    args = parser.parse_args(argv)
    sinks = [sys.stderr]
    if args.log:
        try:
            sinks.append(open(args.log, "a", buffering=1))  # noqa: SIM115 - lives as long as the process
        except OSError as exc:
            print(f"sfu-drain: cannot open {args.log}: {exc.strerror}", file=sys.stderr)

    def log(event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "logger": "sfu-drain", **fields}, default=str)
        for sink in sinks:
            print(line, file=sink, flush=True)

    if args.settle > 0:
        log("settling", seconds=args.settle)
        time.sleep(args.settle)
    try:
        return drain(Api(args.url, admin_token()), timeout_s=args.timeout, poll_s=args.poll, log=log)
    except (OSError, urllib.error.URLError) as exc:
        log("server unreachable", url=args.url, error=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
