"""A stopped model's weights held in memory for its next load (engine.standby): the real
gateway and the real SmolLM2 engine, unloaded through the gateway's API."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from ml_offload.backends.standby import drop_from_page_cache, resident_bytes
from tests.integration.conftest import GatewayFactory
from tests.integration.test_slot_restore import OPENING, ask, unload

pytestmark = pytest.mark.integration


def may_lock(size: int) -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= size


def test_unloaded_weights_wait_in_memory_for_the_next_load(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(engine={"standby": True, "slot_save": False})
    answer = ask(gw, OPENING)[0]
    weights = Path(gw.model()["path"])
    size = weights.stat().st_size

    unload(gw)
    assert gw.model()["standby_bytes"] == size
    drop_from_page_cache(weights)  # what memory pressure from other work would do
    if may_lock(size):
        assert resident_bytes(weights) == size  # locked: still in RAM for the next load

    assert ask(gw, OPENING)[0] == answer  # loaded again from the held pages, same answer
    model = gw.model()
    assert model["state"] == "ready" and model["standby_bytes"] is None  # the engine has them


def test_off_holds_nothing(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(engine={"standby": False, "slot_save": False})
    ask(gw, OPENING)
    unload(gw)
    assert gw.model()["standby_bytes"] is None
