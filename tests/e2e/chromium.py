"""What the headless-Chromium tests need on the machine, checked in one place."""

from __future__ import annotations

import shutil
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent
CHROMIUM_PATH = Path("/usr/bin/chromium")


def missing_browser_dependencies() -> list[str]:
    """node, Debian's Chromium and playwright-core, each with how to install it."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node (apt-get install -y nodejs npm)")
    if not CHROMIUM_PATH.exists():
        missing.append(f"{CHROMIUM_PATH} (apt-get install -y chromium)")
    if not (E2E_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append(f"playwright-core (cd {E2E_DIR} && npm ci)")
    return missing
