"""Where [`WsApp`][wsevents.WsApp] finds the network adapter that serves it.

``wsevents.server`` (the aiohttp adapter) registers itself here when imported, and
``wsevents/__init__`` installs the loader that imports it on the first ``attach``, ``run``
or ``listen``. The registry is its own small module so that neither ``wsevents.app`` nor
the package's ``__init__`` has to import the other layers to wire them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .app import WsApp

__all__ = ["ADAPTERS", "Adapter", "register_adapter"]


class Adapter(Protocol):
    """What serves a [`WsApp`][] on a network stack (``wsevents.server`` is the aiohttp
    one); [`WsApp.attach`][wsevents.WsApp.attach], [`WsApp.run`][wsevents.WsApp.run] and
    [`WsApp.listen`][wsevents.WsApp.listen] delegate to it."""

    def attach(self, ws_app: WsApp, app: Any, path: str) -> Any:
        """Mount ``ws_app`` on the stack's application ``app`` at ``path``; returns ``app``."""
        ...

    def run(self, ws_app: WsApp, *, host: str, port: int, path: str) -> None:
        """Serve until interrupted."""
        ...

    async def listen(
        self, ws_app: WsApp, *, host: str, port: int, path: str
    ) -> tuple[str, int, Callable[[], Awaitable[None]]]:
        """Serve in the running loop; returns the bound host and port and a function that
        stops serving (and, through the stack's cleanup, releases ``ws_app``)."""
        ...


class _AdapterRegistry:
    """The adapter [`WsApp`][] delegates to; filled when ``wsevents.server`` is imported
    (``wsevents/__init__`` installs the loader that imports it on first use)."""

    adapter: Adapter | None = None
    loader: Callable[[], None] | None = None

    def get(self) -> Adapter:
        if self.adapter is None and self.loader is not None:
            self.loader()
        if self.adapter is None:
            raise RuntimeError("no adapter registered: import wsevents.server first")
        return self.adapter


ADAPTERS = _AdapterRegistry()  # process-wide wiring, like an import: no per-app state


def register_adapter(
    adapter: Adapter | None = None, *, loader: Callable[[], None] | None = None
) -> None:
    """Set the adapter behind [`WsApp.attach`][wsevents.WsApp.attach],
    [`WsApp.run`][wsevents.WsApp.run] and [`WsApp.listen`][wsevents.WsApp.listen], or the
    ``loader`` that imports (and so registers) it on first use."""
    if adapter is not None:
        ADAPTERS.adapter = adapter
    if loader is not None:
        ADAPTERS.loader = loader
