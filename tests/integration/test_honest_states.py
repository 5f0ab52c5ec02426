"""States that claim no more than is true (issue 14): a model whose file is missing, and a
cloud model without a key, are `unavailable` with the reason, through the real CLI; a request
for one is answered at once (503, no engine started), not after a failed start."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.test_scheduling import mlo

pytestmark = pytest.mark.integration


def test_missing_file_and_keyless_cloud_model_are_unavailable(
    gateway_factory: GatewayFactory, smollm_path: Path, tmp_path: Path
) -> None:
    gone = tmp_path / "gone.gguf"
    gw = gateway_factory(
        models=[
            {"name": "gone", "path": gone},
            {"name": "cloud", "backend": "openai", "api_key_env": "MLO_TEST_UNSET_KEY"},
        ]
    )
    views = {m["id"]: m for m in json.loads(mlo(gw.url, "models", "ls", "--json").stdout)}
    assert views["gone"]["state"] == "unavailable" and "missing" in views["gone"]["last_error"]
    assert views["cloud"]["state"] == "unavailable" and "no API key" in views["cloud"]["last_error"]
    assert views["smollm2-135m"]["state"] == "stopped"  # servable: loads on first use
    table = mlo(gw.url, "models", "ls").stdout
    assert "unavailable: model file" in table and str(gone) in table
    assert "no models loaded" in mlo(gw.url, "ps").stdout

    with pytest.raises(openai.APIStatusError) as refused:
        gw.client.chat.completions.create(
            model="gone", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert refused.value.status_code == 503 and "missing" in refused.value.message
    assert gw.engine_pids() == []  # refused before any engine was started

    load = mlo(gw.url, "load", "gone")
    assert load.returncode == 1 and "unavailable" in load.stderr
    assert "Traceback" not in load.stderr
    backends = {b["model"]: b for b in gw.http.get("/backends").json()["data"]}
    assert backends["gone"]["state"] == "unavailable" and not backends["gone"]["healthy"]
