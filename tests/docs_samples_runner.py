"""Runs the code samples of one documentation page; started by ``tests/test_docs_samples.py``.

``python -m tests.docs_samples_runner PLAN WORKDIR`` reads the page's plan (JSON: the
blocks and directives of the page, in order) and runs it as ``test_docs_samples.py``
describes. A failing block prints ``<page> block <n> (line <l>)`` and its traceback, and
the exit status is 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

# The address samples show for a running server (the command line's default port) and the
# Redis they use; the runner replaces them with the served app's and REDIS_URL.
SAMPLE_ADDRESS = "127.0.0.1:8080"
SAMPLE_REDIS_URL = "redis://127.0.0.1:6379/0"
TIMEOUT = 10.0


class _Served:
    """A WsApp served on a free port in a thread of its own, while the page's blocks run."""

    def __init__(self, target: str) -> None:
        module_name, _, attr = target.partition(":")
        module = __import__(module_name, fromlist=[attr])
        self.ws_app = getattr(module, attr)
        self.loop = asyncio.new_event_loop()
        self.address = ""
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                host, port = self.loop.run_until_complete(self.ws_app.listen(port=0))
                self.address = f"{host}:{port}"
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name=f"serve {target}", daemon=True)
        self.thread.start()
        if not started.wait(TIMEOUT) or failure:
            raise RuntimeError(f"could not serve {target}") from (failure[0] if failure else None)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.ws_app.close(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def _run_app_once(app: Any, *args: Any, **kwargs: Any) -> None:
    """Stands in for ``web.run_app`` (so ``ws.run()``, ``wsevents.server.run``): serve
    ``app`` on a free port, prove that it answers, shut it down and return."""

    async def serve_and_check() -> None:
        application = await app if asyncio.iscoroutine(app) else app
        runner = web.AppRunner(application)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            ws_paths = [
                info["path"]
                for info in (r.get_info() for r in application.router.resources())
                if "path" in info
            ]
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{host}:{port}/") as response:
                    assert response.status < 500, f"GET / answered {response.status}"
                answered = []
                for path in ws_paths:
                    try:
                        ws = await session.ws_connect(f"ws://{host}:{port}{path}")
                    except aiohttp.WSServerHandshakeError:
                        continue
                    await ws.close()
                    answered.append(path)
            print(f"docs-samples: run_app served and answered on {answered or ['/']}")
        finally:
            await runner.cleanup()

    asyncio.run(serve_and_check())


def main(plan_path: str, workdir: str) -> int:
    plan = json.loads(Path(plan_path).read_text("utf-8"))
    page = plan["page"]
    sys.path[:0] = [workdir]
    web.run_app = _run_app_once
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": f"<{page}>"}
    served: list[_Served] = []
    redis_url = os.environ.get("REDIS_URL", SAMPLE_REDIS_URL)
    try:
        for item in plan["items"]:
            where = f"{page} block {item['block']} (line {item['line']})"
            try:
                if item["kind"] == "file":
                    # A later block with the same title continues the file.
                    path = Path(workdir) / item["name"]
                    before = path.read_text("utf-8") + "\n\n" if path.exists() else ""
                    path.write_text(before + item["source"], "utf-8")
                elif item["kind"] == "serve":
                    served.append(_Served(item["target"]))
                else:
                    source = item["source"].replace(SAMPLE_REDIS_URL, redis_url)
                    if served:
                        source = source.replace(SAMPLE_ADDRESS, served[-1].address)
                    # Padded so that a traceback shows the page's own line numbers.
                    source = "\n" * (item["line"] - 1) + source
                    code = compile(source, page, "exec", dont_inherit=True)
                    exec(code, namespace)
            except BaseException:
                print(f"FAILED: {where}", file=sys.stderr)
                traceback.print_exc()
                return 1
    finally:
        for server in reversed(served):
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
