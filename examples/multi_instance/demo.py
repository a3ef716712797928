"""Watch a message cross from one wsevents instance to another through Redis.

Start two reference-app instances on one Redis (see README.md), then::

    python examples/multi_instance/demo.py ws://127.0.0.1:8081/ws ws://127.0.0.1:8082/ws

Alice connects to the first instance and Bob to the second; both join one room. Alice's
room message, a server-wide announcement and a direct push to Bob's connection id each
reach Bob on the other instance. Uses plain aiohttp, no wsevents client. Exit status 0
when everything crossed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import uuid
from typing import Any

import aiohttp

_ids = itertools.count(1)


class Peer:
    """A minimal client of the wsevents wire protocol: RPCs by id, pushes in a queue."""

    def __init__(self, name: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.name = name
        self.ws = ws
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            waiter = self._replies.pop(frame.get("id"), None) if "event" not in frame else None
            if waiter is not None:
                waiter.set_result(frame)
            else:
                self.pushes.put_nowait(frame)

    async def call(self, event: str, path: str, data: Any = None) -> Any:
        message_id = next(_ids)
        waiter = asyncio.get_running_loop().create_future()
        self._replies[message_id] = waiter
        await self.ws.send_str(
            json.dumps({"event": event, "path": path, "data": data, "id": message_id})
        )
        reply = await asyncio.wait_for(waiter, 5)
        if "error" in reply:
            raise RuntimeError(f"{event} {path}: {reply['error']}")
        return reply.get("data")

    async def next_push(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.pushes.get(), timeout)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def cross(url_a: str, url_b: str, *, room: str | None = None) -> list[str]:
    """Run the demo; returns what Bob saw, one line per push (raises when one is missing)."""
    room = room or f"/chat/rooms/demo-{uuid.uuid4().hex[:8]}"
    seen = []
    async with aiohttp.ClientSession() as session:
        alice = Peer("alice", await session.ws_connect(url_a))
        bob = Peer("bob", await session.ws_connect(url_b))
        try:
            await alice.call("subscribe", room)
            await bob.call("subscribe", room)  # returns once instance B is subscribed
            bob_id = (await bob.call("rpc", "/whoami"))["id"]

            await alice.call("message", room, {"text": "hello from instance A"})
            push = await bob.next_push()
            seen.append(f"room {push['path']}: {push['data']['text']}")

            await alice.call("rpc", "/announce", {"text": "to every connection"})
            push = await bob.next_push()
            seen.append(f"announcement: {push['data']['text']}")

            sent = await alice.call("rpc", "/direct", {"to": bob_id, "payload": "just for Bob"})
            push = await bob.next_push()
            seen.append(f"direct (sent={sent['sent']}): {push['data']}")
        finally:
            await alice.close()
            await bob.close()
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url_a", nargs="?", default="ws://127.0.0.1:8081/ws")
    parser.add_argument("url_b", nargs="?", default="ws://127.0.0.1:8082/ws")
    args = parser.parse_args()
    try:
        lines = asyncio.run(cross(args.url_a, args.url_b))
    except (OSError, aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
        print(f"the message did not cross: {exc!r}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"bob (on {args.url_b}) got {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
