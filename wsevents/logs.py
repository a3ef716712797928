"""Structured log lines: ``key=value`` text or one JSON object per line.

[`LogFormatter`][] is a ``logging.Formatter``; the CLI's ``--log-format text|json`` installs
it on the root handler. Besides the time, level, logger and message, a line carries the
fields wsevents passes as ``extra`` (``conn``, ``code``, ``reason``, ``by``, ``peer``,
``event``) and those of any other logger that does the same.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["LogFormatter"]

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_BARE = re.compile(r"[^\s\"'=\\]+")


class LogFormatter(logging.Formatter):
    """Formats a record as ``key=value`` pairs (``"text"``) or a JSON object (``"json"``).

    The keys: ``time`` (UTC, ISO 8601 with milliseconds), ``level`` (lower case),
    ``logger``, ``msg``, then the record's extra fields in the order given, then ``exc``
    (the traceback) when there is one. A text value with spaces, quotes or ``=`` is
    quoted, with ``"``, ``\\`` and line breaks escaped, so that every record is one line.

    Example:
        ``time=2026-11-30T10:00:00.000Z level=debug logger=wsevents.server
        msg="closed 3f2a...: 1000 by the client" conn=3f2a... code=1000 by=client
        event=close``

    Raises:
        ValueError: ``style`` is neither ``"text"`` nor ``"json"``.
    """

    def __init__(self, style: Literal["text", "json"] = "text") -> None:
        if style not in ("text", "json"):
            raise ValueError(f"log style must be 'text' or 'json', got {style!r}")
        super().__init__()
        self.json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line."""
        fields: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in fields:
                fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        if self.json:
            return json.dumps(fields, default=str, ensure_ascii=False)
        return " ".join(f"{key}={_text(value)}" for key, value in fields.items())


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else "null" if value is None else str(value)
    if text and _BARE.fullmatch(text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'
