"""Structured logs with stable keys: ``action``, ``turn_id``, ``tenant_id``, ``stage``.

Like arq's ``logs.py``, this module returns a logging config; processes that own their
logging (the CLI, the workers) apply it, libraries never call ``basicConfig``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

STABLE_KEYS = (
    "action",
    "turn_id",
    "tenant_id",
    "stage",
    "queue",
    "attempt",
    "agent",
    "kb_information_level",
    "duration_ms",
    "reason",
    "server",
    "port",
    "pid",
)
_SECRET_MARKERS = ("api_key", "apikey", "password", "secret", "token=")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in STABLE_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={getattr(record, key)}"
            for key in STABLE_KEYS
            if getattr(record, key, None) is not None
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = (
            f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()} {extras}".rstrip()
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def logging_config(*, level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    """A dictConfig for a chordline process."""
    formatter = "shared.logs.JsonFormatter" if fmt == "json" else "shared.logs.ConsoleFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chordline": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "chordline",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "shared": {"level": level, "handlers": ["stderr"], "propagate": False},
            "workers": {"level": level, "handlers": ["stderr"], "propagate": False},
        },
    }
