"""Rust: items (functions, structs, enums, traits, impls and their methods, type aliases,
inline modules), `use` paths with their lists expanded, `mod x;` declarations, `extern crate`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml_offload.analyzer.model import Import, Symbol, SymbolKind
from ml_offload.analyzer.tree import complexity, line_of, span, text

if TYPE_CHECKING:
    from tree_sitter import Node

DECISIONS = frozenset(
    {"if_expression", "match_arm", "while_expression", "for_expression", "loop_expression",
     "try_expression"}
)  # fmt: skip
NESTED = frozenset({"function_item", "closure_expression"})
ITEMS: dict[str, SymbolKind] = {
    "struct_item": "struct",
    "enum_item": "enum",
    "trait_item": "trait",
    "type_item": "type",
    "union_item": "struct",
    "const_item": "constant",
    "static_item": "constant",
}


IMPORT_QUERY = ""  # none: `use` and `mod` are items, read in the one pass over items


def extract(root: Node, found: list[Node]) -> tuple[list[Symbol], list[Import]]:
    symbols: list[Symbol] = []
    imports: list[Import] = []
    _items(root, "", symbols, imports)
    return symbols, imports


def _items(container: Node, prefix: str, symbols: list[Symbol], imports: list[Import]) -> None:
    for node in container.named_children:
        kind = node.type
        if kind == "function_item":
            symbols.append(_function(node, prefix, "function"))
        elif kind in ITEMS:
            name = prefix + text(node.child_by_field_name("name"))
            symbols.append(Symbol(name, ITEMS[kind], line_of(node), span(node)))
        elif kind == "impl_item":
            symbols.extend(_impl(node, prefix))
        elif kind == "mod_item":
            _module(node, prefix, symbols, imports)
        elif kind == "use_declaration":
            imports.extend(_use(node))
        elif kind == "extern_crate_declaration":
            name = text(node.child_by_field_name("name"))
            imports.append(Import(name, "extern_crate", line_of(node)))


def _module(node: Node, prefix: str, symbols: list[Symbol], imports: list[Import]) -> None:
    name = text(node.child_by_field_name("name"))
    body = node.child_by_field_name("body")
    if body is None:  # `mod x;`: the module lives in its own file
        imports.append(Import(prefix.replace(".", "::") + name, "mod", line_of(node)))
        return
    symbols.append(Symbol(prefix + name, "module", line_of(node), span(node)))
    _items(body, f"{prefix}{name}.", symbols, imports)


def _function(node: Node, prefix: str, kind: SymbolKind) -> Symbol:
    return Symbol(
        name=prefix + text(node.child_by_field_name("name")),
        kind=kind,
        line=line_of(node),
        lines=span(node),
        complexity=complexity(node.child_by_field_name("body"), DECISIONS, NESTED),
    )


def _impl(node: Node, prefix: str) -> list[Symbol]:
    target = text(node.child_by_field_name("type"))
    trait = text(node.child_by_field_name("trait"))
    label = f"{trait} for {target}" if trait else target
    out = [Symbol(prefix + label, "impl", line_of(node), span(node))]
    body = node.child_by_field_name("body")
    for child in body.named_children if body is not None else ():
        if child.type == "function_item":
            out.append(_function(child, f"{prefix}{target}.", "method"))
    return out


def _use(node: Node) -> list[Import]:
    public = any(c.type == "visibility_modifier" for c in node.named_children)
    kind = "reexport" if public else "use"
    argument = node.child_by_field_name("argument")
    return [Import(path, kind, line_of(node)) for path in _paths(argument, "")]


def _paths(node: Node | None, prefix: str) -> list[str]:
    """The full paths a use tree names: `a::{b, c::d}` gives `a::b` and `a::c::d`."""
    if node is None:
        return []
    if node.type == "use_as_clause":
        return _paths(node.child_by_field_name("path"), prefix)
    if node.type == "use_wildcard":
        inner = next(iter(node.named_children), None)
        return [_join(prefix, text(inner))] if inner is not None else [prefix]
    if node.type == "scoped_use_list":
        base = _join(prefix, text(node.child_by_field_name("path")))
        return _paths(node.child_by_field_name("list"), base)
    if node.type == "use_list":
        return [p for child in node.named_children for p in _paths(child, prefix)]
    return [_join(prefix, text(node))]


def _join(prefix: str, path: str) -> str:
    path = "".join(path.split())
    if path == "self":
        return prefix
    return f"{prefix}::{path}" if prefix and path else prefix or path
