"""Fleet routing across network namespaces: two nodes (`mlo serve --role node`, each running the
real SmolLM2 engine), each in its own network namespace joined to this one by a veth pair, and a
gateway here; nodes are reached only at the address they advertise (`fleet.advertise_url`'s
default: their bind address and port).
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

from tests.integration.conftest import GatewayFactory, write_config
from tests.integration.test_fleet_routing import HI, NODE_KEY

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
            raise RuntimeError(f"node exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{node.url}/health", timeout=1).status_code == 200:
                return node
        time.sleep(0.1)
    node.stop()
    raise RuntimeError(f"node did not start: {log.read_text()[-2000:]}")


@pytest.fixture
def two_namespaces() -> Iterator[list[tuple[str, str, str]]]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed (apt-get install iproute2)")
    tag, octet = f"{os.getpid() % 10000}", random.randint(16, 250)
    names = [f"mlo{tag}a", f"mlo{tag}b"]
    with contextlib.ExitStack() as stack:
        try:
            made = [
                (n, *stack.enter_context(namespace(n, f"10.{octet}.{i}")))
                for i, n in enumerate(names)
            ]
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
        yield made


def test_a_gateway_routes_to_nodes_in_other_network_namespaces(
    tmp_path: Path,
    gateway_factory: GatewayFactory,
    two_namespaces: list[tuple[str, str, str]],
    smollm_path: Path,
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"
    nodes: list[NsNode] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [n.stop() for n in nodes])
        for (ns, _here, there), name in zip(two_namespaces, ("ns-a", "ns-b"), strict=True):
            nodes.append(
                start_node(
                    tmp_path / name,
                    ns,
                    there,
                    demo_model=False,
                    scan_models_dir=False,
                    watch_models_dir=False,
                    storage={"database_url": db, "node_name": name},
                    fleet={
                        "role": "node",
                        "heartbeat_s": 0.2,
                        "lease_s": 2.0,
                        "node_key": NODE_KEY,
                    },
                    models=[{"name": "shared", "path": str(smollm_path), "ctx_size": 512}],
                )
            )
        gw = gateway_factory(
            storage={"database_url": db},
            fleet={"role": "gateway", "refresh_s": 0.2, "node_key": NODE_KEY},
        )
        deadline = time.monotonic() + 30
        while True:  # the gateway sees both nodes, at their namespaces' addresses
            seen = {n["name"]: n for n in gw.http.get("/nodes").json()["data"] if n["alive"]}
            if len(seen) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [seen[n]["url"] for n in ("ns-a", "ns-b")] == [n.url for n in nodes]

        def answered_by() -> str:
            """The node that answered one request (the gateway's request counter per node)."""
            before = served(gw.http.get("/metrics").text)
            reply = gw.client.chat.completions.create(model="shared", messages=HI, max_tokens=3)
            assert reply.choices[0].message.content is not None
            after = served(gw.http.get("/metrics").text)
            [node] = [n for n in after if after[n] > before.get(n, 0)]
            return node

        assert answered_by() == "ns-a"  # both cold, no queue: the first by name
        nodes[0].proc.kill()  # node a's namespace loses its only server
        nodes[0].proc.wait()
        assert answered_by() == "ns-b"  # refused at once, the next node answers
        assert answered_by() == "ns-b"  # and a is skipped while it cools down


def served(metrics: str) -> dict[str, float]:
    """Requests answered (200) per node, from the gateway's `mlo_requests_total`."""
    line = r'mlo_requests_total\{[^}]*model="shared@([\w-]+)",status="200"\} (\S+)'
    found = re.findall(line, metrics)
    return {node: float(n) for node, n in found}
