"""Tracing off costs nothing and imports nothing; the endpoint comes from the key or the
standard variable."""

from __future__ import annotations

import subprocess
import sys

from ml_offload.config import Settings, TracingSettings
from ml_offload.errors import RateLimited
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
