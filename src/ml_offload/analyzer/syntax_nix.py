"""Nix: the top-level attributes of a file's attribute set (under its function head and `let`),
module options (`options.a.b = mkOption …`), and what it loads: `import ./x`,
`callPackage ./x`, a module's `imports = [ ./x … ]`, `<nixpkgs>` search paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml_offload.analyzer.model import Import, Symbol
from ml_offload.analyzer.tree import complexity, line_of, span, text

if TYPE_CHECKING:
    from tree_sitter import Node

DECISIONS = frozenset({"if_expression", "assert_expression"})
NESTED = frozenset({"function_expression"})
_WRAPPERS = ("function_expression", "let_expression", "with_expression", "parenthesized_expression")
_OPTION_MAKERS = ("mkOption", "mkEnableOption", "mkPackageOption")


IMPORT_QUERY = """
(apply_expression argument: [(path_expression) (spath_expression)]) @imp
((binding attrpath: (attrpath . (identifier) @name .) expression: (list_expression)) @imp
 (#eq? @name "imports"))
"""


def extract(root: Node, found: list[Node]) -> tuple[list[Symbol], list[Import]]:
    symbols: list[Symbol] = []
    body = _top_attrset(root)
    if body is not None:
        for binding in _bindings(body):
            symbols.extend(_attribute(binding))
    imports = [imp for node in found for imp in _loads(node)]
    return symbols, imports


def _top_attrset(root: Node) -> Node | None:
    node = root.child_by_field_name("expression") or root
    while node.type in _WRAPPERS:
        inner = node.child_by_field_name("body") or node.child_by_field_name("expression")
        if inner is None:
            return None
        node = inner
    return node if node.type in ("attrset_expression", "rec_attrset_expression") else None


def _bindings(attrset: Node) -> list[Node]:
    out: list[Node] = []
    for child in attrset.named_children:
        if child.type == "binding_set":
            out.extend(b for b in child.named_children if b.type == "binding")
    return out


def _attribute(binding: Node) -> list[Symbol]:
    path = _attrpath(binding)
    value = binding.child_by_field_name("expression")
    if path and path[0] == "options":
        return _options(binding, path[1:], value)
    if value is not None and value.type == "function_expression":
        body = value.child_by_field_name("body")
        cx = complexity(body, DECISIONS, NESTED)
        return [Symbol(".".join(path), "function", line_of(binding), span(binding), cx)]
    return [Symbol(".".join(path), "attribute", line_of(binding), span(binding))]


def _options(binding: Node, path: list[str], value: Node | None) -> list[Symbol]:
    """Each leaf under `options` that calls an option maker is one option."""
    if value is not None and value.type in ("attrset_expression", "rec_attrset_expression"):
        return [
            option
            for inner in _bindings(value)
            for option in _options(
                inner, path + _attrpath(inner), inner.child_by_field_name("expression")
            )
        ]
    if value is not None and _calls_option_maker(value):
        return [Symbol(".".join(path), "option", line_of(binding), span(binding))]
    return []


def _calls_option_maker(node: Node) -> bool:
    while node.type == "apply_expression":
        function = node.child_by_field_name("function")
        if function is None:
            return False
        node = function
    return text(node).rsplit(".", 1)[-1] in _OPTION_MAKERS


def _attrpath(binding: Node) -> list[str]:
    attrpath = binding.child_by_field_name("attrpath")
    if attrpath is None:
        return []
    return [text(a).strip('"') for a in attrpath.children_by_field_name("attr")]


def _loads(node: Node) -> list[Import]:
    if node.type == "apply_expression":
        function = node.child_by_field_name("function")
        argument = node.child_by_field_name("argument")
        name = text(function).rsplit(".", 1)[-1] if function is not None else ""
        if name in ("import", "callPackage") and argument is not None:
            target = _path(argument)
            if target:
                kind = "import" if name == "import" else "callPackage"
                return [Import(target, kind, line_of(node))]
    if node.type == "binding" and _attrpath(node) == ["imports"]:
        value = node.child_by_field_name("expression")
        if value is not None and value.type == "list_expression":
            elements = value.children_by_field_name("element")
            return [Import(_path(e), "imports", line_of(e)) for e in elements if _path(e)]
    return []


def _path(node: Node) -> str:
    """`./x.nix` of a path literal, `<nixpkgs>` of a search path; "" for anything computed."""
    if node.type == "path_expression" and all(
        c.type == "path_fragment" for c in node.named_children
    ):
        return text(node)
    if node.type == "spath_expression":
        return text(node)
    return ""
