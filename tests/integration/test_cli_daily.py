"""Daily use (issue 14): `mlo --version`, `mlo ps --json` with the time left before the idle
unload, the original stack's command names, `/docs` off by default — through the real CLI and a real
gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ml_offload import __version__
from ml_offload.cli.commands import ALIASES
from tests.integration.conftest import MODEL, Gateway

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run(argv0: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`argv0` run as a console script would be (the alias is read from argv[0])."""
    argv0.write_text("from ml_offload.cli.main import alias_main\nalias_main()\n")
    return subprocess.run(
        [sys.executable, str(argv0), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def mlo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_version() -> None:
    done = mlo("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"mlo {__version__}"


def test_aliases_are_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {n for n, target in scripts.items() if target.endswith(":alias_main")} == set(ALIASES)


def test_ps_json_ttl_and_aliases(gateway: Gateway, tmp_path: Path) -> None:
    gateway.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    done = mlo("ps", "--json", "--url", gateway.url)
    (view,) = [m for m in json.loads(done.stdout) if m["id"] == MODEL]
    assert view["state"] == "ready" and 0 < view["ttl_left_s"] <= view["ttl_s"]
    table = mlo("ps", "--url", gateway.url).stdout
    assert "TTL" in table and MODEL in table

    status = run(tmp_path / "ollama-status", "--url", gateway.url)
    assert status.returncode == 0 and MODEL in status.stdout and "TTL" in status.stdout
    unloaded = run(tmp_path / "ollama-unload", "--url", gateway.url)
    assert unloaded.returncode == 0 and "unloaded 1 model" in unloaded.stdout
    assert gateway.model()["state"] == "stopped"
    listed = run(tmp_path / "ml-ls", "--json")
    assert listed.returncode == 0 and "models" in json.loads(listed.stdout)


def test_docs_off_by_default(gateway: Gateway) -> None:
    """Swagger UI loads its scripts from a CDN: off unless `server.docs`; the schema stays."""
    assert gateway.http.get("/docs").status_code == 404
    assert gateway.http.get("/openapi.json").status_code == 200
