"""`POST /api/pull` on the gateway is passed through to the external Ollama, its NDJSON progress
streamed back, through the official `ollama` client. Ollama cannot run here:
`fake_ollama.FakeOllama` speaks its documented wire format (see its docstring)."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.fake_ollama import FakeOllama

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


def test_pull_streams_ollamas_progress(gateway_factory: GatewayFactory, fake: FakeOllama) -> None:
    gw = gateway_factory(
        demo_model=False,
        models=[
            {
                "name": "llama",
                "url": fake.url,
                "backend": "ollama",
                "remote_model": "llama3.2:latest",
            }
        ],
    )
    client = ollama.Client(host=gw.url)
    progress = list(client.pull("qwen3:0.6b", stream=True))  # the one Ollama server
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    downloads = [p for p in progress if p.digest]
    assert [p.completed for p in downloads] == [0, 1_000_000, 2_000_000, 3_000_000]
    assert {p.total for p in downloads} == {3_000_000}
    assert fake.calls[-1] == {"model": "qwen3:0.6b", "insecure": False, "stream": True}
    assert "qwen3:0.6b" in fake.available

    assert client.pull("llama", stream=False).status == "success"  # a model on that Ollama
    assert fake.calls[-1] == {"model": "llama3.2:latest", "insecure": False, "stream": False}

    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("no-such-model", stream=False)
    assert caught.value.status_code == 502 and "file does not exist" in caught.value.error
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(client.pull("no-such-model", stream=True))


def test_pull_without_an_ollama_server(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(demo_model=False)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=gw.url).pull("qwen3:0.6b", stream=False)
    assert caught.value.status_code == 404 and "no Ollama server" in caught.value.error
    resp = gw.http.post("/api/pull", json={})
    assert resp.status_code == 400 and "model" in resp.json()["error"]
