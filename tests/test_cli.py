"""The ``sfu`` command line: token minting and serve's refusal paths, without a server."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from sfu.auth import verify_token
from sfu.cli import main
from sfu.config import Config

SECRET = "c" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own SFU_* variables must not leak into these tests."""
    for name in [n for n in os.environ if n.startswith("SFU_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Stand in for sfu.server so serve can be checked without binding anything."""
    started: list[Config] = []
    module = types.ModuleType("sfu.server")
    module.serve = lambda config: started.append(config) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sfu.server", module)
    monkeypatch.setattr("sfu.logs.configure_logging", lambda *a, **k: None)
    return started


def test_token_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["token", "--room", "lobby", "--publish", "--identity", "bob", "--ttl", "90", "--auth-secret", SECRET])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    grant = verify_token(SECRET, out.strip(), room="lobby", action="publish")
    assert grant.identity == "bob" and grant.publish and not grant.subscribe
    assert out.count("\n") == 1


def test_token_defaults_to_subscribe_only_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--room", "r", "--auth-secret", SECRET]) == 0
    out, err = capsys.readouterr()
    grant = verify_token(SECRET, out.strip(), room="r", action="subscribe")
    assert not grant.publish
    assert "subscribe only" in err


def test_token_both_grants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--room", "*", "--publish", "--subscribe", "--auth-secret", SECRET]) == 0
    token = capsys.readouterr().out.strip()
    grant = verify_token(SECRET, token, room="any", action="publish")
    assert grant.subscribe and grant.room == "*"


def test_token_secret_from_env(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SFU_AUTH_SECRET", SECRET)
    assert main(["token", "--room", "r", "--subscribe"]) == 0
    verify_token(SECRET, capsys.readouterr().out.strip(), room="r", action="subscribe")


def test_token_secret_from_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text(f"auth-secret = '{SECRET}'\nhttp_host = '0.0.0.0'\ndev = true\n")
    assert main(["token", "--room", "r", "--subscribe", "--config", str(path)]) == 0
    verify_token(SECRET, capsys.readouterr().out.strip(), room="r", action="subscribe")


def test_token_flag_beats_env(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SFU_AUTH_SECRET", "e" * 32)
    assert main(["token", "--room", "r", "--subscribe", "--auth-secret", SECRET]) == 0
    verify_token(SECRET, capsys.readouterr().out.strip(), room="r", action="subscribe")


def test_token_without_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--room", "r"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--auth-secret" in err and "SFU_AUTH_SECRET" in err


@pytest.mark.parametrize("argv", [["--room", "", "--auth-secret", SECRET], ["--room", "r", "--ttl", "0", "--auth-secret", SECRET]])
def test_token_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", *argv]) == 2
    assert capsys.readouterr().out == ""


def test_token_requires_room(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--auth-secret", SECRET]) == 2
    assert "--room" in capsys.readouterr().err


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


def test_serve_dev_refuses_public_address(fake_server: list[Config], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--http-host", "0.0.0.0", "--dev"]) == 2
    assert "--dev refuses to bind a non-loopback address" in capsys.readouterr().err
    assert fake_server == []


def test_serve_without_secret(fake_server: list[Config], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "--auth-secret" in capsys.readouterr().err
    assert fake_server == []


def test_serve_bad_port(fake_server: list[Config], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--dev", "--http-port", "70000"]) == 2
    assert "--http-port" in capsys.readouterr().err
    assert fake_server == []


def test_serve_passes_only_given_options(
    fake_server: list[Config], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text("shards = 3\nrtc-port = 40000\n")
    monkeypatch.setenv("SFU_RTC_PORT", "41000")
    monkeypatch.setenv("SFU_AUTH_SECRET", SECRET)
    assert main(["serve", "--config", str(path), "--http-port", "9000", "--log-level", "debug"]) == 0
    (config,) = fake_server
    assert (config.http_port, config.rtc_port, config.shards) == (9000, 41000, 3)
    assert config.log_level == "debug" and config.auth_secret == SECRET and not config.dev


def test_serve_returns_servers_exit_code(fake_server: list[Config], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["sfu.server"], "serve", lambda config: 3)
    assert main(["serve", "--dev"]) == 3


def test_admin_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--room", "*", "--admin", "--auth-secret", SECRET]) == 0
    grant = verify_token(SECRET, capsys.readouterr().out.strip(), room="*", action="admin")
    assert grant.admin
    assert main(["token", "--room", "lobby", "--admin", "--auth-secret", SECRET]) != 0
    assert "--room" in capsys.readouterr().err
