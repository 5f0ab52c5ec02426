"""A loopback vLLM (or any OpenAI-compatible server: DeepSeek, OpenAI) for tests.

Followed: vLLM's docs "OpenAI-Compatible Server" (`/v1/chat/completions`, `/v1/models`,
`/health`; errors `{"object": "error", "message", "type", "param", "code"}`) and "Production
Metrics" (Prometheus text at `/metrics`: gauges `vllm:num_requests_running`,
`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, or `vllm:gpu_cache_usage_perc` on
older versions, labelled `model_name`); DeepSeek's API docs "Reasoning Model" (`reasoning_content`
beside `content` in the message, and in stream deltas before the content);
https://platform.openai.com/docs/api-reference/chat-streaming (SSE `data:`, `[DONE]`).

Run as a program it stands in for `vllm serve MODEL ... --host H --port P`, writing its
argument list to `$FAKE_VLLM_ARGV` when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from aiohttp import web

from tests.integration.fake_server import LoopbackServer, ok, sse


class FakeVllm(LoopbackServer):
    def __init__(
        self,
        answer: str = "Hello from vLLM",
        *,
        model: str = "served",
        running: int = 0,
        waiting: int = 0,
        kv_usage: float = 0.1,
        legacy_metrics: bool = False,
        reasoning: str | None = None,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.answer, self.model, self.reasoning, self.api_key = answer, model, reasoning, api_key
        self.running, self.waiting, self.kv_usage = running, waiting, kv_usage
        self.legacy_metrics = legacy_metrics
        self.fail_status: int | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/health", ok)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _metrics(self, request: web.Request) -> web.Response:
        kv = "vllm:gpu_cache_usage_perc" if self.legacy_metrics else "vllm:kv_cache_usage_perc"
        labels = f'{{engine="0",model_name="{self.model}"}}'
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{labels} {float(self.waiting)}\n"
            f"# HELP {kv} KV-cache usage. 1 means 100 percent usage.\n"
            f"# TYPE {kv} gauge\n"
            f"{kv}{labels} {self.kv_usage}\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{labels} 1234.0\n"
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": self.model, "object": "model", "created": 1, "owned_by": "vllm"}]
        return web.json_response({"object": "list", "data": data})

    def _error(self, status: int, message: str, kind: str) -> web.Response:
        body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
        return web.json_response(body, status=status)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        wanted = f"Bearer {self.api_key}"
        if self.api_key is not None and request.headers.get("Authorization") != wanted:
            error = {"message": "Authentication Fails", "type": "authentication_error"}
            return web.json_response({"error": {**error, "param": None, "code": None}}, status=401)
        if self.fail_status is not None:
            return self._error(self.fail_status, "the engine is overloaded", "InternalServerError")
        if body.get("model") != self.model:
            return self._error(
                404, f"The model `{body.get('model')}` does not exist.", "NotFoundError"
            )
        if body.get("stream"):
            return await sse(request, self._frames(body))
        message: dict[str, Any] = {"role": "assistant", "content": self.answer}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        return web.json_response(
            {
                "id": "chatcmpl-vllm",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
            }
        )

    def _frames(self, body: dict[str, Any]) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-vllm",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        chunks = [chunk({"role": "assistant", "content": ""})]
        if self.reasoning is not None:
            chunks += [chunk({"reasoning_content": w}) for w in _pieces(self.reasoning)]
        chunks += [chunk({"content": w}) for w in _pieces(self.answer)]
        chunks.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
            chunks.append({**chunk({}), "choices": [], "usage": usage})
        frames = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
        return [*frames, b"data: [DONE]\n\n"]


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def main(argv: list[str]) -> int:
    """`serve MODEL [--served-model-name N] [...] --host H --port P`, like `vllm serve`."""
    if os.environ.get("FAKE_VLLM_ARGV"):
        with open(os.environ["FAKE_VLLM_ARGV"], "w") as fh:
            json.dump(argv, fh)
        with open(os.environ["FAKE_VLLM_ARGV"] + ".ray", "w") as fh:
            fh.write(os.environ.get("RAY_ADDRESS", ""))  # the Ray cluster it would join
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args, _ = parser.parse_known_args(argv)
    FakeVllm(model=args.served_model_name or args.model, port=args.port).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
