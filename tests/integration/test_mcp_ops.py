"""The MCP server's operator tools through the SDK's client over streamable HTTP against a real
gateway with keys: provider_test (SmolLM2, a provider refusing the key, one that is down),
security_audit, rate_limit_check from the live limiter, provider_config_validate; the audit
log's entries for tool calls; a key scoped to one model; unload_model by the admin; the
resources; notes in their own SQLite file (`mcp.knowledge_db_path`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_vllm import FakeVllm
from tests.integration.test_mcp import ADMIN, MODEL, data, http_client, text

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).parents[1] / "fixtures" / "analyzer" / "python"
PROVIDER_KEY = "sk-provider-right-1234"


@pytest.fixture
def provider() -> Iterator[FakeVllm]:
    with FakeVllm("Hello.", model="gpt-4o-mini", api_key=PROVIDER_KEY) as fake:
        yield fake


def create_key(gw: Gateway, **fields: Any) -> str:
    resp = httpx.post(
        f"{gw.url}/admin/keys", json=fields, headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


def audit_events(path: Path, tool: str) -> list[dict[str, Any]]:
    """The audit log's events for one tool's calls (the writer batches: wait for them)."""
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        events = [json.loads(line)["event"] for line in lines]
        found = [e for e in events if e.get("path") == f"/mcp/tools/{tool}"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


async def test_operator_tools(
    gateway_factory: GatewayFactory, tmp_path: Path, smollm_path: Path, provider: FakeVllm
) -> None:
    notes_db = tmp_path / "notes" / "knowledge.db"
    notes_db.parent.mkdir()
    gw = gateway_factory(
        security={"admin_key": ADMIN},
        mcp={"knowledge_db_path": str(notes_db)},
        models=[
            {
                "name": "cloud",
                "url": provider.url,
                "remote_model": "gpt-4o-mini",
                "api_key": PROVIDER_KEY,
            },
            {
                "name": "wrong-key",
                "url": provider.url,
                "remote_model": "gpt-4o-mini",
                "api_key": "sk-not-this-one-0000",
            },
            {"name": "down", "url": "http://127.0.0.1:9", "remote_model": "x"},
        ],
    )
    scoped = create_key(gw, name="scoped", models=[MODEL], rpm=50, tpm=5000)

    async with http_client(gw, scoped) as client:
        # provider_test: a one-token completion from SmolLM2, with its latency
        ok = data(await client.call_tool("provider_test", {"model": MODEL}))
        assert ok["ok"] and ok["reachable"] and ok["auth_ok"] and ok["latency_ms"] > 0
        assert [s["name"] for s in ok["steps"]] == ["model", "completion"]

        # the scoped key: other models refused, before any request leaves
        for tool, args in (
            ("infer", {"model": "cloud", "prompt": "hi", "max_tokens": 1}),
            ("model_status", {"name": "cloud"}),
            ("provider_test", {"model": "cloud"}),
        ):
            refused = await client.call_tool(tool, args)
            assert refused.is_error and "may not use model 'cloud'" in text(refused), tool

        # rate_limit_check: the live limiter's window after a completion in the same minute
        for _ in range(3):  # windows are clock minutes: again if one ended in between
            minute = int(time.time() // 60)
            args = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
            data(await client.call_tool("infer", args))
            limits = data(await client.call_tool("rate_limit_check", {}))
            if int(time.time() // 60) == minute:
                break
        assert limits["subject"].startswith("key ") and "(scoped)" in limits["subject"]
        by_what = {lim["what"]: lim for lim in limits["limits"]}
        assert by_what["requests"]["limit"] == 50 and by_what["requests"]["used"] >= 2
        assert by_what["tokens"]["limit"] == 5000
        assert 0 < by_what["tokens"]["used"] < 5000  # the completion was charged
        assert by_what["tokens"]["remaining"] == 5000 - by_what["tokens"]["used"]
        assert 0 < by_what["requests"]["reset_s"] <= 60
        other = await client.call_tool("rate_limit_check", {"key": "someone-else"})
        assert other.is_error and "admin key" in text(other)

        # security_audit needs an admin key
        refused = await client.call_tool("security_audit", {})
        assert refused.is_error and "admin key" in text(refused)

        # provider_config_validate: errors with the field path and the fix
        bad = data(
            await client.call_tool(
                "provider_config_validate",
                {"snippet": 'name = "m"\nurl = "http://x"\nbackend = "olama"\nttl = 30'},
            )
        )
        assert not bad["valid"]
        assert {e["path"] for e in bad["errors"]} == {"backend", "ttl"}
        ttl = next(e for e in bad["errors"] if e["path"] == "ttl")
        assert "did you mean 'ttl_s'" in ttl["fix"]
        good = data(
            await client.call_tool(
                "provider_config_validate",
                {"snippet": json.dumps([{"name": "a", "url": "http://127.0.0.1:1"}])},
            )
        )
        assert good["valid"] and good["models"] == ["a"]

        # analyze_codebase reads the gateway's disk: admin keys or `tool:analyze` only
        refused = await client.call_tool("analyze_codebase", {"path": str(FIXTURE)})
        assert refused.is_error and "tool:analyze" in text(refused)

        # notes go to their own SQLite file
        data(await client.call_tool("save_knowledge", {"title": "own file", "content": "x"}))

    with sqlite3.connect(notes_db) as con:
        assert [r[0] for r in con.execute("SELECT title FROM knowledge_notes")] == ["own file"]

    async with http_client(gw, ADMIN) as admin:
        wrong = data(await admin.call_tool("provider_test", {"model": "wrong-key"}))
        assert not wrong["ok"] and wrong["reachable"] and wrong["auth_ok"] is False
        assert "api_key" in wrong["error"]
        down = data(await admin.call_tool("provider_test", {"model": "down"}))
        assert not down["ok"] and down["reachable"] is False and "cannot reach" in down["error"]
        cloud = data(await admin.call_tool("provider_test", {"model": "cloud"}))
        assert cloud["ok"] and cloud["auth_ok"]

        report = data(await admin.call_tool("analyze_codebase", {"path": str(FIXTURE)}))
        assert report["schema_version"] == 1 and report["totals"]["files"] >= 3
        assert report["graph"]["edges"] and report["graph"]["cycles"]  # the fixture has one

        audit = data(await admin.call_tool("security_audit", {}))
        assert set(audit["counts"]) == {"high", "medium", "low", "info"}
        checks = {f["check"] for group in audit["findings"].values() for f in group}
        assert "key-without-expiry" in checks  # the scoped key never expires
        assert "key-without-expiry" in [f["check"] for f in audit["findings"]["low"]]

        named = data(await admin.call_tool("rate_limit_check", {"key": "scoped"}))
        assert "(scoped)" in named["subject"]

        # resources, and unload_model by the admin
        models = json.loads((await admin.read_resource("mlo://models")).contents[0].text)
        assert MODEL in [m["id"] for m in models["data"]]
        vram = json.loads((await admin.read_resource("mlo://vram")).contents[0].text)
        assert "devices" in vram
        assert data(await admin.call_tool("model_status", {"name": MODEL}))["state"] == "ready"
        unloaded = data(await admin.call_tool("unload_model", {"name": MODEL}))
        assert unloaded["state"] == "stopped"

    # every tool call audited: the tool, the arguments' hash, the outcome
    log = gw.log.parent / "data" / "audit" / "audit.jsonl"
    probes = audit_events(log, "provider_test")
    assert {e["status"] for e in probes} >= {200, 403}
    assert all(len(e["prompt_sha256"]) == 64 and "prompt" not in e for e in probes)
    assert probes[0]["key_name"] == "scoped"
    denied = [e for e in audit_events(log, "security_audit") if e["status"] == 403]
    assert denied and denied[0]["error"] == "permission_denied"
    assert [e["key_name"] for e in audit_events(log, "unload_model")] == ["admin"]
