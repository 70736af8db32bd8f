"""Structured logging: text for people, JSON lines for machines.

Every record about a session carries ``session`` (the id clients also see in
pgwarden's own log lines); extra fields passed with ``extra=`` are kept, so a
JSON line for a statement has its user, target, status, tag and duration.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

__all__ = ["setup_logging", "JsonFormatter", "TextFormatter", "SessionLogger"]

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        session = getattr(record, "session", None)
        where = f" [{session}]" if session else ""
        line = f"{ts} {record.levelname:<7} {record.name}{where}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class SessionLogger(logging.LoggerAdapter):
    """Adds the session id to every record and keeps per-call ``extra`` fields.

    (The stdlib adapter replaces a call's ``extra`` with its own; we merge.)
    """

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs["extra"]} if "extra" in kwargs else self.extra
        return msg, kwargs


def setup_logging(level: str = "info", fmt: str = "text", file: Path | None = None) -> None:
    handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("pgwarden")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
