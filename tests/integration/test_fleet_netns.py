"""A fleet across network namespaces: two nodes (`mlo serve --role node`, each running the real
SmolLM2 engine) and two gateways (`--role gateway`), each in its own network namespace joined
to this one by a veth pair and routed through it (IP forwarding on while the test runs), sharing
one database and one Redis. Nodes are reached only at the address they advertise
(`fleet.advertise_url`'s default: their bind address and port). Through either gateway a
request reaches the node where the model is warm; a model loaded nowhere goes to the node with
room; a key's rate limit holds exactly across both gateways; a gateway
killed leaves the other serving; a node killed mid-stream, a clean error and the other node
answers. The database is a SQLite file, or the tests' PostgreSQL (relayed to the namespaces).
Needs root and `ip` (iproute2); skipped with the reason otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx
import openai
import pytest

from tests.integration.conftest import (
    ServerProcess,
    killed_mid_stream,
    redis_server,
    write_config,
)
from tests.integration.test_fleet_nodes import BACKENDS, _database
from tests.integration.test_fleet_routing import HI, NODE_KEY
from tests.integration.test_rate_limits import wait_for_a_fresh_minute

PORT = 9000  # each namespace has its own ports
NODE_FLEET = {"role": "node", "heartbeat_s": 0.2, "lease_s": 2.0}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def namespace(name: str, subnet: str) -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair on `subnet`.0/24: this side's
    address (.1) and the namespace's (.2)."""
    here, there = f"{subnet}.1", f"{subnet}.2"
    outer, inner = f"{name}o", f"{name}i"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{here}/24", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{there}/24", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "default", "via", here)  # the other namespaces
        yield here, there
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", outer)  # its peer goes with it
        _ip("netns", "del", name)


def start_node(tmp: Path, ns: str, host: str, **config: Any) -> ServerProcess:
    tmp.mkdir(parents=True)
    write_config(tmp / "config.toml", tmp / "data", config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLO_", "LLAMACPP_URL"))}
    log = tmp / "node.log"
    cmd = [
        sys.executable,
        "-m",
        "ml_offload.cli.main",
        "serve",
        "--config",
        str(tmp / "config.toml"),
    ]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *cmd, "--host", host, "--port", str(PORT)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    node = ServerProcess(proc, f"http://{host}:{PORT}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited: {log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{node.url}/health", timeout=1).status_code == 200:
                return node
        time.sleep(0.1)
    node.stop()
    raise RuntimeError(f"node did not start: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def ip_forwarding() -> Iterator[None]:
    """This namespace routes between the others while the test runs (as it was, after)."""
    flag = Path("/proc/sys/net/ipv4/ip_forward")
    before = flag.read_text().strip()
    try:
        flag.write_text("1\n")
    except OSError as exc:
        pytest.skip(f"cannot turn IP forwarding on here: {exc}")
    try:
        yield
    finally:
        flag.write_text(before + "\n")


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str, str]]]:
    """Four namespaces (two nodes, two gateways): name, this side's address, theirs."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed (apt-get install iproute2)")
    tag, octet = f"{os.getpid() % 10000}", random.randint(16, 250)
    names = [f"mlo{tag}{x}" for x in "abgh"]
    with contextlib.ExitStack() as stack:
        try:
            made = [
                (n, *stack.enter_context(namespace(n, f"10.{octet}.{i}")))
                for i, n in enumerate(names)
            ]
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
        stack.enter_context(ip_forwarding())
        yield made


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_gateways_route_to_nodes_in_other_network_namespaces(
    backend: str, tmp_path: Path, namespaces: list[tuple[str, str, str]], smollm_path: Path
) -> None:
    (a, _, a_at), (b, _, b_at), (g, host_at, g_at), (h, _, h_at) = namespaces
    uid = uuid.uuid4().hex[:6]  # a shared PostgreSQL holds other runs' nodes
    na, nb = f"ns-a-{uid}", f"ns-b-{uid}"
    fleet = {"heartbeat_s": 0.2, "lease_s": 2.0, "refresh_s": 0.2, "node_key": NODE_KEY}
    security = {"admin_key": ADMIN}
    model = {"path": str(smollm_path), "ctx_size": 512, "parallel": 1}
    servers: list[ServerProcess] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [s.stop() for s in servers])
        db = stack.enter_context(shared_database(backend, tmp_path, host_at))
        limits = {"storage_url": stack.enter_context(redis_server(host=host_at))}
        for ns, at, name, gpu_bytes in ((a, a_at, na, 64 * MIB), (b, b_at, nb, 4096 * MIB)):
            servers.append(
                start_node(
                    tmp_path / name,
                    ns,
                    at,
                    **BARE,
                    storage={"database_url": db, "node_name": name},
                    fleet={**fleet, "role": "node"},
                    security=security,
                    gpu=simulated_gpu(gpu_bytes),
                    models=[{"name": "shared", **model}, {"name": "roomy", **model}],
                )
            )
        for ns, at, name in ((g, g_at, f"gw-1-{uid}"), (h, h_at, f"gw-2-{uid}")):
            servers.append(
                start_node(
                    tmp_path / name,
                    ns,
                    at,
                    **BARE,
                    storage={"database_url": db, "node_name": name},
                    fleet={**fleet, "role": "gateway"},
                    security={**security, "limits": limits},
                )
            )
        node_a, _, gw1, gw2 = servers
        admin = {"authorization": f"Bearer {ADMIN}"}
        loaded = httpx.post(f"{node_a.url}/models/shared/load", headers=admin, timeout=120)
        assert loaded.status_code == 200, loaded.text
        for gw in (gw1, gw2):  # each gateway sees both nodes, at their namespaces' addresses
            _until_nodes(gw.url, admin, {na: f"http://{a_at}:{PORT}", nb: f"http://{b_at}:{PORT}"})
            _until(lambda gw=gw: _loaded(gw.url, na) == ["shared"], f"{gw.url} sees shared warm")

        # through either gateway: the warm node; a model loaded nowhere: the node with room
        assert answered_by(gw1.url, ADMIN, "shared") == na
        assert answered_by(gw2.url, ADMIN, "shared") == na
        assert answered_by(gw2.url, ADMIN, "roomy") == nb  # 64 MiB of GPU on a, 4 GiB on b

        # one key's limit, counted in the shared Redis, holds exactly across both gateways
        made = httpx.post(f"{gw1.url}/admin/keys", json={"name": "team", "rpm": 4}, headers=admin)
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        wait_for_a_fresh_minute()
        codes = [status(gw.url, key, "shared") for gw in (gw1, gw2, gw1, gw2, gw1, gw2)]
        assert codes == [200, 200, 200, 200, 429, 429], codes

        gw1.proc.kill()  # a gateway lost: the other keeps serving
        gw1.proc.wait()
        assert answered_by(gw2.url, ADMIN, "shared") == na

        # a node lost mid-stream: a clean error for that client, the next request the other node
        client = openai.OpenAI(base_url=f"{gw2.url}/v1", api_key=ADMIN, max_retries=0)
        killed_mid_stream(client, "shared", node_a.proc.kill)
        node_a.proc.wait()
        assert answered_by(gw2.url, ADMIN, "shared") == nb
        assert answered_by(gw2.url, ADMIN, "shared") == nb  # and a is skipped while it cools down


MIB = 2**20


def simulated_gpu(total: int) -> dict[str, Any]:
    """One simulated device of `total` bytes, all of it for models (no reserve, no per-GPU
    context overhead), so that what fits where is decided by the model's estimate alone."""
    return {
        "monitor": "simulated",
        "reserve_bytes": 0,
        "context_overhead_bytes": 0,
        "simulated_devices": [{"name": "Sim", "total_bytes": total}],
    }


@contextlib.contextmanager
def shared_database(backend: str, tmp_path: Path, host: str) -> Iterator[str]:
    """The fleet's database as the namespaces reach it: a SQLite file, or a database of its
    own on the tests' PostgreSQL (the keys made here must not turn auth on for other tests),
    through a TCP relay on `host` (the server listens on loopback only)."""
    url = _database(backend, tmp_path)
    if backend == "sqlite":
        yield url
        return
    parts, name = urlsplit(url), f"mlo_netns_{uuid.uuid4().hex[:8]}"
    server = (parts.hostname or "127.0.0.1", parts.port or 5432)
    asyncio.run(_admin_sql(parts, f'CREATE DATABASE "{name}"'))
    try:
        with tcp_relay(host, server) as port:
            userinfo = parts.netloc.rpartition("@")[0]
            yield urlunsplit(parts._replace(netloc=f"{userinfo}@{host}:{port}", path=f"/{name}"))
    finally:
        asyncio.run(_admin_sql(parts, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin_sql(parts: SplitResult, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username,
        password=parts.password,
        database=parts.path.lstrip("/") or "postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def tcp_relay(host: str, target: tuple[str, int]) -> Iterator[int]:
    """Connections to `host`:PORT (PORT yielded) relayed to `target`, byte for byte."""
    server = socket.create_server((host, 0))
    server.settimeout(0.2)
    done = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not done.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(src, dst), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        server.close()


def _until(check: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def _loaded(url: str, node: str) -> list[str]:
    headers = {"authorization": f"Bearer {ADMIN}"}
    nodes = httpx.get(f"{url}/nodes", headers=headers, timeout=10).json()["data"]
    return next((n["loaded"] for n in nodes if n["name"] == node), [])


BARE = {"demo_model": False, "scan_models_dir": False, "watch_models_dir": False}
ADMIN = "fleet-admin-" + "0123456789abcdef"


def _until_nodes(url: str, headers: dict[str, str], want: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        nodes = httpx.get(f"{url}/nodes", headers=headers, timeout=10).json()["data"]
        seen = {n["name"]: n["url"] for n in nodes if n["alive"]}
        if seen == want:
            return
        assert time.monotonic() < deadline, f"{url} sees {seen}, not {want}"
        time.sleep(0.1)


def status(url: str, key: str, model: str) -> int:
    body = {"model": model, "messages": HI, "max_tokens": 3}
    headers = {"authorization": f"Bearer {key}"}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    return answer.status_code


def answered_by(url: str, key: str, model: str) -> str:
    """The node that answered one request (the gateway's request counter per node)."""
    headers = {"authorization": f"Bearer {key}"}
    before = served(httpx.get(f"{url}/metrics", headers=headers, timeout=10).text, model)
    assert status(url, key, model) == 200
    after = served(httpx.get(f"{url}/metrics", headers=headers, timeout=10).text, model)
    [node] = [n for n in after if after[n] > before.get(n, 0)]
    return node


def served(metrics: str, model: str) -> dict[str, float]:
    """Requests for `model` answered (200) per node, from the gateway's `mlo_requests_total`."""
    line = rf'mlo_requests_total\{{[^}}]*model="{model}@([\w-]+)",status="200"\}} (\S+)'
    found = re.findall(line, metrics)
    return {node: float(n) for node, n in found}
