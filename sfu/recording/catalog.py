"""Catalog: the recordings on disk, from their ``recording.json`` manifests.

Read by the replay API; the manifests are the recorder's, rewritten every couple
of seconds, so a recording cut short by a crash is listed as far as it got.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .recorder import safe_name


def list_recordings(root: Path, room: str | None = None) -> list[dict[str, Any]]:
    out = []
    for manifest_path in sorted(root.glob("*/recording.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if room is not None and manifest.get("room") != room:
            continue
        out.append(summary(manifest_path.parent, manifest))
    out.sort(key=lambda r: r.get("start") or 0, reverse=True)
    return out


def summary(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    recording_id = manifest.get("id", directory.name)
    segments = []
    tracks: set[str] = set()
    for publisher, info in manifest.get("publishers", {}).items():
        for segment in info.get("segments", []):
            path = directory / segment["file"]
            size = path.stat().st_size if path.exists() else 0
            tracks.update(f"{t['kind']}/{t['codec']}" for t in segment.get("tracks", []))
            segments.append({
                "publisher": publisher, "file": segment["file"],
                "url": f"/recordings/{directory.name}/{segment['file']}",
                "start": segment.get("started_at"), "duration": segment.get("duration_s", 0.0), "size": size,
                "complete": segment.get("complete", False), "lost_packets": segment.get("lost_packets", 0),
                "dropped_frames": segment.get("dropped_frames", 0),
            })
    start = manifest.get("started_at")
    end = max(((s["start"] or 0) + s["duration"] for s in segments), default=start or 0)
    return {"id": recording_id, "room": manifest.get("room"), "start": start,
            "duration": round(max(0.0, end - (start or end)), 3), "size": sum(s["size"] for s in segments),
            "tracks": sorted(tracks), "segments": segments}


def find(root: Path, recording_id: str, file: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The file of a recording (its first segment when ``file`` is None) and the recording's room."""
    directory = root / safe_name(recording_id)
    try:
        manifest = json.loads((directory / "recording.json").read_text())
    except (OSError, ValueError):
        return None
    names = [s["file"] for p in manifest.get("publishers", {}).values() for s in p.get("segments", [])]
    if file is None:
        if not names:
            return None
        file = names[0]
    if file not in names:  # only what the manifest lists: no path tricks
        return None
    path = directory / file
    return (path, manifest) if path.is_file() else None
