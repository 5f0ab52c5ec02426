"""OTLP traces: a real gateway serving the real model exports its spans over OTLP/HTTP to a
loopback receiver written here (protobuf decoded with opentelemetry-proto): one span per request
named after the GenAI conventions, with its steps as children."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from tests.integration.conftest import MODEL, GatewayFactory

trace_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra is not installed (pip install 'ml-offload[otel]')",
)

STEPS = {"auth", "routing", "load wait", "upstream", "streaming"}


class Receiver:
    """The spans posted to /v1/traces, flattened: name, ids, attributes, status code."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = trace_pb2.ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    span = {
                        "name": s.name,
                        "trace": s.trace_id.hex(),
                        "id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(),
                        "attrs": attrs,
                        "error": s.status.code == 2,  # STATUS_CODE_ERROR
                        "service": service.get("service.name"),
                    }
                    with self.lock:
                        self.spans.append(span)

    def wait(self, done: Any, timeout_s: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                spans = list(self.spans)
            if done(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, Receiver]]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = self.path == "/v1/traces"
            if ok:
                receiver.add(body)
            reply = trace_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", receiver
    finally:
        server.shutdown()
        server.server_close()


def requests_and_children(spans: list[dict[str, Any]], name: str) -> list[tuple[dict, set]]:
    """Each span called `name`, with the names of its children (same trace, parent its id)."""
    out = []
    for top in (s for s in spans if s["name"] == name):
        kids = {s["name"] for s in spans if s["parent"] == top["id"] and s["trace"] == top["trace"]}
        out.append((top, kids))
    return out


def test_request_spans_with_their_steps(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the batch delay, in ms
    with otlp_receiver() as (url, receiver):
        gw = gateway_factory(tracing={"otlp_endpoint": url, "service_name": "mlo-test"})
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        messages: Any = [{"role": "user", "content": "Say hi"}]
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
        assert answer.choices[0].message.content
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, stream=True
        )
        assert [c for c in stream]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=messages)

        def done(spans: list[dict[str, Any]]) -> bool:
            full = [t for t, kids in requests_and_children(spans, f"chat {MODEL}") if kids >= STEPS]
            return len(full) >= 2 and any(s["name"] == "chat no-such-model" for s in spans)

        spans = receiver.wait(done)

    traced = requests_and_children(spans, f"chat {MODEL}")
    assert len(traced) == 2, [s["name"] for s in spans]
    for top, kids in traced:
        assert kids == STEPS, kids
        assert top["parent"] == ""  # the root of its trace
        assert top["service"] == "mlo-test"
        attrs = top["attrs"]
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == MODEL
        assert attrs["gen_ai.provider.name"]
        assert attrs["gen_ai.usage.input_tokens"] > 0
        assert attrs["gen_ai.usage.output_tokens"] > 0
        assert not top["error"]
    assert traced[0][0]["trace"] != traced[1][0]["trace"]
    [missing] = [s for s in spans if s["name"] == "chat no-such-model"]
    assert missing["error"]
    assert missing["attrs"]["error.type"]
    routing = [s for s in spans if s["parent"] == missing["id"] and s["name"] == "routing"]
    assert routing and routing[0]["error"]
