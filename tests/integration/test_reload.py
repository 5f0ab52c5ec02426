"""`kill -HUP` (issue 14): the gateway reads its config again and rescans the model folder, as
daemons do; a model that did not change stays loaded (same engine), a removed one goes, a new
one appears; a config that no longer validates is logged and the gateway goes on."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.conftest import MODEL, Gateway, GatewayFactory, write_config
from tests.integration.test_audit_cli import wait_for
from tests.unit.test_gguf import write_gguf

pytestmark = pytest.mark.integration
REMOTE = "http://127.0.0.1:9"


def _names(gw: Gateway) -> set[str]:
    return {m["id"] for m in gw.http.get("/models").json()["data"]}


def test_sighup_reloads_config_and_rescans(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    gw = gateway_factory(storage={"models_dir": folder}, models=[{"name": "old", "url": REMOTE}])
    gw.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    pid = gw.model()["pid"]
    assert pid and {"old", MODEL} <= _names(gw)

    write_gguf(folder / "Tiny-F32.gguf", vocab_size=10)
    config = gw.log.parent / "config.toml"
    data_dir = gw.log.parent / "data"
    write_config(
        config,
        data_dir,
        {"storage": {"models_dir": folder}, "models": [{"name": "new", "url": REMOTE}]},
    )
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "new" in _names(gw), what="the reloaded config")
    assert _names(gw) == {"new", "tiny-f32", MODEL}
    assert gw.model()["state"] == "ready" and gw.model()["pid"] == pid  # unchanged: kept

    config.write_text("[[models]\nbroken")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in gw.log.read_text(), what="the refusal")
    assert gw.proc.poll() is None and _names(gw) == {"new", "tiny-f32", MODEL}
    assert gw.model()["pid"] == pid
