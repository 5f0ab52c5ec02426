"""The inference service: resolve a model, hold a slot, forward to its engine, normalise.

How each deployment is spoken to (paths, headers, body, answer and stream translation) is its
protocol (`backends/protocol.py`), chosen by `spec.backend`. Streams are opened eagerly (slot
held, upstream status checked) so that errors before the first byte reach the caller as a
proper HTTP error; after that, errors arrive as stream events.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import aiohttp
import orjson

from ml_offload.backends.http import Upstream
from ml_offload.backends.protocol import UpstreamProtocol, protocol_for
from ml_offload.backends.slot_keeper import ConversationSlots
from ml_offload.backends.tokenize import count_tokens, counts_tokens
from ml_offload.chat_templates import forced_call_opening
from ml_offload.domain import DeploymentKind, ModelSpec, ModelState, RequestContext
from ml_offload.errors import (
    EngineError,
    EngineTimeout,
    EngineUnreachable,
    InvalidRequest,
    MloError,
    PermissionDenied,
    RateLimited,
    Unavailable,
    UpstreamClientError,
)
from ml_offload.metrics import GenAiCall, Metrics
from ml_offload.passthrough import NativeStream, PassthroughProtocol, record
from ml_offload.registry import engine_template, unavailable_reason
from ml_offload.router import Router, should_fall_back
from ml_offload.scheduler import Scheduler
from ml_offload.security.guard import Guard
from ml_offload.tracing import NOOP, NOOP_TRACER, Span, Tracer
from ml_offload.wire.openai import (
    NORMALIZERS,
    Kind,
    engine_error_message,
    is_request_fault,
)
from ml_offload.wire.openai_fold import FOLDS
from ml_offload.wire.openai_stream import StreamConformer

T = TypeVar("T")


def honour_tool_choice(spec: ModelSpec, data: dict[str, Any]) -> dict[str, Any]:
    """The request as our engine must get it for a forced tool call (`tool_choice` "required"
    or a named function; Anthropic's "any" or "tool" arrive as these): "required" over the
    named tool alone, the answer opened with the template's tool-call tag so it cannot start
    as prose. A model whose template has no tool support cannot honour it: 400."""
    choice = data.get("tool_choice")
    forced = choice == "required" or isinstance(choice, dict)
    if not forced or not data.get("tools") or spec.kind is not DeploymentKind.LLAMACPP:
        return data
    template = engine_template(spec) or ""
    if "tools" not in template:
        raise InvalidRequest(
            f"tool_choice: model {spec.name!r} cannot be made to call a tool (its chat template "
            'has no tool support); send tool_choice "auto", set the model\'s chat_template_file '
            '(e.g. "chatml-tools") or use a model whose template has it',
            param="tool_choice",
        )
    out = {**data, "tools": _chosen_tools(data["tools"], choice), "tool_choice": "required"}
    opening = forced_call_opening(template)
    messages = data.get("messages") or []
    if opening and messages and messages[-1].get("role") != "assistant":
        out["messages"] = [*messages, {"role": "assistant", "content": opening}]
    return out


def _chosen_tools(tools: list[dict[str, Any]], choice: Any) -> list[dict[str, Any]]:
    """The tools a forced call may use: the one `choice` names, else all of them."""
    if not isinstance(choice, dict):
        return tools
    name = (choice.get("function") or {}).get("name")
    chosen = [t for t in tools if (t.get("function") or {}).get("name") == name]
    if not chosen:
        raise InvalidRequest(
            f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
        )
    return chosen


class InferenceService:
    def __init__(
        self,
        router: Router,
        scheduler: Scheduler,
        upstream: Upstream,
        metrics: Metrics,
        guard: Guard,
        tracer: Tracer | None = None,
        slots: ConversationSlots | None = None,
    ) -> None:
        self._tracer = tracer or NOOP_TRACER
        self._slots = slots  # conversations kept in llama.cpp slots across swaps
        self._router = router
        self._scheduler = scheduler
        self._upstream = upstream
        self._metrics = metrics
        self._guard = guard

    async def complete(
        self, kind: Kind, data: dict[str, Any], ctx: RequestContext | None = None
    ) -> dict[str, Any]:
        """Answer from the first deployment that can (see router.py)."""
        with self._tracer.request(kind, str(data.get("model"))) as span:
            if ctx is not None:
                with span.child("auth"):
                    await self._guard.admit(ctx, kind, data)
            return await self._first_that_answers(
                partial(self._complete_on, kind=kind, data=data, ctx=ctx, span=span),
                kind,
                data,
                ctx,
                span=span,
            )

    async def open_stream(
        self, kind: Kind, data: dict[str, Any], ctx: RequestContext | None = None
    ) -> EngineStream:
        """Open the stream on the first deployment that can; once it is open (upstream status
        checked, nothing sent to the client yet), errors are the stream's, never a fallback."""
        span = self._tracer.request(kind, str(data.get("model")))
        try:
            if ctx is not None:
                with span.child("auth"):
                    await self._guard.admit(ctx, kind, data)
            stream = await self._first_that_answers(
                partial(self._open_on, kind=kind, data=data, ctx=ctx, span=span),
                kind,
                data,
                ctx,
                span=span,
            )
        except BaseException as exc:
            span.fail(exc)
            span.end()
            raise
        stream.owns(span)
        return stream

    async def count_tokens(
        self, chat: dict[str, Any], native: dict[str, Any], ctx: RequestContext | None = None
    ) -> int:
        """The prompt tokens of `chat` as the deployment that would answer it counts them
        (`native`: the caller's Anthropic body, for an Anthropic deployment)."""
        if ctx is not None:
            self._guard.authorize(ctx, chat["model"])
        for spec in self._router.candidates(chat["model"]):
            if counts_tokens(spec):
                async with self._scheduler.lease(spec) as base_url:
                    return await count_tokens(self._upstream, spec, base_url, chat, native)
        raise InvalidRequest(
            f"model {chat['model']!r} has no deployment that counts tokens exactly "
            "(llama.cpp engines and Anthropic do)",
            param="model",
        )

    def passes_through(self, model: str) -> bool:
        """Whether `model`'s deployment speaks Anthropic's Messages API itself: its requests
        then go through untranslated (`anthropic_messages`)."""
        return self._router.candidates(model)[0].backend == "anthropic"

    async def anthropic_messages(
        self,
        chat: dict[str, Any],
        native: dict[str, Any],
        headers: Mapping[str, str],
        ctx: RequestContext | None = None,
    ) -> bytes | NativeStream:
        """`native` (the caller's Messages body, `chat` its OpenAI reading for the limits) sent
        to the first Anthropic deployment that answers: its JSON body, or its event stream."""
        if ctx is not None:
            await self._guard.admit(ctx, "chat", chat)
        protocol = PassthroughProtocol(headers)
        attempt = partial(self._native_on, protocol=protocol, native=native, ctx=ctx)
        return await self._first_that_answers(attempt, "chat", chat, ctx, only="anthropic")

    async def _native_on(
        self,
        spec: ModelSpec,
        protocol: PassthroughProtocol,
        native: dict[str, Any],
        ctx: RequestContext | None,
    ) -> bytes | NativeStream:
        body = self._guard.outbound(spec, {**native, "model": spec.upstream_model}, ctx)
        if ctx is not None:
            ctx.backend = spec.name
        call = self._metrics.genai.call("chat", spec.provider_name, native["model"], spec.name)
        stack = contextlib.AsyncExitStack()
        try:
            request = orjson.dumps(body)
            if native.get("stream"):
                _, resp = await self._open(stack, spec, protocol, "chat", request, call)
                stack.callback(resp.close)
                if resp.status != 200:
                    _raise_for_status(resp.status, await resp.read())
                self._metrics.requests.labels("chat", spec.name, "200").inc()
                return NativeStream(resp, stack, call, partial(record, call, ctx))
            code, raw = await self._post(spec, protocol, "chat", request, call)
            _raise_for_status(code, raw)
            record(call, ctx, _native_usage(raw, native["model"]))
        except MloError as exc:
            await stack.aclose()
            self._metrics.errors.labels(spec.name, exc.error_type).inc()
            self._metrics.requests.labels("chat", spec.name, str(exc.status)).inc()
            call.finish(exc.error_type)
            raise
        except BaseException as exc:
            await stack.aclose()
            call.finish(type(exc).__name__)
            raise
        self._metrics.requests.labels("chat", spec.name, "200").inc()
        call.finish()
        return raw

    async def _first_that_answers(
        self,
        attempt: Callable[[ModelSpec], Awaitable[T]],
        kind: Kind,
        data: dict[str, Any],
        ctx: RequestContext | None,
        only: str | None = None,
        span: Span = NOOP,
    ) -> T:
        """Try each deployment in the router's order that the guard lets this request use
        (scope, per-model limits; with the backend `only`, when given); fall back only on
        deployment failures."""
        failure: MloError | None = None
        skipped: list[MloError] = []
        with span.child("routing"):
            candidates, session = self._router.route(data, ctx.session if ctx is not None else None)
        for spec in candidates:
            if only is not None and spec.backend != only:
                continue
            reason = unavailable_reason(spec)
            if reason is not None and not self._running(spec):  # at once, not after a start
                failure = Unavailable(f"model {spec.name!r} is unavailable: {reason}")
                continue
            try:
                charges = await self._guard.enter(ctx, spec, kind, data)
            except (PermissionDenied, RateLimited) as exc:
                skipped.append(exc)
                continue
            span.set("gen_ai.provider.name", spec.provider_name)
            span.set("mlo.deployment", spec.name)
            try:
                result = await attempt(spec)
            except MloError as exc:
                if not should_fall_back(exc):
                    raise
                await self._guard.give_back(ctx, charges)
                self._router.failed(spec, exc)
                failure = exc
                continue
            self._router.succeeded(spec, session)
            return result
        raise self._guard.none_left(data["model"], failure, skipped)

    def _running(self, spec: ModelSpec) -> bool:
        return spec.holds_memory and self._scheduler.status([spec])[0].state is ModelState.READY

    async def _complete_on(
        self,
        spec: ModelSpec,
        kind: Kind,
        data: dict[str, Any],
        ctx: RequestContext | None,
        span: Span = NOOP,
    ) -> dict[str, Any]:
        if kind in FOLDS and spec.kind is DeploymentKind.LLAMACPP:
            return await self._complete_by_stream(spec, kind, data, ctx, span)
        data = honour_tool_choice(spec, data)  # (_open_on does it for the stream above)
        model = data["model"]
        call = self._metrics.genai.call(kind, spec.provider_name, model, spec.name)
        status, error = "error", ""
        outbound = self._guard.outbound(spec, data, ctx)
        if ctx is not None:
            ctx.backend = spec.name
        protocol = protocol_for(spec)
        try:
            request = protocol.body(spec, kind, outbound)
            conversation = self._conversation(spec, kind, data, ctx)
            code, body = await self._post(spec, protocol, kind, request, call, span, conversation)
            _raise_for_status(code, body)
            out = _read_answer(protocol, kind, body, model)
            _record_usage(call, ctx, span, out.get("usage"))
            status = "200"
            return out
        except MloError as exc:
            status, error = str(exc.status), exc.error_type
            self._metrics.errors.labels(spec.name, exc.error_type).inc()
            raise
        except BaseException as exc:  # cancelled (the caller left) or a bug
            error = type(exc).__name__
            raise
        finally:
            self._metrics.requests.labels(kind, spec.name, status).inc()
            call.finish(error)

    async def _complete_by_stream(
        self,
        spec: ModelSpec,
        kind: Kind,
        data: dict[str, Any],
        ctx: RequestContext | None,
        span: Span,
    ) -> dict[str, Any]:
        """A one-body answer read from the engine as a stream and folded: llama.cpp stops a
        stream whose connection closes (a client that left costs nothing), not a plain call."""
        as_stream = {**data, "stream": True, "stream_options": {"include_usage": True}}
        stream = await self._open_on(spec, kind, as_stream, ctx, span)
        try:
            folded = FOLDS[kind]([chunk async for chunk in stream])
        finally:
            await stream.aclose()
        return NORMALIZERS[kind](folded, data["model"])

    async def _open_on(
        self,
        spec: ModelSpec,
        kind: Kind,
        data: dict[str, Any],
        ctx: RequestContext | None,
        span: Span = NOOP,
    ) -> EngineStream:
        data = honour_tool_choice(spec, data)
        model = data["model"]
        opts = data.get("stream_options") or {}
        want_usage = bool(opts.get("include_usage"))
        data = {**data, "stream_options": {**opts, "include_usage": True}}  # we count tokens
        data = self._guard.outbound(spec, data, ctx)
        if ctx is not None:
            ctx.backend = spec.name
        protocol = protocol_for(spec)
        call = self._metrics.genai.call(kind, spec.provider_name, model, spec.name)
        stack = contextlib.AsyncExitStack()
        try:
            request = protocol.body(spec, kind, data)
            conversation = self._conversation(spec, kind, data, ctx)
            url, resp = await self._open(
                stack, spec, protocol, kind, request, call, span, conversation
            )
            stack.callback(resp.close)
            if resp.status != 200:
                _raise_for_status(resp.status, await resp.read())
        except MloError as exc:
            await stack.aclose()
            self._metrics.errors.labels(spec.name, exc.error_type).inc()
            self._metrics.requests.labels(kind, spec.name, str(exc.status)).inc()
            call.finish(exc.error_type)
            raise
        except BaseException as exc:
            await stack.aclose()
            call.finish(type(exc).__name__)
            raise
        record = partial(_record_usage, call, ctx, span)
        return EngineStream(
            kind,
            model,
            spec.name,
            url,
            resp,
            stack,
            self._metrics,
            want_usage,
            record,
            protocol,
            call,
            span,
        )

    async def _post(
        self,
        spec: ModelSpec,
        protocol: UpstreamProtocol,
        kind: Kind,
        request: bytes,
        call: GenAiCall,
        span: Span = NOOP,
        conversation: str | None = None,
    ) -> tuple[int, bytes]:
        """Send under a slot (and the engine slot holding `conversation`, when it has one); an
        engine of ours found dead (connection refused, or dropped by a process that exited) is
        restarted and the request sent again, once."""
        for retry in (True, False):
            async with contextlib.AsyncExitStack() as held:
                with span.child("load wait"):
                    base_url = await held.enter_async_context(self._scheduler.lease(spec))
                    body = await held.enter_async_context(
                        self._pinned(spec, base_url, conversation, request)
                    )
                call.sent()
                try:
                    with span.child("upstream"):
                        return await self._upstream.post(
                            protocol.url(base_url, kind, False), body, protocol.headers(spec)
                        )
                except EngineError as exc:
                    if not (retry and await self._engine_died(spec, base_url, exc)):
                        raise
        raise AssertionError("unreachable")

    async def _open(
        self,
        stack: contextlib.AsyncExitStack,
        spec: ModelSpec,
        protocol: UpstreamProtocol,
        kind: Kind,
        request: bytes,
        call: GenAiCall,
        span: Span = NOOP,
        conversation: str | None = None,
    ) -> tuple[str, aiohttp.ClientResponse]:
        """`_post` for a stream: the slot stays held on `stack` while the response is open."""
        for retry in (True, False):
            lease = contextlib.AsyncExitStack()
            with span.child("load wait"):
                base_url = await lease.enter_async_context(self._scheduler.lease(spec))
                try:
                    body = await lease.enter_async_context(
                        self._pinned(spec, base_url, conversation, request)
                    )
                except BaseException:  # cancelled while restoring: the model's slot back
                    await lease.aclose()
                    raise
            call.sent()
            url = protocol.url(base_url, kind, True)
            try:
                with span.child("upstream"):
                    resp = await self._upstream.open(url, body, protocol.headers(spec))
            except EngineError as exc:
                await lease.aclose()
                if retry and await self._engine_died(spec, base_url, exc):
                    continue
                raise
            except BaseException:
                await lease.aclose()
                raise
            stack.push_async_callback(lease.aclose)
            return url, resp
        raise AssertionError("unreachable")

    def _conversation(
        self, spec: ModelSpec, kind: Kind, data: dict[str, Any], ctx: RequestContext | None
    ) -> str | None:
        """The conversation a chat request continues, when its engine keeps conversations."""
        if self._slots is None or kind != "chat":
            return None
        return self._slots.key(spec, data, None if ctx is None else ctx.session)

    def _pinned(
        self, spec: ModelSpec, base_url: str, conversation: str | None, request: bytes
    ) -> contextlib.AbstractAsyncContextManager[bytes]:
        if self._slots is None or conversation is None:
            return contextlib.nullcontext(request)
        return self._slots.pinned(spec, base_url, conversation, request)

    async def _engine_died(self, spec: ModelSpec, base_url: str, exc: EngineError) -> bool:
        """Whether the request met a dead engine of ours, now being replaced: send it again."""
        if isinstance(exc, EngineTimeout) or exc.upstream:
            return False  # slow, or it answered: alive
        refused = isinstance(exc, EngineUnreachable)
        return await self._scheduler.replace_dead(spec, base_url, refused=refused)


def _record_usage(call: GenAiCall, ctx: RequestContext | None, span: Span, usage: Any) -> None:
    call.usage(usage)
    if isinstance(usage, dict):
        span.set("gen_ai.usage.input_tokens", int(usage.get("prompt_tokens") or 0))
        span.set("gen_ai.usage.output_tokens", int(usage.get("completion_tokens") or 0))
    if ctx is not None:
        ctx.record_usage(usage)


class EngineStream:
    """Normalised OpenAI chunks from the engine; `aclose()` frees the slot and the connection."""

    def __init__(
        self,
        kind: Kind,
        model: str,
        name: str,
        url: str,
        resp: aiohttp.ClientResponse,
        stack: contextlib.AsyncExitStack,
        metrics: Metrics,
        want_usage: bool,
        record_usage: Callable[[Any], None],
        protocol: UpstreamProtocol,
        call: GenAiCall,
        span: Span = NOOP,
    ) -> None:
        self._kind, self._model, self._name, self._url = kind, model, name, url
        self._span, self._streaming, self._owned = span, NOOP, NOOP
        self._protocol, self._call = protocol, call
        self._resp, self._stack, self._metrics = resp, stack, metrics
        self._record_usage = record_usage
        self._conform = StreamConformer(kind, model, want_usage)
        self._status, self._error = "200", ""
        self._closed = False

    def owns(self, span: Span) -> None:
        """End `span` (the request's) when the stream closes."""
        self._owned = span

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's tokens, once the upstream has said (before the usage chunk for
        llama.cpp engines and Anthropic; None until then)."""
        return self._conform.prompt_tokens

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        conform = self._conform
        self._streaming = self._span.child("streaming")
        try:
            async for obj in self._protocol.chunks(self._kind, self._resp, self._url, self._model):
                if obj.get("choices"):
                    self._call.first_token()
                for out in conform.feed(obj):
                    yield out
            if conform.usage is not None:
                self._record_usage(conform.usage)
            for out in conform.finish():
                yield out
        except MloError as exc:
            self._status, self._error = str(exc.status), exc.error_type
            self._metrics.errors.labels(self._name, exc.error_type).inc()
            self._streaming.fail(exc)
            self._span.fail(exc)
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stack.aclose()
        self._metrics.requests.labels(self._kind, self._name, self._status).inc()
        self._call.finish(self._error)
        self._streaming.end()
        self._owned.end()


_ITEMS = {"chat": "choices", "completion": "choices", "embedding": "data"}
_NOT_THE_PROTOCOL = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def _read_answer(protocol: UpstreamProtocol, kind: Kind, body: bytes, model: str) -> dict[str, Any]:
    """A 2xx body as an OpenAI response; a body that is not one (not JSON, no `choices`) is
    the deployment's fault (EngineError, 502), never the gateway's (500)."""
    try:
        answer = protocol.answer(kind, body)
        items = answer.get(_ITEMS[kind]) if isinstance(answer, dict) else None
        if not (isinstance(items, list) and items and all(isinstance(i, dict) for i in items)):
            raise ValueError(f"no {_ITEMS[kind]!r} list of objects")
        return NORMALIZERS[kind](answer, model)
    except _NOT_THE_PROTOCOL as exc:
        raise EngineError(
            f"the deployment of {model!r} answered with a body that is not an answer of its "
            f"protocol ({type(exc).__name__}: {str(exc)[:120]})",
            upstream=True,
        ) from exc


def _native_usage(raw: bytes, model: str) -> Any:
    """The `usage` of a passed-through Messages answer, which goes to the caller as it is."""
    try:
        answer = orjson.loads(raw)
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise EngineError(
            f"the deployment of {model!r} answered with a body that is not a Messages answer "
            f"({str(exc)[:120]})",
            upstream=True,
        ) from exc
    return answer.get("usage")


def _raise_for_status(code: int, body: bytes) -> None:
    if code < 400:
        return
    message = engine_error_message(body)
    if code < 500 or is_request_fault(message):  # the request's fault: not the deployment's
        raise UpstreamClientError(message, status=code if code < 500 else 400)
    raise EngineError(f"engine error {code}: {message}", upstream=True)
