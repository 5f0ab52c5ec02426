"""Hypothesis-generated requests against every endpoint: never a 5xx, every error in the shape
of the caller's protocol (the rule of api/errors.py: `/v1/messages` Anthropic's, `/api/`
Ollama's, everything else OpenAI's).

The app runs in-process (Starlette's TestClient runs its lifespan) with one model behind a
scripted `fake_upstream.FakeOpenAI` that always answers well, so a 5xx can only be ours; the
model has `redact = true`, so the redactor sees every odd request shape that passes validation. The
routes are read from the app, so a new endpoint is fuzzed without touching this file; the
WebSocket endpoint is fuzzed separately, message by message, since its errors are messages
(`wire/ws.py`), not HTTP responses.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from starlette.testclient import TestClient

from ml_offload.api.app import build_app
from ml_offload.config import Settings
from tests.integration.fake_upstream import FakeOpenAI, Reply, chunk, fake_openai

pytestmark = pytest.mark.integration

ADMIN = "fuzz-admin-" + "0123456789abcdef"
AUTH = {"authorization": f"Bearer {ADMIN}"}
MODEL = "m"
FUZZ = settings(  # FUZZ_EXAMPLES=1000 for a longer hunt
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the upstream: a well-behaved OpenAI-compatible server ---------------------------------


def _answer(request: dict[str, Any]) -> Reply:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if "input" in request:
        inputs = request["input"]
        n = len(inputs) if isinstance(inputs, list) and inputs and not _ints(inputs) else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(n)]
        return Reply(body={"object": "list", "data": data, "model": "x", "usage": usage})
    chat = "messages" in request
    if request.get("stream"):
        delta = {"role": "assistant", "content": "ok"}
        first = chunk(delta) if chat else _text_chunk("ok")
        last = chunk({}, "stop") if chat else _text_chunk("", "stop")
        return Reply(chunks=[first, last, {**chunk({}), "choices": [], "usage": usage}])
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": "ok"}
    else:
        choice["text"] = "ok"
    obj = "chat.completion" if chat else "text_completion"
    body = {"id": "x-1", "object": obj, "created": 1, "model": "x", "choices": [choice]}
    return Reply(body={**body, "usage": usage})


def _ints(values: list[Any]) -> bool:
    return all(isinstance(v, int) for v in values)


def _text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "choices": [choice]}


def _settings(url: str, data_dir: Path) -> Settings:
    return Settings(
        demo_model=False,
        scan_models_dir=False,
        storage={"data_dir": data_dir},
        security={"auth": "required", "admin_key": ADMIN, "audit": {"fsync": False}},
        models=[{"name": MODEL, "url": url, "aliases": ["alias"], "redact": True}],
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with fake_openai(_answer) as fake:
        yield fake


@pytest.fixture(scope="module")
def client(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = build_app(_settings(upstream.url, tmp_path_factory.mktemp("fuzz")))
    with TestClient(app, base_url="http://127.0.0.1") as c:  # runs the lifespan
        yield c


# -- the routes, read from the app ---------------------------------------------------------


def _routes() -> list[tuple[str, str]]:
    """Every HTTP route: the app's own (docs) and, through its OpenAPI schema, those of the
    routers it includes (the WebSocket route is not in the schema; it is fuzzed below)."""
    app = build_app(_settings("http://127.0.0.1:9", Path("/nonexistent")))
    found = {
        (m, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for m in route.methods or ()
        if m != "HEAD"
    }
    for path, operations in app.openapi()["paths"].items():
        found |= {(m.upper(), path) for m in operations}
    return sorted(found, key=lambda r: (r[1], r[0]))


ROUTES = _routes()


def test_routes_were_found() -> None:
    paths = {p for _, p in ROUTES}
    assert {"/v1/chat/completions", "/v1/messages", "/api/chat", "/health"} <= paths


# -- what is sent ----------------------------------------------------------------------------

WEIRD_NUMBERS = st.sampled_from(
    [0, -1, 2**31, 2**63, 2**64 + 1, 10**40, -(10**40), 1e308, -1e308, 5e-324, 0.5, -0.0]
)
WEIRD_STRINGS = st.sampled_from(
    ["", "NaN", "Infinity", "-Infinity", "null", "true", "\x00", "\ud7ff", "🦙" * 50, "a" * 5000]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | WEIRD_NUMBERS
    | WEIRD_STRINGS
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)

_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
    "stream": False,
}
SHAPES: dict[str, dict[str, Any]] = {  # a valid request per path, to be broken field by field
    "/v1/chat/completions": _CHAT,
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"model": MODEL, "input": ["a", "b"]},
    "/v1/messages": {**_CHAT, "system": "be brief", "stop_sequences": ["x"]},
    "/v1/responses": {
        "model": MODEL,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "instructions": "be brief",
        "max_output_tokens": 4,
        "stream": False,
    },
    "/api/chat": {**_CHAT, "options": {"num_predict": 4}, "keep_alive": "5m"},
    "/api/generate": {"model": MODEL, "prompt": "hi", "stream": False, "options": {}},
    "/api/embed": {"model": MODEL, "input": ["a"]},
    "/api/embeddings": {"model": MODEL, "prompt": "a"},
    "/api/show": {"model": MODEL},
    "/api/pull": {"model": MODEL, "stream": False},
    "/inference": {"model": MODEL, "prompt": "hi", "parameters": {"max_tokens": 4}},
    "/admin/keys": {"name": "k", "models": [MODEL], "rpm": 5, "expires": "1d"},
    "/models/{name}/load": {"pin": False},
    "/models/{name}/pin": {"pinned": False},
}
TEXTS = st.text(max_size=20) | WEIRD_STRINGS
PART = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["text", "image_url", "image", "tool_use", "tool_result", "thinking", "document"]
        )
        | st.text(max_size=8)
    },
    optional={
        k: TEXTS | JSON
        for k in ("text", "image_url", "source", "id", "name", "input", "content", "tool_use_id")
    },
)
TOOL_CALL = st.fixed_dictionaries(
    {
        "id": TEXTS,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": TEXTS, "arguments": TEXTS | JSON}),
    }
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "nobody"]),
        "content": TEXTS | st.lists(PART, max_size=3) | JSON,
    },
    optional={
        "tool_calls": st.lists(TOOL_CALL, max_size=2) | JSON,
        "tool_call_id": TEXTS,
        "tool_name": TEXTS,
        "images": st.lists(TEXTS, max_size=2) | JSON,
        "name": TEXTS,
    },
)
TOOL = st.fixed_dictionaries(
    {"type": st.just("function"), "name": TEXTS, "function": JSON, "input_schema": JSON}
)
ANY = JSON | WEIRD_NUMBERS | WEIRD_STRINGS
EXTRA = {  # fields the dialects know, with values of every kind
    "tools": st.lists(TOOL, max_size=2) | JSON,
    "tool_choice": ANY,
    "format": st.sampled_from(["json", {"type": "object"}]) | ANY,
    "stream": st.booleans() | ANY,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | ANY,
    "options": st.dictionaries(
        st.sampled_from(["num_predict", "stop", "temperature", "seed"]), ANY
    ),
    "keep_alive": st.sampled_from(["5m", "-1", "0", "1e400", "forever", -1, 0]) | ANY,
    "stop": st.lists(TEXTS, max_size=3) | ANY,
    "stop_sequences": st.lists(TEXTS, max_size=3) | ANY,
    "max_tokens": ANY,
    "n": ANY,
    "system": st.lists(PART, max_size=2) | ANY,
    "images": ANY,
    "suffix": ANY,
}


@st.composite
def shaped(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` mostly intact (so that the request gets past validation into the translators),
    with a few fields dropped or replaced by values of the wrong type or size, messages of
    every role with odd content parts and tool calls, and unknown fields."""
    out = dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=3, unique=True)):
        action = draw(st.sampled_from(["drop", "replace", "weird"]))
        if action == "drop":
            del out[key]
        else:
            out[key] = draw(JSON if action == "replace" else WEIRD_NUMBERS | WEIRD_STRINGS)
    if "messages" in base and draw(st.booleans()):
        out["messages"] = draw(st.lists(MESSAGE, min_size=1, max_size=3))
    for key in draw(st.lists(st.sampled_from(sorted(EXTRA)), max_size=3, unique=True)):
        out[key] = draw(EXTRA[key])
    out.update(draw(st.dictionaries(st.text(max_size=10), JSON, max_size=2)))
    return out


HEADER_NAME = st.from_regex(r"\A[a-z][a-z0-9-]{0,15}\Z").filter(
    lambda h: h not in {"content-length", "transfer-encoding", "host", "connection", "expect"}
)
HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=zzz",
        "application/x-ndjson",
        "",
        "garbage/;;;",
    ]
)


def _encode(value: Any) -> bytes:
    """JSON text, with NaN and Infinity as Python writes them (not valid JSON)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _often(value: Any, other: Any, times: int = 9) -> st.SearchStrategy[Any]:
    """`value` `times` out of `times + 1` (hypothesis draws small integers far more often
    than 1 in 10, so a ratio is written as a choice among equals)."""
    return st.sampled_from([value] * times + [other])


@st.composite
def requests(draw: st.DrawFn, method: str, path: str) -> tuple[str, str, dict[str, str], bytes]:
    shape = SHAPES.get(path)
    kinds = {
        "shaped": shaped(shape or {}),
        "json": JSON,
        "bytes": st.binary(max_size=200),
        "empty": st.just(b""),
        "nan": st.sampled_from([math.nan, math.inf, -math.inf]),
    }
    plan = ["shaped"] * 6 if shape else []
    kind = draw(st.sampled_from([*plan, "json", "json", "bytes", "empty", "nan"]))
    value = draw(kinds[kind])
    body = value if isinstance(value, bytes) else _encode(value)
    auth = draw(st.sampled_from(["admin"] * 8 + ["none", "junk"]))
    headers = dict(AUTH) if auth == "admin" else {}
    if auth == "junk":
        name = draw(st.sampled_from(["authorization", "x-api-key"]))
        headers[name] = draw(st.sampled_from(["Bearer ", "Basic ", ""])) + draw(HEADER_VALUE)
    headers.update(draw(st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=3)))
    if draw(_often(False, True, 2)):
        headers["content-type"] = draw(CONTENT_TYPES)
    method = draw(_often(method, st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), 19))
    if not isinstance(method, str):
        method = draw(method)
    segment = draw(st.sampled_from([MODEL, "alias", "nope", "m/../m"]) | st.text(max_size=20))
    url = re.sub(r"\{[^}]+\}", quote(segment, safe="") or "x", path)
    return method, url, headers, body


# -- what is checked -------------------------------------------------------------------------


def assert_error_shape(path: str, status: int, body: Any) -> None:
    where = f"{status} on {path}: {body!r}"[:500]
    if path.startswith("/v1/messages"):
        assert body.get("type") == "error", where
        assert isinstance(body["error"]["type"], str), where
        assert isinstance(body["error"]["message"], str), where
    elif path.startswith("/api/"):
        assert isinstance(body.get("error"), str), where
    else:
        assert isinstance(body.get("error"), dict), where
        assert isinstance(body["error"]["message"], str), where
        assert isinstance(body["error"]["type"], str), where


# Live feeds that never end by themselves: their first event is read, then the client goes away
# (reading one to its end would wait forever).
ENDLESS = {"/ui/events"}


def check(client: TestClient, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
    path = url.split("?")[0]
    with client.stream(method, url, headers=headers, content=body) as resp:
        if resp.status_code < 400 and path in ENDLESS:
            assert next(resp.iter_bytes()).startswith(b"data: "), path
            return
        resp.read()
    assert resp.status_code < 500, f"{method} {url} -> {resp.status_code}: {resp.text[:500]}"
    if resp.status_code >= 400:
        assert resp.headers.get("content-type", "").startswith("application/json"), resp.text
        assert_error_shape(path, resp.status_code, resp.json())
    elif "stream" in resp.headers.get("content-type", "") or "ndjson" in resp.headers.get(
        "content-type", ""
    ):  # a stream's error is an event: none may be ours (the upstream never fails here)
        assert not re.search(r"server_error|api_error|internal error", resp.text), resp.text


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_fuzzed_requests(client: TestClient, method: str, path: str) -> None:
    @FUZZ
    @given(request=requests(method, path))
    def run(request: tuple[str, str, dict[str, str], bytes]) -> None:
        check(client, *request)

    run()


@FUZZ
@given(
    path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
)
def test_unknown_paths(client: TestClient, path: str, method: str) -> None:
    check(client, method, "/" + quote(path, safe="/"), AUTH, b"{}")


# -- the WebSocket endpoint: every message answered, errors as `{"id", "error": {...}}` ------

WS_SHAPES = [
    {"id": 1, "model": MODEL, "prompt": "hi", "parameters": {"max_tokens": 2}},
    {"id": "a", "model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    {"id": 2, "cancel": True},
]


@FUZZ
@given(
    message=st.one_of(
        *(shaped(s).map(_encode) for s in WS_SHAPES),
        JSON.map(_encode),
        st.text(max_size=50).map(str.encode),
    ),
    binary=st.booleans(),
)
def test_websocket_messages(client: TestClient, message: bytes, binary: bool) -> None:
    with client.websocket_connect("/ws/inference", headers=AUTH) as ws:
        if binary:
            ws.send_bytes(message)
        else:
            ws.send_text(message.decode("utf-8", "replace"))
        while True:
            reply = ws.receive_json()
            if "error" in reply:
                error = reply["error"]
                assert isinstance(error["message"], str) and isinstance(error["type"], str)
                assert 400 <= error["status"] < 500, reply
                return
            if reply.get("done") or reply.get("cancelled"):
                return
            assert "delta" in reply, reply


def test_websocket_binary_frame_is_answered(client: TestClient) -> None:
    """A binary frame holding JSON is a message like a text one; one that is not UTF-8 JSON
    gets an error message (it used to end the connection)."""
    with client.websocket_connect("/ws/inference", headers=AUTH) as ws:
        ws.send_bytes(b"\xff\xfe")
        assert ws.receive_json()["error"]["status"] == 400
        ws.send_bytes(_encode({"id": 7, "model": MODEL, "prompt": "hi"}))
        replies = [ws.receive_json()]
        while not replies[-1].get("done"):
            replies.append(ws.receive_json())
        assert {r["id"] for r in replies} == {7}
