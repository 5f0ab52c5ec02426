"""Python: top-level functions and classes (with their methods), `import` and `from` imports
(relative ones keep their dots), from the syntax tree."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml_offload.analyzer.model import Import, Symbol
from ml_offload.analyzer.tree import complexity, line_of, span, text

if TYPE_CHECKING:
    from tree_sitter import Node

DECISIONS = frozenset(
    {
        "if_statement", "elif_clause", "for_statement", "while_statement", "except_clause",
        "conditional_expression", "for_in_clause", "if_clause", "case_clause", "with_statement",
    }
)  # fmt: skip
NESTED = frozenset({"function_definition", "class_definition", "lambda"})


IMPORT_QUERY = "[(import_statement) (import_from_statement)] @imp"


def extract(root: Node, found: list[Node]) -> tuple[list[Symbol], list[Import]]:
    symbols: list[Symbol] = []
    for node in root.named_children:
        definition = _unwrap(node)
        if definition.type == "function_definition":
            symbols.append(_function(definition, "function", ""))
        elif definition.type == "class_definition":
            symbols.extend(_class(definition))
    # anywhere: inside `if TYPE_CHECKING:`, `try:` or a function too
    imports = [imp for node in found for imp in _imports(node)]
    return symbols, imports


def _unwrap(node: Node) -> Node:
    if node.type == "decorated_definition":
        return node.child_by_field_name("definition") or node
    return node


def _function(node: Node, kind: str, owner: str) -> Symbol:
    name = text(node.child_by_field_name("name"))
    return Symbol(
        name=f"{owner}.{name}" if owner else name,
        kind="method" if kind == "method" else "function",
        line=line_of(node),
        lines=span(node),
        complexity=complexity(node.child_by_field_name("body"), DECISIONS, NESTED),
    )


def _class(node: Node) -> list[Symbol]:
    name = text(node.child_by_field_name("name"))
    out = [Symbol(name=name, kind="class", line=line_of(node), lines=span(node))]
    body = node.child_by_field_name("body")
    for child in body.named_children if body is not None else ():
        member = _unwrap(child)
        if member.type == "function_definition":
            out.append(_function(member, "method", name))
    return out


def _imports(node: Node) -> list[Import]:
    if node.type == "import_statement":
        return [
            Import(_dotted(name), "import", line_of(node))
            for name in node.children_by_field_name("name")
        ]
    if node.type == "import_from_statement":
        module = node.child_by_field_name("module_name")
        names = tuple(_dotted(n) for n in node.children_by_field_name("name"))
        if any(c.type == "wildcard_import" for c in node.named_children):
            names = ("*",)
        return [Import(text(module), "from", line_of(node), names)]
    return []


def _dotted(node: Node) -> str:
    """`a.b` of `a.b` or of `a.b as c`."""
    if node.type == "aliased_import":
        return text(node.child_by_field_name("name"))
    return text(node)
