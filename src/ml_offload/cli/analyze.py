"""`mlo analyze PATH`: the structure of a codebase (tree-sitter), written as a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from ml_offload.analyzer import Analysis, Options, analyze
from ml_offload.analyzer.discover import DEFAULT_MAX_FILE_BYTES, parse_languages
from ml_offload.analyzer.report import to_json, to_markdown
from ml_offload.cli.client import CliError
from ml_offload.cli.common import err, out

FORMATS = {".md": "markdown", ".json": "json"}


def analyze_command(
    path: Annotated[Path, typer.Argument(help="Folder of the codebase.")],
    lang: Annotated[
        str | None,
        typer.Option("--lang", help="Languages, comma-separated: rust,python,nix,typescript."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="A .md or .json report (default: Markdown on stdout)."),
    ] = None,
    changed_since: Annotated[
        str | None,
        typer.Option("--changed-since", help="Git revision: list the files changed since it."),
    ] = None,
    max_file_bytes: Annotated[
        int, typer.Option("--max-file-bytes", min=1, help="Skip larger files.")
    ] = DEFAULT_MAX_FILE_BYTES,
) -> None:
    """Analyse a Rust, Python, Nix or TypeScript codebase: modules, imports, cycles, layers."""
    fmt = _format(output)
    options = Options(
        languages=tuple(parse_languages(lang)),
        max_file_bytes=max_file_bytes,
        changed_since=changed_since,
    )
    analysis = _with_progress(path, options)
    _write(analysis, output, fmt)
    err.print(_summary_line(analysis, output))


def _format(output: Path | None) -> str:
    if output is None:
        return "markdown"
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise CliError(f"--out {output}: name a .md or .json file")
    return fmt


def _with_progress(path: Path, options: Options) -> Analysis:
    """The analysis with a progress bar on stderr, shown once files are found (a bad path
    fails before any bar is drawn)."""
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("parsing", total=None)

    def progress(done: int, total: int, rel: str) -> None:
        if done == 1:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        return analyze(path, options, progress)
    finally:
        if bar.live.is_started:
            bar.stop()


def render(analysis: Analysis, fmt: str) -> bytes:
    if fmt == "json":
        return orjson.dumps(to_json(analysis), option=orjson.OPT_INDENT_2)
    return to_markdown(analysis).encode()


def _write(analysis: Analysis, output: Path | None, fmt: str) -> None:
    data = render(analysis, fmt)
    if output is None:
        out.file.write(data.decode())
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror}") from None


def _summary_line(a: Analysis, output: Path | None) -> str:
    g = a.graph
    where = f"; report in {output}" if output is not None else ""
    return (
        f"{len(a.files)} files, {len(g.edges)} imports, {len(g.cycles)} cycles, "
        f"{len(g.dead)} dead, {len(a.skipped)} skipped in {a.seconds:.2f}s{where}"
    )
