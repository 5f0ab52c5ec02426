"""OTLP traces after the OpenTelemetry GenAI conventions (the `otel` extra).

One span per request, `{gen_ai.operation.name} {gen_ai.request.model}`, with children for its
steps (auth, routing, load wait, upstream, streaming). Off (no endpoint), every span is `NOOP`:
nothing from OpenTelemetry is imported and a span costs one method call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ml_offload.config import TracingSettings
from ml_offload.errors import ConfigError, MloError
from ml_offload.metrics import OPERATION_NAMES

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OtelSpan

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"  # the standard variable, read when the key is unset
Value = str | int | float | bool


class Span(Protocol):
    """A started span; a context manager that ends it (and records the error that ends it)."""

    def child(self, name: str) -> Span: ...
    def set(self, key: str, value: Value) -> None: ...
    def fail(self, exc: BaseException) -> None: ...
    def end(self) -> None: ...
    def __enter__(self) -> Span: ...
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Tracer(Protocol):
    def request(self, kind: str, model: str) -> Span:
        """A started span for a request of `kind` (chat, completion, embedding) for `model`."""
        ...

    def close(self) -> None: ...


class _NoopSpan:
    def child(self, name: str) -> Span:
        return self

    def set(self, key: str, value: Value) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def end(self) -> None:
        pass

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


NOOP: Span = _NoopSpan()


class _NoopTracer:
    def request(self, kind: str, model: str) -> Span:
        return NOOP

    def close(self) -> None:
        pass


NOOP_TRACER: Tracer = _NoopTracer()


def error_type(exc: BaseException) -> str:
    """`error.type`: our error's type (rate_limit_error...), else the exception's class."""
    return exc.error_type if isinstance(exc, MloError) else type(exc).__name__


class _Span:
    def __init__(self, tracer: Any, span: OtelSpan) -> None:
        self._tracer, self._span = tracer, span

    def child(self, name: str) -> Span:
        from opentelemetry import trace

        parent = trace.set_span_in_context(self._span)
        return _Span(self._tracer, self._tracer.start_span(name, context=parent))

    def set(self, key: str, value: Value) -> None:
        self._span.set_attribute(key, value)

    def fail(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("error.type", error_type(exc))
        self._span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))

    def end(self) -> None:
        self._span.end()

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if ev is not None:
            self.fail(ev)
        self.end()


class _OtelTracer:
    def __init__(self, endpoint: str, service_name: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": service_name})
        )
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint)))
        self._tracer = self._provider.get_tracer("ml_offload")

    def request(self, kind: str, model: str) -> Span:
        from opentelemetry.trace import SpanKind

        operation = OPERATION_NAMES.get(kind, kind)
        attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
        span = self._tracer.start_span(
            f"{operation} {model}", kind=SpanKind.SERVER, attributes=attributes
        )
        return _Span(self._tracer, span)

    def close(self) -> None:
        self._provider.shutdown()  # exports what is still batched


def traces_url(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """Where spans go (`…/v1/traces`), or None: tracing off."""
    base = settings.otlp_endpoint or environ.get(ENDPOINT_ENV) or None
    if base is None:
        return None
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def open_tracer(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> Tracer:
    url = traces_url(settings, environ)
    if url is None:
        return NOOP_TRACER
    try:
        return _OtelTracer(url, settings.service_name)
    except ImportError as exc:
        raise ConfigError(
            f"tracing.otlp_endpoint ({url}) needs OpenTelemetry: pip install 'ml-offload[otel]' "
            f"(or unset it and {ENDPOINT_ENV}); missing: {exc.name}"
        ) from exc
