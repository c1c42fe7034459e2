"""Structured logging: one JSON object per line on stderr, for us and for libraries.

structlog and stdlib ``logging`` share one formatter, so aiohttp's or aioice's
records come out in the same shape as ours.  Loggers below the configured level
are no-ops (a filtering bound logger), which keeps disabled debug calls cheap.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import FilteringBoundLogger, Processor

# Chatty libraries that only get a say at warning or above.
_QUIET_LOGGERS = ("aiohttp.access", "aioice", "aiortc")


class _SfuHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so reconfiguring replaces only ours."""


def parse_levels(spec: str) -> dict[str, str]:
    """``"sfu.shard=debug,aiohttp=warning"`` -> {logger: level}; ValueError on a bad entry."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, level = item.partition("=")
        if not sep or not name.strip() or logging.getLevelNamesMapping().get(level.strip().upper()) is None:
            raise ValueError(f"bad log level entry {item!r}: expected logger=level")
        out[name.strip()] = level.strip().lower()
    return out


def configure_logging(level: str = "info", json: bool = True, *, levels: str = "",
                      static: dict[str, object] | None = None) -> None:
    """Route structlog and stdlib logging to stderr at ``level``; safe to call again.

    ``levels``: per-module levels (``"sfu.shard=debug,sfu.signalling.cluster=warning"``);
    ``static``: fields on every line (the node id in a cluster).
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    per_module = parse_levels(levels)
    fields = dict(static or {})

    def add_static(logger: object, method: str, event: dict) -> dict:  # type: ignore[type-arg]
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_static,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    # With per-module levels each call asks the stdlib logger of its name; without,
    # a level-filtering logger makes disabled calls free.
    structlog.configure(
        processors=[
            *([structlog.stdlib.filter_by_level] if per_module else []),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=(structlog.stdlib.BoundLogger if per_module
                       else structlog.make_filtering_bound_logger(numeric)),
        cache_logger_on_first_use=True,
    )
    handler = _SfuHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SfuHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    for name, value in per_module.items():
        logging.getLogger(name).setLevel(value.upper())


def get_logger(name: str, **bound: object) -> FilteringBoundLogger:
    """A logger named ``name`` carrying ``bound`` keys (room, peer, shard) on every line."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger.bind(**bound) if bound else logger
