"""TypeScript and JavaScript: top-level declarations (exported or not), `import`, re-exports
(`export … from`), `require("x")` and `import("x")` calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml_offload.analyzer.model import Import, Symbol, SymbolKind
from ml_offload.analyzer.tree import complexity, line_of, span, text

if TYPE_CHECKING:
    from tree_sitter import Node

DECISIONS = frozenset(
    {"if_statement", "for_statement", "for_in_statement", "while_statement", "do_statement",
     "switch_case", "catch_clause", "ternary_expression"}
)  # fmt: skip
FUNCTIONS = frozenset(
    {"function_declaration", "generator_function_declaration", "arrow_function",
     "function_expression", "function", "method_definition"}
)  # fmt: skip
DECLARATIONS: dict[str, SymbolKind] = {
    "class_declaration": "class",
    "abstract_class_declaration": "class",
    "interface_declaration": "interface",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
    "internal_module": "module",
    "module": "module",
}


IMPORT_QUERY = """
(import_statement) @imp
(export_statement source: (string)) @imp
(call_expression function: (import) arguments: (arguments . (string))) @imp
((call_expression function: (identifier) @fn arguments: (arguments . (string))) @imp
 (#eq? @fn "require"))
"""


def extract(root: Node, found: list[Node]) -> tuple[list[Symbol], list[Import]]:
    symbols: list[Symbol] = []
    for node in root.named_children:
        symbols.extend(_declared(_unwrap_export(node)))
    imports = [imp for node in found for imp in _imports(node)]
    return symbols, imports


def _unwrap_export(node: Node) -> Node:
    if node.type == "export_statement":
        return node.child_by_field_name("declaration") or node.child_by_field_name("value") or node
    return node


def _declared(node: Node) -> list[Symbol]:
    kind = node.type
    name = text(node.child_by_field_name("name"))
    if kind in ("function_declaration", "generator_function_declaration"):
        return [_function(node, name, "function")]
    if kind in DECLARATIONS:
        out = [Symbol(name, DECLARATIONS[kind], line_of(node), span(node))]
        if kind in ("class_declaration", "abstract_class_declaration"):
            out.extend(_methods(node, name))
        return out
    if kind in ("lexical_declaration", "variable_declaration"):
        return [_variable(d) for d in node.named_children if d.type == "variable_declarator"]
    return []


def _variable(node: Node) -> Symbol:
    name = text(node.child_by_field_name("name"))
    value = node.child_by_field_name("value")
    if value is not None and value.type in FUNCTIONS:
        return _function(value, name, "function", line_of(node))
    return Symbol(name, "constant", line_of(node), span(node))


def _methods(node: Node, owner: str) -> list[Symbol]:
    body = node.child_by_field_name("body")
    members = body.named_children if body is not None else []
    return [
        _function(m, f"{owner}.{text(m.child_by_field_name('name'))}", "method")
        for m in members
        if m.type == "method_definition"
    ]


def _function(node: Node, name: str, kind: SymbolKind, line: int | None = None) -> Symbol:
    body = node.child_by_field_name("body")
    return Symbol(
        name, kind, line or line_of(node), span(node), complexity(body, DECISIONS, FUNCTIONS)
    )


def _imports(node: Node) -> list[Import]:
    if node.type == "import_statement":
        return [Import(_string(node.child_by_field_name("source")), "import", line_of(node))]
    if node.type == "export_statement" and node.child_by_field_name("source") is not None:
        return [Import(_string(node.child_by_field_name("source")), "reexport", line_of(node))]
    if node.type == "call_expression":
        function = node.child_by_field_name("function")
        args = node.child_by_field_name("arguments")
        first = args.named_children[0] if args is not None and args.named_children else None
        if function is not None and first is not None and first.type == "string":
            if function.type == "import":
                return [Import(_string(first), "dynamic", line_of(node))]
            if text(function) == "require":
                return [Import(_string(first), "require", line_of(node))]
    return []


def _string(node: Node | None) -> str:
    if node is None:
        return ""
    return "".join(text(c) for c in node.named_children if c.type == "string_fragment")
