"""Fleet membership with real gateway processes (`mlo serve --role node`) sharing one database:
SQLite, and PostgreSQL when `MLO_TEST_POSTGRES_URL` is set (`.ci/run` starts one). Each node
publishes heartbeats; `/nodes` and `mlo nodes ls` on either show both; a node killed (SIGKILL,
no goodbye) is shown gone once its lease passes; one started again takes its row back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Gateway, GatewayFactory

BACKENDS = ["sqlite", "postgresql"]
GIB = 2**30


def _database(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"
    url = os.environ.get("MLO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("MLO_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL)")
    return url


def _node(factory: GatewayFactory, db: str, name: str, gib: int) -> Gateway:
    return factory(
        demo_model=False,
        scan_models_dir=False,
        watch_models_dir=False,
        storage={"database_url": db, "node_name": name},
        fleet={"role": "node", "heartbeat_s": 0.2, "lease_s": 2.0},
        gpu={
            "monitor": "simulated",
            "simulated_devices": [{"name": "Sim", "total_bytes": gib * GIB}],
        },
    )


def _nodes(gw: Gateway, names: set[str]) -> dict[str, dict[str, Any]]:
    response = gw.http.get("/nodes")
    assert response.status_code == 200, response.text
    return {n["name"]: n for n in response.json()["data"] if n["name"] in names}


def _until(gw: Gateway, names: set[str], ok: Any, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = _nodes(gw, names)
        if ok(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_nodes_see_each_other_and_a_killed_one_goes(
    backend: str, tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    db = _database(backend, tmp_path)
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    names = {a, b}
    node_a = _node(gateway_factory, db, a, 8)
    node_b = _node(gateway_factory, db, b, 24)

    seen = _until(node_b, names, lambda s: len(s) == 2 and all(n["alive"] for n in s.values()))
    assert set(seen) == names and all(n["alive"] for n in seen.values())
    assert seen[a]["role"] == "node" and seen[a]["devices"][0]["total_bytes"] == 8 * GIB
    assert seen[b]["devices"][0]["total_bytes"] == 24 * GIB
    assert seen[a]["loaded"] == [] and seen[a]["queue_depth"] == 0
    assert _nodes(node_a, names).keys() == names  # either gateway shows the whole fleet

    rows = _rows(_cli(node_a, "ls"), names)  # a shared database may list other tests' nodes
    assert set(rows) == names and not any("gone" in row for row in rows.values())
    assert seen[a]["url"] and seen[a]["url"] in rows[a]  # where gateways reach it

    node_b.proc.kill()  # no clean shutdown: its row stays until the lease passes
    node_b.proc.wait()
    seen = _until(node_a, names, lambda s: not s[b]["alive"])
    assert seen[a]["alive"] and not seen[b]["alive"]
    assert seen[b]["beat_age_s"] >= seen[b]["lease_s"]
    rows = _rows(_cli(node_a, "ls"), names)
    assert "gone" in rows[b] and "gone" not in rows[a]

    again = _node(gateway_factory, db, b, 24)  # back under the same name: its row again
    seen = _until(again, names, lambda s: s[b]["alive"])
    assert seen[b]["alive"]
    assert [n["name"] for n in again.http.get("/nodes").json()["data"]].count(b) == 1


def test_a_node_stopping_cleanly_is_gone_at_once(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    db = _database("sqlite", tmp_path)
    watcher = _node(gateway_factory, db, "watcher", 8)
    leaving = _node(gateway_factory, db, "leaving", 8)
    _until(watcher, {"leaving"}, lambda s: "leaving" in s)
    leaving.proc.terminate()
    leaving.proc.wait(30)
    seen = _nodes(watcher, {"leaving"})
    assert not seen["leaving"]["alive"]  # no waiting for the lease


def test_nodes_needs_an_admin_key(tmp_path: Path, gateway_factory: GatewayFactory) -> None:
    db = _database("sqlite", tmp_path)
    gw = gateway_factory(
        demo_model=False,
        scan_models_dir=False,
        storage={"database_url": db},
        security={"auth": "required", "admin_key": "admin-secret-123456"},
    )
    assert gw.http.get("/nodes").status_code == 401
    gw.use_key("admin-secret-123456")
    assert gw.http.get("/nodes").json() == {"object": "list", "data": []}


def _rows(listing: str, names: set[str]) -> dict[str, str]:
    """The lines of `mlo nodes ls` that name `names`, by name."""
    return {n: line for line in listing.splitlines() for n in names if f" {n} " in line}


def _cli(gw: Gateway, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLO_")}
    done = subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", "nodes", *args, "--url", gw.url],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
