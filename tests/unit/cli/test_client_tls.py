"""The CLI's client TLS: the files it is given, and a failed handshake said as what to give
(real handshakes with a loopback TLS server and `trustme` certificates)."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from ml_offload.client_tls import ClientTls, explain
from ml_offload.daemon import ServeTls, connect_url
from ml_offload.errors import ConfigError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[str]:
    """An HTTPS server on loopback that requires a client certificate from `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def _failure(url: str, tls: ClientTls) -> BaseException:
    with pytest.raises(httpx.TransportError) as caught:
        httpx.get(url, verify=tls.verify(), timeout=5)
    return caught.value


def test_untrusted_server_asks_for_the_ca_bundle(server: str, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    reason = explain(_failure(server, ClientTls(ca_file=other)), server)
    assert reason is not None and "does not trust" in reason and "--ca-file" in reason


def test_a_missing_client_certificate_asks_for_cert_and_key(
    server: str, ca: trustme.CA, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    tls = ClientTls(ca_file=bundle)
    reason = explain(_failure(server, tls), server, tls)
    assert reason is not None and "--cert and --key" in reason and "mutual TLS" in reason
    leaf = ca.issue_cert("client.example")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    good = ClientTls(ca_file=bundle, cert_file=tmp_path / "client.pem")
    assert httpx.get(server, verify=good.verify(), timeout=5).status_code in (200, 404)


def test_a_closed_https_connection_is_said_as_mutual_tls() -> None:
    closed = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    with_cert = ClientTls(cert_file=Path("/etc/me.pem"))
    assert "--cert and --key" in (explain(closed, "https://gw:9000") or "")
    assert "refused the client certificate /etc/me.pem" in (
        explain(closed, "https://gw:9000", with_cert) or ""
    )
    assert explain(closed, "http://gw:9000") is None  # plain HTTP: not a TLS matter
    assert explain(httpx.ConnectError("refused"), "https://gw:9000") is None


def test_bad_files_are_config_errors_naming_the_option(tmp_path: Path) -> None:
    assert ClientTls().verify() is True  # the system's trust store
    with pytest.raises(ConfigError, match=r"--ca-file \(\$MLO_CA_BUNDLE\) .*nope\.pem"):
        ClientTls(ca_file=tmp_path / "nope.pem").verify()
    with pytest.raises(ConfigError, match=r"--key .* needs --cert"):
        ClientTls(key_file=tmp_path / "k.pem").verify()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"--cert/--key"):
        ClientTls(cert_file=tmp_path / "junk.pem").verify()


def test_daemon_urls_and_tls_flags() -> None:
    assert connect_url("0.0.0.0", 9000, tls=True) == "https://127.0.0.1:9000"
    assert connect_url("::1", 9000) == "http://[::1]:9000"
    assert ServeTls("/c.pem", "/k.pem").argv() == ["--tls-cert", "/c.pem", "--tls-key", "/k.pem"]
    assert "--tls-client-ca" in ServeTls("/c", "/k", "/ca").argv()
