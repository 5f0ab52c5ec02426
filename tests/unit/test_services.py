"""The composition root: a start that fails part-way closes what it opened; the CLI's openers;
the factory table that gives each deployment kind what runs or reaches it."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from ml_offload.backends.command import CommandProcess
from ml_offload.backends.http import Upstream
from ml_offload.backends.llamacpp import LlamaCppProcess
from ml_offload.backends.ollama import OllamaHeldModel
from ml_offload.backends.remote import RemoteServer
from ml_offload.config import Settings
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.errors import ConfigError
from ml_offload.security.audit import AuditLog, audit_path
from ml_offload.services import (
    PROCESS_FACTORIES,
    Services,
    open_key_store,
    open_registry,
    process_factory,
)


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {"scan_models_dir": False, **extra}
    return Settings(storage={"data_dir": tmp_path}, gpu={"monitor": "none"}, **values)  # type: ignore[arg-type]


def _leftovers(threads_before: set[threading.Thread]) -> list[str]:
    """Tasks and threads still running, and the 'Unclosed ...' reports of collected objects."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    threads = [
        t
        for t in threading.enumerate()
        if t not in threads_before and t.is_alive() and not t.name.startswith("asyncio_")
    ]  # (the loop's default executor, `asyncio_N`, is the loop's own)
    return [repr(t) for t in tasks] + [t.name for t in threads]


async def _assert_clean(threads_before: set[threading.Thread], caplog: Any) -> None:
    gc.collect()
    await asyncio.sleep(0)  # let the loop run the exception handlers of collected objects
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(timeout=5)  # a closed connection's worker thread may still be returning
    assert _leftovers(threads_before) == []
    unclosed = [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]
    assert unclosed == []


async def test_a_start_refused_by_a_busy_audit_log_closes_what_it_opened(
    tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.ERROR)
    settings = _settings(tmp_path)
    async with AuditLog(settings.security.audit, audit_path(settings)):  # another writer
        threads_before = set(threading.enumerate())
        with pytest.raises(ConfigError, match="being written by another process"):
            await Services.start(settings)
        await _assert_clean(threads_before, caplog)


async def test_an_insecure_bind_refusal_closes_what_it_opened(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.ERROR)
    settings = _settings(tmp_path, server={"host": "0.0.0.0"})
    threads_before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="allow-insecure"):
        await Services.start(settings)
    await _assert_clean(threads_before, caplog)


async def test_a_started_gateway_closes_everything(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.ERROR)
    threads_before = set(threading.enumerate())
    services = await Services.start(_settings(tmp_path))
    assert _leftovers(threads_before) != []  # the scheduler, probes and audit writer run
    await services.close()
    await _assert_clean(threads_before, caplog)


async def test_the_model_folder_watch_is_closed_with_the_gateway(
    tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.ERROR)
    threads_before = set(threading.enumerate())
    services = await Services.start(_settings(tmp_path, scan_models_dir=True, demo_model=False))
    assert (tmp_path / "models").is_dir()  # created, so it can be watched
    await services.close()
    await _assert_clean(threads_before, caplog)


async def test_a_model_folder_that_cannot_be_made_is_not_watched(
    tmp_path: Path, caplog: Any
) -> None:
    (tmp_path / "file").write_text("")
    settings = Settings(  # type: ignore[arg-type]
        storage={"data_dir": tmp_path, "models_dir": tmp_path / "file" / "models"},
        gpu={"monitor": "none"},
        demo_model=False,
    )
    services = await Services.start(settings)  # the gateway serves all the same
    await services.close()
    assert any("not watched" in r.getMessage() for r in caplog.records)


async def test_the_cli_openers_share_one_database(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with open_key_store(settings) as store:
        created = await store.create("ci")
    async with open_key_store(settings, migrate=False) as store:
        assert [k.id for k in await store.list()] == [created.key.id]
    async with open_registry(settings) as registry:
        names = {spec.name for spec in registry.all()}  # the demo model at least
        assert names and names == {spec.name for spec in await registry.stored()}


SPECS = {
    DeploymentKind.LLAMACPP: (ModelSpec("a", path=Path("/m/a.gguf")), LlamaCppProcess),
    DeploymentKind.MANAGED: (
        ModelSpec("b", kind=DeploymentKind.MANAGED, command=("vllm", "serve", "m")),
        CommandProcess,
    ),
    DeploymentKind.REMOTE: (
        ModelSpec("c", kind=DeploymentKind.REMOTE, url="http://10.0.0.5:1"),
        RemoteServer,
    ),
    DeploymentKind.OLLAMA: (
        ModelSpec("d", kind=DeploymentKind.OLLAMA, url="http://127.0.0.1:11434"),
        OllamaHeldModel,
    ),
    DeploymentKind.CLOUD: (
        ModelSpec("e", kind=DeploymentKind.CLOUD, url="https://api.deepseek.com"),
        RemoteServer,
    ),
}


def test_every_kind_has_a_factory() -> None:
    assert set(PROCESS_FACTORIES) == set(DeploymentKind) == set(SPECS)


@pytest.mark.parametrize("kind", list(DeploymentKind))
def test_the_kind_picks_the_process(kind: DeploymentKind, tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path}, engine={"kind": "llama-server"})
    make = process_factory(settings, Upstream(timeout_s=1))
    spec, expected = SPECS[kind]
    process = make(spec, lambda spec, message: None)
    assert type(process) is expected and process.spec is spec
