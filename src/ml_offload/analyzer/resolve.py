"""Imports to files: each language's resolver maps what a file imports to files inside the
root, and names what lies outside (packages, crates, search paths) as external.

Resolution is lexical: it reads the tree and the project files (Cargo.toml, tsconfig.json),
never imports or runs the code.
"""

from __future__ import annotations

from pathlib import Path

from ml_offload.analyzer.model import FileFacts, Language
from ml_offload.analyzer.resolve_base import Resolver
from ml_offload.analyzer.resolve_nix import NixResolver
from ml_offload.analyzer.resolve_python import PythonResolver
from ml_offload.analyzer.resolve_rust import RustResolver
from ml_offload.analyzer.resolve_ts import TypeScriptResolver


def resolve_all(root: Path, files: list[FileFacts]) -> None:
    """Set each file's module name, the files it imports, and its external dependencies."""
    paths = frozenset(f.path for f in files)
    resolvers: dict[Language, Resolver] = {
        "python": PythonResolver(paths),
        "rust": RustResolver(root, paths),
        "typescript": TypeScriptResolver(root, paths),
        "nix": NixResolver(paths),
    }
    for facts in files:
        resolver = resolvers[facts.language]
        facts.module = resolver.module_of(facts.path)
        internal: set[str] = set()
        external: set[str] = set()
        unresolved: set[str] = set()
        for imp in facts.imports:
            found = resolver.resolve(facts.path, imp)
            internal.update(found.files)
            if found.external:
                external.add(found.external)
            if found.unresolved:
                unresolved.add(found.unresolved)
        facts.internal = sorted(internal)
        facts.external = sorted(external)
        facts.unresolved = sorted(unresolved)
