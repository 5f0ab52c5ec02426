"""Python: module names from package folders (`src/` layouts included), absolute and relative
imports to the module file, standard-library modules left out of the external list."""

from __future__ import annotations

import sys

from ml_offload.analyzer.model import Import
from ml_offload.analyzer.resolve_base import Resolved


class PythonResolver:
    """Module names from package folders: a file's source root is the first folder up that has
    no `__init__.py`, so `src/` layouts, flat layouts and nested projects all resolve."""

    def __init__(self, paths: frozenset[str]) -> None:
        self._paths = paths
        self._by_module: dict[str, str] = {}
        for path in sorted(p for p in paths if p.endswith(".py")):
            self._by_module.setdefault(self.module_of(path), path)

    def module_of(self, path: str) -> str:
        parts = path[: -len(".py")].split("/")
        if parts[-1] == "__init__":
            parts.pop()
        start = len(parts) - 1
        while start > 0 and "/".join([*parts[:start], "__init__.py"]) in self._paths:
            start -= 1
        return ".".join(parts[start:]) if parts[start:] else ""

    def resolve(self, path: str, imp: Import) -> Resolved:
        base = self._absolute(path, imp.target)
        if base is None:
            return Resolved(unresolved=imp.target)
        relative = imp.target.startswith(".")
        files = []
        for name in imp.names:  # `from pkg import mod`: the module, when it is one
            module = self._by_module.get(f"{base}.{name}" if base else name)
            if module is not None:
                files.append(module)
        if files and len(files) == len(imp.names):
            return Resolved(files=files)
        found = self._longest(base)
        if found is not None:
            return Resolved(files=[*files, found])
        if files:
            return Resolved(files=files)
        if relative or not base:
            return Resolved(unresolved=imp.target)
        top = base.split(".")[0]
        return Resolved(external=None if top in sys.stdlib_module_names else top)

    def _absolute(self, path: str, target: str) -> str | None:
        dots = len(target) - len(target.lstrip("."))
        if dots == 0:
            return target
        package = (
            self.module_of(path).split(".")
            if path.endswith("__init__.py")
            else (self.module_of(path).split(".")[:-1])
        )
        if dots - 1 > len(package):
            return None
        kept = package[: len(package) - (dots - 1)]
        rest = target[dots:]
        return ".".join([*kept, rest] if rest else kept)

    def _longest(self, module: str) -> str | None:
        parts = module.split(".")
        for end in range(len(parts), 0, -1):
            found = self._by_module.get(".".join(parts[:end]))
            if found is not None:
                return found
        return None
