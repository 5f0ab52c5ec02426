"""OTLP traces after the OpenTelemetry GenAI conventions (the `otel` extra).

One span per request, `{gen_ai.operation.name} {gen_ai.request.model}`, with children for its
steps (auth, routing, load wait, upstream, streaming). Off (no endpoint), every span is `NOOP`:
nothing from OpenTelemetry is imported and a span costs one method call. On, spans are plain
records filled in place and exported in batches by `otlp.Exporter`'s thread; `sample_ratio`
keeps that share of requests (head sampling).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

from ml_offload.config import TracingSettings
from ml_offload.errors import ConfigError, MloError
from ml_offload.metrics import OPERATION_NAMES
from ml_offload.otlp import Exporter, SpanRecord, Value

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"  # the standard variable, read when the key is unset


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


def _new_id(nbytes: int) -> bytes:
    """A random non-zero id (W3C trace context: all-zero ids are invalid)."""
    return (random.getrandbits(nbytes * 8) or 1).to_bytes(nbytes, "big")


class _Trace:
    """The spans of one request: handed to the exporter together when the request span ends."""

    __slots__ = ("exporter", "spans", "trace_id")

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.trace_id = _new_id(16)
        self.spans: list[SpanRecord] = []

    def finish(self, end_ns: int) -> None:
        for record in self.spans:  # a step still open when its request ends, ends with it
            record.end_ns = record.end_ns or end_ns
        self.exporter.add(self.spans)


class _Span:
    """A recording span: a `SpanRecord` filled in place (time stamps and a dict: a few
    microseconds per request; encoding happens in the exporter's thread)."""

    __slots__ = ("_record", "_trace")

    def __init__(self, trace: _Trace, name: str, parent: bytes, attributes: dict[str, Value]):
        self._trace = trace
        self._record = SpanRecord(
            name, trace.trace_id, _new_id(8), parent, time.time_ns(), not parent, attributes
        )
        trace.spans.append(self._record)

    def child(self, name: str) -> Span:
        return _Span(self._trace, name, self._record.span_id, {})

    def set(self, key: str, value: Value) -> None:
        self._record.attributes[key] = value

    def fail(self, exc: BaseException) -> None:
        self._record.attributes["error.type"] = error_type(exc)
        self._record.error = str(exc)[:200]

    def end(self) -> None:
        record = self._record
        if record.end_ns:
            return
        record.end_ns = time.time_ns()
        if record.server:
            self._trace.finish(record.end_ns)

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if ev is not None:
            self.fail(ev)
        self.end()


class _RecordingTracer:
    def __init__(self, exporter: Exporter, sample_ratio: float) -> None:
        self._exporter, self._ratio = exporter, sample_ratio

    def request(self, kind: str, model: str) -> Span:
        if self._ratio < 1.0 and random.random() >= self._ratio:
            return NOOP  # head sampling: an untraced request costs one random number
        operation = OPERATION_NAMES.get(kind, kind)
        attributes: dict[str, Value] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
        }
        return _Span(_Trace(self._exporter), f"{operation} {model}", b"", attributes)

    def close(self) -> None:
        self._exporter.close()  # posts what is still queued


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
        import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"tracing.otlp_endpoint ({url}) needs OpenTelemetry: pip install 'ml-offload[otel]' "
            f"(or unset it and {ENDPOINT_ENV}); missing: {exc.name}"
        ) from exc
    return _RecordingTracer(Exporter(url, settings.service_name), settings.sample_ratio)
