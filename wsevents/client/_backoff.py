"""Reconnect delays: exponential or linear growth, capped, with full jitter (sans-I/O)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

__all__ = ["Backoff", "BackoffStrategy"]

BackoffStrategy = Literal["exponential", "linear"]

# 2**62 times any sane base delay is far over any max_delay; a bigger exponent could
# overflow a float after hours of retries.
_MAX_EXPONENT = 62


class Backoff:
    """The delay before each reconnect attempt.

    The ceiling of attempt ``n`` (counted from 0 since the last [`reset`][]) is
    ``base_delay * 2**n`` (exponential) or ``base_delay * (n + 1)`` (linear), capped at
    ``max_delay``. The delay itself is drawn uniformly from ``[0, ceiling]`` ("full
    jitter"), so clients dropped by one server restart do not all come back at once.

    Args:
        base_delay: seconds; the ceiling of the first attempt.
        max_delay: seconds; no ceiling is higher.
        max_retries: attempts allowed after a loss (None = unlimited); then
            [`next_delay`][] returns None.
        strategy: ``"exponential"`` or ``"linear"``.
        rand: a source of floats in ``[0, 1)`` (tests pass a fixed one).

    Raises:
        ValueError: a negative delay, ``max_delay < base_delay``, a negative
            ``max_retries`` or an unknown strategy.
    """

    __slots__ = ("_attempt", "_rand", "base_delay", "max_delay", "max_retries", "strategy")

    def __init__(
        self,
        *,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        max_retries: int | None = None,
        strategy: BackoffStrategy = "exponential",
        rand: Callable[[], float] = random.random,
    ) -> None:
        if base_delay < 0 or max_delay < base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must be None or >= 0")
        if strategy not in ("exponential", "linear"):
            raise ValueError(f"backoff must be 'exponential' or 'linear', not {strategy!r}")
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.max_retries = max_retries
        self.strategy: BackoffStrategy = strategy
        self._rand = rand
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Delays handed out since the last reset: the number of the latest attempt."""
        return self._attempt

    @property
    def exhausted(self) -> bool:
        """True when ``max_retries`` attempts have been made since the last reset."""
        return self.max_retries is not None and self._attempt >= self.max_retries

    def ceiling(self, attempt: int) -> float:
        """The largest delay of attempt ``attempt`` (0-based), before jitter."""
        if self.strategy == "exponential":
            raw = self.base_delay * 2.0 ** min(attempt, _MAX_EXPONENT)
        else:
            raw = self.base_delay * (attempt + 1)
        return min(raw, self.max_delay)

    def next_delay(self) -> float | None:
        """The delay before the next attempt, or None when retries are exhausted."""
        if self.exhausted:
            return None
        delay = self._rand() * self.ceiling(self._attempt)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from the first attempt (after a successful connection)."""
        self._attempt = 0
