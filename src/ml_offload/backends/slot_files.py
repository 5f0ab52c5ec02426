"""Saved llama.cpp slots on disk: a folder per model under `<data_dir>/slots`, a file per
conversation, bounded in all by size and age (oldest removed first).

A file's name is a hash of the conversation's key and of the model file (path, size, change
time), so a slot saved from another build of the weights is never restored into this one; such
files age out. The engine itself writes and reads the files (`--slot-save-path`); this module
names, finds and prunes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ml_offload.backends.child import safe_name
from ml_offload.domain import ModelSpec

log = logging.getLogger(__name__)

SUFFIX = ".bin"


@dataclass(frozen=True, slots=True)
class SlotBounds:
    max_bytes: int  # all saved slots, every model's
    max_age_s: float


class SlotFiles:
    """One model's saved slots (`folder`), pruned together with the other models' (`root`)."""

    def __init__(self, root: Path, spec: ModelSpec, bounds: SlotBounds) -> None:
        self.root = root
        self.folder = root / safe_name(spec.name)
        self._bounds = bounds
        self._weights = _weights_tag(spec)

    def name(self, key: str) -> str:
        """The file name (in `folder`) of conversation `key`'s saved slot."""
        digest = hashlib.blake2b(f"{self._weights}\0{key}".encode(), digest_size=16)
        return digest.hexdigest() + SUFFIX

    def saved(self, key: str) -> str | None:
        """The name of `key`'s saved slot, when there is one young enough to restore."""
        path = self.folder / self.name(key)
        try:
            age_s = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age_s > self._bounds.max_age_s:
            self.remove(path.name)
            return None
        return path.name

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.folder / name).unlink()

    def prune(self) -> None:
        """Remove saved slots (all models') past the age limit, then the oldest until the rest
        fit the size cap."""
        now = time.time()
        files = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            with contextlib.suppress(OSError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        for mtime, size, path in files:
            if now - mtime <= self._bounds.max_age_s and total <= self._bounds.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                log.debug("removed saved slot %s", path)


def _weights_tag(spec: ModelSpec) -> str:
    """Which weights the model runs: its file's path, size and change time."""
    try:
        st = Path(str(spec.path)).stat()
    except OSError:
        return str(spec.path)
    return f"{spec.path}\0{st.st_size}\0{st.st_mtime_ns}"
