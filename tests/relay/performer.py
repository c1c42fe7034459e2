"""One performer of a co-performance room, as a process (run inside a test's network
namespace): joins the room API, publishes a tone and a moving square (aiortc), waits
for ``--others`` other performers' tracks, subscribes to all of them, and reports on
stdout, one JSON object a line:

- ``{"event": "joined", "participant": ...}``, then ``{"event": "published"}``;
- ``{"event": "receiving", "frames": {mid: {participant, kind, frames}}}`` once every
  other performer's audio (50 frames, 1 s) and video (10 frames) decode here;
- ``{"event": "delays", "you_ms": ..., "delays": {...}}``: the first ``delays`` room
  event with an estimate for every other performer.

It then keeps playing (others still receive it) until SIGTERM, reporting others leaving:
``{"event": "participant_left" | "track_unpublished", "participant": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: peers

import peers  # noqa: E402

AUDIO_FRAMES, VIDEO_FRAMES = 50, 10


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def until(predicate, timeout_s: float, what: str, state=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout_s} s {state()}")
        await asyncio.sleep(0.05)


async def perform(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = peers.RoomClient(args.url, args.room)
    try:
        joined = await client.join(args.name, token=args.token)
        if joined.get("type") != "joined":
            raise SystemExit(f"join failed: {joined}")
        say(event="joined", participant=client.participant, others=[p["id"] for p in joined["participants"]])
        published, _ = await client.publish()
        if published.get("type") != "published":
            raise SystemExit(f"publish failed: {published}")
        say(event="published", session=published["session"])

        def publishers() -> set[str]:
            seen = {t["participant"] for t in joined["tracks"]}
            seen |= {e["participant"] for e in client.events if e["type"] == "track_published"}
            return seen - {client.participant, None}

        await until(lambda: len(publishers()) >= args.others, args.timeout, "the others' tracks")
        reply = await client.subscribe(audio=args.others, video=args.others)
        if reply.get("type") != "subscribed":
            raise SystemExit(f"subscribe failed: {reply}")
        pc, slots = client.pcs[-1], reply["slots"]

        def receiving() -> bool:
            frames = client.frames_by_mid(pc)
            return all(frames.get(mid, 0) >= (AUDIO_FRAMES if s["kind"] == "audio" else VIDEO_FRAMES)
                       for mid, s in slots.items())

        await until(receiving, args.timeout, "every other performer's media",
                    lambda: f"(frames per m-line {client.frames_by_mid(pc)}, slots {slots})")
        frames = client.frames_by_mid(pc)
        say(event="receiving", frames={mid: {**s, "frames": frames.get(mid, 0)} for mid, s in slots.items()})

        def complete_delays() -> dict | None:
            for event in reversed(client.events):
                if event["type"] == "delays" and len(event["delays"]) >= args.others and all(
                        d["one_way_ms"] is not None for d in event["delays"].values()):
                    return event
            return None

        await until(lambda: complete_delays() is not None, args.timeout, "a delay estimate for everyone")
        event = complete_delays()
        assert event is not None
        say(event="delays", you_ms=event["you_ms"], delays=event["delays"])
        told = len(client.events)
        while not stop.is_set():
            for event in client.events[told:]:
                if event["type"] in ("participant_left", "track_unpublished"):
                    say(event=event["type"], participant=event["participant"])
            told = len(client.events)
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--token")
    parser.add_argument("--others", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=45.0)
    asyncio.run(perform(parser.parse_args()))


if __name__ == "__main__":
    main()
