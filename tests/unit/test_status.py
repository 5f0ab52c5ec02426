"""The status views through the real app in-process (fake engines): what an admin, a
non-admin key and a gateway without auth see in /health, /models, /backends and /vram/status;
the gauges read at scrape time; the schemas in /docs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from ml_offload.api.app import build_app
from ml_offload.backends.base import ExitCallback
from ml_offload.backends.fake import FakeProcess
from ml_offload.config import Settings
from ml_offload.domain import ModelSpec
from ml_offload.gguf import demo_model_path
from ml_offload.wire.native import BackendList, HealthView, MemoryView, ModelList

ADMIN = "admin-secret-for-status-tests"
UPSTREAM = "http://127.0.0.1:9/v1"  # never called: the views only name it
DEVICES = [{"name": "sim0", "total_bytes": 8 * 2**30}]


def _fake(spec: ModelSpec, on_exit: ExitCallback) -> FakeProcess:
    return FakeProcess(spec, on_exit)


def _settings(data_dir: Path, *, auth: bool) -> Settings:
    security: dict[str, Any] = {"audit": {"enabled": False}}
    security |= {"auth": "required", "admin_key": ADMIN} if auth else {"auth": "off"}
    return Settings(
        demo_model=False,
        scan_models_dir=False,
        storage={"data_dir": data_dir},
        security=security,
        gpu={"monitor": "simulated", "simulated_devices": DEVICES},
        models=[
            {"name": "local", "path": str(demo_model_path()), "ctx_size": 256, "parallel": 1},
            {"name": "remote", "url": UPSTREAM},
        ],
    )


def _client(data_dir: Path, *, auth: bool) -> Iterator[TestClient]:
    app = build_app(_settings(data_dir, auth=auth), _fake)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A gateway with auth on, the local model loaded (a fake engine with pid and address)."""
    for client in _client(tmp_path_factory.mktemp("status"), auth=True):
        client.headers["authorization"] = f"Bearer {ADMIN}"
        assert client.post("/models/local/load").status_code == 200
        yield client


@pytest.fixture(scope="module")
def user_key(gw: TestClient) -> str:
    made = gw.post("/admin/keys", json={"name": "user"})
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


INTERNALS = (str(demo_model_path()), str(demo_model_path().parent), "127.0.0.1", "fake/", "4242")
READS = ("/models", "/models/local", "/backends", "/vram/status", "/health")


@pytest.mark.parametrize("path", READS)
def test_a_non_admin_key_sees_names_and_state_only(
    gw: TestClient, user_key: str, path: str
) -> None:
    answer = gw.get(path, headers={"authorization": f"Bearer {user_key}"})
    assert answer.status_code == 200, answer.text
    for secret in INTERNALS:
        assert secret not in answer.text, f"{path} shows {secret!r} to a non-admin key"
    assert gw.get(path).json().keys() == answer.json().keys()  # the same keys, nulls for some


def test_non_admin_model_view(gw: TestClient, user_key: str) -> None:
    listed = ModelList.model_validate_json(
        gw.get("/models", headers={"authorization": f"Bearer {user_key}"}).text
    )
    seen = {m.id: m for m in listed.data}
    assert seen["local"].state == "ready" and seen["local"].slots == 1
    assert (seen["local"].pid, seen["local"].base_url, seen["local"].path) == (None, None, None)
    assert seen["remote"].url is None and seen["remote"].state == "ready"  # always, elsewhere


def test_admin_sees_paths_addresses_and_pids(gw: TestClient) -> None:
    seen = {m.id: m for m in ModelList.model_validate_json(gw.get("/models").text).data}
    assert seen["local"].path == str(demo_model_path())
    assert (seen["local"].pid, seen["local"].base_url) == (4242, "http://fake/local")
    assert seen["remote"].url == UPSTREAM
    backends = BackendList.model_validate_json(gw.get("/backends").text).data
    targets = {b.model: b.target for b in backends}
    assert targets == {"local": str(demo_model_path()), "remote": UPSTREAM}
    assert all("probe" not in b for b in gw.get("/backends").json()["data"]), "none probed"
    health = HealthView.model_validate_json(gw.get("/health").text)
    assert health.models.loaded == 1
    assert health.disk.path is None, "/health is public (no key read): it names no folder"


def test_without_auth_everyone_sees_everything(tmp_path: Path) -> None:
    for client in _client(tmp_path, auth=False):
        seen = {m.id: m for m in ModelList.model_validate_json(client.get("/models").text).data}
        assert seen["local"].path == str(demo_model_path()) and seen["remote"].url == UPSTREAM
        assert HealthView.model_validate_json(client.get("/health").text).disk.path is not None


def test_memory_view_places_the_loaded_model(gw: TestClient) -> None:
    memory = MemoryView.model_validate_json(gw.get("/vram/status").text)
    assert memory.monitor == "simulated" and [d.name for d in memory.devices] == ["sim0"]
    [placed] = memory.models
    assert placed.name == "local" and placed.gpu_layers == placed.layers
    assert memory.devices[0].models == {"local": placed.device_bytes[0]}


def test_gauges_are_read_at_scrape_time(gw: TestClient) -> None:
    text = gw.get("/metrics").text
    assert "mlo_models_loaded 1.0" in text
    assert 'mlo_queue_depth{model="local"} 0.0' in text
    assert 'mlo_gpu_memory_total_bytes{device="0",name="sim0"}' in text
    gw.post("/models/local/unload")
    try:
        assert "mlo_models_loaded 0.0" in gw.get("/metrics").text  # no route set it
    finally:
        gw.post("/models/local/load")


def test_docs_show_the_view_schemas(gw: TestClient) -> None:
    schema = gw.get("/openapi.json").json()
    ok = schema["paths"]["/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/ModelList"}
    model = schema["components"]["schemas"]["ModelView"]["properties"]
    assert {"id", "state", "base_url", "estimate"} <= model.keys()
    assert "probe" in schema["components"]["schemas"]["BackendView"]["properties"]
