"""Nix: `import`, `callPackage` and module `imports` paths, relative to the file's folder."""

from __future__ import annotations

import posixpath

from ml_offload.analyzer.model import Import
from ml_offload.analyzer.resolve_base import Resolved, inside


class NixResolver:
    """Relative paths from the file's folder; a folder means its `default.nix`."""

    def __init__(self, paths: frozenset[str]) -> None:
        self._paths = paths

    def module_of(self, path: str) -> str:
        return path

    def resolve(self, path: str, imp: Import) -> Resolved:
        target = imp.target
        if target.startswith("<"):
            return Resolved(external=target.strip("<>").split("/")[0])
        if target.startswith(("/", "~")):
            return Resolved(external=target)
        joined = posixpath.join(posixpath.dirname(path), target)
        found = inside(joined, self._paths) or inside(f"{joined}/default.nix", self._paths)
        return Resolved(files=[found]) if found else Resolved(unresolved=target)
