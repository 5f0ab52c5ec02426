"""A loopback aiohttp server in a thread, the base of the scripted fakes of vLLM, TGI and the
Anthropic API: each records what it was sent (path, headers, JSON body) for the tests to check."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


class LoopbackServer:
    def __init__(self, port: int = 0) -> None:
        self.url = ""
        self.port = port
        self.seen: list[Seen] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def record(self, request: web.Request) -> Any:
        raw = await request.read()
        body = await request.json() if raw else None
        self.seen.append(Seen(request.path, dict(request.headers), body))
        return body

    def bodies(self, path: str) -> list[Any]:
        return [s.body for s in self.seen if s.path == path]

    def start(self) -> Self:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        """Stop serving (idempotent: a test may stop a server before its fixture does)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Run in the calling thread (a fake started as a program, like `vllm serve`)."""
        ready = threading.Event()
        self._serve(ready)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        self._loop.run_forever()


async def ok(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def sse(request: web.Request, frames: list[bytes]) -> web.StreamResponse:
    """Send `frames` as one server-sent event stream, flushing each."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for frame in frames:
        await resp.write(frame)
    await resp.write_eof()
    return resp
