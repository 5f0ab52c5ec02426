"""One analysis, structure only: find files, parse them, resolve imports, build the graph.

The LLM pass (summarize.py) runs on the result; reports (report.py) render it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ml_offload.analyzer.discover import (
    DEFAULT_MAX_FILE_BYTES,
    candidates,
    changed_since,
    check_root,
    read,
)
from ml_offload.analyzer.graph import build_graph
from ml_offload.analyzer.model import LANGUAGES, Analysis, FileFacts, Language, Skipped
from ml_offload.analyzer.parse import Parsers, parse_file
from ml_offload.analyzer.resolve import resolve_all

Progress = Callable[[int, int, str], None]  # (done, total, path)


@dataclass(frozen=True)
class Options:
    languages: tuple[Language, ...] = LANGUAGES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    changed_since: str | None = None


def analyze(path: Path, options: Options = Options(), progress: Progress | None = None) -> Analysis:
    started = time.perf_counter()
    root = check_root(path)
    changed = changed_since(root, options.changed_since) if options.changed_since else None
    found, skipped = candidates(root, options.languages)
    parsers = Parsers()
    files: list[FileFacts] = []
    for done, (rel, language) in enumerate(found, 1):
        raw = read(root, rel, language, options.max_file_bytes)
        item = raw if isinstance(raw, Skipped) else _parse(parsers, rel, language, raw.data)
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            files.append(item)
        if progress is not None:
            progress(done, len(found), rel)
    resolve_all(root, files)
    external: dict[str, list[str]] = {}
    for facts in files:
        for name in facts.external:
            external.setdefault(name, []).append(facts.path)
    return Analysis(
        root=str(root),
        languages=list(options.languages),
        files=files,
        skipped=sorted(skipped, key=lambda s: s.path),
        graph=build_graph(files),
        external=dict(sorted(external.items())),
        changed=sorted(p for p in changed if p in {f.path for f in files}) if changed else None,
        seconds=time.perf_counter() - started,
    )


def _parse(parsers: Parsers, path: str, language: Language, data: bytes) -> FileFacts | Skipped:
    try:
        return parse_file(parsers, path, language, data)
    except (ValueError, RecursionError) as exc:  # a grammar that gives up on the file
        return Skipped(path, f"unparsable as {language}: {exc}")
