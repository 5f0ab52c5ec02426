"""Rust: crates from `Cargo.toml` (workspace members are crates inside the root), each file's
module path from its place under the crate's `src/`, `mod x;` to `x.rs` or `x/mod.rs`, and
`use` paths (`crate::`, `self::`, `super::`, a sibling module, a workspace crate) to the file
of the longest module prefix."""

from __future__ import annotations

import posixpath
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ml_offload.analyzer.model import Import
from ml_offload.analyzer.resolve_base import Resolved, inside

BUILTIN_CRATES = frozenset({"std", "core", "alloc", "proc_macro", "test"})
_ROOT_FILES = frozenset({"lib.rs", "main.rs", "mod.rs"})
_TARGET_DIRS = ("src/bin/", "tests/", "examples/", "benches/")


@dataclass(frozen=True)
class Crate:
    name: str  # as code names it: dashes become underscores
    folder: str  # relative to the analysed root ("" for the root itself)


class RustResolver:
    def __init__(self, root: Path, paths: frozenset[str]) -> None:
        self._paths = paths
        self._crates: dict[str, Crate | None] = {}  # folder -> crate, cached
        self._root = root
        self._module: dict[str, tuple[Crate | None, tuple[str, ...]]] = {}
        self._by_module: dict[tuple[str, tuple[str, ...]], str] = {}
        for path in sorted(p for p in paths if p.endswith(".rs")):
            crate, module = self._place(path)
            self._module[path] = (crate, module)
            if crate is not None and not _is_target_root(crate, path):
                self._by_module.setdefault((crate.folder, module), path)
        self._by_name = {c.name: c for c in self._crates.values() if c is not None}

    def module_of(self, path: str) -> str:
        crate, module = self._module[path]
        return "::".join([crate.name if crate else "crate", *module])

    def resolve(self, path: str, imp: Import) -> Resolved:
        crate, module = self._module[path]
        if imp.kind == "mod":
            return self._mod(path, imp.target)
        if imp.kind == "extern_crate":
            return self._crate_root(imp.target)
        segments = [s for s in imp.target.split("::") if s]
        if not segments:
            return Resolved()
        head = segments[0]
        if crate is None:
            return Resolved(external=None if head in BUILTIN_CRATES else head)
        if head in ("crate", "self", "super"):
            return self._within(crate, _absolute(module, segments), imp.target)
        child = self._longest(crate, (*module, *segments))  # a submodule: `mod x;` then `use x::`
        if child is not None and len(self._module[child][1]) > len(module):
            return Resolved(files=[child])
        if head in self._by_name:
            return self._within(self._by_name[head], tuple(segments[1:]), imp.target)
        return Resolved(external=None if head in BUILTIN_CRATES else head)

    def _mod(self, path: str, target: str) -> Resolved:
        folder = posixpath.dirname(path)
        name = posixpath.basename(path)
        crate, _ = self._module[path]
        is_root = name in _ROOT_FILES or (crate is not None and _is_target_root(crate, path))
        if not is_root:
            folder = posixpath.join(folder, name[: -len(".rs")])
        rel = "/".join(target.split("::"))
        base = posixpath.join(folder, rel)
        found = inside(f"{base}.rs", self._paths) or inside(f"{base}/mod.rs", self._paths)
        return Resolved(files=[found]) if found else Resolved(unresolved=f"mod {target}")

    def _within(self, crate: Crate, module: tuple[str, ...] | None, target: str) -> Resolved:
        if module is None:
            return Resolved(unresolved=target)
        found = self._longest(crate, module)
        return Resolved(files=[found]) if found else Resolved(unresolved=target)

    def _crate_root(self, name: str) -> Resolved:
        crate = self._by_name.get(name)
        if crate is None:
            return Resolved(external=None if name in BUILTIN_CRATES else name)
        found = self._longest(crate, ())
        return Resolved(files=[found]) if found else Resolved()

    def _longest(self, crate: Crate, module: tuple[str, ...]) -> str | None:
        for end in range(len(module), -1, -1):
            found = self._by_module.get((crate.folder, module[:end]))
            if found is not None:
                return found
        return None

    def _place(self, path: str) -> tuple[Crate | None, tuple[str, ...]]:
        crate = self._crate_of(posixpath.dirname(path))
        if crate is None:
            return None, ()
        rel = path[len(crate.folder) + 1 :] if crate.folder else path
        if _is_target_root(crate, path) or not rel.startswith("src/"):
            return crate, ()
        parts = rel[len("src/") : -len(".rs")].split("/")
        if parts[-1] in ("lib", "main", "mod"):
            parts.pop()
        return crate, tuple(parts)

    def _crate_of(self, folder: str) -> Crate | None:
        if folder in self._crates:
            return self._crates[folder]
        crate = _read_crate(self._root, folder)
        if crate is None and folder:
            crate = self._crate_of(posixpath.dirname(folder))
        self._crates[folder] = crate
        return crate


def _read_crate(root: Path, folder: str) -> Crate | None:
    manifest = root / folder / "Cargo.toml"
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    package = data.get("package")
    if not isinstance(package, dict) or not isinstance(package.get("name"), str):
        return None  # a virtual workspace manifest: its members are crates of their own
    lib = data.get("lib")
    name = lib.get("name") if isinstance(lib, dict) and isinstance(lib.get("name"), str) else None
    return Crate(name=(name or package["name"]).replace("-", "_"), folder=folder)


def _is_target_root(crate: Crate, path: str) -> bool:
    """A file that is a crate root of its own: `src/bin/x.rs`, `tests/x.rs`, `examples/x.rs`."""
    rel = path[len(crate.folder) + 1 :] if crate.folder else path
    return any(rel.startswith(d) and rel.count("/") == d.count("/") for d in _TARGET_DIRS)


def _absolute(module: tuple[str, ...], segments: list[str]) -> tuple[str, ...] | None:
    """The module path a `crate::`, `self::` or `super::` path names, None above the root."""
    if segments[0] == "crate":
        return tuple(segments[1:])
    current = list(module)
    i = 1 if segments[0] == "self" else 0
    while i < len(segments) and segments[i] == "super":
        if not current:
            return None
        current.pop()
        i += 1
    return (*current, *segments[i:])
