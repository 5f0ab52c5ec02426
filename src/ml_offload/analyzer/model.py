"""Plain types of an analysis: what a file holds, what it imports, the graph, the report's data.

Paths are POSIX paths relative to the analysed root; they name files everywhere (graph nodes,
edges, summaries), so one file has one name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Language = Literal["python", "rust", "typescript", "nix"]
LANGUAGES: tuple[Language, ...] = ("python", "rust", "typescript", "nix")

SymbolKind = Literal[
    "function", "method", "class", "struct", "enum", "trait", "impl", "type", "interface",
    "module", "constant", "attribute", "option",
]  # fmt: skip


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: SymbolKind
    line: int  # 1-based
    lines: int
    complexity: int | None = None  # functions and methods: 1 + decision points


@dataclass(frozen=True)
class Import:
    """One import as written: `target` in the language's own spelling (`..pkg.mod`,
    `crate::a::b`, `./x`, `./mod.nix`), `names` what a Python `from` import takes from it."""

    target: str
    # import, from, use, mod, extern_crate, reexport, require, dynamic, imports, callPackage
    kind: str
    line: int
    names: tuple[str, ...] = ()


@dataclass
class FileFacts:
    path: str
    language: Language
    size_bytes: int
    lines: int
    sha256: str
    symbols: list[Symbol] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    module: str = ""  # set by resolution: `pkg.mod`, `crate::a`, `src/x`, `modules/a.nix`
    internal: list[str] = field(default_factory=list)  # files it imports, sorted
    external: list[str] = field(default_factory=list)  # packages and crates outside the root
    unresolved: list[str] = field(default_factory=list)  # relative imports with no file
    parse_errors: int = 0  # syntax errors tree-sitter recovered from

    @property
    def max_complexity(self) -> int:
        return max((s.complexity or 0 for s in self.symbols), default=0)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Graph:
    nodes: list[str]
    edges: list[tuple[str, str]]  # (importer, imported), sorted
    cycles: list[list[str]]  # strongly connected groups of two or more files (or a self-import)
    layer: dict[str, int]  # longest path to a file that imports nothing inside the root
    fan_in: dict[str, int]
    fan_out: dict[str, int]
    dead: list[str]  # imported by nothing and not an entry point


@dataclass
class Summaries:
    model: str
    modules: dict[str, str] = field(default_factory=dict)  # path -> summary
    architecture: str = ""
    calls: int = 0  # model calls this run made (cached summaries cost none)
    cached: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    root: str
    languages: list[Language]
    files: list[FileFacts]
    skipped: list[Skipped]
    graph: Graph
    external: dict[str, list[str]]  # package or crate -> files that use it
    changed: list[str] | None = None  # with --changed-since: files changed since that revision
    summaries: Summaries | None = None
    seconds: float = 0.0
