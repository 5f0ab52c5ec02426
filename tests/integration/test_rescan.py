"""New models without a restart (issue 11): a GGUF copied into the model folder is served once
the folder watch sees it, `POST /models/rescan` and `mlo pull` make a gateway rescan, and a
loaded model keeps its engine across a rescan. Real gateways, real llama.cpp engines."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_hub import FakeHub
from tests.integration.test_pull import hub, mlo, tiny_gguf  # noqa: F401 (fixtures)


def folder_with(tmp_path: Path, smollm_path: Path, *names: str) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in names:
        shutil.copy(smollm_path, folder / f"{name}.gguf")
    return folder


def names(gw: Gateway) -> list[str]:
    return [m["id"] for m in gw.http.get("/models").json()["data"]]


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


def chat(gw: Gateway, model: str) -> str:
    answer = gw.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
    )
    assert answer.model == model
    return answer.choices[0].message.content or ""


def test_a_copied_model_is_served_without_a_restart(
    tmp_path: Path, smollm_path: Path, gateway_factory: GatewayFactory
) -> None:
    folder = folder_with(tmp_path, smollm_path, "first")
    gw = gateway_factory(demo_model=False, storage={"models_dir": folder})
    assert gw.http.post("/models/first/load").status_code == 200
    pid = gw.model("first")["pid"]

    shutil.copy(smollm_path, folder / "second.gguf.part")  # as a download lands: then renamed
    (folder / "second.gguf.part").rename(folder / "second.gguf")
    wait_for(lambda: "second" in names(gw), "the folder watch registered second.gguf")
    chat(gw, "second")

    first = gw.model("first")
    assert (first["state"], first["pid"]) == ("ready", pid)  # not restarted by the rescan


def test_rescan_on_request_leaves_loaded_models_alone(
    tmp_path: Path, smollm_path: Path, gateway_factory: GatewayFactory
) -> None:
    folder = folder_with(tmp_path, smollm_path, "first", "gone")
    gw = gateway_factory(demo_model=False, watch_models_dir=False, storage={"models_dir": folder})
    chat(gw, "first")
    pid = gw.model("first")["pid"]
    shutil.copy(smollm_path, folder / "third.gguf")
    (folder / "gone.gguf").unlink()
    assert "third" not in names(gw)  # no watch: nothing changes by itself

    done = gw.http.post("/models/rescan")
    assert done.status_code == 200, done.text
    assert done.json() == {"added": ["third"], "removed": ["gone"], "changed": [], "models": 2}
    assert names(gw) == ["first", "third"]
    chat(gw, "third")
    first = gw.model("first")
    assert (first["state"], first["pid"]) == ("ready", pid)
    assert chat(gw, "first") is not None
    assert gw.model("first")["pid"] == pid


def test_rescan_needs_an_admin_key(
    tmp_path: Path, smollm_path: Path, gateway_factory: GatewayFactory
) -> None:
    folder = folder_with(tmp_path, smollm_path, "first")
    gw = gateway_factory(
        demo_model=False,
        storage={"models_dir": folder},
        security={"admin_key": "admin-secret-123456"},
    )
    created = gw.http.post(
        "/admin/keys",
        json={"name": "user"},
        headers={"authorization": "Bearer admin-secret-123456"},
    )
    assert created.status_code == 201, created.text
    gw.use_key(created.json()["key"])
    refused = gw.http.post("/models/rescan")
    assert refused.status_code == 403
    assert "admin" in refused.json()["error"]["message"]


def test_mlo_pull_and_mlo_models_rescan_tell_the_running_gateway(
    tmp_path: Path,
    smollm_path: Path,
    gateway_factory: GatewayFactory,
    hub: FakeHub,  # noqa: F811
) -> None:
    gw = gateway_factory(demo_model=False, watch_models_dir=False)
    config = str(tmp_path / "gw0" / "config.toml")
    pulled = mlo(tmp_path, hub.url, "pull", "acme/Tiny-GGUF", "--config", config, MLO_URL=gw.url)
    assert pulled.returncode == 0, pulled.stderr
    assert "the gateway serves it now: 1 models (added tiny-q4_k_m)" in pulled.stdout
    assert names(gw) == ["tiny-q4_k_m"]

    models = tmp_path / "gw0" / "data" / "models"
    shutil.copy(smollm_path, models / "extra.gguf")
    done = mlo(tmp_path, hub.url, "models", "rescan", "--url", gw.url)
    assert done.returncode == 0, done.stderr
    assert "2 models (added extra)" in done.stdout
    assert names(gw) == ["extra", "tiny-q4_k_m"]


def test_pull_without_a_running_gateway_just_registers(tmp_path: Path, hub: FakeHub) -> None:  # noqa: F811
    done = mlo(tmp_path, hub.url, "pull", "acme/Tiny-GGUF", MLO_URL="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert "registered as tiny-q4_k_m" in done.stdout
    assert "rescan" not in done.stdout + done.stderr
