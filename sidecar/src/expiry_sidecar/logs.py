"""Structured logs: one JSON object per line, with the record's extra fields as keys."""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """For people at a terminal: the message, the extra fields as key=value, then any multi-line
    field (a stack dump) as an indented block below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = extra_fields(record)
        blocks = {k: v for k, v in extra.items() if isinstance(v, str) and "\n" in v}
        fields = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in extra.items() if k not in blocks
        )
        text = f"{super().format(record)} {fields}".rstrip()
        for name, block in blocks.items():
            text += f"\n  {name}:\n" + "".join(f"    {line}\n" for line in block.rstrip().splitlines())
        return text.rstrip()


def configure(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
