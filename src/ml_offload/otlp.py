"""OTLP/HTTP export of finished spans: queued by the request, encoded and posted in batches by
one background thread, with OpenTelemetry's own protobuf definitions (`opentelemetry-proto`, the
`otel` extra; imported by that thread only).

Why not the SDK's span objects and exporter: bench/tracing.py measured them at about 190 us of
the gateway's CPU per traced request (six spans, created, then encoded), a third of a request's
whole cost; spans kept as plain records and encoded straight into the protobuf messages cost a
small fraction of that (the figures are in bench/README.md).
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("ml_offload.tracing")

Value = str | int | float | bool
# The standard batch settings of the OpenTelemetry SDKs, read from the same variables.
DELAY_ENV, QUEUE_ENV, BATCH_ENV = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)
DEFAULT_DELAY_MS, DEFAULT_QUEUE, DEFAULT_BATCH = 5000, 2048, 512
POST_TIMEOUT_S = 10.0


@dataclass(slots=True)
class SpanRecord:
    """One span as recorded on the request path: ids, times (Unix ns), attributes, and the
    error message when it failed. `end_ns` 0: not ended yet."""

    name: str
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    start_ns: int
    server: bool
    attributes: dict[str, Value] = field(default_factory=dict)
    end_ns: int = 0
    error: str | None = None


def encode(spans: list[SpanRecord], service_name: str) -> bytes:
    """An `ExportTraceServiceRequest` (OTLP's protobuf body) holding `spans`."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _put(resource_spans.resource.attributes, {"service.name": service_name})
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "ml_offload"
    for record in spans:
        span = scope_spans.spans.add(
            trace_id=record.trace_id,
            span_id=record.span_id,
            parent_span_id=record.parent_id,
            name=record.name,
            kind=Span.SPAN_KIND_SERVER if record.server else Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=record.start_ns,
            end_time_unix_nano=record.end_ns,
        )
        _put(span.attributes, record.attributes)
        if record.error is not None:
            span.status.code = Status.STATUS_CODE_ERROR
            span.status.message = record.error
    return request.SerializeToString()


def _put(target: object, attributes: dict[str, Value]) -> None:
    for key, value in attributes.items():
        kv = target.add(key=key)  # type: ignore[attr-defined]
        if isinstance(value, bool):  # before int: a bool is an int
            kv.value.bool_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        else:
            kv.value.string_value = str(value)


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


class Exporter:
    """Spans handed over by `add` are posted to `url` every OTEL_BSP_SCHEDULE_DELAY ms (or as
    soon as a batch is full); past OTEL_BSP_MAX_QUEUE_SIZE waiting spans, new ones are dropped
    and counted. A collector that is down costs a warning per failed batch, never a request."""

    def __init__(self, url: str, service_name: str) -> None:
        self.url, self.service_name = url, service_name
        self.dropped = 0
        self._delay_s = _env_int(DELAY_ENV, DEFAULT_DELAY_MS) / 1000
        self._max_queue = _env_int(QUEUE_ENV, DEFAULT_QUEUE)
        self._batch = _env_int(BATCH_ENV, DEFAULT_BATCH)
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    def add(self, spans: list[SpanRecord]) -> None:
        """Called on the request path: a length check and an extend (deque is thread-safe)."""
        if len(self._queue) + len(spans) > self._max_queue:
            self.dropped += len(spans)
            return
        self._queue.extend(spans)
        if len(self._queue) >= self._batch:
            self._wake.set()

    def close(self, timeout_s: float = POST_TIMEOUT_S) -> None:
        """Post what is queued, then stop the thread."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._flush()
        self._flush()

    def _flush(self) -> None:
        while self._queue:
            n = min(len(self._queue), self._batch)
            self._post(encode([self._queue.popleft() for _ in range(n)], self.service_name))

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/x-protobuf"}
        )
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            log.warning("OTLP export to %s failed (spans dropped): %s", self.url, exc)
