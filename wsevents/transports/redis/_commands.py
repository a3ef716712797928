"""What the pub/sub reader and the directory share when they talk to Redis: decoding a
reply, batching commands, naming an error's cause in a message."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["cause", "chunks", "text"]


def cause(exc: BaseException) -> str:
    """``Type: message`` of an error, for messages that name the cause."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def text(value: Any) -> str:
    """A Redis reply (bytes or str) as text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``, one command each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
