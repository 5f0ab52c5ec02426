"""`mlo run` (prompts through a model, start to finish) and `mlo export` (convert results)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from ml_offload.cli.client import CliError, GatewayClient, resolve_gateway
from ml_offload.cli.common import (
    CaFileOpt,
    CertOpt,
    ConfigOpt,
    KeyOpt,
    TrackOpt,
    UrlOpt,
    err,
    out,
    settings_for,
    state_dir,
)
from ml_offload.client_tls import ClientTls, explain
from ml_offload.config import config_path
from ml_offload.daemon import spawn, terminate, wait_ready
from ml_offload.pipeline import (
    FORMATS,
    Format,
    PromptResult,
    format_for,
    load_results,
    read_prompts,
    render,
    run_prompts,
    write_results,
)
from ml_offload.tracking import check_tracking, log_run, result_metrics
from ml_offload.wire.native import ModelList, ModelView

FormatOpt = Annotated[
    str | None,
    typer.Option("--format", "-f", help=f"One of {', '.join(FORMATS)} (default: from --output)."),
]


def run(
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="One prompt.", show_default=False)
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help='A file of prompts: one per line, JSONL ({"prompt": ...}) or a JSON list.',
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name or alias (default: the loaded one)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write results here (default: print them)."),
    ] = None,
    fmt: FormatOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 512,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Prompts at once (default: the model's slots).")
    ] = None,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    track: TrackOpt = False,
) -> None:
    """Run prompts through a model; save answers with tokens and timings.

    Starts a gateway if none answers (and stops it at the end), sends the
    prompts in parallel up to the model's slots, and writes prompt, answer,
    model, tokens and timings as json, jsonl, md, txt or csv.
    Ctrl-C stops cleanly and keeps the finished results.
    """
    texts = _prompts(prompt, prompts)
    if track:
        check_tracking()
    chosen = format_for(output, fmt, "txt")
    parameters: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        parameters["temperature"] = temperature
    results: dict[int, PromptResult] = {}
    tls = ClientTls(ca_file, cert, key)
    with _gateway(url, config, tls) as gateway_url:
        client = GatewayClient(gateway_url, tls=tls)
        name, slots = _model(client, model)
        try:
            _run(client, texts, name, concurrency or slots, parameters, results)
        except KeyboardInterrupt:
            _save(results, output, chosen)
            err.print(f"interrupted: kept {len(results)} of {len(texts)} results")
            raise typer.Exit(130) from None
    _save(results, output, chosen)
    if track:
        _track(results, name, parameters, concurrency or slots, output)
    failed = [r for r in results.values() if r.error]
    if failed:
        raise CliError(f"{len(failed)} of {len(texts)} prompts failed: {failed[0].error}")


def export(
    results_file: Annotated[
        Path, typer.Argument(help="A results file written by `mlo run` (json or jsonl).")
    ],
    fmt: FormatOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write (default: next to it; '-': print)."),
    ] = None,
) -> None:
    """Convert `mlo run` results to md, txt, jsonl, csv or json."""
    if fmt is None and output is None:
        raise CliError(f"give --format ({', '.join(FORMATS)}) or an --output file name")
    results = load_results(results_file)
    to_stdout = output is not None and str(output) == "-"
    chosen = format_for(None if to_stdout else output, fmt)
    if to_stdout:
        sys.stdout.write(render(results, chosen))
        return
    target = output or results_file.with_suffix(f".{chosen}")
    if target.resolve() == results_file.resolve():
        raise CliError(f"{target} is the input file; give another --output")
    write_results(results, target, chosen)
    out.print(f"wrote {len(results)} results to {target}")


def _prompts(prompt: str | None, prompts: Path | None) -> list[str]:
    if (prompt is None) == (prompts is None):
        raise CliError("give --prompt TEXT or --prompts FILE (one of them)")
    return [prompt] if prompt is not None else read_prompts(prompts)  # type: ignore[arg-type]


def _model(client: GatewayClient, explicit: str | None) -> tuple[str, int]:
    """The model to use and its slots: explicit, else the one loaded, else the only one."""
    if explicit is not None:
        m = client.view(ModelView, f"/models/{explicit}")
        return m.id, m.parallel
    models = client.view(ModelList, "/models").data
    ready = [m for m in models if m.state == "ready"]
    pick = ready if len(ready) == 1 else models
    if len(pick) != 1:
        names = ", ".join(m.id for m in models) or "none"
        raise CliError(f"choose a model with --model; the gateway has: {names}")
    return pick[0].id, pick[0].parallel


def _run(
    client: GatewayClient,
    texts: list[str],
    model: str,
    concurrency: int,
    parameters: dict[str, Any],
    results: dict[int, PromptResult],
) -> None:
    started = time.perf_counter()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=len(texts) < 2,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{model}", total=len(texts))

        def done(result: PromptResult) -> None:
            results[result.index] = result
            bar.advance(task)

        job = run_prompts(
            client.url,
            texts,
            model=model,
            concurrency=concurrency,
            parameters=parameters,
            on_result=done,
            verify=client.tls.verify(),
        )
        asyncio.run(job)
    ok = sum(r.error is None for r in results.values())
    err.print(
        f"{len(texts)} prompts, {ok} answered, model {model}, "
        f"{time.perf_counter() - started:.1f}s ({concurrency} at a time)"
    )


def _track(
    results: dict[int, PromptResult],
    model: str,
    parameters: dict[str, Any],
    concurrency: int,
    output: Path | None,
) -> None:
    ordered = [results[i] for i in sorted(results)]
    params = {"model": model, "concurrency": concurrency, **parameters}
    run_id = log_run(f"run {model}", params, result_metrics(ordered), output)
    err.print(f"MLflow run {run_id}")


def _save(results: dict[int, PromptResult], output: Path | None, fmt: Format) -> None:
    ordered = [results[i] for i in sorted(results)]
    if output is None:
        sys.stdout.write(render(ordered, fmt))
        return
    write_results(ordered, output, fmt)
    err.print(f"results: {output}")


@contextlib.contextmanager
def _gateway(explicit: str | None, config: Path | None, tls: ClientTls) -> Iterator[str]:
    """A gateway URL that answers: the given one, the daemon's, or one started here (and
    stopped on the way out; over HTTPS when the config serves TLS)."""
    url = resolve_gateway(explicit, config).url
    if _answers(url, tls):
        yield url
        return
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        raise CliError(f"no gateway answers at {url}, and only a local one can be started here")
    settings_for(config)  # a bad config fails in one line, before spawning
    log = state_dir() / "run.log"
    proc = spawn(host=parts.hostname, port=parts.port, config=config_path(config), log_path=log)
    try:
        err.print(f"starting a gateway at {url} (log {log})")
        wait_ready(url, proc, log, 60.0, tls)
        yield url
    finally:
        terminate(proc.pid, 20.0)


def _answers(url: str, tls: ClientTls) -> bool:
    """Whether a gateway answers at `url`; one we cannot talk TLS with is an error."""
    try:
        with httpx.Client(verify=tls.verify(), timeout=2.0, trust_env=False) as http:
            return http.get(f"{url}/health").status_code == 200
    except httpx.HTTPError as exc:
        reason = explain(exc, url, tls)
        if reason is not None:
            raise CliError(reason) from None
        return False
