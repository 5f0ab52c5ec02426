"""The dashboard over TLS and mutual TLS: Debian's chromium driven by Playwright against a real
gateway (`mlo serve --tls-*`, certificates from trustme) serving the real model; the page loads,
signs in and lists the model. Under mutual TLS the browser presents a client certificate from
the gateway's CA (Playwright's `client_certificates`), and without one the page does not load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import ServerProcess
from tests.integration.test_dashboard import CHROMIUM, FLAGS, LONG_MS, sync_api
from tests.integration.test_tls import Pki, start

ADMIN = "dashboard-tls-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    alice = ca.issue_cert("alice.example", common_name="alice")
    alice.cert_chain_pems[0].write_to_path(str(folder / "alice.pem"))
    alice.private_key_pem.write_to_path(str(folder / "alice.key"))
    stranger = trustme.CA().issue_cert("alice.example", common_name="alice")
    return Pki(
        ca,
        folder / "server.pem",
        folder / "server.key",
        folder / "ca.pem",
        alice=alice,
        bob=alice,
        stranger=stranger,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def serve(tmp: Path, pki: Pki, smollm_path: Path, *flags: str) -> ServerProcess:
    model = {"name": "smollm", "path": smollm_path, "ctx_size": 512, "parallel": 1}
    ready = pki.client(pki.alice) if flags else pki.client()
    return start(tmp, pki, *flags, ready=ready, security={"admin_key": ADMIN}, models=[model])


def signs_in_and_lists_the_model(page: sync_api.Page, url: str) -> None:
    expect = sync_api.expect
    page.goto(f"{url}/ui")
    page.fill("#key", ADMIN)
    page.click("#signin")
    row = page.locator('#models tr[data-model="smollm"]')
    expect(row.locator(".state")).to_have_text("stopped", timeout=LONG_MS)
    expect(page.locator("#login-error")).to_be_hidden()


def test_dashboard_over_tls(
    browser: sync_api.Browser, pki: Pki, smollm_path: Path, tmp_path: Path
) -> None:
    gw = serve(tmp_path / "tls", pki, smollm_path)
    try:
        assert gw.url.startswith("https://")
        context = browser.new_context(ignore_https_errors=True)  # the test CA is not trusted
        try:
            signs_in_and_lists_the_model(context.new_page(), gw.url)
        finally:
            context.close()
    finally:
        gw.stop()


def test_dashboard_over_mutual_tls(
    browser: sync_api.Browser, pki: Pki, smollm_path: Path, tmp_path: Path
) -> None:
    gw = serve(tmp_path / "mtls", pki, smollm_path, "--tls-client-ca", str(pki.ca_file))
    folder = pki.ca_file.parent
    cert = {"origin": gw.url, "certPath": folder / "alice.pem", "keyPath": folder / "alice.key"}
    try:
        with_cert = browser.new_context(ignore_https_errors=True, client_certificates=[cert])
        try:
            signs_in_and_lists_the_model(with_cert.new_page(), gw.url)
        finally:
            with_cert.close()
        without = browser.new_context(ignore_https_errors=True)
        try:
            with pytest.raises(sync_api.Error):  # the handshake fails: no page at all
                without.new_page().goto(f"{gw.url}/ui", timeout=30_000)
        finally:
            without.close()
    finally:
        gw.stop()
