"""Tracing off costs nothing and imports nothing; the endpoint comes from the key or the
standard variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ml_offload.config import Settings, TracingSettings
from ml_offload.errors import RateLimited
from ml_offload.otlp import SpanRecord, encode
from ml_offload.tracing import NOOP, NOOP_TRACER, error_type, open_tracer, traces_url


def test_off_without_an_endpoint() -> None:
    tracer = open_tracer(TracingSettings(), environ={})
    assert tracer is NOOP_TRACER
    with tracer.request("chat", "m") as span:
        assert span is NOOP and span.child("auth") is NOOP


def test_endpoint_from_the_key_or_the_standard_variable() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert traces_url(TracingSettings(), env) == "http://collector:4318/v1/traces"
    keyed = TracingSettings(otlp_endpoint="http://127.0.0.1:4318/v1/traces")
    assert traces_url(keyed, env) == "http://127.0.0.1:4318/v1/traces"
    assert traces_url(TracingSettings(), {}) is None
    assert Settings().tracing.otlp_endpoint is None


def test_error_type_is_ours_or_the_class() -> None:
    assert error_type(RateLimited("slow down")) == RateLimited("x").error_type
    assert error_type(ValueError()) == "ValueError"


def test_nothing_from_the_sdk_imported_when_off() -> None:
    """(opentelemetry-api itself comes with other packages: the MCP SDK imports it.)"""
    sdk = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto")
    code = (
        "import sys, ml_offload.services, ml_offload.api.app\n"
        "from ml_offload.config import TracingSettings\n"
        "from ml_offload.tracing import open_tracer\n"
        "open_tracer(TracingSettings(), {}).request('chat', 'm').child('auth').end()\n"
        f"print(sorted(m for m in sys.modules if m.startswith({sdk!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sampling_keeps_its_share() -> None:
    pytest.importorskip("opentelemetry.proto", reason="the otel extra is not installed")
    settings = TracingSettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=0.25)
    tracer = open_tracer(settings, environ={})
    try:
        kept = sum(tracer.request("chat", "m") is not NOOP for _ in range(4000))
    finally:
        tracer.close()  # nothing was ended, so nothing is posted
    assert 800 < kept < 1200, kept
    none = open_tracer(settings.model_copy(update={"sample_ratio": 0.0}), environ={})
    assert all(none.request("chat", "m") is NOOP for _ in range(100))
    none.close()


def test_records_encode_as_otlp_protobuf() -> None:
    """What the exporter posts decodes with OpenTelemetry's own definitions: ids, parentage,
    kinds, times, typed attributes and the error status."""
    trace_pb2 = pytest.importorskip(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        reason="the otel extra is not installed",
    )
    root = SpanRecord("chat m", b"t" * 16, b"r" * 8, b"", 10, True, {"n": 3, "ok": True}, 20)
    child = SpanRecord("routing", b"t" * 16, b"c" * 8, b"r" * 8, 11, False, {"x": 0.5}, 12, "no")
    body = trace_pb2.ExportTraceServiceRequest.FromString(encode([root, child], "svc"))
    [resource] = body.resource_spans
    assert resource.resource.attributes[0].value.string_value == "svc"
    top, step = resource.scope_spans[0].spans
    assert (top.name, top.trace_id, top.parent_span_id, top.kind) == ("chat m", b"t" * 16, b"", 2)
    assert (top.start_time_unix_nano, top.end_time_unix_nano) == (10, 20)
    assert {a.key: (a.value.int_value, a.value.bool_value) for a in top.attributes} == {
        "n": (3, False),
        "ok": (0, True),
    }
    assert (step.parent_span_id, step.kind, step.attributes[0].value.double_value) == (
        b"r" * 8,
        1,
        0.5,
    )
    assert (top.status.code, step.status.code, step.status.message) == (0, 2, "no")
