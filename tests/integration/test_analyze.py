"""The code analyzer with the real SmolLM2 model through a real gateway: `mlo analyze` over
HTTP (the OpenAI API, the gateway's routing), its cache, and `POST /analyze` in-process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_offload.security.keys import KeyStore
from ml_offload.storage.db import Database
from ml_offload.storage.keys_repo import KeyRepository
from tests.integration.conftest import MODEL, Gateway, GatewayFactory

# The model's calls share 2 cores with the rest of the suite: minutes, not the default 180 s.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FIXTURES = Path(__file__).parents[1] / "fixtures" / "analyzer"


def _mlo(args: list[str], data_home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLO_")}
    env["XDG_DATA_HOME"] = str(data_home)  # the summary cache
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", "analyze", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_report_explained_by_smollm_then_cached(gateway: Gateway, tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    args = [str(FIXTURES / "python"), "--url", gateway.url, "--model", MODEL]
    args += ["--max-llm-files", "2", "--out", str(report)]
    first = _mlo(args, tmp_path / "data")
    assert first.returncode == 0, first.stderr
    assert f"{MODEL}: 2 modules explained" in first.stderr
    assert "0 cached" in first.stderr
    text = report.read_text()
    assert "## Architecture" in text
    assert f"_Explained by `{MODEL}`._" in text
    assert text.count("### `src/shop/") == 2  # the two most imported modules
    architecture = _architecture(text)
    assert len(architecture.split(f"`{MODEL}`._", 1)[1].strip()) > 20  # the model said something
    again = _mlo(args, tmp_path / "data")  # same files: every summary from the cache
    assert again.returncode == 0, again.stderr
    assert "0 calls, 3 cached" in again.stderr
    assert _architecture(report.read_text()) == _architecture(text)


def _architecture(report: str) -> str:
    return report.split("## Architecture", 1)[1].split("## Dependency graph", 1)[0]


def test_html_report_through_the_gateway(gateway: Gateway, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    args = [str(FIXTURES / "nix"), "--url", gateway.url, "--max-llm-files", "1", "-o", str(out)]
    done = _mlo(args, tmp_path / "data")  # no --model: the gateway's first model
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert "<svg" in page and "modules/service.nix" in page
    assert "http" not in page.split("<svg", 1)[0].replace(
        "http://www.w3.org", ""
    )  # nothing fetched
    assert f"Explained by {MODEL}" in page


def test_post_analyze_in_process(gateway: Gateway, tmp_path: Path) -> None:
    body = {"path": str(FIXTURES / "rust"), "model": MODEL, "max_llm_files": 1}
    resp = gateway.http.post("/analyze", json=body, timeout=600)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["schema_version"] == 1
    assert ["core/src/model.rs", "core/src/store/mod.rs"] in data["graph"]["cycles"]
    summaries = data["summaries"]
    assert summaries["model"] == MODEL
    assert len(summaries["modules"]) == 1
    assert summaries["architecture"]
    md = gateway.http.post("/analyze", json={**body, "llm": False, "format": "markdown"})
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith("# Code analysis of")


def test_post_analyze_bad_input(gateway: Gateway, tmp_path: Path) -> None:
    missing = gateway.http.post("/analyze", json={"path": str(tmp_path / "nope"), "llm": False})
    assert missing.status_code == 400
    assert "no such folder" in missing.json()["error"]["message"]
    extra = gateway.http.post("/analyze", json={"path": ".", "depth": 3})
    assert extra.status_code == 400
    assert extra.json()["error"]["param"] == "depth"
    lang = gateway.http.post("/analyze", json={"path": ".", "languages": ["cobol"]})
    assert lang.status_code == 400 and "unknown language" in lang.json()["error"]["message"]


def _key(db_url: str, name: str, models: list[str]) -> str:
    async def run() -> str:
        db = await Database.open(db_url)
        try:
            return (await KeyStore(KeyRepository(db)).create(name, models=models)).secret
        finally:
            await db.close()

    return asyncio.run(run())


def test_post_analyze_needs_admin_or_the_scope(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    plain = _key(db_url, "plain", [MODEL])
    scoped = _key(db_url, "analyst", ["tool:analyze"])
    gw = gateway_factory(storage={"database_url": db_url}, security={"audit": {"enabled": False}})
    body = {"path": str(FIXTURES / "typescript"), "llm": False}
    assert gw.http.post("/analyze", json=body).status_code == 401
    gw.use_key(plain)
    refused = gw.http.post("/analyze", json=body)
    assert refused.status_code == 403
    assert "tool:analyze" in refused.json()["error"]["message"]
    gw.use_key(scoped)
    allowed = gw.http.post("/analyze", json=body)
    assert allowed.status_code == 200, allowed.text
    assert json.loads(allowed.text)["totals"]["files"] == 7
    # its explanations need the model in its scope too
    with_model = gw.http.post("/analyze", json={**body, "llm": True, "model": MODEL})
    assert with_model.status_code == 403
    assert "may not use model" in with_model.json()["error"]["message"]
