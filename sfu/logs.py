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


def configure_logging(level: str = "info", json: bool = True) -> None:
    """Route structlog and stdlib logging to stderr at ``level``; safe to call again."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
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


def get_logger(name: str, **bound: object) -> FilteringBoundLogger:
    """A logger named ``name`` carrying ``bound`` keys (room, peer, shard) on every line."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger.bind(**bound) if bound else logger
