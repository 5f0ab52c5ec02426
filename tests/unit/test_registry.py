"""The model registry over real GGUF files in a temporary model folder and a SQLite database."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import sqlalchemy as sa

from ml_offload.config import Settings
from ml_offload.domain import DeploymentKind
from ml_offload.errors import ModelNotFound
from ml_offload.gguf import demo_model_path
from ml_offload.registry import DEMO_MODEL_NAME, ENV_MODEL_NAME, Changes, ModelRegistry
from ml_offload.storage import Database, ModelRepository

LEGACY_ENV = ("LLAMACPP_URL", "LLM_PARALLEL", "TF_MODELS", "HF_TOKEN", "MLO_CONFIG")


def tiny_gguf(path: Path, *, context_length: int = 2048, shards: int = 1) -> Path:
    """A 64-parameter llama GGUF; with shards > 1, llama.cpp's split files, one tensor each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_tensors = 2 if shards == 1 else shards
    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=0 if shards == 1 else 1)
    writer.add_context_length(context_length)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_embedding_length(8)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for i in range(n_tensors):
        writer.add_tensor(f"t{i}", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*LEGACY_ENV, *(n for n in os.environ if n.startswith("MLO_"))]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    yield database
    await database.close()


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "storage": {"data_dir": models_dir.parent / "data", "models_dir": models_dir},
        "demo_model": False,
    }
    values.update(overrides)
    return Settings(**values)


async def refreshed(settings: Settings, db: Database) -> ModelRegistry:
    registry = ModelRegistry(settings, ModelRepository(db, owner="node-a"))
    await registry.refresh()
    return registry


async def test_all_sources(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "chat-model.gguf", context_length=32768)
    tiny_gguf(models_dir / "Tiny-Q8.gguf")
    settings = make_settings(
        models_dir,
        models=[
            {
                "name": "chat",
                "path": "chat-model.gguf",
                "aliases": ["c", "Chat-Latest"],
                "parallel": 2,
                "ttl_s": 0,
                "pinned": True,
                "extra_args": ["--flash-attn", "on"],
            },
            {"name": "remote", "url": "http://10.0.0.5:8080", "ctx_size": 16384},
        ],
        llamacpp_url="http://127.0.0.1:8080",
        demo_model=True,
    )
    registry = await refreshed(settings, db)
    demo = demo_model_path()
    expected = ["chat", ENV_MODEL_NAME, "remote", "tiny-q8"]
    assert [m.name for m in registry.all()] == sorted(expected + ([DEMO_MODEL_NAME] * bool(demo)))

    chat = registry.resolve("chat")
    assert chat.path == models_dir / "chat-model.gguf"
    assert (chat.source, chat.parallel, chat.ttl_s, chat.pinned) == ("config", 2, 0.0, True)
    assert chat.extra_args == ("--flash-attn", "on")
    assert chat.ctx_size == 4096  # the default, below the trained 32768
    assert chat.info is not None and chat.info.context_length == 32768
    assert registry.resolve("c") is chat
    assert registry.resolve("chat-latest") is chat  # case-insensitive after an exact miss

    remote = registry.resolve("remote")
    assert (remote.url, remote.ctx_size, remote.info, remote.is_local) == (
        "http://10.0.0.5:8080",
        16384,
        None,
        False,
    )
    env = registry.resolve(ENV_MODEL_NAME)
    assert (env.url, env.source, env.parallel) == ("http://127.0.0.1:8080", "env", 8)

    scanned = registry.resolve("tiny-q8")
    assert (scanned.source, scanned.ctx_size, scanned.ttl_s) == ("scan", 2048, 300.0)
    assert scanned.info is not None and scanned.info.quantization == "F32"

    if demo is not None:
        smol = registry.resolve(DEMO_MODEL_NAME)
        assert (smol.source, smol.path, smol.ctx_size) == ("demo", demo, 4096)
        assert smol.info is not None and smol.info.block_count == 30


async def test_registry_is_persisted(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "a.gguf")
    settings = make_settings(models_dir, models=[{"name": "r", "url": "http://h:1"}])
    registry = await refreshed(settings, db)
    # Routing fields (backend, fallbacks, redaction) come from config at each start, not the row.
    runtime = {"backend": "openai", "remote_model": None, "fallbacks": (), "redact": False}
    runtime |= {"max_concurrency": None}
    expected = [dataclasses.replace(s, **runtime) for s in registry.all()]
    assert await ModelRepository(db, owner="node-a").list_all() == expected


async def test_unknown_model_lists_available_names(models_dir: Path, db: Database) -> None:
    for i in range(12):
        tiny_gguf(models_dir / f"m{i:02d}.gguf")
    registry = await refreshed(make_settings(models_dir), db)
    with pytest.raises(ModelNotFound) as caught:
        registry.resolve("nope")
    names = ", ".join(f"m{i:02d}" for i in range(10))
    assert caught.value.message == (
        f"model 'nope' not found; available: {names} and 2 more (see GET /v1/models)"
    )
    assert (caught.value.status, caught.value.param) == (404, "model")


async def test_no_models_says_how_to_add_one(models_dir: Path, db: Database) -> None:
    registry = await refreshed(make_settings(models_dir), db)
    with pytest.raises(ModelNotFound, match=re.escape(f"put .gguf files in {models_dir}")):
        registry.resolve("x")


def test_resolve_before_refresh(models_dir: Path, db: Database) -> None:
    registry = ModelRegistry(make_settings(models_dir), ModelRepository(db, owner="node-a"))
    with pytest.raises(ModelNotFound, match="no models are registered"):
        registry.resolve("x")


async def test_config_name_wins_over_a_scanned_file(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "Tiny.gguf")
    other = tiny_gguf(models_dir.parent / "elsewhere" / "other.gguf")
    settings = make_settings(models_dir, models=[{"name": "tiny", "path": str(other)}])
    registry = await refreshed(settings, db)
    assert [m.name for m in registry.all()] == ["tiny"]
    assert registry.resolve("tiny").path == other


async def test_config_file_is_not_registered_twice(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "sub" / "file.gguf")
    settings = make_settings(models_dir, models=[{"name": "named", "path": "sub/file.gguf"}])
    registry = await refreshed(settings, db)
    assert [m.name for m in registry.all()] == ["named"]


async def test_scan_finds_subfolders_skips_hidden_projectors_and_shards(
    models_dir: Path, db: Database
) -> None:
    tiny_gguf(models_dir / "org" / "Repo-7B.gguf")
    tiny_gguf(models_dir / ".cache" / "partial.gguf")
    tiny_gguf(models_dir / "mmproj-model-f16.gguf")
    tiny_gguf(models_dir / "big.gguf", shards=3)  # written as big-0000{1,2,3}-of-00003.gguf
    registry = await refreshed(make_settings(models_dir), db)
    assert [m.name for m in registry.all()] == ["big", "repo-7b"]
    big = registry.resolve("big")
    assert big.path == models_dir / "big-00001-of-00003.gguf"
    assert big.info is not None and big.info.parameters == 3 * 32


async def test_scan_can_be_disabled(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "a.gguf")
    registry = await refreshed(make_settings(models_dir, scan_models_dir=False), db)
    assert registry.all() == []


async def test_env_model_does_not_replace_a_config_model(models_dir: Path, db: Database) -> None:
    settings = make_settings(
        models_dir,
        models=[{"name": ENV_MODEL_NAME, "url": "http://configured:1"}],
        llamacpp_url="http://from-env:2",
    )
    registry = await refreshed(settings, db)
    assert registry.resolve(ENV_MODEL_NAME).url == "http://configured:1"


async def test_broken_file_is_skipped_and_logged(
    models_dir: Path, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    tiny_gguf(models_dir / "good.gguf")
    (models_dir / "broken.gguf").write_text("not a model")
    cut = tiny_gguf(models_dir / "cut.gguf")
    cut.write_bytes(cut.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="ml_offload.registry"):
        registry = await refreshed(make_settings(models_dir), db)
    assert [m.name for m in registry.all()] == ["good"]
    assert "broken.gguf: not a GGUF file" in caplog.text
    assert "cut.gguf: truncated GGUF file" in caplog.text


async def test_config_model_with_missing_file_is_kept_without_metadata(
    models_dir: Path, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(models_dir, models=[{"name": "later", "path": "later.gguf"}])
    with caplog.at_level(logging.WARNING, logger="ml_offload.registry"):
        registry = await refreshed(settings, db)
    later = registry.resolve("later")
    assert (later.info, later.path) == (None, models_dir / "later.gguf")
    assert "later.gguf" in caplog.text


async def test_rescan_reuses_metadata_of_unchanged_files(models_dir: Path, db: Database) -> None:
    path = tiny_gguf(models_dir / "a.gguf")
    registry = await refreshed(make_settings(models_dir), db)
    info = registry.resolve("a").info
    assert info is not None
    # Same size and mtime, garbage content: only the cache can still describe it.
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    await registry.refresh()
    assert registry.resolve("a").info == info
    # A new mtime means the file is read again, and now it is broken.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    await registry.refresh()
    assert registry.all() == []


async def test_removed_file_disappears(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "a.gguf")
    gone = tiny_gguf(models_dir / "b.gguf")
    registry = await refreshed(make_settings(models_dir), db)
    assert [m.name for m in registry.all()] == ["a", "b"]
    gone.unlink()
    await registry.refresh()
    assert [m.name for m in registry.all()] == ["a"]
    with pytest.raises(ModelNotFound, match="available: a "):
        registry.resolve("b")
    assert [m.name for m in await ModelRepository(db, owner="node-a").list_all()] == ["a"]


async def test_database_outage_does_not_stop_the_registry(
    models_dir: Path, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    tiny_gguf(models_dir / "a.gguf")
    async with db.begin() as conn:
        await conn.execute(sa.text("DROP TABLE models"))
    with caplog.at_level(logging.WARNING, logger="ml_offload.registry"):
        registry = await refreshed(make_settings(models_dir), db)
    assert registry.resolve("a").info is not None
    assert "registry not saved" in caplog.text


async def test_the_registry_names_each_deployments_kind(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "cfg.gguf")
    tiny_gguf(models_dir / "local.gguf")
    settings = make_settings(
        models_dir,
        models=[
            {"name": "file", "path": "cfg.gguf", "gpu_layers": 3},  # the old key still works
            {"name": "lan", "url": "http://10.0.0.5:8080", "backend": "vllm"},
            {"name": "held", "url": "http://127.0.0.1:11434", "backend": "ollama"},
            {"name": "ds", "backend": "deepseek"},
            {"name": "ours", "backend": "vllm", "serve": {"model": "org/m"}},
        ],
        llamacpp_url="http://127.0.0.1:8080",
    )
    registry = await refreshed(settings, db)
    kinds = {spec.name: spec.kind for spec in registry.all()}
    assert kinds == {
        "file": DeploymentKind.LLAMACPP,
        "lan": DeploymentKind.REMOTE,
        "held": DeploymentKind.OLLAMA,
        "ds": DeploymentKind.CLOUD,
        "ours": DeploymentKind.MANAGED,
        ENV_MODEL_NAME: DeploymentKind.REMOTE,
        "local": DeploymentKind.LLAMACPP,
    }
    assert registry.resolve("file").max_gpu_layers == 3
    assert registry.resolve("local").max_gpu_layers is None  # no cap: as many as fit
    stored = {spec.name: spec.kind for spec in await ModelRepository(db, owner="node-a").list_all()}
    assert stored == kinds


@pytest.mark.parametrize(
    ("url", "redact"),
    [
        ("http://gpu.example.com:8080", True),
        ("http://10.0.0.5:8080", True),
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("http://[::1]:8080", False),
    ],
)
async def test_llamacpp_url_is_redacted_by_the_same_rule(
    models_dir: Path, db: Database, url: str, redact: bool
) -> None:
    settings = make_settings(models_dir, llamacpp_url=url, models=[{"name": "same", "url": url}])
    registry = await refreshed(settings, db)
    assert registry.resolve(ENV_MODEL_NAME).redact is redact
    assert registry.resolve("same").redact is redact  # one rule for every way it is given


async def test_a_cloud_providers_default_url_is_redacted(models_dir: Path, db: Database) -> None:
    settings = make_settings(
        models_dir,
        models=[
            {"name": "c", "backend": "anthropic"},
            {"name": "off", "backend": "deepseek", "redact": False},
        ],
    )
    registry = await refreshed(settings, db)
    assert (registry.resolve("c").redact, registry.resolve("off").redact) == (True, False)


async def test_provider_keys_go_to_provider_deployments_only(
    models_dir: Path,
    db: Database,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tiny_gguf(models_dir / "cfg.gguf")
    tiny_gguf(models_dir / "local.gguf")
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    settings = make_settings(
        models_dir,
        models=[
            {"name": "mine", "path": "cfg.gguf"},
            {"name": "lan", "url": "http://10.0.0.5:8080"},
            {"name": "oa", "backend": "openai", "api_key_env": "OPENAI_API_KEY"},
            {"name": "ds", "backend": "deepseek"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="ml_offload.registry"):
        registry = await refreshed(settings, db)
    assert registry.resolve("mine").api_key is None  # a local engine gets no provider key
    assert registry.resolve("local").api_key is None
    assert registry.resolve("lan").api_key is None
    oa_key = registry.resolve("oa").api_key
    assert oa_key is not None and oa_key.get_secret_value() == "sk-openai"
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["model 'ds': environment variable DEEPSEEK_API_KEY is not set; no API key"]


async def test_remote_deployments_have_no_slot_limit_unless_configured(
    models_dir: Path, db: Database
) -> None:
    tiny_gguf(models_dir / "cfg.gguf")
    tiny_gguf(models_dir / "local.gguf")
    settings = make_settings(
        models_dir,
        models=[
            {"name": "lan", "url": "http://10.0.0.5:8080"},
            {"name": "ds", "backend": "deepseek"},
            {"name": "capped", "url": "http://10.0.0.6:8080", "max_concurrency": 3},
            {"name": "mine", "path": "cfg.gguf", "parallel": 2},
        ],
        llamacpp_url="http://127.0.0.1:8080",
    )
    registry = await refreshed(settings, db)
    limits = {spec.name: spec.concurrency for spec in registry.all()}
    assert limits == {
        "lan": None,
        "ds": None,
        ENV_MODEL_NAME: None,
        "capped": 3,
        "mine": 2,  # our engine's slots
        "local": 8,  # engine.default_parallel
    }


async def test_a_refresh_says_what_changed(models_dir: Path, db: Database) -> None:
    tiny_gguf(models_dir / "a.gguf")
    changed = tiny_gguf(models_dir / "b.gguf")
    registry = ModelRegistry(make_settings(models_dir), ModelRepository(db, owner="node-a"))
    first = await registry.refresh()
    assert (first.added, first.removed, first.changed, first.total) == (("a", "b"), (), (), 2)
    assert await registry.refresh() == Changes(total=2)
    (models_dir / "a.gguf").unlink()
    tiny_gguf(models_dir / "c.gguf")
    tiny_gguf(changed, context_length=4096)
    after = await registry.refresh()
    assert (after.added, after.removed, after.changed, after.total) == (("c",), ("a",), ("b",), 2)
    assert "added c; removed a; changed b" in after.summary()


async def test_gateways_sharing_a_registry_keep_each_others_models(
    tmp_path: Path, db: Database
) -> None:
    """Two gateways on one database, each with its own folder: neither's start deletes the
    other's models."""
    here, there = tmp_path / "here", tmp_path / "there"
    tiny_gguf(here / "a.gguf")
    tiny_gguf(there / "b.gguf")
    await refreshed(make_settings(here), db)
    other = ModelRegistry(make_settings(there), ModelRepository(db, owner="node-b"))
    await other.refresh()
    assert [m.name for m in await ModelRepository(db, owner="node-a").list_all()] == ["a"]
    assert [m.name for m in await other.stored()] == ["b"]


def test_the_owner_is_the_host_unless_named(models_dir: Path) -> None:
    assert make_settings(models_dir).storage.node == socket.gethostname()
    named = make_settings(models_dir, storage={"data_dir": models_dir, "node_name": "gpu-1"})
    assert named.storage.node == "gpu-1"


async def test_glob_aliases_route_the_names_clients_insist_on(
    models_dir: Path, db: Database
) -> None:
    tiny_gguf(models_dir / "coder.gguf")
    settings = make_settings(
        models_dir,
        models=[
            {"name": "coder", "path": "coder.gguf", "aliases": ["claude-*", "gpt-4?"]},
            {"name": "remote", "url": "http://10.0.0.5:8080", "aliases": ["gpt-*", "claude-x"]},
        ],
    )
    registry = await refreshed(settings, db)
    assert registry.resolve("claude-sonnet-4-5").name == "coder"
    assert registry.resolve("claude-x").name == "remote"  # an exact alias before any pattern
    assert registry.resolve("gpt-4o").name == "coder"  # the first pattern in config order
    assert registry.resolve("gpt-5-codex").name == "remote"
    with pytest.raises(ModelNotFound):
        registry.resolve("Claude-Sonnet")  # patterns match case-sensitively
