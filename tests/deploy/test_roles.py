"""The roles as the manifests configure them, run for real on 127.0.0.1.

Redis with the StatefulSet's arguments, a media node and a signalling replica with
the environment the rendered dev overlay gives their containers (the downward API's
addresses become 127.0.0.1, ports are free ones, the Secret is made up): both pass
their probe, the replica redirects WHIP and WHEP to the media node's public URL,
a publisher and a viewer play there, and the media node's preStop hook drains it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

import peers
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = {"auth-secret": "roles-test-secret-0123456789abcdef", "redis-password": "0123456789abcdef"}

_spec = importlib.util.spec_from_file_location("sfu_deploy_validate_roles", ROOT / "deploy" / "validate.py")
assert _spec is not None and _spec.loader is not None
validate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate)


def _workloads() -> dict[str, dict[str, Any]]:
    docs = validate.documents(validate.render("dev"))
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")}


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]["containers"][0]


def _pod_env(container: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """What the kubelet would put in the container's environment."""
    env: dict[str, str] = {}
    fields = {"status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1", **names}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in source:
            env[var["name"]] = "2"
        elif source["secretKeyRef"]["key"] in SECRET:
            env[var["name"]] = SECRET[source["secretKeyRef"]["key"]]
        else:
            assert source["secretKeyRef"].get("optional"), var
    return env


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered 200:\n{log.read_text()}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (.ci/run installs Debian's redis-server)"
    workloads = _workloads()
    started: list[subprocess.Popen[bytes]] = []
    try:
        redis = _container(workloads["sfu-redis"])
        redis_port = free_port()
        args = [re.sub(r"\$\(REDIS_PASSWORD\)", SECRET["redis-password"], a) for a in redis["args"]]
        args[args.index("--dir") + 1] = str(tmp_path)
        started.append(subprocess.Popen([binary, *args, "--bind", "127.0.0.1", "--port", str(redis_port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", redis_port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

        nodes: dict[str, Any] = {}
        for name, fields in (("sfu-media", {"spec.nodeName": "node-a"}),
                             ("sfu-signalling", {"metadata.name": "sfu-signalling-7d9f-x2x"})):
            env = _pod_env(_container(workloads[name]), fields)
            port = free_port()
            env["SFU_HTTP_PORT"] = str(port)
            env["SFU_PUBLIC_URL"] = env["SFU_PUBLIC_URL"].replace(":8080", f":{port}")
            env["SFU_REDIS_URL"] = env["SFU_REDIS_URL"].replace("@sfu-redis:6379", f"@127.0.0.1:{redis_port}")
            if "SFU_RTC_PORT" in env:
                env["SFU_RTC_PORT"] = str(free_port(socket.SOCK_DGRAM))
            if "SFU_RECORDINGS" in env:
                env["SFU_RECORDINGS"] = str(tmp_path / "recordings")
            log = tmp_path / f"{name}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "sfu", "serve"],  # the image: tini -- sfu serve, configured by env only
                env={**{k: v for k, v in os.environ.items() if not k.startswith("SFU_")}, **env},
                stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
            started.append(process)
            url = f"http://127.0.0.1:{port}"
            probe = _container(workloads[name])["readinessProbe"]["httpGet"]["path"]
            _wait_http(url + probe, process, log)
            nodes[name] = {"url": url, "env": env, "log": log}
        yield nodes
    finally:
        for process in reversed(started):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _offer(direction: str) -> str:
    pc = peers.new_peer_connection()
    pc.addTransceiver("video", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_the_configured_roles_work_together(cluster) -> None:
    from sfu.auth import issue_token

    media, replica = cluster["sfu-media"], cluster["sfu-signalling"]
    secret = SECRET["auth-secret"]
    publisher = viewer = None
    try:
        # The replica forwards WHIP and WHEP requests that carry a token to the media node
        # (clients drop Authorization on a redirect to another origin) and hands back the
        # node's answer, whose Location is the session at the node's SFU_PUBLIC_URL.
        tokens = {"whip": issue_token(secret, "allhands", publish=True),
                  "whep": issue_token(secret, "allhands", subscribe=True)}
        targets = {}
        offers = {"whip": await _offer("sendonly"), "whep": await _offer("recvonly")}
        async with aiohttp.ClientSession() as http:
            for kind, token in tokens.items():
                deadline = time.monotonic() + 10
                while True:  # until the media node's first heartbeat is in the directory
                    async with http.post(f"{replica['url']}/{kind}/allhands", data=offers[kind], allow_redirects=False,
                                         headers={"Content-Type": "application/sdp",
                                                  "Authorization": f"Bearer {token}"}) as r:
                        if r.status == 201:
                            targets[kind] = r.headers["Location"]
                            break
                        assert r.status == 503 and time.monotonic() < deadline, (r.status, await r.text())
                    await asyncio.sleep(0.25)
            for kind, location in targets.items():
                assert location.startswith(f"{media['env']['SFU_PUBLIC_URL']}/{kind}/allhands/"), location
                async with http.delete(location, headers={"Authorization": f"Bearer {tokens[kind]}"}) as r:
                    assert r.status == 200, await r.text()
        publisher = await peers.publish(media["url"], "allhands", token=tokens["whip"])
        viewer = await peers.watch(media["url"], "allhands", token=tokens["whep"])
        await viewer.wait_frames(10)
        admin = issue_token(secret, "*", admin=True)
        request = urllib.request.Request(media["url"] + "/api/rooms/allhands",
                                         headers={"Authorization": f"Bearer {admin}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            room = json.loads(r.read())
        assert sorted(p["kind"] for p in room["peers"]) == ["whep", "whip"]

        # The media node's preStop hook, with its container's environment.
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFU_")}, **media["env"]}
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "deploy" / "docker" / "sfu_drain.py"), "--poll", "0.2",
            env={**env, "SFU_DRAIN_TIMEOUT_S": "2"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        events = [json.loads(line)["event"] for line in out.decode().splitlines()]
        assert process.returncode == 0 and "drain started" in events and events[-1] == "node drained", out
    finally:
        if viewer is not None:
            await viewer.close()
        if publisher is not None:
            await publisher.close()
