"""One channel's handler: payloads reach it in arrival order, a slow one never blocks the
reader."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable

from ..._aio import TaskSet, is_async
from ..base import PayloadHandler

__all__ = ["MAX_BACKLOG", "Subscription"]

log = logging.getLogger("wsevents.transports.redis")

MAX_BACKLOG = 10_000
"""Payloads an async handler may be behind before new ones on its channel are dropped."""


class Subscription:
    """One channel's handler; payloads reach it in arrival order.

    A sync handler runs inline in the reader task. An async one (or a sync one that
    returned an awaitable) runs in a worker task that drains a bounded backlog, so a slow
    handler never blocks the other channels and never reorders its own.
    """

    __slots__ = ("_first", "_tasks", "backlog", "channel", "handler", "is_async", "task")

    def __init__(self, channel: str, handler: PayloadHandler, tasks: TaskSet) -> None:
        self.channel = channel
        self.handler = handler
        self.is_async = is_async(handler)
        self.backlog: deque[str] = deque()
        self.task: asyncio.Task[None] | None = None
        self._first: Awaitable[None] | None = None
        self._tasks = tasks

    def replace(self, handler: PayloadHandler) -> None:
        """Deliver the next payloads to ``handler`` instead."""
        self.handler = handler
        self.is_async = is_async(handler)

    def deliver(self, payload: str) -> None:
        if self.is_async or self.task is not None:
            if len(self.backlog) >= MAX_BACKLOG:
                log.warning(
                    "dropped a payload on %s: its handler is %d behind",
                    self.channel,
                    len(self.backlog),
                )
                return
            self.backlog.append(payload)
            if self.task is None:
                self.task = self._tasks.spawn(self._drain())
            return
        try:
            result = self.handler(payload)
        except Exception:
            log.exception("subscriber of %s failed", self.channel)
            return
        if inspect.isawaitable(result):
            self._first = result
            self.task = self._tasks.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            first, self._first = self._first, None
            if first is not None:
                await self._settle(first)
            while self.backlog:
                payload = self.backlog.popleft()
                try:
                    result = self.handler(payload)
                except Exception:
                    log.exception("subscriber of %s failed", self.channel)
                    continue
                if inspect.isawaitable(result):
                    await self._settle(result)
        finally:
            self.task = None

    async def _settle(self, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("subscriber of %s failed", self.channel)

    def cancel(self) -> None:
        self.backlog.clear()
        first, self._first = self._first, None
        if inspect.iscoroutine(first):
            first.close()  # never started: close it so it is not reported as never awaited
        if self.task is not None:
            self.task.cancel()
