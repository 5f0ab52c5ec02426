"""The module dependency graph: cycles (strongly connected groups), layers (longest path to a
file that imports nothing inside the root), fan-in and fan-out, and dead files."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from ml_offload.analyzer.model import FileFacts, Graph

_ENTRY_NAMES = frozenset(
    {
        "__main__.py", "__init__.py", "setup.py", "conftest.py", "manage.py", "main.py",
        "main.rs", "lib.rs", "build.rs",
        "flake.nix", "shell.nix",
    }
)  # fmt: skip
_ENTRY_DIRS = ("tests/", "examples/", "benches/", "src/bin/", "bench/")
_TS_ENTRY_STEMS = frozenset({"index", "main", "cli", "server", "app"})


def build_graph(files: list[FileFacts]) -> Graph:
    nodes = sorted(f.path for f in files)
    edges = sorted({(f.path, dep) for f in files for dep in f.internal})
    out: dict[str, list[str]] = {n: [] for n in nodes}
    fan_in = dict.fromkeys(nodes, 0)
    for src, dst in edges:
        out[src].append(dst)
        fan_in[dst] += 1
    groups = strongly_connected(nodes, out)
    cycles = sorted(sorted(g) for g in groups if len(g) > 1 or (g[0] in out[g[0]]))
    return Graph(
        nodes=nodes,
        edges=edges,
        cycles=cycles,
        layer=layers(groups, out),
        fan_in=fan_in,
        fan_out={n: len(out[n]) for n in nodes},
        dead=[n for n in nodes if fan_in[n] == 0 and not is_entry_point(n)],
    )


def is_entry_point(path: str) -> bool:
    """Files that run or load without being imported: package roots, crate roots and targets,
    tests, flakes, the root `default.nix`, TypeScript `index`/`main` files at the top."""
    name = posixpath.basename(path)
    if name in _ENTRY_NAMES or name.startswith("test_") or name.endswith("_test.py"):
        return True
    if any(path.startswith(d) or f"/{d}" in path for d in _ENTRY_DIRS):
        return True
    if path == "default.nix":
        return True
    stem = name.split(".")[0]
    if ".test." in name or ".spec." in name:
        return True
    depth = path.count("/")
    return stem in _TS_ENTRY_STEMS and (depth == 0 or (depth == 1 and path.startswith("src/")))


def strongly_connected(nodes: Iterable[str], out: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (deep import chains must not hit the recursion limit).
    Groups come out in reverse topological order: a group after every group it imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            deps = out[node]
            if i < len(deps):
                work.append((node, i + 1))
                dep = deps[i]
                if dep not in index:
                    work.append((dep, 0))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return groups


def layers(groups: list[list[str]], out: dict[str, list[str]]) -> dict[str, int]:
    """Layer 0 imports nothing inside; otherwise 1 + the highest layer it imports. Files of
    one cycle share a layer."""
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    layer: dict[str, int] = {}
    for i, group in enumerate(groups):  # reverse topological: dependencies come first
        deps = {d for n in group for d in out[n] if group_of[d] != i}
        level = 1 + max((layer[d] for d in deps), default=-1)
        for n in group:
            layer[n] = level
    return layer
