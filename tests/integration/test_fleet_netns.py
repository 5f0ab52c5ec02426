"""A fleet across network namespaces: two nodes (`mlo serve --role node`, each running the real
SmolLM2 engine) and two gateways (`--role gateway`), each in its own network namespace joined
to this one by a veth pair and routed through it (IP forwarding on while the test runs), sharing
one database and one Redis. Nodes are reached only at the address they advertise
(`fleet.advertise_url`'s default: their bind address and port). Through either gateway a
request reaches a node; a key's rate limit holds exactly across both gateways; a gateway
killed leaves the other serving; a node killed, the other node answers.
Needs root and `ip` (iproute2); skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import redis_server, write_config
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


class NsNode:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_node(tmp: Path, ns: str, host: str, **config: Any) -> NsNode:
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
    node = NsNode(proc, f"http://{host}:{PORT}", log)
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


def test_two_gateways_route_to_nodes_in_other_network_namespaces(
    tmp_path: Path, namespaces: list[tuple[str, str, str]], smollm_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"
    fleet = {"heartbeat_s": 0.2, "lease_s": 2.0, "refresh_s": 0.2, "node_key": NODE_KEY}
    servers: list[NsNode] = []
    (a, _, a_at), (b, _, b_at), (g, redis_at, g_at), (h, _, h_at) = namespaces
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [s.stop() for s in servers])
        limits = {"storage_url": stack.enter_context(redis_server(host=redis_at))}
        for ns, at, name in ((a, a_at, "ns-a"), (b, b_at, "ns-b")):
            servers.append(
                start_node(
                    tmp_path / name,
                    ns,
                    at,
                    **BARE,
                    storage={"database_url": db, "node_name": name},
                    fleet={**fleet, "role": "node"},
                    models=[{"name": "shared", "path": str(smollm_path), "ctx_size": 512}],
                )
            )
        for ns, at, name in ((g, g_at, "gw-1"), (h, h_at, "gw-2")):
            servers.append(
                start_node(
                    tmp_path / name,
                    ns,
                    at,
                    **BARE,
                    storage={"database_url": db, "node_name": name},
                    fleet={**fleet, "role": "gateway"},
                    security={"admin_key": ADMIN, "limits": limits},
                )
            )
        node_a, _, gw1, gw2 = servers
        admin = {"authorization": f"Bearer {ADMIN}"}
        for gw in (gw1, gw2):  # each gateway sees both nodes, at their namespaces' addresses
            _until_nodes(
                gw.url, admin, {"ns-a": f"http://{a_at}:{PORT}", "ns-b": f"http://{b_at}:{PORT}"}
            )

        # through either gateway a request reaches a node (both cold: the first by name)
        assert answered_by(gw1.url, ADMIN) == "ns-a"
        assert answered_by(gw2.url, ADMIN) == "ns-a"

        # one key's limit, counted in the shared Redis, holds exactly across both gateways
        made = httpx.post(f"{gw1.url}/admin/keys", json={"name": "team", "rpm": 4}, headers=admin)
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        wait_for_a_fresh_minute()
        codes = [status(gw.url, key) for gw in (gw1, gw2, gw1, gw2, gw1, gw2)]
        assert codes == [200, 200, 200, 200, 429, 429], codes

        gw1.proc.kill()  # a gateway lost: the other keeps serving
        gw1.proc.wait()
        assert answered_by(gw2.url, ADMIN) == "ns-a"
        node_a.proc.kill()  # a node lost: the next request goes to the other node
        node_a.proc.wait()
        assert answered_by(gw2.url, ADMIN) == "ns-b"
        assert answered_by(gw2.url, ADMIN) == "ns-b"  # and a is skipped while it cools down


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


def status(url: str, key: str) -> int:
    body = {"model": "shared", "messages": HI, "max_tokens": 3}
    headers = {"authorization": f"Bearer {key}"}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    return answer.status_code


def answered_by(url: str, key: str) -> str:
    """The node that answered one request (the gateway's request counter per node)."""
    headers = {"authorization": f"Bearer {key}"}
    before = served(httpx.get(f"{url}/metrics", headers=headers, timeout=10).text)
    assert status(url, key) == 200
    after = served(httpx.get(f"{url}/metrics", headers=headers, timeout=10).text)
    [node] = [n for n in after if after[n] > before.get(n, 0)]
    return node


def served(metrics: str) -> dict[str, float]:
    """Requests answered (200) per node, from the gateway's `mlo_requests_total`."""
    line = r'mlo_requests_total\{[^}]*model="shared@([\w-]+)",status="200"\} (\S+)'
    found = re.findall(line, metrics)
    return {node: float(n) for node, n in found}
