"""Endpoints clients call (issue 14): OpenAI's `GET /v1/models/{id}`, Ollama's
`DELETE /api/delete` (a file in the gateway's model folder, admin keys only) and `POST /api/copy`
(an alias), through the real `openai` and `ollama` clients, with Ollama's documented answers."""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.integration.conftest import GatewayFactory
from tests.unit.test_gguf import write_gguf

pytestmark = pytest.mark.integration
ADMIN = "admin-secret-for-the-test"


def test_retrieve_model_by_name_and_alias(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(
        demo_model=False, models=[{"name": "m", "url": "http://127.0.0.1:9", "aliases": ["a/b"]}]
    )
    assert gw.client.models.retrieve("m").id == "m"
    assert gw.client.models.retrieve("a/b").id == "a/b"  # a name with a slash
    with pytest.raises(openai.NotFoundError) as missing:
        gw.client.models.retrieve("nope")
    assert "nope" in missing.value.message


def test_ollama_copy_and_delete(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    tiny = folder / "Tiny-F32.gguf"
    write_gguf(tiny, vocab_size=10)
    gw = gateway_factory(
        demo_model=False,
        storage={"models_dir": folder},
        models=[{"name": "configured", "url": "http://127.0.0.1:9"}],
        environ={"MLO_ADMIN_KEY": ADMIN},
    )
    admin = ollama.Client(host=gw.url, headers={"authorization": f"Bearer {ADMIN}"})
    auth = {"authorization": f"Bearer {ADMIN}"}
    created = httpx.post(f"{gw.url}/admin/keys", headers=auth, json={"name": "user"})
    assert created.status_code in (200, 201), created.text
    user = ollama.Client(host=gw.url, headers={"authorization": f"Bearer {created.json()['key']}"})

    assert admin.copy("tiny-f32", "tiny-backup")["status"] == "success"
    names = {m.model for m in admin.list().models}
    assert {"tiny-f32:latest", "tiny-backup:latest"} <= names
    assert admin.show("tiny-backup").details is not None

    with pytest.raises(ollama.ResponseError) as refused:
        user.delete("tiny-f32")
    assert refused.value.status_code == 403 and tiny.exists()
    with pytest.raises(ollama.ResponseError) as config_model:
        admin.delete("configured")
    assert config_model.value.status_code == 400 and "config" in config_model.value.error

    assert admin.delete("tiny-f32:latest")["status"] == "success"
    assert not tiny.exists()
    names = {m.model for m in admin.list().models}
    assert "tiny-f32:latest" not in names and "tiny-backup:latest" not in names
    for gone in (lambda: admin.delete("tiny-f32"), lambda: admin.copy("tiny-f32", "x")):
        with pytest.raises(ollama.ResponseError) as missing:
            gone()
        assert missing.value.status_code == 404
