"""Issue 12, "internal addresses leak": through a real gateway with the real engine loaded and a
remote deployment, a non-admin key reads names and state only from /models, /backends and
/vram/status (no model path, upstream URL, engine pid or port); the admin key sees them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import MODEL, Gateway, GatewayFactory
from tests.integration.fake_upstream import FakeOpenAI, Reply, fake_openai

pytestmark = pytest.mark.integration

ADMIN = "admin-" + "s" * 24
READS = ("/models", f"/models/{MODEL}", "/backends", "/vram/status", "/health")


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with fake_openai(lambda request: Reply(body={})) as fake:
        yield fake


@pytest.fixture
def gw(gateway_factory: GatewayFactory, upstream: FakeOpenAI, smollm_path: Path) -> Gateway:
    gw = gateway_factory(
        security={"admin_key": ADMIN},
        models=[
            {"name": MODEL, "path": smollm_path},
            {"name": "far", "url": f"{upstream.url}/v1"},
        ],
    )
    gw.use_key(ADMIN)
    loaded = gw.http.post(f"/models/{MODEL}/load")
    assert loaded.status_code == 200, loaded.text
    return gw


def internals(gw: Gateway, upstream: FakeOpenAI, smollm_path: Path) -> list[str]:
    """What only an admin may read: the file, the upstream, the engine's pid and address."""
    engine = gw.model()
    assert engine["state"] == "ready" and engine["pid"] and engine["base_url"]
    port = urlsplit(engine["base_url"]).port
    return [
        str(smollm_path),
        smollm_path.name,
        upstream.url,
        f":{port}",
        str(engine["pid"]),
        str(urlsplit(upstream.url).port),
    ]


def test_a_non_admin_key_reads_names_and_state_only(
    gw: Gateway, upstream: FakeOpenAI, smollm_path: Path
) -> None:
    secrets = internals(gw, upstream, smollm_path)
    made = gw.http.post("/admin/keys", json={"name": "reader"})
    assert made.status_code == 201, made.text
    as_reader = {"authorization": f"Bearer {made.json()['key']}"}
    for path in READS:
        answer = gw.http.get(path, headers=as_reader)
        assert answer.status_code == 200, answer.text
        for secret in secrets:
            assert secret not in answer.text, f"{path} shows {secret!r} to a non-admin key"
    models = {m["id"]: m for m in gw.http.get("/models", headers=as_reader).json()["data"]}
    assert models[MODEL]["state"] == "ready" and models["far"]["state"] == "ready"
    backends = gw.http.get("/backends", headers=as_reader).json()["data"]
    assert {b["model"]: b["target"] for b in backends} == {MODEL: None, "far": None}

    # the admin key sees where each deployment is (the same keys, filled)
    seen = {m["id"]: m for m in gw.http.get("/models").json()["data"]}
    assert seen[MODEL]["path"] == str(smollm_path) and seen["far"]["url"] == f"{upstream.url}/v1"
    targets = {b["model"]: b["target"] for b in gw.http.get("/backends").json()["data"]}
    assert targets == {MODEL: str(smollm_path), "far": f"{upstream.url}/v1"}


def test_a_scoped_key_sees_only_the_models_it_may_use(gw: Gateway) -> None:
    """Lists show a key scoped to `far` only `far` (as OpenAI lists the models a key can call);
    asking for another by name is a 404, as for a model that does not exist."""
    made = gw.http.post("/admin/keys", json={"name": "far-only", "models": ["far"]})
    assert made.status_code == 201, made.text
    as_far = {"authorization": f"Bearer {made.json()['key']}"}
    listed = {
        "/models": [m["id"] for m in gw.http.get("/models", headers=as_far).json()["data"]],
        "/backends": [b["model"] for b in gw.http.get("/backends", headers=as_far).json()["data"]],
        "/v1/models": [m["id"] for m in gw.http.get("/v1/models", headers=as_far).json()["data"]],
        "/api/tags": [m["name"] for m in gw.http.get("/api/tags", headers=as_far).json()["models"]],
    }
    assert all(set(names) == {"far"} or names == ["far:latest"] for names in listed.values()), (
        listed
    )
    assert gw.http.get("/api/ps", headers=as_far).json()["models"] == []  # MODEL is loaded
    for path in (f"/models/{MODEL}", f"/v1/models/{MODEL}"):
        hidden = gw.http.get(path, headers=as_far)
        assert hidden.status_code == 404, hidden.text
        assert MODEL in hidden.json()["error"]["message"]
    assert gw.http.get("/models/far", headers=as_far).status_code == 200
    # the admin key still sees both
    assert {m["id"] for m in gw.http.get("/models").json()["data"]} == {MODEL, "far"}
