"""Tree-sitter parsing: one parser per grammar, and per file its symbols, imports and sizes.

What each language declares is read by its own module (`syntax_*.py`) from the syntax tree;
this module holds what they share: the parsers, complexity counting, and the file's facts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ml_offload.analyzer import syntax_nix, syntax_python, syntax_rust, syntax_ts
from ml_offload.analyzer.model import FileFacts, Import, Language, Skipped, Symbol
from ml_offload.analyzer.tree import line_of
from ml_offload.errors import ConfigError

if TYPE_CHECKING:
    from tree_sitter import Node, Parser, Query

Extractor = Callable[["Node", "list[Node]"], tuple[list[Symbol], list[Import]]]
_UNPARSABLE_SHARE = 0.5  # more than half of the file in syntax errors: skipped, not guessed at


class Parsers:
    """The tree-sitter parsers this run needs, created on first use (grammars ship compiled
    in `tree-sitter-language-pack`; nothing is fetched)."""

    def __init__(self) -> None:
        self._parsers: dict[str, Parser] = {}
        self._queries: dict[str, Query] = {}

    def get(self, grammar: str) -> Parser:
        parser = self._parsers.get(grammar)
        if parser is None:
            try:
                from tree_sitter_language_pack import get_parser
            except ImportError:
                raise ConfigError(
                    "the analyzer needs tree-sitter-language-pack: pip install ml-offload"
                ) from None
            parser = self._parsers[grammar] = get_parser(grammar)  # type: ignore[arg-type]
        return parser

    def imports(self, grammar: str, language: Language, root: Node) -> list[Node]:
        """The nodes that may be imports, found by the language's query (in C: walking every
        node in Python cost most of the analysis time), in the order of the file."""
        if not IMPORT_QUERIES[language]:
            return []
        query = self._queries.get(grammar)
        if query is None:
            from tree_sitter import Query
            from tree_sitter_language_pack import get_language

            lang = get_language(grammar)  # type: ignore[arg-type]
            query = self._queries[grammar] = Query(lang, IMPORT_QUERIES[language])
        from tree_sitter import QueryCursor

        found = QueryCursor(query).captures(root).get("imp", [])
        return sorted(found, key=lambda n: n.start_byte)


def grammar_for(path: str, language: Language) -> str:
    if language == "typescript":
        return "tsx" if path.endswith((".tsx", ".jsx")) else "typescript"
    return language


IMPORT_QUERIES: dict[Language, str] = {
    "python": syntax_python.IMPORT_QUERY,
    "rust": syntax_rust.IMPORT_QUERY,
    "typescript": syntax_ts.IMPORT_QUERY,
    "nix": syntax_nix.IMPORT_QUERY,
}
EXTRACTORS: dict[Language, Extractor] = {
    "python": syntax_python.extract,
    "rust": syntax_rust.extract,
    "typescript": syntax_ts.extract,
    "nix": syntax_nix.extract,
}


def parse_file(parsers: Parsers, path: str, language: Language, data: bytes) -> FileFacts | Skipped:
    grammar = grammar_for(path, language)
    tree = parsers.get(grammar).parse(data)
    root = tree.root_node
    errors = _error_bytes(root)
    if data.strip() and errors > _UNPARSABLE_SHARE * len(data):
        line = _first_error_line(root)
        return Skipped(path, f"unparsable as {language}: syntax errors from line {line}")
    symbols, imports = EXTRACTORS[language](root, parsers.imports(grammar, language, root))
    return FileFacts(
        path=path,
        language=language,
        size_bytes=len(data),
        lines=data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1),
        sha256=hashlib.sha256(data).hexdigest(),
        symbols=symbols,
        imports=imports,
        parse_errors=_count_errors(root),
    )


def _error_bytes(root: Node) -> int:
    if root.type == "ERROR":
        return root.end_byte - root.start_byte
    return sum(c.end_byte - c.start_byte for c in root.children if c.type == "ERROR")


def _first_error_line(root: Node) -> int:
    if root.type == "ERROR":
        return line_of(root)
    return next((line_of(c) for c in root.children if c.type == "ERROR"), 1)


def _count_errors(root: Node) -> int:
    """Syntax errors tree-sitter recovered from: ERROR nodes and missing tokens."""
    if not root.has_error:
        return 0
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        elif node.has_error:
            stack.extend(node.children)
    return count
