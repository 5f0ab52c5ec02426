"""Reports of an analysis: JSON (the documented schema, docs/analyzer.md), Markdown with a
Mermaid dependency graph and tables. The HTML page is built from the same data (html.py)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ml_offload.analyzer.model import Analysis, FileFacts

SCHEMA_VERSION = 1
TOP = 10  # rows in the "largest" and "most complex" tables
MERMAID_MAX_EDGES = 300  # past this a diagram is unreadable; the JSON has every edge


def to_json(a: Analysis) -> dict[str, Any]:
    g = a.graph
    return {
        "schema_version": SCHEMA_VERSION,
        "root": a.root,
        "languages": a.languages,
        "seconds": round(a.seconds, 3),
        "totals": totals(a),
        "files": [_file_json(f, a) for f in a.files],
        "skipped": [asdict(s) for s in a.skipped],
        "graph": {
            "edges": [list(e) for e in g.edges],
            "cycles": g.cycles,
            "layers": layer_groups(a),
            "dead": g.dead,
        },
        "external": a.external,
        "largest": [f.path for f in largest(a.files)],
        "most_complex": [
            {"path": path, "symbol": name, "complexity": cx} for path, name, cx in most_complex(a)
        ],
        "changed": a.changed,
        "summaries": asdict(a.summaries) if a.summaries is not None else None,
    }


def _file_json(f: FileFacts, a: Analysis) -> dict[str, Any]:
    return {
        "path": f.path,
        "language": f.language,
        "module": f.module,
        "size_bytes": f.size_bytes,
        "lines": f.lines,
        "sha256": f.sha256,
        "parse_errors": f.parse_errors,
        # plain dicts: dataclasses.asdict deep-copies (19x slower, measured on sqlalchemy)
        "symbols": [
            {
                "name": s.name,
                "kind": s.kind,
                "line": s.line,
                "lines": s.lines,
                "complexity": s.complexity,
            }
            for s in f.symbols
        ],
        "imports": [
            {"target": i.target, "kind": i.kind, "line": i.line, "names": list(i.names)}
            for i in f.imports
        ],
        "internal": f.internal,
        "external": f.external,
        "unresolved": f.unresolved,
        "fan_in": a.graph.fan_in[f.path],
        "fan_out": a.graph.fan_out[f.path],
        "layer": a.graph.layer[f.path],
    }


def totals(a: Analysis) -> dict[str, Any]:
    by_language: dict[str, int] = {}
    for f in a.files:
        by_language[f.language] = by_language.get(f.language, 0) + 1
    return {
        "files": len(a.files),
        "skipped": len(a.skipped),
        "lines": sum(f.lines for f in a.files),
        "symbols": sum(len(f.symbols) for f in a.files),
        "edges": len(a.graph.edges),
        "cycles": len(a.graph.cycles),
        "layers": 1 + max(a.graph.layer.values(), default=-1),
        "dead": len(a.graph.dead),
        "external": len(a.external),
        "by_language": by_language,
    }


def layer_groups(a: Analysis) -> list[list[str]]:
    count = 1 + max(a.graph.layer.values(), default=-1)
    groups: list[list[str]] = [[] for _ in range(count)]
    for path, level in sorted(a.graph.layer.items()):
        groups[level].append(path)
    return groups


def largest(files: list[FileFacts], n: int = TOP) -> list[FileFacts]:
    return sorted(files, key=lambda f: (-f.lines, f.path))[:n]


def most_complex(a: Analysis, n: int = TOP) -> list[tuple[str, str, int]]:
    units = [(f.path, s.name, s.complexity) for f in a.files for s in f.symbols if s.complexity]
    return sorted(units, key=lambda u: (-u[2], u[0], u[1]))[:n]


def hubs(a: Analysis, n: int = TOP) -> list[str]:
    """The files most imported, then most importing."""
    g = a.graph
    return sorted(g.nodes, key=lambda p: (-g.fan_in[p], -g.fan_out[p], p))[:n]


def mermaid(a: Analysis) -> str:
    g = a.graph
    edges = g.edges[:MERMAID_MAX_EDGES]
    shown = sorted({p for e in edges for p in e} | set(g.dead))
    ids = {p: f"n{i}" for i, p in enumerate(shown)}
    in_cycle = {p for c in g.cycles for p in c}
    lines = ["graph LR"]
    lines += [f'  {ids[p]}["{p}"]' for p in shown]
    lines += [f"  {ids[s]} --> {ids[d]}" for s, d in edges]
    lines.append("  classDef cycle fill:#fde2e2,stroke:#c0392b")
    lines.append("  classDef dead fill:#eee,stroke:#999,stroke-dasharray: 4 2")
    cyc = [ids[p] for p in shown if p in in_cycle]
    dead = [ids[p] for p in g.dead if p in ids]
    if cyc:
        lines.append(f"  class {','.join(cyc)} cycle")
    if dead:
        lines.append(f"  class {','.join(dead)} dead")
    return "\n".join(lines)


def to_markdown(a: Analysis) -> str:
    t = totals(a)
    g = a.graph
    out = [f"# Code analysis of `{a.root}`", ""]
    langs = ", ".join(f"{k} {v}" for k, v in sorted(t["by_language"].items())) or "none"
    out += [
        f"{t['files']} files ({langs}), {t['lines']} lines, {t['symbols']} symbols; "
        f"{t['edges']} internal imports, {t['cycles']} cycles, {t['layers']} layers, "
        f"{t['dead']} dead files, {t['external']} external dependencies; "
        f"{t['skipped']} skipped. Analysed in {a.seconds:.2f}s.",
        "",
    ]
    if a.summaries is not None and a.summaries.architecture:
        out += ["## Architecture", "", f"_Explained by `{a.summaries.model}`._", ""]
        out += [a.summaries.architecture.strip(), ""]
    if len(g.edges) > MERMAID_MAX_EDGES:
        out += [f"_The diagram shows the first {MERMAID_MAX_EDGES} of {len(g.edges)} edges._"]
    out += ["## Dependency graph", "", "```mermaid", mermaid(a), "```", ""]
    out += _cycles_md(a) + _layers_md(a) + _hubs_md(a) + _largest_md(a) + _complex_md(a)
    out += _dead_md(a) + _external_md(a) + _modules_md(a) + _skipped_md(a)
    return "\n".join(out).rstrip() + "\n"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*out, ""]


def _cycles_md(a: Analysis) -> list[str]:
    out = ["## Cycles", ""]
    if not a.graph.cycles:
        return [*out, "None.", ""]
    return out + [f"- {' ↔ '.join(f'`{p}`' for p in c)}" for c in a.graph.cycles] + [""]


def _layers_md(a: Analysis) -> list[str]:
    rows = [[i, len(ps), ", ".join(f"`{p}`" for p in ps[:8]) + (" …" if len(ps) > 8 else "")]
            for i, ps in enumerate(layer_groups(a))]  # fmt: skip
    return ["## Layers (longest import path)", "", *_table(["layer", "count", "files"], rows)]


def _hubs_md(a: Analysis) -> list[str]:
    g = a.graph
    rows = [[f"`{p}`", g.fan_in[p], g.fan_out[p]] for p in hubs(a)]
    return ["## Fan-in and fan-out", "", *_table(["file", "fan-in", "fan-out"], rows)]


def _largest_md(a: Analysis) -> list[str]:
    rows = [[f"`{f.path}`", f.lines, f.size_bytes, len(f.symbols)] for f in largest(a.files)]
    return ["## Largest files", "", *_table(["file", "lines", "bytes", "symbols"], rows)]


def _complex_md(a: Analysis) -> list[str]:
    rows = [[f"`{p}`", f"`{name}`", cx] for p, name, cx in most_complex(a)]
    return ["## Most complex functions", "", *_table(["file", "function", "complexity"], rows)]


def _dead_md(a: Analysis) -> list[str]:
    out = ["## Dead files (imported by nothing, not an entry point)", ""]
    return out + ([f"- `{p}`" for p in a.graph.dead] or ["None."]) + [""]


def _external_md(a: Analysis) -> list[str]:
    rows = [[f"`{name}`", len(users)] for name, users in a.external.items()]
    return ["## External dependencies", "", *_table(["dependency", "files using it"], rows)]


def _modules_md(a: Analysis) -> list[str]:
    if a.summaries is None or not a.summaries.modules:
        return []
    out = ["## Modules", ""]
    for path, text in sorted(a.summaries.modules.items()):
        out += [f"### `{path}`", "", text.strip(), ""]
    return out


def _skipped_md(a: Analysis) -> list[str]:
    if not a.skipped:
        return []
    return ["## Skipped", "", *_table(["path", "reason"], [[s.path, s.reason] for s in a.skipped])]
