"""Logging set-up: plain or JSON lines on stderr, passwords in URLs always redacted."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable

from agent.node.redact import RedactingFilter, redact_url


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = redact_url(record.exc_text or self.formatException(record.exc_info))
        return json.dumps(obj, ensure_ascii=False)


HANDLER_NAME = "edge-agent"  # the one handler setup_logging installs


def setup_logging(level: str, *, json_format: bool = False, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once: one stderr handler with the redacting filter, which
    also masks the configured ``secrets`` wherever they appear."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(RedactingFilter(secrets))
    fmt = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("paho").setLevel(max(logging.WARNING, root.level))
