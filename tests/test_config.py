"""Config: precedence of the four sources, parsing, and every validation error."""

from __future__ import annotations

import os

from pathlib import Path

import pytest

from sfu.config import Config, ConfigError, is_loopback, load_config

SECRET = "s" * 32


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sfu.toml"
    path.write_text(text)
    return str(path)


def load(cli: dict | None = None, env: dict | None = None, path: str | None = None) -> Config:
    """load_config with an isolated environment and a secret unless the test says otherwise."""
    env = {"SFU_AUTH_SECRET": SECRET} if env is None else env
    return load_config(cli or {}, config_path=path, environ=env)


def test_defaults() -> None:
    config = load()
    assert config == Config(auth_secret=SECRET)


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http_port = 1001\nrtc_port = 2001\nshards = 3\nauth_secret = 'f'\n")
    env = {"SFU_HTTP_PORT": "1002", "SFU_RTC_PORT": "2002"}
    config = load({"http_port": 1003, "rtc_port": None}, env=env, path=path)
    assert config.http_port == 1003  # cli beats env and file
    assert config.rtc_port == 2002  # env beats file; cli None means "not given"
    assert config.shards == 3  # file beats default
    assert config.auth_secret == "f"
    assert config.max_sdp_bytes == 32768  # default


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http-port = 9000\n")
    config = load(env={"SFU_CONFIG": path, "SFU_AUTH_SECRET": SECRET})
    assert config.http_port == 9000


def test_explicit_config_path_beats_env(tmp_path: Path) -> None:
    used = write_toml(tmp_path, "http_port = 9001\n")
    config = load(env={"SFU_CONFIG": str(tmp_path / "missing.toml"), "SFU_AUTH_SECRET": SECRET}, path=used)
    assert config.http_port == 9001


def test_toml_dashes_and_all_types(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "http-host = 'localhost'\nconsent-timeout-s = 5\nshutdown_timeout_s = 0.5\n"
        "dev = true\nlog-level = 'DEBUG'\nkeyframe-min-interval-ms = 250\n",
    )
    config = load(env={}, path=path)
    assert config.http_host == "localhost"
    assert config.consent_timeout_s == 5.0 and isinstance(config.consent_timeout_s, float)
    assert config.shutdown_timeout_s == 0.5
    assert config.dev is True
    assert config.log_level == "debug"
    assert config.keyframe_min_interval_ms == 250


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True),
     ("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_env_bool(raw: str, expected: bool) -> None:
    assert load(env={"SFU_DEV": raw, "SFU_AUTH_SECRET": SECRET}).dev is expected


def test_env_numbers_and_strings() -> None:
    env = {
        "SFU_HTTP_PORT": " 8443 ",
        "SFU_SHARDS": "4",
        "SFU_CONSENT_TIMEOUT_S": "12.5",
        "SFU_RTC_HOST": "192.0.2.7",
        "SFU_AUTH_SECRET": SECRET,
    }
    config = load(env=env)
    assert (config.http_port, config.shards, config.consent_timeout_s) == (8443, 4, 12.5)
    assert config.rtc_host == "192.0.2.7"


def test_empty_env_var_counts_as_unset() -> None:
    assert load(env={"SFU_HTTP_PORT": "", "SFU_AUTH_SECRET": SECRET}).http_port == 8080


def test_one_shard_per_core_by_default() -> None:
    assert load(env={"SFU_AUTH_SECRET": SECRET}).shards == (os.cpu_count() or 1)


def test_simulcast_max_layer_from_the_environment() -> None:
    assert load(env={"SFU_AUTH_SECRET": SECRET}).simulcast_max_layer is None
    assert load(env={"SFU_AUTH_SECRET": SECRET, "SFU_SIMULCAST_MAX_LAYER": "1"}).simulcast_max_layer == 1


def test_cli_strings_are_converted() -> None:
    config = load({"http_port": "9999", "dev": True, "shards": "2"}, env={})
    assert (config.http_port, config.dev, config.shards) == (9999, True, 2)


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"SFU_HTTP_PORT": "abc"}, ["http_port", "SFU_HTTP_PORT", "not an integer"]),
        ({"SFU_HTTP_PORT": "70000"}, ["http_port", "SFU_HTTP_PORT", "port"]),
        ({"SFU_RTC_PORT": "0"}, ["rtc_port", "SFU_RTC_PORT"]),
        ({"SFU_SHARDS": "0"}, ["shards", "SFU_SHARDS", "at least 1"]),
        ({"SFU_RTC_PORT": "65535", "SFU_SHARDS": "2"}, ["rtc_port", "2 shards"]),
        ({"SFU_DEV": "maybe"}, ["dev", "SFU_DEV", "boolean"]),
        ({"SFU_CONSENT_TIMEOUT_S": "soon"}, ["consent_timeout_s", "not a number"]),
        ({"SFU_CONSENT_TIMEOUT_S": "nan"}, ["consent_timeout_s", "not a number"]),
        ({"SFU_CONSENT_TIMEOUT_S": "0"}, ["consent_timeout_s", "positive"]),
        ({"SFU_KEYFRAME_MIN_INTERVAL_MS": "-1"}, ["keyframe_min_interval_ms", "negative"]),
        ({"SFU_MAX_SDP_BYTES": "0"}, ["max_sdp_bytes", "positive"]),
        ({"SFU_SHUTDOWN_TIMEOUT_S": "-1"}, ["shutdown_timeout_s", "negative"]),
        ({"SFU_LOG_LEVEL": "loud"}, ["log_level", "SFU_LOG_LEVEL", "debug"]),
        ({"SFU_HTTP_HOST": " "}, ["http_host", "empty"]),
        ({"SFU_SIMULCAST_MAX_LAYER": "3"}, ["simulcast_max_layer", "SFU_SIMULCAST_MAX_LAYER", "0 (lowest), 1 or 2"]),
        ({"SFU_SIMULCAST_MAX_LAYER": "-1"}, ["simulcast_max_layer", "0 (lowest), 1 or 2"]),
    ],
)
def test_bad_env_values(env: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load(env={"SFU_AUTH_SECRET": SECRET, **env})
    for needle in needles:
        assert needle in str(err.value)


def test_bad_cli_value_names_flag() -> None:
    with pytest.raises(ConfigError, match="http_port from --http-port: 'abc' is not an integer"):
        load({"http_port": "abc"})


def test_empty_cli_secret_rejected() -> None:
    with pytest.raises(ConfigError, match="auth_secret from --auth-secret"):
        load({"auth_secret": ""}, env={})


def test_unknown_cli_key() -> None:
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        load({"colour": "blue"})


def test_bad_toml_values_name_file_and_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http-port = 70000\n")
    with pytest.raises(ConfigError) as err:
        load(path=path)
    assert path in str(err.value) and "'http-port'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colour = 'blue'\n", "unknown key 'colour'"),
        ("http_port = 1\nhttp-port = 2\n", "twice"),
        ("http_port = '8o8o'\n", "not an integer"),
        ("http_port = true\n", "not an integer"),
        ("dev = 1\n", "not a boolean"),
        ("http_host = 127\n", "not a string"),
        ("shards = 1.5\n", "not an integer"),
        ("[server]\nhttp_port = 1\n", "unknown key 'server'"),
        ("http_port = \n", "not valid TOML"),
    ],
)
def test_bad_toml_files(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(path=write_toml(tmp_path, text))


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(path=str(tmp_path / "nope.toml"))


def test_toml_numeric_strings_accepted(tmp_path: Path) -> None:
    assert load(path=write_toml(tmp_path, "http_port = '8081'\n")).http_port == 8081


def test_no_secret_outside_dev_mode() -> None:
    with pytest.raises(ConfigError) as err:
        load(env={})
    message = str(err.value)
    assert "--auth-secret" in message and "SFU_AUTH_SECRET" in message and "--dev" in message


def test_dev_mode_needs_no_secret() -> None:
    config = load({"dev": True}, env={})
    assert config.dev and config.auth_secret is None


@pytest.mark.parametrize("field", ["http_host", "rtc_host"])
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_dev_mode_refuses_non_loopback(field: str, host: str) -> None:
    with pytest.raises(ConfigError, match="--dev refuses to bind a non-loopback address") as err:
        load({"dev": True, field: host}, env={})
    assert field in str(err.value) and repr(host) in str(err.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "localhost", "LocalHost"])
def test_dev_mode_allows_loopback(host: str) -> None:
    config = load({"dev": True, "http_host": host, "rtc_host": host}, env={})
    assert config.http_host == host


def test_non_loopback_fine_with_auth() -> None:
    assert load({"http_host": "0.0.0.0"}).http_host == "0.0.0.0"


def test_validate_false_skips_cross_field_checks() -> None:
    config = load_config({}, environ={"SFU_DEV": "1", "SFU_HTTP_HOST": "0.0.0.0"}, validate=False)
    assert config.dev and config.http_host == "0.0.0.0"
    with pytest.raises(ConfigError, match="http_port"):
        load_config({"http_port": "x"}, environ={}, validate=False)


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("localhost.example") and not is_loopback("")


def test_per_module_log_levels_are_checked():
    from sfu.config import ConfigError, load_config
    from sfu.logs import parse_levels

    assert parse_levels("sfu.shard=debug, aiohttp=WARNING") == {"sfu.shard": "debug", "aiohttp": "warning"}
    for bad in ("sfu.shard", "=debug", "sfu.shard=loud"):
        try:
            load_config({"dev": True, "log_levels": bad}, environ={})
        except ConfigError as exc:
            assert "log_levels" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")
