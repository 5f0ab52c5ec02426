"""Routing across the fleet with real processes: two nodes (`mlo serve --role node`, the real
SmolLM2 engine, and a loopback fake OpenAI server behind one of them) and a gateway
(`--role gateway`) sharing one database (SQLite; PostgreSQL too when `MLO_TEST_POSTGRES_URL` is
set). Through the gateway: a request reaches the node where the model is warm; a model only one
node serves goes there; a node killed mid-stream gives a clean error event and the next request
is served by the other node; a model no node serves is a 404, one whose nodes are gone a 503,
both in OpenAI's error shape; nodes refuse requests without the node key. Over mutual TLS
(`security.tls` on the node, `fleet.tls_*` on the gateway, certificates from `trustme`): a
gateway with its client certificate is answered, one without is refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme

from tests.integration.conftest import Gateway, GatewayFactory, ServerProcess, killed_mid_stream
from tests.integration.fake_upstream import Reply, fake_openai
from tests.integration.test_fleet_nodes import BACKENDS, _database
from tests.integration.test_tls import Pki, start

NODE_KEY = "fleet-node-secret-0123456789"
ADMIN = "node-admin-secret-0123456789"
HI = [{"role": "user", "content": "Say hi."}]


def answer(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _node(factory: GatewayFactory, db: str, name: str, models: list[dict[str, Any]]) -> Gateway:
    node = factory(
        demo_model=False,
        scan_models_dir=False,
        watch_models_dir=False,
        storage={"database_url": db, "node_name": name},
        fleet={"role": "node", "heartbeat_s": 0.2, "lease_s": 2.0, "node_key": NODE_KEY},
        security={"admin_key": ADMIN},
        models=models,
    )
    node.use_key(ADMIN)
    return node


def _until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def _state(gw: Gateway, model: str) -> str | None:
    listed = {m["id"]: m for m in gw.http.get("/models").json()["data"]}
    return listed[model]["state"] if model in listed else None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gateway_routes_to_the_warm_node_and_around_a_dead_one(
    backend: str, tmp_path: Path, gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    db = _database(backend, tmp_path)
    uid = uuid.uuid4().hex[:8]  # a shared PostgreSQL may hold other tests' nodes
    smol, only_a, a, b = f"smol-{uid}", f"only-a-{uid}", f"a-{uid}", f"b-{uid}"
    with fake_openai(lambda request: Reply(body=answer("from the fake"))) as fake:
        engine = {"name": smol, "path": str(smollm_path)}
        node_a = _node(gateway_factory, db, a, [engine, {"name": only_a, "url": fake.url}])
        node_b = _node(gateway_factory, db, b, [engine])
        gw = gateway_factory(
            storage={"database_url": db},
            fleet={"role": "gateway", "refresh_s": 0.2, "node_key": NODE_KEY},
        )
        # a node refuses anyone without a key, and takes the node key for inference only
        bare = httpx.post(f"{node_a.url}/v1/chat/completions", json={"model": only_a})
        assert bare.status_code == 401
        fleet_key = {"authorization": f"Bearer {NODE_KEY}"}
        assert httpx.get(f"{node_a.url}/nodes", headers=fleet_key).status_code == 403

        assert node_a.http.post(f"/models/{smol}/load").status_code == 200
        _until(lambda: _state(gw, smol) == "ready", f"the gateway sees {smol} warm on {a}")
        assert {smol, only_a} <= {m.id for m in gw.client.models.list()}

        # warm first: node a answers, node b loads nothing
        reply = gw.client.chat.completions.create(model=smol, messages=HI, max_tokens=3, user="c1")
        assert reply.choices[0].message.content is not None
        assert node_b.model(smol)["state"] == "stopped"
        assert f'model="{smol}@{a}",status="200"' in gw.http.get("/metrics").text

        # an exact token count from the node's engine, through the gateway
        count = {"model": smol, "messages": HI}
        through = gw.http.post("/v1/messages/count_tokens", json=count)
        on_node = node_a.http.post("/v1/messages/count_tokens", json=count)
        assert through.status_code == 200, through.text
        assert through.json() == on_node.json() and on_node.json()["input_tokens"] > 0

        # a model only node a serves goes there, with the node key
        reply = gw.client.chat.completions.create(model=only_a, messages=HI, max_tokens=3)
        assert reply.choices[0].message.content == "from the fake"
        assert len(fake.requests) == 1

        # no node serves it: 404 in OpenAI's shape
        with pytest.raises(openai.NotFoundError, match=f"nope-{uid}"):
            gw.client.chat.completions.create(model=f"nope-{uid}", messages=HI, max_tokens=3)

        # node a killed mid-stream: a clean error event, then node b answers
        error = killed_mid_stream(gw.client, smol, node_a.proc.kill)
        assert "stream" in error.message or "engine" in error.message
        node_a.proc.wait()
        reply = gw.client.chat.completions.create(model=smol, messages=HI, max_tokens=3)
        assert reply.choices[0].message.content is not None
        assert node_b.model(smol)["state"] == "ready"

        # the only node that served it is gone: 503 in OpenAI's shape, saying so
        _until(lambda: only_a not in {m.id for m in gw.client.models.list()}, f"{a} is gone")
        with pytest.raises(openai.APIStatusError) as gone:
            gw.client.chat.completions.create(model=only_a, messages=HI, max_tokens=3)
        assert gone.value.status_code == 503
        assert f"every node that serves {only_a!r} is gone: {a}" in gone.value.message
        assert len(fake.requests) == 1


def test_gateway_reaches_a_node_over_mutual_tls_and_one_without_a_certificate_is_refused(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("gateway.example")
    pem = {
        name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server-key", "gw", "gw-key")
    }
    ca.cert_pem.write_to_path(str(pem["ca"]))
    server.cert_chain_pems[0].write_to_path(str(pem["server"]))
    server.private_key_pem.write_to_path(str(pem["server-key"]))
    client.cert_chain_pems[0].write_to_path(str(pem["gw"]))
    client.private_key_pem.write_to_path(str(pem["gw-key"]))
    pki = Pki(ca, pem["server"], pem["server-key"], pem["ca"], client, client, client)
    db, model = _database("sqlite", tmp_path), f"m-{uuid.uuid4().hex[:8]}"
    with fake_openai(lambda request: Reply(body=answer("over mTLS"))) as fake:
        node: ServerProcess = start(
            tmp_path / "node",
            pki,
            "--tls-client-ca",
            str(pem["ca"]),
            ready=pki.client(client),
            scan_models_dir=False,
            watch_models_dir=False,
            storage={"database_url": db, "node_name": "tls-node"},
            fleet={"role": "node", "heartbeat_s": 0.2, "lease_s": 2.0, "node_key": NODE_KEY},
            models=[{"name": model, "url": fake.url}],
        )
        try:
            gateway = {"database_url": db}
            trusted = gateway_factory(
                storage=gateway,
                fleet={
                    "role": "gateway",
                    "refresh_s": 0.2,
                    "node_key": NODE_KEY,
                    "tls_ca_file": pem["ca"],
                    "tls_cert_file": pem["gw"],
                    "tls_key_file": pem["gw-key"],
                },
            )
            reply = trusted.client.chat.completions.create(model=model, messages=HI, max_tokens=3)
            assert reply.choices[0].message.content == "over mTLS"
            stranger = gateway_factory(
                storage=gateway,
                fleet={"role": "gateway", "node_key": NODE_KEY, "tls_ca_file": pem["ca"]},
            )
            with pytest.raises(openai.APIStatusError) as refused:
                stranger.client.chat.completions.create(model=model, messages=HI, max_tokens=3)
            assert refused.value.status_code >= 500
            assert len(fake.requests) == 1
        finally:
            node.stop()
