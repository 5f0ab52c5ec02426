"""A self-contained HTML report: inline style, an inline SVG of the dependency graph laid out by
layer, the same tables as the Markdown report. Nothing is loaded from elsewhere."""

from __future__ import annotations

from html import escape
from typing import Any

from ml_offload.analyzer.model import Analysis
from ml_offload.analyzer.report import hubs, largest, layer_groups, most_complex, totals

SVG_MAX_NODES = 400
_COL_W, _ROW_H, _BOX_W, _BOX_H = 240, 30, 210, 22
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.5rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}th{background:#f4f4f4}code{font:12px ui-monospace,monospace}
.graph{overflow:auto;border:1px solid #ddd;max-height:80vh}
.n rect{fill:#eef4fb;stroke:#4a78a8}.n.cycle rect{fill:#fde2e2;stroke:#c0392b}
.n.dead rect{fill:#eee;stroke:#999;stroke-dasharray:4 2}.n text{font:11px ui-monospace,monospace}
line{stroke:#8aa;stroke-width:1;marker-end:url(#a)}.summary{white-space:pre-wrap}
"""


def to_html(a: Analysis) -> str:
    t = totals(a)
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Code analysis: {escape(a.root)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Code analysis of <code>{escape(a.root)}</code></h1>",
        f"<p>{t['files']} files, {t['lines']} lines, {t['symbols']} symbols; {t['edges']} "
        f"internal imports, {t['cycles']} cycles, {t['layers']} layers, {t['dead']} dead "
        f"files, {t['external']} external dependencies; {t['skipped']} skipped.</p>",
    ]
    if a.summaries is not None and a.summaries.architecture:
        parts += [
            f"<h2>Architecture</h2><p><em>Explained by {escape(a.summaries.model)}.</em></p>",
            f"<p class=summary>{escape(a.summaries.architecture)}</p>",
        ]
    parts += ["<h2>Dependency graph</h2>", _svg(a)]
    parts += _tables(a)
    if a.summaries is not None and a.summaries.modules:
        parts.append("<h2>Modules</h2>")
        for path, text in sorted(a.summaries.modules.items()):
            parts.append(f"<h3><code>{escape(path)}</code></h3><p class=summary>{escape(text)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _svg(a: Analysis) -> str:
    g = a.graph
    if len(g.nodes) > SVG_MAX_NODES:
        return f"<p>{len(g.nodes)} files: too many to draw; see the tables and the JSON.</p>"
    pos: dict[str, tuple[int, int]] = {}
    groups = layer_groups(a)
    for level, paths in enumerate(groups):
        for row, path in enumerate(paths):
            pos[path] = (10 + level * _COL_W, 10 + row * _ROW_H)
    width = 20 + len(groups) * _COL_W
    height = 20 + max((len(p) for p in groups), default=0) * _ROW_H
    in_cycle = {p for c in g.cycles for p in c}
    dead = set(g.dead)
    out = [
        f'<div class=graph><svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}"><defs><marker id=a viewBox="0 0 10 10" refX=10 refY=5 '
        'markerWidth=6 markerHeight=6 orient=auto><path d="M0,0L10,5L0,10z" fill="#8aa"/>'
        "</marker></defs>"
    ]
    for src, dst in g.edges:
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        out.append(f'<line x1="{x1}" y1="{y1 + _BOX_H // 2}" x2="{x2 + _BOX_W}" '
                   f'y2="{y2 + _BOX_H // 2}"/>')  # fmt: skip
    for path, (x, y) in pos.items():
        cls = "n cycle" if path in in_cycle else "n dead" if path in dead else "n"
        label = path if len(path) <= 32 else "…" + path[-31:]
        out.append(
            f'<g class="{cls}"><title>{escape(path)}</title><rect x="{x}" y="{y}" '
            f'width="{_BOX_W}" height="{_BOX_H}" rx=3 /><text x="{x + 5}" y="{y + 15}">'
            f"{escape(label)}</text></g>"
        )
    out.append("</svg></div><p>Columns are layers (0: imports nothing inside). Red: in a "
               "cycle. Grey, dashed: dead.</p>")  # fmt: skip
    return "".join(out)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _tables(a: Analysis) -> list[str]:
    g = a.graph
    return [
        _table("Cycles", ["files"], [[" ↔ ".join(c)] for c in g.cycles]),
        _table("Fan-in and fan-out", ["file", "fan-in", "fan-out"],
               [[p, g.fan_in[p], g.fan_out[p]] for p in hubs(a)]),
        _table("Largest files", ["file", "lines", "bytes", "symbols"],
               [[f.path, f.lines, f.size_bytes, len(f.symbols)] for f in largest(a.files)]),
        _table("Most complex functions", ["file", "function", "complexity"],
               [list(u) for u in most_complex(a)]),
        _table("Dead files", ["file"], [[p] for p in g.dead]),
        _table("External dependencies", ["dependency", "files using it"],
               [[k, len(v)] for k, v in a.external.items()]),
        _table("Skipped", ["path", "reason"], [[s.path, s.reason] for s in a.skipped]),
    ]  # fmt: skip
