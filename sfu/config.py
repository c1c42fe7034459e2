"""Server configuration: one dataclass, four sources, one place that validates.

Precedence, highest first: command line > ``SFU_*`` environment > TOML file >
defaults.  Every value remembers where it came from, so an error can tell the
user which flag, variable or file line to fix.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "SFU_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(Exception):
    """A configuration mistake; the message is a plain sentence for the user."""


@dataclass
class Config:
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    rtc_host: str = "127.0.0.1"  # address put in ICE candidates and bound by the shard's UDP socket
    rtc_port: int = 50000  # UDP port of the first shard; shard i uses rtc_port + i
    shards: int = field(default_factory=lambda: os.cpu_count() or 1)  # one shard process per core
    dev: bool = False  # no auth; refuses non-loopback http_host/rtc_host
    auth_secret: str | None = None
    log_level: str = "info"
    log_levels: str = ""  # per module, e.g. "sfu.shard=debug,sfu.signalling.cluster=warning"
    consent_timeout_s: float = 30.0
    keyframe_min_interval_ms: int = 500
    max_sdp_bytes: int = 32768
    shutdown_timeout_s: float = 2.0
    # Egress pacer per viewer: spreads keyframe bursts larger than the burst allowance.
    pacer: bool = True
    pacer_rate_kbps: int = 25_000
    pacer_burst_bytes: int = 48_000
    # Room-wide ceiling on simulcast layers, 0 = the lowest (None: none). An all-hands
    # with thousands of viewers keeps everyone at most on the middle layer (1).
    simulcast_max_layer: int | None = None
    # A simulcast layer nobody has watched this long is paused at publishers that can
    # (the publish page follows the session's ``layers`` event); 0 never pauses.
    simulcast_pause_after_s: float = 10.0
    # Viewers fill the publisher's shard until it is full, then spill to other shards
    # through the inter-shard relay. Full: CPU (reported each second, extrapolated to the
    # viewers placed since) at or above shard_max_cpu, or shard_max_viewers reached (0: no
    # fixed count).
    shard_max_cpu: float = 0.75
    shard_max_viewers: int = 0
    # Draining a shard (SIGTERM to it, or POST /api/shards/{id}/drain): how long its
    # peers get to move before it stops anyway.
    drain_timeout_s: float = 30.0
    # Where recordings go (a directory per recording, relative to the working directory).
    recordings: str = "recordings"
    # Cluster: a Redis directory shared by nodes (each `sfu serve`) and signalling
    # replicas. Without it the directory is in memory: one node, nothing else to run.
    redis_url: str | None = None
    node_id: str = ""  # default: host name and HTTP port
    public_url: str = ""  # how other nodes reach this one's HTTP (default http://http_host:http_port)
    # Media between nodes: "rtp" (plain, a private cluster network) or "quic" (a QUIC relay
    # process per node: TLS 1.3 with the cluster's certificates, datagrams, heals after cuts).
    relay_transport: str = "rtp"
    quic_port: int = 4433  # UDP port of this node's QUIC relay
    quic_public_port: int = 0  # the port peers dial, when a NAT or load balancer maps it (0: quic_port)
    relay_cert: str = ""  # PEM files: this node's relay certificate and key, the cluster CA
    relay_key: str = ""
    relay_ca: str = ""
    # Co-performance rooms (names matching any of these comma-separated shell patterns,
    # e.g. "choir-*,band-*"): performers publish at whichever node they reach, tracks are
    # relayed between nodes both ways, audio asks for RED, and the room page shows each
    # participant's estimated one-way delay.
    performance_rooms: str = ""


_FIELD_NAMES = tuple(f.name for f in fields(Config))


def _field_types() -> dict[str, type]:
    """Base type per field, with ``X | None`` unwrapped to ``X``."""
    out: dict[str, type] = {}
    for name, hint in typing.get_type_hints(Config).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out


_FIELD_TYPES = _field_types()


def load_config(
    cli: Mapping[str, Any],
    *,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    validate: bool = True,
) -> Config:
    """Merge the four sources into a Config, or raise ConfigError.

    ``cli`` maps field names to values; None means "not given".  ``config_path``
    falls back to ``SFU_CONFIG``.  ``validate=False`` skips the cross-field
    checks (dev/loopback, missing secret) for callers such as ``sfu token``
    that only need one value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origin: dict[str, str] = {name: "default" for name in _FIELD_NAMES}

    def put(name: str, raw: Any, where: str) -> None:
        values[name] = _convert(name, raw, where)
        origin[name] = where

    path = config_path or env.get(ENV_PREFIX + "CONFIG") or None
    if path is not None:
        for key, raw in _read_toml(path).items():
            put(key.replace("-", "_"), raw, f"{path} (key '{key}')")
    for name in _FIELD_NAMES:
        var = ENV_PREFIX + name.upper()
        if env.get(var, "") != "":  # an empty variable counts as unset
            put(name, env[var], f"environment variable {var}")
    for name, raw in cli.items():
        if name not in _FIELD_NAMES:
            raise ConfigError(f"unknown option '{name}'")
        if raw is not None:
            put(name, raw, "--" + name.replace("_", "-"))

    config = Config(**values)
    _check_ranges(config, origin)
    if validate:
        _check_consistency(config, origin)
    return config


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: addresses only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    seen: dict[str, str] = {}
    for key in data:
        name = key.replace("-", "_")
        if name not in _FIELD_NAMES:
            raise ConfigError(f"unknown key '{key}' in config file {path}")
        if name in seen:
            raise ConfigError(f"config file {path} sets '{name}' twice (as '{seen[name]}' and '{key}')")
        seen[name] = key
    return data


def _convert(name: str, raw: Any, where: str) -> Any:
    """Coerce one value to its field's type; strings (env, CLI) are parsed."""
    kind = _FIELD_TYPES[name]
    bad = f"{name} from {where}: {raw!r}"
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ConfigError(f"{bad} is not a boolean (use true/false, yes/no or 1/0)")
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ConfigError(f"{bad} is not an integer")
    if kind is float:
        value: float | None = None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                pass
        if value is None or not math.isfinite(value):
            raise ConfigError(f"{bad} is not a number")
        return value
    if not isinstance(raw, str):
        raise ConfigError(f"{bad} is not a string")
    return raw


def _check_ranges(config: Config, origin: dict[str, str]) -> None:
    """Per-field limits; messages name the source of the offending value."""

    def fail(name: str, why: str) -> typing.NoReturn:
        raise ConfigError(f"{name} from {origin[name]}: {getattr(config, name)!r} {why}")

    if not 0 <= config.http_port <= 65535:
        fail("http_port", "is not a port number (0-65535)")
    if not 1 <= config.rtc_port <= 65535:
        fail("rtc_port", "is not a port number (1-65535)")
    if config.shards < 0 or (config.shards == 0 and not config.redis_url):
        fail("shards", "must be at least 1 (0 only for a signalling replica of a cluster: with redis_url)")
    if config.rtc_port + config.shards - 1 > 65535:
        fail("rtc_port", f"leaves no room for {config.shards} shards (one UDP port each) below 65536")
    for name in ("http_host", "rtc_host"):
        if not getattr(config, name).strip():
            fail(name, "is empty")
    if config.auth_secret == "":
        fail("auth_secret", "is empty")
    try:
        from .logs import parse_levels

        parse_levels(config.log_levels)
    except ValueError as exc:
        fail("log_levels", str(exc))
    config.log_level = config.log_level.lower()
    if config.log_level not in LOG_LEVELS:
        fail("log_level", f"is not one of {', '.join(LOG_LEVELS)}")
    if config.consent_timeout_s <= 0:
        fail("consent_timeout_s", "must be positive")
    if config.keyframe_min_interval_ms < 0:
        fail("keyframe_min_interval_ms", "must not be negative")
    if config.max_sdp_bytes <= 0:
        fail("max_sdp_bytes", "must be positive")
    if config.shutdown_timeout_s < 0:
        fail("shutdown_timeout_s", "must not be negative")
    if config.pacer_rate_kbps <= 0:
        fail("pacer_rate_kbps", "must be positive")
    if config.pacer_burst_bytes < 1500:
        fail("pacer_burst_bytes", "must be at least one packet (1500)")
    if not 0 < config.shard_max_cpu <= 1.0:
        fail("shard_max_cpu", "must be above 0 and at most 1 (one core)")
    if config.shard_max_viewers < 0:
        fail("shard_max_viewers", "must not be negative (0: no fixed count)")
    if not config.recordings.strip():
        fail("recordings", "is empty")
    if config.relay_transport not in ("rtp", "quic"):
        fail("relay_transport", 'must be "rtp" or "quic"')
    if config.relay_transport == "quic":
        if not 1 <= config.quic_port <= 65535:
            fail("quic_port", "is not a port number")
        for name in ("relay_cert", "relay_key", "relay_ca"):
            if not getattr(config, name):
                fail(name, "is needed with relay_transport quic (sfu relay-certs makes a set)")
    if config.drain_timeout_s < 0:
        fail("drain_timeout_s", "must not be negative")
    if config.simulcast_max_layer is not None and not 0 <= config.simulcast_max_layer <= 2:
        fail("simulcast_max_layer", "must be 0 (lowest), 1 or 2")
    if config.simulcast_pause_after_s < 0:
        fail("simulcast_pause_after_s", "must not be negative (0: never pause)")


def _check_consistency(config: Config, origin: dict[str, str]) -> None:
    """Refuse the two unsafe setups: an open dev server, or a server with no auth."""
    if config.dev:
        for name in ("http_host", "rtc_host"):
            host = getattr(config, name)
            if not is_loopback(host):
                raise ConfigError(
                    f"--dev refuses to bind a non-loopback address: {name} is {host!r} "
                    f"(from {origin[name]}); dev mode has no authentication, so use "
                    f"127.0.0.1, ::1 or localhost, or drop --dev and pass --auth-secret"
                )
    elif not config.auth_secret:
        raise ConfigError(
            "no auth secret configured: pass --auth-secret or set SFU_AUTH_SECRET "
            "(or auth_secret in the config file), or use --dev for an "
            "unauthenticated server on loopback only"
        )
