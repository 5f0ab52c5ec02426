"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
gateway serving the real model on a simulated GPU.

Set MLO_UI_SCREENSHOTS=docs to refresh the README's screenshots from this test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import GatewayFactory

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = "dashboard-admin-key-0123456789abcdef"
MIB = 2**20
LONG_MS = 180_000  # a model load or a reply on a busy 2-core machine


@pytest.fixture
def page() -> Iterator[sync_api.Page]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()


def shot(page: sync_api.Page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("MLO_UI_SCREENSHOTS") or tmp_path)
    page.screenshot(path=str(folder / name), full_page=True)


def test_dashboard_signs_in_loads_the_model_and_streams_a_reply(
    gateway_factory: GatewayFactory, smollm_path: Path, page: sync_api.Page, tmp_path: Path
) -> None:
    expect = sync_api.expect
    device = {"name": "sim0", "total_bytes": 2048 * MIB}
    gw = gateway_factory(
        demo_model=False,
        security={"admin_key": ADMIN},
        gpu={"monitor": "simulated", "reserve_bytes": 64 * MIB, "simulated_devices": [device]},
        models=[{"name": "smollm", "path": smollm_path, "ctx_size": 512, "parallel": 1}],
    )
    assert httpx.get(f"{gw.url}/ui/events", timeout=30).status_code == 401  # the feed needs a key

    page.goto(f"{gw.url}/ui")
    page.fill("#key", "mlo-not-a-key")
    page.click("#signin")
    expect(page.locator("#login-error")).to_contain_text("refused the key")
    expect(page.locator("#board")).to_be_hidden()
    shot(page, tmp_path, "dashboard-login.png")

    page.fill("#key", ADMIN)
    page.click("#signin")
    row = page.locator('#models tr[data-model="smollm"]')
    expect(row.locator(".state")).to_have_text("stopped", timeout=LONG_MS)
    bar = page.locator('#devices .device[data-device="GPU 0 · sim0"]')
    expect(bar).to_be_visible()
    expect(bar.locator(".legend")).not_to_contain_text("smollm")
    assert ADMIN not in page.url
    assert page.evaluate("sessionStorage.getItem('mlo.key')") == ADMIN

    row.locator("button.load").click()
    expect(row.locator(".state")).to_have_text("ready", timeout=LONG_MS)
    expect(bar.locator(".legend")).to_contain_text("smollm", timeout=LONG_MS)  # placed on it
    expect(row).to_contain_text("layers on GPU")

    page.select_option("#play-model", "smollm")
    page.click("#play-send")
    expect(page.locator("#play-send")).to_be_enabled(timeout=LONG_MS)
    reply = page.locator("#play-output").inner_text()
    assert reply.strip() and not reply.startswith(("4", "5")), reply
    expect(page.locator("#audit")).to_contain_text("/v1/chat/completions", timeout=LONG_MS)
    page.wait_for_timeout(2500)  # one more feed tick for the sparklines
    shot(page, tmp_path, "dashboard.png")

    page.click("#signout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('mlo.key')") is None
