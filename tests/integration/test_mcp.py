"""The MCP server through the SDK's own client: streamable HTTP at the gateway's `/mcp` with
keys, and stdio (a real `mlo mcp` subprocess). SmolLM2 answers `infer` and sessions."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.integration.conftest import Gateway, GatewayFactory, write_config

pytestmark = pytest.mark.integration
ADMIN = "admin-" + "y" * 24
MODEL = "smollm2-135m"
TOOLS = {
    "list_models",
    "model_status",
    "vram_status",
    "load_model",
    "unload_model",
    "infer",
    "save_knowledge",
    "search_knowledge",
    "list_knowledge",
    "delete_knowledge",
    "create_session",
    "session_message",
    "session_history",
    "build_and_test",
}


@asynccontextmanager
async def http_client(gw: Gateway, key: str) -> AsyncIterator[Client]:
    headers = {"authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(
            streamable_http_client(f"{gw.url}/mcp", http_client=http), read_timeout_seconds=120
        ) as client,
    ):
        yield client


def data(result: Any) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        sc = result.structured_content
        return sc.get("result", sc) if isinstance(sc, dict) and set(sc) == {"result"} else sc
    return json.loads(result.content[0].text)


def text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def settings_extra(tmp: Path) -> dict[str, Any]:
    ws = tmp / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    return {
        "storage": {"database_url": f"sqlite+aiosqlite:///{tmp / 'shared' / 'registry.db'}"},
        "security": {"admin_key": ADMIN},
        "mcp": {
            "build_timeout_s": 3.0,
            "workspaces": {
                "demo": {
                    "path": str(ws),
                    "commands": {
                        "test": [sys.executable, "-c", "print('all 3 tests passed')"],
                        "hang": ["sh", "-c", "echo started; sleep 60"],
                    },
                }
            },
        },
    }


def user_key(gw: Gateway) -> str:
    resp = httpx.post(
        f"{gw.url}/admin/keys",
        json={"name": "dev"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


async def test_a_tool_call_counts_once_against_the_callers_requests_per_minute(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """A platform tool reaches the gateway's own routes with the caller's key; the caller's
    `/mcp` request was charged when it came in, so the tool's inner request is not again."""
    gw = gateway_factory(**settings_extra(tmp_path))
    made = httpx.post(
        f"{gw.url}/admin/keys",
        json={"name": "counted", "rpm": 1000},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]

    def used() -> int:  # (this read is a request too, charged before it answers)
        limits = httpx.get(f"{gw.url}/limits", headers={"authorization": f"Bearer {key}"})
        return next(
            lim["used"]
            for lim in limits.json()["limits"]
            if lim["what"] == "requests" and lim["subject"].startswith("key")
        )

    async with http_client(gw, key) as client:
        assert MODEL in [m["id"] for m in data(await client.call_tool("list_models", {}))]
        before = used()
        assert MODEL in [m["id"] for m in data(await client.call_tool("list_models", {}))]
        after = used()
    assert after - before == 2  # the tools/call and the second read, not the tool's own /models


async def test_tools_over_http_with_keys(
    gateway_factory: GatewayFactory, tmp_path: Path, smollm_path: Path
) -> None:
    extra = settings_extra(tmp_path)
    gw = gateway_factory(**extra)
    key = user_key(gw)
    assert httpx.post(f"{gw.url}/mcp", json={}).status_code == 401  # the gateway's key check

    async with http_client(gw, key) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) >= TOOLS
        assert tools["search_knowledge"].input_schema["required"] == ["query"]

        # knowledge: saved, found by ranked search, listed, deleted
        saved = data(
            await client.call_tool(
                "save_knowledge",
                {"title": "Eviction policy", "content": "LRU with a TTL", "tags": ["design"]},
            )
        )
        data(
            await client.call_tool(
                "save_knowledge",
                {"title": "Deploy", "content": "the eviction runs nightly", "tags": ["ops"]},
            )
        )
        hits = data(await client.call_tool("search_knowledge", {"query": "eviction"}))
        assert [h["note"]["title"] for h in hits] == ["Eviction policy", "Deploy"]
        assert len(data(await client.call_tool("list_knowledge", {"tag": "ops"}))) == 1
        data(await client.call_tool("delete_knowledge", {"note_id": saved["id"]}))
        gone = await client.call_tool("delete_knowledge", {"note_id": saved["id"]})
        assert gone.is_error and "list_knowledge" in text(gone)

        # platform tools with the caller's key; admin tools refused to a plain key
        models = data(await client.call_tool("list_models", {}))
        assert MODEL in [m["id"] for m in models]
        assert data(await client.call_tool("model_status", {"name": MODEL}))["id"] == MODEL
        assert "devices" in data(await client.call_tool("vram_status", {}))
        refused = await client.call_tool("load_model", {"name": MODEL})
        assert refused.is_error and "admin key" in text(refused)
        answer = data(
            await client.call_tool(
                "infer", {"model": MODEL, "prompt": "Say hello.", "max_tokens": 8}
            )
        )
        assert answer["text"] and answer["usage"]["completion_tokens"] > 0

        # bad arguments: the protocol's error, naming the field
        with pytest.raises(MCPError, match="query"):
            await client.call_tool("search_knowledge", {"limit": 5})

        # build_and_test: a real command, a timeout, a workspace not on the allow-list
        progress: list[float] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(p)

        ok = data(await client.call_tool("build_and_test", {"workspace": "demo"}))
        assert ok["exit_code"] == 0 and "all 3 tests passed" in ok["output_tail"]
        hang = await client.call_tool(
            "build_and_test",
            {"workspace": "demo", "command": "hang"},
            progress_callback=on_progress,
        )
        assert hang.is_error and "timed out" in text(hang) and "started" in text(hang)
        assert progress  # notifications while it ran
        other = await client.call_tool("build_and_test", {"workspace": "/etc"})
        assert other.is_error and "allow-list" in text(other)

        # a session, continued after the gateway restarts (same database)
        data(await client.call_tool("create_session", {"name": "s1", "model": MODEL}))
        data(
            await client.call_tool(
                "session_message", {"name": "s1", "message": "My name is Ada.", "max_tokens": 8}
            )
        )

    async with http_client(gw, ADMIN) as admin:
        loaded = await admin.call_tool("load_model", {"name": MODEL})
        assert not loaded.is_error, text(loaded)

    from tests.integration.conftest import stop

    stop(gw)
    gw2 = gateway_factory(**extra)
    async with http_client(gw2, key) as client:
        reply = data(
            await client.call_tool(
                "session_message", {"name": "s1", "message": "What is my name?", "max_tokens": 8}
            )
        )
        assert reply["turns"] == 2
        history = data(await client.call_tool("session_history", {"name": "s1"}))
        assert [m["role"] for m in history] == ["user", "assistant"] * 2
        assert history[0]["content"] == "My name is Ada."


async def test_stdio_subprocess(
    gateway_factory: GatewayFactory, tmp_path: Path, smollm_path: Path
) -> None:
    extra = settings_extra(tmp_path)
    extra["security"] = {"admin_key": ADMIN}
    gw = gateway_factory(**extra)
    cfg = tmp_path / "client.toml"
    write_config(cfg, tmp_path / "client-data", {"storage": extra["storage"]})
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "ml_offload.cli.main", "mcp", "--config", str(cfg), "--url", gw.url],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MLO_")},
            "MLO_API_KEY": ADMIN,
        },
    )
    async with Client(params, read_timeout_seconds=120) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= TOOLS
        data(await client.call_tool("save_knowledge", {"title": "stdio note", "content": "x"}))
        hits = data(await client.call_tool("search_knowledge", {"query": "stdio"}))
        assert hits[0]["note"]["title"] == "stdio note"
        answer = data(
            await client.call_tool("infer", {"model": MODEL, "prompt": "Hi", "max_tokens": 4})
        )
        assert answer["text"]
        prompt = await client.get_prompt("code_review", {"code": "x = 1"})
        assert "x = 1" in prompt.messages[0].content.text

    from tests.integration.conftest import stop

    stop(gw)  # knowledge needs no gateway; model tools say it is down
    async with Client(params, read_timeout_seconds=120) as client:
        assert data(await client.call_tool("list_knowledge", {}))[0]["title"] == "stdio note"
        down = await client.call_tool("list_models", {})
        assert down.is_error and "mlo serve" in text(down)
