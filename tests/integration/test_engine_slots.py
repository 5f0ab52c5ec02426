"""Odd slot counts (issue 14): with embeddings on (the default) llama.cpp aborted on load for
`parallel` 3, 5, 6, 7 (`GGML_ASSERT(ggml_can_mul_mat)`), its micro-batch not a multiple of the
slots. The real engine, through a real gateway, loads and answers chat and embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import GatewayFactory

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("parallel", [3, 7])
def test_odd_slot_counts_load_and_answer(
    gateway_factory: GatewayFactory, smollm_path: Path, parallel: int
) -> None:
    name = f"smol-p{parallel}"
    gw = gateway_factory(
        demo_model=False, models=[{"name": name, "path": smollm_path, "parallel": parallel}]
    )
    chat = gw.client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert chat.choices[0].message.content
    emb = gw.client.embeddings.create(model=name, input="hello")
    assert len(emb.data[0].embedding) > 0
    assert gw.model(name)["state"] == "ready"
    assert gw.proc.poll() is None
