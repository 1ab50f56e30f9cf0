"""structlog setup: JSON lines when not on a TTY (systemd, files), console on a TTY.

One bound logger per component: ``get_logger("bgpd.bgp.rib").bind(peer=...)``.
Secrets are ``config.schema.Secret`` values; the ``redact_secrets`` processor
replaces any that reach a log event, so a mistake cannot leak a password.
"""

from __future__ import annotations

import logging
import sys

import structlog

from config.schema import Secret

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def redact_secrets(_logger, _name, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if isinstance(value, Secret):
            event_dict[key] = value.redacted()
    return event_dict


def setup_logging(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Configure structlog once for the process (the daemon, the CLI, the lab)."""
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer = (structlog.dev.ConsoleRenderer(colors=True) if use_console
                else structlog.processors.JSONRenderer(sort_keys=True))
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(component: str, **context):
    """The logger of one component, with ``component`` bound on every event."""
    return structlog.get_logger(component).bind(component=component, **context)
