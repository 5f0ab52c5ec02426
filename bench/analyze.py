"""Code analyzer speed: files/s of `mlo analyze --no-llm` (discover, tree-sitter parse, resolve,
graph) over a large real codebase available offline, by default the project venv's
site-packages (tens of thousands of Python files), and the time of each report format.

    python bench/analyze.py [--path DIR] [--lang python] [--runs 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import site
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs

from ml_offload.analyzer import Options, analyze
from ml_offload.analyzer.discover import SKIP_DIRS, parse_languages
from ml_offload.analyzer.output import render


def site_packages() -> Path:
    path = Path(sysconfig.get_paths()["purelib"])
    return path if path.is_dir() else Path(site.getsitepackages()[0])


def run_once(path: Path, options: Options) -> dict[str, Any]:
    t0 = time.perf_counter()
    a = analyze(path, options)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "files": len(a.files),
        "skipped": len(a.skipped),
        "lines": sum(f.lines for f in a.files),
        "megabytes": sum(f.size_bytes for f in a.files) / 1e6,
        "edges": len(a.graph.edges),
        "cycles": len(a.graph.cycles),
        "seconds": seconds,
        "files_per_s": len(a.files) / seconds,
    }
    for fmt in ("json", "markdown", "html"):
        t1 = time.perf_counter()
        size = len(render(a, fmt))
        row[f"{fmt}_seconds"] = time.perf_counter() - t1
        row[f"{fmt}_bytes"] = size
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", type=Path, default=None, help="default: this venv's site-packages")
    ap.add_argument("--lang", default="python")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = args.path or site_packages()
    options = Options(languages=tuple(parse_languages(args.lang)))
    print(f"machine: {procs.machine_note()}")
    print(f"codebase: {path} ({args.lang}); site-packages itself is walked, nested")
    print(f"  folders named {', '.join(sorted(SKIP_DIRS))} are not")
    watch = procs.CpuWatch()
    rows = [run_once(path, options) for _ in range(args.runs)]
    if args.json:
        print(json.dumps(rows, indent=2))
    for i, r in enumerate(rows, 1):
        print(
            f"run {i}: {r['files']:,} files ({r['lines']:,} lines, {r['megabytes']:.0f} MB), "
            f"{r['skipped']} skipped, {r['edges']:,} edges, {r['cycles']} cycles in "
            f"{r['seconds']:.1f}s = {r['files_per_s']:,.0f} files/s | reports: json "
            f"{r['json_seconds']:.2f}s, markdown {r['markdown_seconds']:.2f}s, html "
            f"{r['html_seconds']:.2f}s"
        )
    print(procs.noise_note(watch.foreign_cores()))


if __name__ == "__main__":
    main()
