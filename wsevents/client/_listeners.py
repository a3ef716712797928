"""Push listeners by event and path: exact paths or trailing-``*`` prefixes (sans-I/O)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Listeners", "Push"]

H = TypeVar("H")


@dataclass(frozen=True, slots=True)
class Push:
    """A message the server pushed: ``{"event", "path", "params"?, "data"?, "offset"?}``.

    ``params`` is empty and ``data`` None when the server left them out. ``offset`` is the
    push's position in a history room (an int), None for other pushes.
    """

    event: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    data: Any = None
    offset: int | None = None


class _Entry(Generic[H]):
    """One registration: removing it never removes another of the same handler."""

    __slots__ = ("event", "handler", "prefix")

    def __init__(self, event: str, prefix: str, handler: H) -> None:
        self.event = event
        self.prefix = prefix
        self.handler = handler


class Listeners(Generic[H]):
    """Handlers registered by ``(event, pattern)``.

    A pattern ending in ``*`` matches every path that starts with what precedes the
    ``*`` (``"/chat/*"`` matches ``"/chat/a"`` and ``"/chat/a/b"``; ``"*"`` matches every
    path); any other pattern matches that exact path only. Exact handlers come first,
    then prefix handlers, each in registration order.
    """

    __slots__ = ("_exact", "_prefix")

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], list[_Entry[H]]] = {}
        self._prefix: list[_Entry[H]] = []

    def add(self, event: str, pattern: str, handler: H) -> Callable[[], None]:
        """Register ``handler``; returns a function that removes this registration.

        The function is idempotent. The same handler may be registered several times;
        each registration is removed by its own function.
        """
        if pattern.endswith("*"):
            entry = _Entry(event, pattern[:-1], handler)
            self._prefix.append(entry)

            def off_prefix() -> None:
                _remove(self._prefix, entry)

            return off_prefix
        key = (event, pattern)
        entry = _Entry(event, pattern, handler)
        self._exact.setdefault(key, []).append(entry)

        def off() -> None:
            entries = self._exact.get(key)
            if entries is not None and _remove(entries, entry) and not entries:
                del self._exact[key]

        return off

    def match(self, event: str, path: str) -> list[H]:
        """Every handler for a push of ``event`` on ``path`` (a new list)."""
        found = [e.handler for e in self._exact.get((event, path), ())]
        for entry in self._prefix:
            if entry.event == event and path.startswith(entry.prefix):
                found.append(entry.handler)
        return found

    def clear(self) -> None:
        """Remove every handler."""
        self._exact.clear()
        self._prefix.clear()

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._exact.values()) + len(self._prefix)


def _remove(entries: list[_Entry[H]], entry: _Entry[H]) -> bool:
    for i, item in enumerate(entries):
        if item is entry:
            del entries[i]
            return True
    return False
