"""The upstream's protocol: how a deployment is spoken to (request URL, headers and body per
request kind), and its answers and streams turned into OpenAI's shape (normalised afterwards by
`wire.openai`). "Dialect" is the caller's side (`api/`); this is the upstream's.

One implementation per wire protocol, chosen by `spec.backend`: OpenAI-compatible servers
(llama.cpp, vLLM, Ollama's /v1, OpenAI, DeepSeek), text-generation-inference (chat through its
Messages API, text completions through `/generate`) and Anthropic's Messages API. The
OpenAI-compatible one is the hot path for local engines: no translation, shared headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp
import orjson

from ml_offload.backends.http import sse_data
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.errors import EngineError, InvalidRequest
from ml_offload.wire import anthropic_provider, tgi
from ml_offload.wire.body import JSON_HEADERS
from ml_offload.wire.openai import Kind, engine_error_message

PATHS: dict[Kind, str] = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
}

DEFAULT_URLS = {
    "openai": "https://api.openai.com",
    "deepseek": "https://api.deepseek.com",
    "anthropic": "https://api.anthropic.com",
}
DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}


class UpstreamProtocol(Protocol):
    def url(self, base_url: str, kind: Kind, stream: bool) -> str: ...

    def headers(self, spec: ModelSpec) -> Mapping[str, str]: ...

    def body(self, spec: ModelSpec, kind: Kind, data: dict[str, Any]) -> bytes:
        """The upstream request body; raises InvalidRequest for what it cannot serve."""
        ...

    def answer(self, kind: Kind, raw: bytes) -> dict[str, Any]:
        """A 2xx body as an OpenAI response."""
        ...

    def chunks(
        self, kind: Kind, resp: aiohttp.ClientResponse, url: str, model: str
    ) -> AsyncIterator[dict[str, Any]]:
        """OpenAI chunks from a streamed answer; raises EngineError for an error event or an
        early end, and releases the connection once the stream is complete."""
        ...


def _event(payload: bytes, model: str) -> Any:
    """A stream event's JSON; one that is not JSON is the engine's fault (EngineError)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EngineError(
            f"the engine for {model!r} sent a stream event that is not JSON: {payload[:80]!r}",
            upstream=True,
        ) from exc


def _ended_early(model: str) -> EngineError:
    return EngineError(f"the engine for {model!r} ended the stream early")


class OpenAIProtocol:
    """OpenAI-compatible servers: the request goes as it came, the answer as it is."""

    def url(self, base_url: str, kind: Kind, stream: bool) -> str:
        return base_url + PATHS[kind]

    def headers(self, spec: ModelSpec) -> Mapping[str, str]:
        if spec.api_key is None:
            return JSON_HEADERS
        key = spec.api_key.get_secret_value()
        return {**JSON_HEADERS, "Authorization": f"Bearer {key}"}

    def body(self, spec: ModelSpec, kind: Kind, data: dict[str, Any]) -> bytes:
        """The model under its name on that server (an alias or a fallback's caller's name
        would be unknown there); the body untouched when the name is already right."""
        model = spec.upstream_model
        if data.get("model") == model:
            return orjson.dumps(data)
        return orjson.dumps({**data, "model": model})

    def answer(self, kind: Kind, raw: bytes) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(raw)
        return out

    async def chunks(
        self, kind: Kind, resp: aiohttp.ClientResponse, url: str, model: str
    ) -> AsyncIterator[dict[str, Any]]:
        async for payload in sse_data(resp, url):
            if payload == b"[DONE]":
                resp.release()  # back to the pool for the next request
                return
            obj = _event(payload, model)
            if "error" in obj:
                raise EngineError(engine_error_message(payload), upstream=True)
            yield obj
        raise _ended_early(model)


class LlamaCppProtocol(OpenAIProtocol):
    """Our llama.cpp engines: OpenAI's protocol, with per-token `timings` asked for on chat
    streams so the prompt's token count arrives with the first token (Anthropic's
    `message_start` carries it), not only in the usage chunk at the end."""

    def body(self, spec: ModelSpec, kind: Kind, data: dict[str, Any]) -> bytes:
        if kind == "chat" and data.get("stream"):
            data = {**data, "timings_per_token": True}
        return super().body(spec, kind, data)


class TgiProtocol:
    """text-generation-inference: chat as OpenAI (its Messages API), completions via /generate."""

    def __init__(self) -> None:
        self._chat = OpenAIProtocol()

    def url(self, base_url: str, kind: Kind, stream: bool) -> str:
        if kind != "completion":
            return self._chat.url(base_url, kind, stream)
        return base_url + ("/generate_stream" if stream else "/generate")

    def headers(self, spec: ModelSpec) -> Mapping[str, str]:
        return self._chat.headers(spec)

    def body(self, spec: ModelSpec, kind: Kind, data: dict[str, Any]) -> bytes:
        if kind == "embedding":
            raise InvalidRequest(
                f"model {spec.name!r} is served by text-generation-inference, which has no "
                "embeddings; use a model served by llama.cpp, vLLM or Ollama"
            )
        if kind == "chat":
            return self._chat.body(spec, kind, data)
        return orjson.dumps(tgi.generate_body(data, stream=bool(data.get("stream"))))

    def answer(self, kind: Kind, raw: bytes) -> dict[str, Any]:
        if kind != "completion":
            return self._chat.answer(kind, raw)
        return tgi.completion(orjson.loads(raw))

    async def chunks(
        self, kind: Kind, resp: aiohttp.ClientResponse, url: str, model: str
    ) -> AsyncIterator[dict[str, Any]]:
        if kind != "completion":
            async for chunk in self._chat.chunks(kind, resp, url, model):
                yield chunk
            return
        translator = tgi.StreamTranslator()
        async for payload in sse_data(resp, url):
            event = _event(payload, model)
            if "error" in event:
                raise EngineError(engine_error_message(payload), upstream=True)
            for chunk in translator.feed(event):
                yield chunk
            if translator.done:
                resp.release()
                return
        raise _ended_early(model)


class AnthropicProtocol:
    """Anthropic's Messages API, for chat."""

    def url(self, base_url: str, kind: Kind, stream: bool) -> str:
        return base_url + "/v1/messages"

    def headers(self, spec: ModelSpec) -> Mapping[str, str]:
        headers = {
            **JSON_HEADERS,
            "anthropic-version": anthropic_provider.API_VERSION,
        }
        if spec.api_key is not None:
            headers["x-api-key"] = spec.api_key.get_secret_value()
        return headers

    def body(self, spec: ModelSpec, kind: Kind, data: dict[str, Any]) -> bytes:
        if kind != "chat":
            raise InvalidRequest(
                f"model {spec.name!r} is an Anthropic model: it serves chat completions only "
                "(POST /v1/chat/completions or /v1/messages)"
            )
        return orjson.dumps(anthropic_provider.messages_body(data, spec.upstream_model))

    def answer(self, kind: Kind, raw: bytes) -> dict[str, Any]:
        return anthropic_provider.chat_completion(orjson.loads(raw))

    async def chunks(
        self, kind: Kind, resp: aiohttp.ClientResponse, url: str, model: str
    ) -> AsyncIterator[dict[str, Any]]:
        translator = anthropic_provider.StreamTranslator()
        async for payload in sse_data(resp, url):
            for chunk in translator.feed(_event(payload, model)):
                yield chunk
            if translator.done:
                resp.release()
                return
        raise _ended_early(model)


OPENAI = OpenAIProtocol()
PROTOCOLS: dict[str, UpstreamProtocol] = {
    "openai": OPENAI,
    "ollama": OPENAI,
    "vllm": OPENAI,
    "deepseek": OPENAI,
    "tgi": TgiProtocol(),
    "anthropic": AnthropicProtocol(),
}


LLAMACPP = LlamaCppProtocol()


def protocol_for(spec: ModelSpec) -> UpstreamProtocol:
    if spec.kind is DeploymentKind.LLAMACPP:
        return LLAMACPP
    return PROTOCOLS.get(spec.backend, OPENAI)
