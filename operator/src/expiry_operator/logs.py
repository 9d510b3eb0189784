"""The operator's log lines, kopf's included: JSON (one object per line, as the sidecar's) or text.

The same shape as the sidecar's JSON logs (time, level, logger, message, then extra fields), so one
log pipeline parses both; kopf's per-object records add ``object`` (``namespace/name``) from the
``k8s_ref`` kopf attaches to them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_KOPF_INTERNAL = frozenset({"settings", "k8s_skip", "k8s_ref"})  # what kopf attaches for its own use


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            entry["object"] = "/".join(str(part) for part in (ref.get("namespace"), ref["name"]) if part)
        entry.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD and key not in _KOPF_INTERNAL
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(fmt: LogFormat, level: LogLevel = "info") -> None:
    """Route every logger (kopf's, aiohttp's, ours) through one stderr handler in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
