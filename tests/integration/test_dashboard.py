"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
gateway serving the real model on a simulated GPU.

Set MLO_UI_SCREENSHOTS=docs to refresh the README's screenshots from this test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ml_offload.domain import NodeBeat, NodeDevice
from ml_offload.storage.db import Database
from ml_offload.storage.nodes_repo import NodeRepository
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


def test_a_gateway_shows_the_fleets_nodes(
    gateway_factory: GatewayFactory, page: sync_api.Page, tmp_path: Path
) -> None:
    """In a fleet, an admin sees the nodes from their heartbeats: alive ones and one whose lease
    has passed. (The heartbeats are written here, as nodes write them.)"""
    expect = sync_api.expect
    url = f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"
    gw = gateway_factory(
        demo_model=False,
        fleet={"role": "gateway"},
        storage={"database_url": url},
        security={"admin_key": ADMIN},
    )
    now = time.time()
    gpu = NodeDevice(0, "H100", 80 * 1024 * MIB, 60 * 1024 * MIB)
    beats = (
        NodeBeat("gpu-a", "node", (gpu,), ("llama",), 0, 2, now - 60, now, 30, "http://a:9000"),
        NodeBeat("gpu-b", "node", (), (), 8 * 1024 * MIB, 0, now - 600, now - 300, 30),
    )
    with ThreadPoolExecutor(1) as pool:  # Playwright's own event loop runs in this thread
        pool.submit(asyncio.run, beat(url, *beats)).result()
    page.goto(f"{gw.url}/ui")
    page.fill("#key", ADMIN)
    page.click("#signin")
    nodes = page.locator("#nodes-section")
    expect(nodes).to_be_visible(timeout=LONG_MS)
    expect(nodes.locator('tr[data-node="gpu-a"]')).to_contain_text("alive")
    expect(nodes.locator('tr[data-node="gpu-a"]')).to_contain_text("60.0 GiB free of 80.0 GiB")
    expect(nodes.locator('tr[data-node="gpu-a"]')).to_contain_text("llama")
    expect(nodes.locator('tr[data-node="gpu-b"]')).to_contain_text("gone")


async def beat(url: str, *beats: NodeBeat) -> None:
    db = await Database.open(url)
    try:
        for b in beats:
            await NodeRepository(db).beat(b)
    finally:
        await db.close()
