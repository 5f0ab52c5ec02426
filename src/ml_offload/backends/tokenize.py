"""A prompt's exact token count, asked of the deployment that would answer it.

llama.cpp's server (ours, or one elsewhere): the chat template applied by `POST /apply-template`
(the chat request's own body: messages and tools), then `POST /tokenize` on the result with the
special tokens the completion adds, so the count is the `prompt_tokens` a completion reports.
Anthropic, and a fleet node (an ml-offload gateway counting with its own engine): `POST
/v1/messages/count_tokens` with the caller's own body, passed through.
Followed: llama.cpp tools/server/README.md (`/apply-template`, `/tokenize`) and
https://docs.claude.com/en/api/messages-count-tokens.
"""

from __future__ import annotations

from typing import Any

import orjson

from ml_offload.backends.http import Upstream
from ml_offload.backends.protocol import AnthropicProtocol, OpenAIProtocol
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.errors import EngineError, InvalidRequest, UpstreamClientError
from ml_offload.wire.openai import engine_error_message

_ANTHROPIC = AnthropicProtocol()
_OPENAI = OpenAIProtocol()
_ASKED = ("model", "messages", "tools", "tool_choice", "chat_template_kwargs")


def counts_tokens(spec: ModelSpec) -> bool:
    """Whether the deployment can count a prompt's tokens exactly: our engines, a llama.cpp
    server declared by URL, a fleet node's model, Anthropic."""
    if spec.backend == "anthropic":
        return True
    return spec.kind is DeploymentKind.LLAMACPP or (
        spec.backend == "openai" and spec.kind is not DeploymentKind.CLOUD
    )


async def count_tokens(
    upstream: Upstream,
    spec: ModelSpec,
    base_url: str,
    chat: dict[str, Any],
    native: dict[str, Any],
) -> int:
    """The prompt tokens of `chat` (an OpenAI chat request) on `spec` at `base_url`; `native`
    is the caller's Anthropic body, sent as it is to an Anthropic deployment."""
    if spec.backend == "anthropic" or spec.on_fleet_node:  # a fleet node counts with its engine
        body = {**native, "model": spec.upstream_model}
        path = "/v1/messages/count_tokens"
        protocol = _ANTHROPIC if spec.backend == "anthropic" else _OPENAI  # (the node key)
        answer = await _post(upstream, base_url, path, body, protocol.headers(spec))
        return _int(answer, "input_tokens", path)
    asked = {k: v for k, v in chat.items() if k in _ASKED}
    headers = _OPENAI.headers(spec)
    prompt = await _post(upstream, base_url, "/apply-template", asked, headers)
    text = prompt.get("prompt")
    if not isinstance(text, str):
        raise EngineError("the model's server answered /apply-template without a prompt")
    body = {"content": text, "add_special": True, "parse_special": True}
    tokens = await _post(upstream, base_url, "/tokenize", body, headers)
    if not isinstance(tokens.get("tokens"), list):
        raise EngineError("the model's server answered /tokenize without tokens")
    return len(tokens["tokens"])


async def _post(
    upstream: Upstream, base_url: str, path: str, body: dict[str, Any], headers: Any
) -> dict[str, Any]:
    """POST to the deployment; errors name the path only (the address is not the caller's)."""
    code, raw = await upstream.post(base_url + path, orjson.dumps(body), headers)
    if code == 404:
        raise InvalidRequest(f"the model's server cannot count tokens ({path} answered 404)")
    if code >= 400:
        message = engine_error_message(raw)
        if code < 500:
            raise UpstreamClientError(message, status=code)
        raise EngineError(f"engine error {code}: {message}", upstream=True)
    try:
        out = orjson.loads(raw)
    except orjson.JSONDecodeError:
        out = None
    if not isinstance(out, dict):
        raise EngineError(f"the model's server answered {path} with no JSON object", upstream=True)
    return out


def _int(answer: dict[str, Any], key: str, path: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int):
        raise EngineError(f"the model's server answered {path} without {key!r}", upstream=True)
    return value
