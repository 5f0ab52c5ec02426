"""Make a child process die with its parent (Linux `PR_SET_PDEATHSIG`), so no orphan engine
keeps holding memory when the gateway is killed. A no-op elsewhere."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
