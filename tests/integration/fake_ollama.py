"""A loopback Ollama server for tests, speaking the documented wire format of the endpoints the
gateway uses (Ollama API docs: "Generate a completion" incl. "Load a model" / "Unload a model",
"List running models", and the OpenAI compatibility page for /v1/chat/completions):

- POST /api/generate with an empty prompt loads the model (`{"model", "created_at",
  "response": "", "done": true}`); with `keep_alive: 0` it unloads it (`"done_reason": "unload"`);
  an unknown model is 404 `{"error": "model \"x\" not found, try pulling it first"}`.
- GET /api/ps lists loaded models (`{"models": [{"name", "model", "size", "size_vram", ...}]}`).
- GET /api/tags ("List Local Models") lists the pulled models (`{"models": [{"name", "model",
  "modified_at", "size", "digest", "details": {"format", "family", "parameter_size",
  "quantization_level", ...}}]}`).
- POST /v1/chat/completions answers an OpenAI chat completion and loads the model, as Ollama does.
- Keep-alive (API docs, "keep_alive"; server/sched.go): each request sets how long the model
  stays loaded after it: a number of seconds or a duration string ("5m", "1h"), negative: until
  unloaded, 0: unload now; absent: the server's default (5 minutes, `OLLAMA_KEEP_ALIVE`). The
  OpenAI-compatible `/v1` endpoints take no `keep_alive` (its `ChatCompletionRequest` has no
  such field): every request there sets the default. An expired model is dropped (gone from
  `/api/ps`, which lists each loaded model's `expires_at`).
- POST /api/pull ("Pull a Model") `{"model", "insecure"?, "stream"?}`: streamed NDJSON progress
  (`{"status": "pulling manifest"}`, `{"status": "pulling <digest>", "digest", "total",
  "completed"}` several times, `verifying sha256 digest`, `writing manifest`, `success`), or with
  `"stream": false` one `{"status": "success"}`. A model missing from the library streams
  `{"error": "pull model manifest: file does not exist"}` after the manifest line, or answers
  500 with that error when not streamed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


class FakeOllama:
    def __init__(
        self, models: tuple[str, ...] = ("llama3.2:latest",), default_keep_alive_s: float = 300
    ) -> None:
        self.available = set(models)
        self.library = {*models, "qwen3:0.6b", "llama3.2:1b"}  # what a pull can fetch
        self.loaded: dict[str, float] = {}
        self.expires: dict[str, float | None] = {}  # time.time() it is dropped; None: never
        self.default_keep_alive_s = default_keep_alive_s
        self.calls: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeOllama:
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/api/pull", self._pull)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        self._loop.run_forever()

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        model = body.get("model") or body.get("name") or ""
        known = model in self.library
        if body.get("stream") is False:
            if not known:
                error = {"error": "pull model manifest: file does not exist"}
                return web.json_response(error, status=500)
            self.available.add(model)
            return web.json_response({"status": "success"})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in self._progress(model, known):
            if line.get("status") == "success":
                self.available.add(model)  # stored before Ollama says so
            await resp.write(json.dumps(line).encode() + b"\n")
        await resp.write_eof()
        return resp

    def _progress(self, model: str, known: bool) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if not known:
            return [*lines, {"error": "pull model manifest: file does not exist"}]
        digest, total = "sha256:" + "ab" * 32, 3_000_000
        for done in (0, 1_000_000, 2_000_000, total):
            lines.append(
                {
                    "status": f"pulling {digest[7:19]}",
                    "digest": digest,
                    "total": total,
                    "completed": done,
                }
            )
        statuses = ("verifying sha256 digest", "writing manifest", "success")
        return [*lines, *({"status": s} for s in statuses)]

    def _hold(self, model: str, keep_alive: Any) -> None:
        """Load `model` (if not loaded) for `keep_alive` after this request, as Ollama does."""
        seconds = self.default_keep_alive_s if keep_alive is None else _seconds(keep_alive)
        self.loaded.setdefault(model, time.time())
        self.expires[model] = None if seconds < 0 else time.time() + seconds

    def expire(self) -> None:
        """Drop the models whose keep-alive ran out (Ollama's expiry timer)."""
        now = time.time()
        for model, at in list(self.expires.items()):
            if at is not None and at <= now:
                self.loaded.pop(model, None)
                del self.expires[model]

    def _missing(self, model: str) -> web.Response:
        return web.json_response(
            {"error": f'model "{model}" not found, try pulling it first'}, status=404
        )

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        model = body.get("model", "")
        if model not in self.available:
            return self._missing(model)
        now = datetime.now(UTC).isoformat()
        self.expire()
        if body.get("keep_alive") == 0 and not body.get("prompt"):
            self.loaded.pop(model, None)
            self.expires.pop(model, None)
            return web.json_response(
                {
                    "model": model,
                    "created_at": now,
                    "response": "",
                    "done": True,
                    "done_reason": "unload",
                }
            )
        self._hold(model, body.get("keep_alive"))
        return web.json_response({"model": model, "created_at": now, "response": "", "done": True})

    async def _tags(self, request: web.Request) -> web.Response:
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "2026-11-01T10:00:00.000000+00:00",
                "size": 2_019_393_189,
                "digest": "a80c4f17acd5" + "0" * 52,
                "details": details,
            }
            for m in sorted(self.available)
        ]
        return web.json_response({"models": models})

    async def _ps(self, request: web.Request) -> web.Response:
        self.expire()
        models = [
            {
                "name": m,
                "model": m,
                "size": 2_000_000_000,
                "size_vram": 2_000_000_000,
                "digest": "0" * 64,
                "expires_at": _expires_at(self.expires.get(m)),
            }
            for m in self.loaded
        ]
        return web.json_response({"models": models})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append({"path": "/v1/chat/completions", **body})
        model = body.get("model", "")
        self.expire()
        if model not in self.available:
            return web.json_response(
                {
                    "error": {
                        "message": f'model "{model}" not found, try pulling it first',
                        "type": "api_error",
                        "param": None,
                        "code": None,
                    }
                },
                status=404,
            )
        self._hold(model, None)  # /v1 takes no keep_alive: the server's default applies
        return web.json_response(
            {
                "id": "chatcmpl-123",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello from Ollama"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            }
        )


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def _seconds(keep_alive: Any) -> float:
    """A keep_alive value in seconds: a number, or a Go duration ("5m", "1h30m", "-1s")."""
    if isinstance(keep_alive, int | float):
        return float(keep_alive)
    text = str(keep_alive).strip()
    sign = -1 if text.startswith("-") else 1
    total, number = 0.0, ""
    rest = text.lstrip("+-")
    i = 0
    while i < len(rest):
        if rest[i].isdigit() or rest[i] == ".":
            number += rest[i]
            i += 1
            continue
        unit = "ms" if rest.startswith("ms", i) else rest[i]
        total += float(number) * _UNITS[unit]
        number, i = "", i + len(unit)
    if number:  # a bare number is seconds
        total += float(number)
    return sign * total


def _expires_at(at: float | None) -> str:
    """Ollama lists a model kept until unloaded as expiring far in the future."""
    when = datetime(2318, 1, 1, tzinfo=UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return when.isoformat()
