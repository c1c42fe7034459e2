"""Does recording slow forwarding? The fanout load, with the room recorded and not, in one run.

One pinned shard forwards the fanout benchmark's stream (VP8 + Opus from
``bench/clip.py``) to N raw DTLS-SRTP viewers (``bench/loadgen.py``); windows
alternate between recording off and on (started and stopped through the admin
API), so the machine's drift hits both alike. Reported: forwarded packets per
CPU-second of the shard, off and on, and their ratio (target: on within 5 % of
off); the recorder process's own CPU, which runs on the other core with
signalling and the load generator; and the frames the recordings hold. (They do
not decode: the load generator writes its send times into each payload, which
is what it measures latency with, and that breaks the VP8 bitstream. The
recorder's own tests check decoding with real media.)

    python -m bench.recording_cost [--quick] [--viewers N]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import aiohttp

from . import procfs
from .clip import build_clip
from .fanout import measure, set_viewers, steady
from .loadgen import LoadGen
from .targets import SfuTarget, make_run_dir

ROOM = "fanout"


def _recorder_pid(server_pid: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"sfu.recording.main" not in (proc / "cmdline").read_bytes():
                continue
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid:
            return int(proc.name)
    return None


async def _recording(base_url: str, on: bool) -> None:
    async with aiohttp.ClientSession() as http:
        method = http.post if on else http.delete
        async with method(f"{base_url}/api/rooms/{ROOM}/recording") as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"recording {'start' if on else 'stop'}: {r.status} {await r.text()}")


async def run(args: argparse.Namespace) -> dict:
    run_dir = make_run_dir()
    recordings = run_dir / "recordings"
    target = SfuTarget("cython", shard_core=args.shard_core, other_core=args.generator_core, run_dir=run_dir,
                       extra_env={"SFU_RECORDINGS": str(recordings)})
    clip = build_clip()
    print(f"{args.viewers} viewers of VP8 {clip.width}x{clip.height} + Opus; shard on core {args.shard_core}; "
          f"{args.rounds} rounds of {args.window:.0f} s off / on; logs in {run_dir}", flush=True)
    await target.start()
    gen = LoadGen(target, clip)
    rates: dict[bool, list[float]] = {False: [], True: []}
    recorder_cpu: list[float] = []
    try:
        await gen.start()
        await asyncio.sleep(2.0)
        await set_viewers(gen, args.viewers, print)
        await steady(gen, target, 2.0)
        for round_ in range(args.rounds):
            for on in (False, True):
                if on:
                    await _recording(target.base_url, True)
                    await asyncio.sleep(2.0)  # the recorder's first keyframe and file
                recorder = _recorder_pid(target.server.proc.pid) if target.server.proc else None
                cpu0 = procfs.cpu_seconds(recorder) if recorder else 0.0
                window = await measure(gen, target, args.window, target.core)
                if on and recorder:
                    recorder_cpu.append((procfs.cpu_seconds(recorder) - cpu0) / window.seconds)
                rates[on].append(window.pps_per_cpu_s)
                print(f"round {round_ + 1} recording {'on ' if on else 'off'}: {window.line()}", flush=True)
                if on:
                    await _recording(target.base_url, False)
                    await steady(gen, target, 1.0)
    finally:
        await gen.close()
        await target.stop()
    files = sorted(recordings.glob("*/*.webm"))
    frames = []
    for manifest in recordings.glob("*/recording.json"):
        for publisher in json.loads(manifest.read_text())["publishers"].values():
            frames += [s["frames"] for s in publisher["segments"]]
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    result = {
        "viewers": args.viewers, "rounds": args.rounds, "window_s": args.window,
        "pps_per_cpu_s_off": round(off), "pps_per_cpu_s_on": round(on),
        "on_over_off": round(on / off, 3) if off else None,
        "recorder_cpu_cores": round(statistics.median(recorder_cpu), 3) if recorder_cpu else None,
        "recordings": len(files), "frames_per_recording": frames,
    }
    print(f"shard packets per CPU-second: off {off:,.0f}, on {on:,.0f} (on/off {result['on_over_off']}); "
          f"the recorder itself used {result['recorder_cpu_cores']} cores (other core); "
          f"{len(files)} recordings of {frames} frames", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recording_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows (about 2 minutes)")
    parser.add_argument("--viewers", type=int, default=300)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--window", type=float)
    parser.add_argument("--shard-core", type=int, default=0)
    parser.add_argument("--generator-core", type=int, default=1)
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.window = args.window or (8.0 if args.quick else 15.0)
    started = time.monotonic()
    result = asyncio.run(run(args))
    result["run_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
