"""A loopback Hugging Face text-generation-inference (TGI) server for tests.

Followed: TGI's OpenAPI spec and docs ("Consuming TGI", "Messages API", "Streaming"):
- GET /info: `{"model_id", "model_sha", "model_dtype", "model_device_type", "max_input_tokens",
  "max_total_tokens", "version", ...}`; GET /health: 200 when ready.
- POST /generate `{"inputs", "parameters": {...}}` → `{"generated_text", "details":
  {"finish_reason", "generated_tokens", "seed", "prefill", "tokens"}}` (prefill listed only with
  `decoder_input_details`); `temperature` must be strictly positive and `top_p` in (0, 1), else
  422 `{"error": "Input validation error: ...", "error_type": "validation"}`.
- POST /generate_stream: SSE `data:{"index", "token": {"id", "text", "logprob", "special"},
  "generated_text": null, "details": null}` per token (no space after `data:`, as axum writes
  it), the last with `generated_text` and `details` (`finish_reason`, `generated_tokens`,
  `input_length`); an error mid-stream is an event `{"error", "error_type"}`.
- POST /v1/chat/completions: the Messages API, OpenAI's shape (model "tgi").
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.integration.fake_server import LoopbackServer, ok, sse

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class FakeTgi(LoopbackServer):
    def __init__(self, tokens: tuple[str, ...] = ("Hello", " from", " TGI", "</s>")) -> None:
        super().__init__()
        self.tokens = tokens  # the last is the special end-of-sequence token
        self.fail_mid_stream = False

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", ok)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/generate_stream", self._generate_stream)
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_id": MODEL_ID,
                "model_sha": "0" * 40,
                "model_dtype": "torch.float16",
                "model_device_type": "cuda",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": 1024,
                "max_total_tokens": 2048,
                "validation_workers": 2,
                "version": "3.0.0",
            }
        )

    def _invalid(self, params: dict[str, Any]) -> web.Response | None:
        message = None
        if "temperature" in params and not params["temperature"] > 0:
            message = "`temperature` must be strictly positive"
        elif "top_p" in params and not 0 < params["top_p"] < 1:
            message = "`top_p` must be > 0.0 and < 1.0"
        elif params.get("max_new_tokens", 1) > 512:
            message = "`max_new_tokens` must be <= 512. Given: " + str(params["max_new_tokens"])
        if message is None:
            return None
        body = {"error": f"Input validation error: {message}", "error_type": "validation"}
        return web.json_response(body, status=422)

    def _run(self, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """The tokens generated for `params` and the finish reason."""
        limit = int(params.get("max_new_tokens") or 20)
        out, text = [], ""
        for i, piece in enumerate(self.tokens[:limit]):
            special = piece == "</s>"
            out.append({"id": 100 + i, "text": piece, "logprob": -0.5, "special": special})
            if special:
                return out, "eos_token"
            text += piece
            if any(s in text for s in params.get("stop") or []):
                return out, "stop_sequence"
        return out, "length" if len(out) >= limit else "eos_token"

    async def _generate(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        params = body.get("parameters") or {}
        invalid = self._invalid(params)
        if invalid is not None:
            return invalid
        tokens, finish = self._run(params)
        text = "".join(t["text"] for t in tokens if not t["special"])
        out: dict[str, Any] = {"generated_text": text}
        if params.get("details"):
            prompt = body["inputs"].split()
            out["details"] = {
                "finish_reason": finish,
                "generated_tokens": len(tokens),
                "seed": None,
                "prefill": [{"id": i, "text": w, "logprob": None} for i, w in enumerate(prompt)]
                if params.get("decoder_input_details")
                else [],
                "tokens": tokens,
            }
        return web.json_response(out)

    async def _generate_stream(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        params = body.get("parameters") or {}
        invalid = self._invalid(params)
        if invalid is not None:
            return invalid
        tokens, finish = self._run(params)
        frames = []
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            event: dict[str, Any] = {
                "index": i + 1,
                "token": token,
                "top_tokens": None,
                "generated_text": None,
                "details": None,
            }
            if last:
                event["generated_text"] = "".join(t["text"] for t in tokens if not t["special"])
                event["details"] = {
                    "finish_reason": finish,
                    "generated_tokens": len(tokens),
                    "seed": None,
                    "input_length": len(body["inputs"].split()),
                }
            if last and self.fail_mid_stream:
                event = {
                    "error": "CUDA error: an illegal memory access",
                    "error_type": "generation",
                }
            frames.append(b"data:" + json.dumps(event).encode() + b"\n\n")
        return await sse(request, frames)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        text = "".join(t for t in self.tokens if t != "</s>")
        base = {
            "id": "",
            "created": int(time.time()),
            "model": "tgi",
            "system_fingerprint": "3.0.0",
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            body_out = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return web.json_response(body_out)
        frames = []
        for piece in [t for t in self.tokens if t != "</s>"]:
            delta = {"role": "assistant", "content": piece, "tool_calls": None}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            frames.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        end = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
        chunk = {**base, "object": "chat.completion.chunk", "choices": [end]}
        chunk["usage"] = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        frames.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        return await sse(request, [*frames, b"data: [DONE]\n\n"])
