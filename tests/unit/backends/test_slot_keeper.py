"""Which slot a conversation is sent to, and saves and restores that fail without failing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from ml_offload.backends.base import Launch
from ml_offload.backends.engine_child import build_params
from ml_offload.backends.http import Upstream
from ml_offload.backends.llamacpp import engine_config, server_argv
from ml_offload.backends.slot_files import SlotBounds
from ml_offload.backends.slot_keeper import ConversationSlots, SlotKeeper, with_slot
from ml_offload.config import EngineSettings
from ml_offload.domain import DeploymentKind, ModelSpec

URL = "http://127.0.0.1:9"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(timeout_s=2)
    await client.start()
    yield client
    await client.close()


def _slots(tmp_path: Path, upstream: Upstream, enabled: bool = True) -> ConversationSlots:
    return ConversationSlots(tmp_path / "slots", SlotBounds(10**6, 60), upstream, enabled)


def _keeper(tmp_path: Path, upstream: Upstream, parallel: int = 2) -> SlotKeeper:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF")
    keeper = _slots(tmp_path, upstream).keeper(ModelSpec("m", path=weights, parallel=parallel))
    assert keeper is not None
    return keeper


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


async def test_a_conversation_keeps_its_slot_and_new_ones_take_the_free_or_oldest(
    tmp_path: Path, upstream: Upstream
) -> None:
    keeper = _keeper(tmp_path, upstream)
    a = await keeper.pin(URL, "a")
    assert await keeper.pin(URL, "a") is None  # the same conversation runs already
    b = await keeper.pin(URL, "b")
    assert {a, b} == {0, 1} and await keeper.pin(URL, "c") is None  # every slot busy
    keeper.unpin(a)  # type: ignore[arg-type]
    keeper.unpin(b)  # type: ignore[arg-type]
    assert await keeper.pin(URL, "a") == a  # where its cache is
    keeper.unpin(a)  # type: ignore[arg-type]
    assert await keeper.pin(URL, "c") == b  # b's slot was used least recently
    keeper.unpin(b)  # type: ignore[arg-type]
    assert await keeper.pin(URL, "b") == a  # b lost its slot to c
    assert await keeper.pin("http://127.0.0.1:10", "c") == 0  # a new engine holds nothing


async def test_failed_restore_and_save_are_logged_not_raised(
    tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = _keeper(tmp_path, upstream)
    dead = _closed_port_url()
    saved = keeper.files.folder / keeper.files.name("a")
    saved.write_bytes(b"slot")
    assert await keeper.pin(dead, "a") == 0  # the request still goes, to that slot
    assert not saved.exists()  # not restorable: dropped
    keeper.unpin(0)
    await keeper.save(dead)
    assert "slot restore failed" in caplog.text and "slot save failed" in caplog.text


async def test_requests_are_pinned_only_for_llama_cpp_chats_when_on(
    tmp_path: Path, upstream: Upstream
) -> None:
    slots = _slots(tmp_path, upstream)
    local = ModelSpec("m", path=tmp_path / "m.gguf")
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    assert slots.key(local, chat, None) is not None
    assert slots.key(local, {**chat, "id_slot": 1}, None) is None  # the caller chose
    remote = ModelSpec("r", kind=DeploymentKind.REMOTE, url=URL)
    assert slots.key(remote, chat, None) is None and slots.keeper(remote) is None
    off = _slots(tmp_path, upstream, enabled=False)
    assert off.key(local, chat, None) is None and off.keeper(local) is None
    request = orjson.dumps(chat)
    async with slots.pinned(local, URL, "k", request) as body:
        assert body == request  # no keeper yet: the engine was never started
    slots.keeper(local)
    async with slots.pinned(local, URL, "k", request) as body:
        assert orjson.loads(body) == {**chat, "id_slot": 0}


def test_with_slot_adds_the_field() -> None:
    assert orjson.loads(with_slot(b'{"a":[1,{"b":2}]}', 3)) == {"a": [1, {"b": 2}], "id_slot": 3}


def test_both_launchers_get_the_model_folder(tmp_path: Path) -> None:
    spec = ModelSpec("m", path=tmp_path / "m.gguf", parallel=1)
    cfg = engine_config(spec, Launch(), EngineSettings(), tmp_path / "slots" / "m")
    argv = server_argv("llama-server", cfg, 1234)
    assert argv[argv.index("--slot-save-path") + 1] == str(tmp_path / "slots" / "m")
    # xllamacpp appends file names to the path as it is: it must end in "/"
    assert build_params(cfg).slot_save_path == f"{tmp_path}/slots/m/"
    off = engine_config(spec, Launch(), EngineSettings())  # engine.slot_save false
    assert "--slot-save-path" not in server_argv("llama-server", off, 1)
