"""TLS and mutual TLS on a real gateway (`mlo serve --tls-*`), with real handshakes on loopback
and certificates from `trustme`; the client certificate's subject reaches the app (ASGI TLS
extension, api/tls.py) and a key bound to it works only with that certificate.

Subject strings follow RFC 4514 (https://www.rfc-editor.org/rfc/rfc4514), cross-checked with
`cryptography`'s `Name.rfc4514_string()`.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ml_offload.api.tls import rfc4514_subject
from tests.integration.conftest import ServerProcess, _free_port, write_config

ADMIN = "tls-test-admin-key-" + "x7Qp2Lm9" * 4


# The helper that turns `getpeercert()` into the subject string.


def test_rfc4514_subject_order_multivalue_and_escapes() -> None:
    cert = {
        "subject": (
            (("countryName", "DE"),),
            (("organizationName", "Example, Inc."),),
            (("organizationalUnitName", "R+D"), ("userId", "42")),
            (("commonName", " #svc;1 "),),
        )
    }
    # the expected strings are what cryptography's Name.rfc4514_string() gives for these names
    assert rfc4514_subject(cert) == r"CN=\ #svc\;1\ ,OU=R\+D+UID=42,O=Example\, Inc.,C=DE"
    assert rfc4514_subject({"subject": ((("commonName", "#a"),),)}) == r"CN=\#a"
    assert rfc4514_subject({"subject": ((("emailAddress", "a@b.c"),),)}) == "emailAddress=a@b.c"
    assert rfc4514_subject({}) is None  # no verified certificate: no subject


def test_rfc4514_subject_matches_cryptography(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("x.example", common_name="x", organization_name="A, B <c>")
    path = tmp_path / "leaf.pem"
    leaf.cert_chain_pems[0].write_to_path(str(path))
    decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]  # getpeercert's shape
    expected = x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()
    assert rfc4514_subject(decoded) == expected


# Real gateways.


@dataclass
class Pki:
    ca: trustme.CA
    server_cert: Path
    server_key: Path
    ca_file: Path
    alice: trustme.LeafCert
    bob: trustme.LeafCert  # same CA, another subject
    stranger: trustme.LeafCert  # another CA

    def client(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if cert is not None:
            cert.private_key_and_cert_chain_pem.write_to_path(str(self.ca_file.parent / "c.pem"))
            ctx.load_cert_chain(str(self.ca_file.parent / "c.pem"))
        return ctx


def subject(cert: trustme.LeafCert) -> str:
    pem = cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return Pki(
        ca,
        folder / "server.pem",
        folder / "server.key",
        folder / "ca.pem",
        alice=ca.issue_cert("alice.example", common_name="alice", organization_name="Ex, Inc."),
        bob=ca.issue_cert("bob.example", common_name="bob"),
        stranger=trustme.CA().issue_cert("alice.example", common_name="alice"),
    )


def start(tmp: Path, pki: Pki, *flags: str, ready: ssl.SSLContext, **config: Any) -> ServerProcess:
    """`mlo serve` with TLS flags, ready once `/health` answers over HTTPS."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_config(tmp / "config.toml", tmp / "data", {"demo_model": False, **config})
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "ml_offload.cli.main",
        "serve",
        "--config",
        str(tmp / "config.toml"),
    ]
    cmd += [
        "--port",
        str(port),
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLO_", "LLAMACPP_URL"))}
    log = tmp / "gateway.log"
    proc = subprocess.Popen(
        [*cmd, *flags], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
    )
    gw = ServerProcess(proc, f"https://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{gw.url}/health", verify=ready, timeout=1).status_code == 200:
                return gw
        except httpx.TransportError:
            time.sleep(0.1)
    gw.stop()
    raise RuntimeError(f"gateway did not start: {log.read_text()[-2000:]}")


@pytest.fixture
def tls_gateway(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    gw = start(tmp_path / "tls", pki, ready=pki.client())
    yield gw
    gw.stop()


@pytest.fixture
def mtls_gateway(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    gw = start(
        tmp_path / "mtls",
        pki,
        "--tls-client-ca",
        str(pki.ca_file),
        ready=pki.client(pki.alice),
        security={"admin_key": ADMIN},
    )
    yield gw
    gw.stop()


def test_tls_answers_a_client_that_trusts_the_ca(tls_gateway: ServerProcess, pki: Pki) -> None:
    health = httpx.get(f"{tls_gateway.url}/health", verify=pki.client())
    assert health.status_code == 200 and health.json()["status"]
    assert health.headers["strict-transport-security"].startswith("max-age=")
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
        httpx.get(f"{tls_gateway.url}/health", verify=ssl.create_default_context())
    with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port
        httpx.get(tls_gateway.url.replace("https://", "http://") + "/health", timeout=5)


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(
    mtls_gateway: ServerProcess, pki: Pki
) -> None:
    url = f"{mtls_gateway.url}/health"
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=pki.client(), timeout=5)
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=pki.client(pki.stranger), timeout=5)
    answered = httpx.get(url, verify=pki.client(pki.alice), timeout=5)
    assert answered.status_code == 200


def test_a_key_bound_to_the_certificate_subject(mtls_gateway: ServerProcess, pki: Pki) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=mtls_gateway.url, verify=pki.client(pki.alice)) as alice:
        created = alice.post(
            "/admin/keys", json={"name": "alice", "cert_subject": subject(pki.alice)}, headers=admin
        )
        assert created.status_code == 201, created.text
        key = {"Authorization": f"Bearer {created.json()['key']}"}
        assert alice.get("/v1/models", headers=key).status_code == 200
    with httpx.Client(base_url=mtls_gateway.url, verify=pki.client(pki.bob)) as bob:
        refused = bob.get("/v1/models", headers=key)
    assert refused.status_code == 401
    assert "(alice) is bound to the client certificate" in refused.json()["error"]["message"]
    assert subject(pki.bob) != subject(pki.alice)

    ws_url = mtls_gateway.url.replace("https://", "wss://") + "/ws/inference"
    with connect(ws_url, ssl=pki.client(pki.alice), additional_headers=key, open_timeout=10):
        pass  # the WebSocket scope carries the subject too
    with (
        pytest.raises(InvalidStatus) as denied,
        connect(ws_url, ssl=pki.client(pki.bob), additional_headers=key, open_timeout=10),
    ):
        pass
    assert denied.value.response.status_code == 401
