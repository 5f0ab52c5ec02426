"""Helpers over tree-sitter nodes shared by the language modules: text, lines, complexity."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tree_sitter import Node

_LOGICAL_OWNERS = ("boolean_operator", "binary_expression")


def text(node: Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return node.text.decode("utf-8", "replace")


def line_of(node: Node) -> int:
    return node.start_point[0] + 1


def span(node: Node) -> int:
    return node.end_point[0] - node.start_point[0] + 1


def complexity(body: Node | None, decisions: frozenset[str], nested: frozenset[str]) -> int:
    """1 + the decision points under `body`, not counting functions defined inside it."""
    if body is None:
        return 1
    count = 1
    for node in (body, *walk(body, nested)):
        if node.type in decisions or (
            node.type in ("boolean_operator", "binary_expression") and _is_logical(node)
        ):
            count += 1
    return count


def walk(node: Node, stop: frozenset[str] = frozenset()) -> Iterator[Node]:
    """Every named node under `node` (not itself), not descending into `stop` types."""
    stack = list(reversed(node.named_children))
    while stack:
        child = stack.pop()
        yield child
        if child.type not in stop:
            stack.extend(reversed(child.named_children))


def _is_logical(node: Node) -> bool:
    op = node.child_by_field_name("operator")
    return text(op) in ("and", "or", "&&", "||", "??")
