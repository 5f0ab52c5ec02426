"""Shared paths for the deployment checks."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="session")
def mlo_bin() -> Path:
    """The `mlo` script installed beside this interpreter (what the units' ExecStart runs)."""
    found = Path(sys.executable).with_name("mlo")
    if not found.exists():
        which = shutil.which("mlo")
        if which is None:
            pytest.skip("the `mlo` script is not installed (pip install -e .)")
        found = Path(which)
    return found
