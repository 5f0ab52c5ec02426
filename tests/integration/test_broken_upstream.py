"""An upstream that answers 200 with something that is not its protocol (not JSON, JSON of the
wrong shape, a stream event that is not JSON) is the deployment's fault: the caller gets 502 in
its own protocol's error shape (or an error event in a stream), never a 500. The app runs
in-process (Starlette's TestClient runs its lifespan) in front of `fake_upstream.FakeOpenAI`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from ml_offload.api.app import build_app
from ml_offload.config import Settings
from tests.integration.fake_upstream import Reply, chunk, fake_openai

pytestmark = pytest.mark.integration

BROKEN = {
    "not json": Reply(raw=b"<html>502 Bad Gateway</html>"),
    "a list": Reply(body=[1, 2]),
    "no choices": Reply(body={"object": "chat.completion", "id": "x"}),
    "choices not a list": Reply(body={"object": "chat.completion", "choices": 5}),
}
BODIES = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/messages": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}], "stream": False},
}


@pytest.fixture(scope="module")
def reply() -> dict[str, Reply]:
    return {"now": BROKEN["not json"]}


@pytest.fixture(scope="module")
def client(
    reply: dict[str, Reply], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    with fake_openai(lambda request: reply["now"]) as fake:
        settings = Settings(
            demo_model=False,
            scan_models_dir=False,
            storage={"data_dir": tmp_path_factory.mktemp("broken")},
            models=[{"name": "m", "url": fake.url}],
        )
        with TestClient(build_app(settings), base_url="http://127.0.0.1") as c:
            yield c


def _error_message(path: str, body: dict[str, object]) -> str:
    if path == "/v1/messages":
        assert body["type"] == "error"
        return str(body["error"]["message"])  # type: ignore[index]
    if path == "/api/chat":
        return str(body["error"])
    return str(body["error"]["message"])  # type: ignore[index]


@pytest.mark.parametrize("broken", sorted(BROKEN))
@pytest.mark.parametrize("path", sorted(BODIES))
def test_a_body_that_is_not_the_protocol_is_a_502(
    client: TestClient, reply: dict[str, Reply], path: str, broken: str
) -> None:
    reply["now"] = BROKEN[broken]
    resp = client.post(path, json={"model": "m", **BODIES[path]})
    assert resp.status_code == 502, resp.text
    assert "m" in _error_message(path, resp.json())


@pytest.mark.parametrize("path", sorted(BODIES))
def test_a_stream_event_that_is_not_json_ends_the_stream_with_an_error(
    client: TestClient, reply: dict[str, Reply], path: str
) -> None:
    first = chunk({"role": "assistant", "content": "par"})
    reply["now"] = Reply(chunks=[first, b"{not json"])
    resp = client.post(path, json={"model": "m", **BODIES[path], "stream": True})
    assert resp.status_code == 200  # the stream had started: its error is an event
    text = resp.text
    assert "par" in text
    errors = [line for line in text.splitlines() if "error" in line]
    assert errors, text
    assert not any("internal" in line.lower() for line in errors), text
    if path == "/api/chat":
        assert "error" in json.loads(text.strip().splitlines()[-1])
