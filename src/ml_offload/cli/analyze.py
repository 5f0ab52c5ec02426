"""`mlo analyze PATH`: the structure of a codebase (tree-sitter), explained by a model the
gateway serves (unless --no-llm), written as a Markdown, JSON or HTML report."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ml_offload.analyzer import Analysis, Options, analyze
from ml_offload.analyzer.discover import DEFAULT_MAX_FILE_BYTES, parse_languages
from ml_offload.analyzer.output import SUFFIXES, Format, render
from ml_offload.analyzer.summarize import Ask, Budget, summarize
from ml_offload.cli.client import CliError, connect, error_message
from ml_offload.cli.common import ConfigOpt, UrlOpt, err, out
from ml_offload.config import client_headers, xdg_dir
from ml_offload.errors import AuthError, EngineError, MloError, ModelNotFound, PermissionDenied

_REFUSALS: dict[int, type[MloError]] = {
    401: AuthError,
    403: PermissionDenied,
    404: ModelNotFound,
}


def analyze_command(
    path: Annotated[Path, typer.Argument(help="Folder of the codebase.")],
    lang: Annotated[
        str | None,
        typer.Option("--lang", help="Languages, comma-separated: rust,python,nix,typescript."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="A .md, .json or .html report (default: Markdown out)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Model to explain the code (default: the gateway's first)."
        ),
    ] = None,
    no_llm: Annotated[
        bool, typer.Option("--no-llm", help="Structure only: no model, offline and fast.")
    ] = False,
    changed_since: Annotated[
        str | None,
        typer.Option("--changed-since", help="Git revision: explain only what changed since."),
    ] = None,
    max_file_bytes: Annotated[
        int, typer.Option("--max-file-bytes", min=1, help="Skip larger files.")
    ] = DEFAULT_MAX_FILE_BYTES,
    max_llm_files: Annotated[
        int, typer.Option("--max-llm-files", min=1, help="Modules the model explains, at most.")
    ] = Budget.max_files,
    url: UrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Analyse a Rust, Python, Nix or TypeScript codebase: modules, imports, cycles, layers,
    and (with a model the gateway serves) what each part is for."""
    fmt = _format(output)
    options = Options(
        languages=tuple(parse_languages(lang)),
        max_file_bytes=max_file_bytes,
        changed_since=changed_since,
    )
    analysis = _with_progress("parsing", lambda p: analyze(path, options, p))
    if not no_llm:
        target = _pick_model(url, config, model)
        if target is not None:
            budget = Budget(context_tokens=target[2], max_files=max_llm_files)
            analysis.summaries = _with_progress(
                "explaining", lambda p: asyncio.run(_summarize(analysis, target, budget, p))
            )
    _write(analysis, output, fmt)
    err.print(_summary_line(analysis, output))


def _format(output: Path | None) -> Format:
    if output is None:
        return "markdown"
    fmt = SUFFIXES.get(output.suffix.lower())
    if fmt is None:
        raise CliError(f"--out {output}: name a .md, .json or .html file")
    return fmt


def _pick_model(
    explicit_url: str | None, config: Path | None, wanted: str | None
) -> tuple[str, str, int] | None:
    """(gateway, model, context tokens per request) of the model to use; None, with a warning,
    when no model was asked for and none answers (the report is then structure only)."""
    try:
        client = connect(explicit_url, config, timeout_s=30)
        url = client.url
        models: list[dict[str, Any]] = client.get("/models")["data"]
    except (CliError, MloError) as exc:
        if wanted is not None:
            raise
        err.print(f"warning: {exc}; the report has the structure only (--no-llm skips this)")
        return None
    if wanted is not None:
        found = next((m for m in models if wanted == m["id"] or wanted in m["aliases"]), None)
        if found is None:
            names = ", ".join(m["id"] for m in models) or "none"
            raise CliError(f"--model {wanted}: the gateway at {url} has no such model ({names})")
    else:
        ready = [m for m in models if m["state"] == "ready"]
        found = (ready or models)[0] if models else None
        if found is None:
            err.print(f"warning: the gateway at {url} serves no model; structure only")
            return None
    return url, str(found["id"]), int(found.get("ctx_size") or Budget.context_tokens)


async def _summarize(
    analysis: Analysis, target: tuple[str, str, int], budget: Budget, progress: Any
) -> Any:
    url, model, _ = target
    async with httpx.AsyncClient(
        base_url=url, timeout=600, trust_env=False, headers=client_headers()
    ) as http:
        ask = _gateway_ask(http, model)
        cache = xdg_dir("data") / "analyzer"
        return await summarize(analysis, ask, model, budget, cache, progress)


def _gateway_ask(http: httpx.AsyncClient, model: str) -> Ask:
    """One chat completion through the gateway's OpenAI API, so its routing picks the engine."""

    async def ask(system: str, user: str, max_tokens: int) -> str:
        body = {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            "temperature": 0.2,
        }
        try:
            resp = await http.post("/v1/chat/completions", json=body)
        except httpx.TransportError as exc:
            raise CliError(f"the gateway stopped answering: {exc}") from None
        if resp.status_code >= 400:
            error = _REFUSALS.get(resp.status_code, EngineError)
            raise error(f"{model}: {error_message(resp)}")
        content = resp.json()["choices"][0]["message"].get("content")
        return str(content or "")

    return ask


def _with_progress(label: str, job: Any) -> Any:
    """`job(progress)` with a bar on stderr, drawn from the first step (a bad path fails
    before any bar is drawn)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # a bar in a log or a pipe is noise
    )
    task = bar.add_task(label, total=None)

    def progress(done: int, total: int, rel: str) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        return job(progress)
    finally:
        if bar.live.is_started:
            bar.stop()


def _write(analysis: Analysis, output: Path | None, fmt: Format) -> None:
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
    line = (
        f"{len(a.files)} files, {len(g.edges)} imports, {len(g.cycles)} cycles, "
        f"{len(g.dead)} dead, {len(a.skipped)} skipped in {a.seconds:.2f}s"
    )
    s = a.summaries
    if s is not None:
        line += (
            f"; {s.model}: {len(s.modules)} modules explained, {s.calls} calls, {s.cached} cached"
        )
        if s.errors:
            line += f", {len(s.errors)} failed (first: {s.errors[0]})"
    return line + (f"; report in {output}" if output is not None else "")
