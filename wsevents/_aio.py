"""Small asyncio helpers shared by the app, the transports and the client.

``is_async`` decides once, at registration, whether a callable must be awaited;
``call_hook`` / ``await_hook`` call a sync-or-async hook and log (never raise) its errors;
``TaskSet`` keeps the tasks an object spawned so it can cancel or wait for them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import Context
from typing import Any

__all__ = ["TaskSet", "await_hook", "call_hook", "is_async"]


def is_async(fn: Callable[..., Any]) -> bool:
    """True for an ``async def`` function or an object with an ``async def __call__``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


class TaskSet(set["asyncio.Task[Any]"]):
    """The running tasks of one owner; a finished task leaves the set by itself.

    A ``set`` subclass, so ``add``/``discard`` stay C calls where a hot path binds them.
    """

    __slots__ = ()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, context: Context | None = None
    ) -> asyncio.Task[Any]:
        """Run ``coro`` as a task tracked here until it finishes."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, context=context)
        self.add(task)
        task.add_done_callback(self.discard)
        return task

    async def wait(self, timeout: float | None = None) -> set[asyncio.Task[Any]]:
        """Wait for the tasks running now; returns those still pending after ``timeout``."""
        if not self:
            return set()
        _, pending = await asyncio.wait(set(self), timeout=timeout)
        return pending

    async def cancel_all(self, timeout: float | None = None) -> None:
        """Cancel every task and wait (at most ``timeout`` seconds) for them to end."""
        tasks = [task for task in self if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


def call_hook(
    hook: Callable[..., Any],
    *args: Any,
    tasks: TaskSet,
    logger: logging.Logger,
    message: str,
) -> None:
    """Call a sync-or-async ``hook`` now; an awaitable result finishes in a task of ``tasks``.

    An exception (raised at once or by the awaitable) is logged as ``message`` with its
    traceback, never raised.
    """
    try:
        result = hook(*args)
    except Exception:
        logger.exception("%s", message)
        return
    if inspect.isawaitable(result):
        _ = tasks.spawn(_settle(result, logger, message))


async def await_hook(
    hook: Callable[..., Any], *args: Any, logger: logging.Logger, message: str
) -> None:
    """Call a sync-or-async ``hook`` and await its result; errors are logged, never raised."""
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("%s", message)


async def _settle(awaitable: Awaitable[Any], logger: logging.Logger, message: str) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("%s", message)
