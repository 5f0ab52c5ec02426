"""Anthropic's Messages API passed through to a deployment that speaks it natively.

No translation round trip: the caller's body goes as it came (the model's name upstream set,
secrets masked where the deployment's prompts leave the machine), and its answer, JSON or event
stream, comes back byte for byte, so `thinking`/`redacted_thinking` with signatures,
`tool_use`/`tool_result`, `cache_control` (with `ttl`), images and documents survive. The usage
(cache writes and reads included) is read on the way and charged to the limits and the audit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from ml_offload.backends.protocol import AnthropicProtocol
from ml_offload.domain import ModelSpec, RequestContext
from ml_offload.metrics import GenAiCall
from ml_offload.wire.anthropic_native import CACHE_WRITE, UsageTap, openai_usage

FORWARDED = ("anthropic-version", "anthropic-beta")  # the caller's, sent on when given


class PassthroughProtocol(AnthropicProtocol):
    """Anthropic's protocol with the caller's `anthropic-version` and `anthropic-beta`."""

    def __init__(self, caller: Mapping[str, str]) -> None:
        self._caller = {k: caller[k] for k in FORWARDED if k in caller}

    def headers(self, spec: ModelSpec) -> Mapping[str, str]:
        return {**super().headers(spec), **self._caller}


def record(call: GenAiCall, ctx: RequestContext | None, usage: Any) -> None:
    """Anthropic usage to the metrics, and to the request's context for limits and audit."""
    use = openai_usage(usage)
    call.usage(use)
    if ctx is not None:
        ctx.record_usage(use)
        ctx.cache_write_tokens = int((usage or {}).get(CACHE_WRITE) or 0)


class NativeStream:
    """The deployment's event stream, byte for byte; `aclose()` frees the slot and records."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        stack: contextlib.AsyncExitStack,
        call: GenAiCall,
        done: Callable[[Any], None],
    ) -> None:
        self._resp, self._stack, self._call, self._done = resp, stack, call, done
        self._tap = UsageTap()
        self._closed = False
        self._error = ""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        first = True
        try:
            async for data in self._resp.content.iter_any():
                if first:
                    first = False
                    self._call.first_token()
                self._tap.feed(data)
                yield data
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error = type(exc).__name__
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stack.aclose()
        if self._tap.usage:
            self._done(self._tap.usage)
        self._call.finish(self._error)
