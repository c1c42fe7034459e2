"""Headless Chromium publishes its fake camera over WHIP and watches it over WHEP.

The browser side is tests/e2e/browser.mjs (playwright-core driving the Debian
chromium package); it prints one JSON line that these tests read. It needs
`node`, `/usr/bin/chromium` and `npm ci` run in tests/e2e. A missing one fails
the test with the command that installs it, never skips it.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest

from chromium import E2E_DIR, missing_browser_dependencies

BROWSER_SCRIPT = E2E_DIR / "browser.mjs"
# The script gives up on its own after 30 s of polling; this bounds a hung browser.
SCRIPT_TIMEOUT_SECONDS = 90


def check_dependencies() -> None:
    missing = missing_browser_dependencies()
    if missing:
        pytest.fail("browser test dependencies missing: " + "; ".join(missing), pytrace=False)


def run_browser(base_url: str, room: str, *extra: str) -> dict[str, Any]:
    check_dependencies()
    try:
        completed = subprocess.run(
            ["node", str(BROWSER_SCRIPT), base_url, room, *extra],
            cwd=E2E_DIR,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"browser.mjs did not finish in {SCRIPT_TIMEOUT_SECONDS} s; stderr: {exc.stderr!r}")
    result = last_json_line(completed.stdout)
    if result is None:
        pytest.fail(
            f"browser.mjs printed no JSON result (exit {completed.returncode})\n"
            f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    result["exit_code"] = completed.returncode
    return result


def last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def assert_viewer_decoded_video(result: dict[str, Any]) -> None:
    report = json.dumps(result, indent=2)
    watch = result.get("watch") or {}
    assert result["ok"], f"{result.get('reason')}\n{report}"
    assert result["exit_code"] == 0, report
    assert watch.get("framesDecoded", 0) > 0, report
    assert watch.get("frameWidth", 0) > 0 and watch.get("frameHeight", 0) > 0, report
    assert watch.get("connectionState") == "connected", report
    assert (result.get("publish") or {}).get("connectionState") == "connected", report
    assert not result.get("errors"), report


def fresh_room() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def test_publish_then_watch_decodes_video(sfu_server: Any) -> None:
    result = run_browser(sfu_server.base_url, fresh_room())
    assert_viewer_decoded_video(result)


def test_viewer_waits_through_409_until_publisher_starts(sfu_server: Any) -> None:
    result = run_browser(sfu_server.base_url, fresh_room(), "--watch-first")
    assert_viewer_decoded_video(result)
    assert result["watch"]["notPublishedRetries"] >= 1, json.dumps(result, indent=2)
