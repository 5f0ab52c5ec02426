"""`mlo health`: GPUs, the gateway, each model's engine, and a latency check per loaded model."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from ml_offload.cli.client import CliError, GatewayClient, connect
from ml_offload.cli.common import (
    CaFileOpt,
    CertOpt,
    ConfigOpt,
    JsonOpt,
    KeyOpt,
    TrackOpt,
    UrlOpt,
    device_summary,
    err,
    human_bytes,
    human_secs,
    out,
)
from ml_offload.client_tls import ClientTls
from ml_offload.pipeline import PromptResult, percentile, run_prompts
from ml_offload.tracking import check_tracking, log_run
from ml_offload.wire.native import HealthView, MemoryView, ModelList, ModelView

PROBE_PROMPT = "Reply with one short sentence about the sea."
DEFAULT_REQUESTS = 5  # per loaded model, with --measure


def health(
    url: UrlOpt = None,
    measure: Annotated[
        bool, typer.Option("--measure", help="Also measure each loaded model's latency.")
    ] = False,
    requests: Annotated[
        int | None,
        typer.Option(
            "--requests", "-n", min=0, help="Latency requests per loaded model (implies --measure)."
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens per latency request.")] = 32,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    track: TrackOpt = False,
) -> None:
    """Check GPUs and memory, the gateway and engines, in a few seconds.

    With --measure (or --requests N), each loaded model also gets N requests
    (default 5), one at a time: time to first token, total time and tokens per
    second, at p50 and p95, with a progress line per model on stderr.
    """
    if track:
        check_tracking()
    n = requests if requests is not None else (DEFAULT_REQUESTS if measure else 0)
    client = connect(url, config, timeout_s=120, tls=ClientTls(ca_file, cert, key))
    gateway = client.view(HealthView, "/health")
    vram = client.view(MemoryView, "/vram/status")
    models = client.view(ModelList, "/models").data
    ready = [m.id for m in models if m.state == "ready"]
    latency = [_latency(client, name, n, max_tokens) for name in ready if n > 0]
    if as_json:
        out.print_json(
            data={
                "gateway": gateway.model_dump(mode="json"),
                "vram": vram.model_dump(mode="json"),
                "models": [m.model_dump(mode="json") for m in models],
                "latency": latency,
            }
        )
    else:
        _print(gateway, vram, models, latency)
        if ready and not n:
            out.print("latency: not measured (mlo health --measure)")
    if track:
        _track(gateway, models, latency, n, max_tokens)
    failed = [m.id for m in models if m.state == "failed"]
    erring = [lat["model"] for lat in latency if lat["errors"]]
    if failed or erring:
        raise CliError(f"unhealthy: {', '.join(failed + erring)} (see above)")


def _track(
    gateway: HealthView,
    models: list[ModelView],
    latency: list[dict[str, Any]],
    requests: int,
    max_tokens: int,
) -> None:
    """One MLflow run: each loaded model's p50/p95 as `<model>.<measure>_<p>` metrics."""
    params = {"requests": requests, "max_tokens": max_tokens, "version": gateway.version}
    metrics: dict[str, float] = {
        "models_known": len(models),
        "models_loaded": sum(m.state == "ready" for m in models),
    }
    for lat in latency:
        metrics[f"{lat['model']}.errors"] = len(lat["errors"])
        for measure in ("ttft_ms", "latency_ms", "tokens_per_s"):
            for p, value in lat[measure].items():
                if value is not None:
                    metrics[f"{lat['model']}.{measure}_{p}"] = value
    err.print(f"MLflow run {log_run('health', params, metrics)}")  # stdout may be --json


def _latency(client: GatewayClient, model: str, n: int, max_tokens: int) -> dict[str, Any]:
    err.print(f"measuring {model}: {n} requests of up to {max_tokens} tokens...")  # stdout: --json
    params = {"max_tokens": max_tokens, "temperature": 0}
    results: list[PromptResult] = asyncio.run(
        run_prompts(
            client.url,
            [PROBE_PROMPT] * n,
            model=model,
            concurrency=1,
            parameters=params,
            verify=client.tls.verify(),
        )
    )
    good = [r for r in results if r.error is None]
    ttft = [r.ttft_ms for r in good if r.ttft_ms is not None]
    total = [r.latency_ms for r in good if r.latency_ms is not None]
    rate = [r.tokens_per_s for r in good if r.tokens_per_s is not None]
    return {
        "model": model,
        "requests": n,
        "errors": [r.error for r in results if r.error],
        "ttft_ms": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95)},
        "latency_ms": {"p50": percentile(total, 50), "p95": percentile(total, 95)},
        "tokens_per_s": {"p50": percentile(rate, 50), "p95": percentile(rate, 95)},
    }


def _print(
    gw: HealthView, vram: MemoryView, models: list[ModelView], latency: list[dict[str, Any]]
) -> None:
    out.print(
        f"gateway: {gw.status}, version {gw.version}, up {human_secs(gw.uptime_s)}, "
        f"{gw.models.loaded} of {gw.models.known} models loaded"
    )
    disk = gw.disk
    out.print(
        f"disk: {human_bytes(disk.free_bytes)} free of {human_bytes(disk.total_bytes)}"
        + (" (LOW)" if disk.low else "")
    )
    table = Table("DEVICE", "FREE", "TOTAL", "BUSY", title="memory")
    for device in vram.devices:
        table.add_row(*device_summary(device))
    cpu = vram.cpu
    table.add_row(
        "host budget (est.)", human_bytes(cpu.left_bytes), human_bytes(cpu.budget_bytes), "-"
    )
    out.print(table)
    if not vram.devices:
        out.print(f"no GPU devices reported (monitor: {vram.monitor})")
    engines = Table("MODEL", "STATE", "PID", "SLOTS", "LAST ERROR", title="engines")
    for m in models:
        if m.state != "stopped" or m.last_error:
            slots = "-" if m.slots is None else str(m.slots)
            engines.add_row(m.id, m.state, str(m.pid or "-"), slots, m.last_error or "")
    out.print(engines if engines.row_count else "engines: no model loaded")
    if latency:
        lat = Table("MODEL", "N", "TTFT P50/P95", "TOTAL P50/P95", "TOK/S P50", "ERRORS")
        for r in latency:
            rate = r["tokens_per_s"]["p50"]
            lat.add_row(
                r["model"],
                str(r["requests"]),
                _pair(r["ttft_ms"]),
                _pair(r["latency_ms"]),
                "-" if rate is None else f"{rate:.1f}",
                str(len(r["errors"])),
            )
        out.print(lat)


def _pair(stats: dict[str, float | None]) -> str:
    p50, p95 = stats["p50"], stats["p95"]
    return "-" if p50 is None or p95 is None else f"{p50:.0f} / {p95:.0f} ms"
