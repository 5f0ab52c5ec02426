"""Batch prompts through a gateway, measure them, and export the results.

`run_prompts` sends each prompt to the native streaming `/inference` endpoint over one pooled
async client, at most `concurrency` at a time (the model's slots), and records the answer,
token counts, time to first token and tokens per second. Results are written as JSON (the
format `mlo export` reads back), JSONL, CSV, a Markdown table or plain text.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import httpx

from ml_offload.config import client_headers
from ml_offload.errors import InvalidRequest, MloError

Format = Literal["json", "jsonl", "md", "txt", "csv"]
FORMATS: tuple[str, ...] = get_args(Format)


@dataclass(slots=True)
class PromptResult:
    index: int
    prompt: str
    answer: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    tokens_per_s: float | None = None
    finish_reason: str | None = None
    error: str | None = None


class GatewayError(MloError):
    """The gateway answered an error or could not be reached."""

    status = 502
    code = "gateway_error"


async def run_prompts(
    url: str,
    prompts: Sequence[str],
    *,
    model: str,
    concurrency: int,
    parameters: dict[str, Any] | None = None,
    on_result: Callable[[PromptResult], None] | None = None,
    timeout_s: float = 600.0,
    verify: ssl.SSLContext | bool = True,
) -> list[PromptResult]:
    """Every prompt's result, in prompt order; `on_result` sees each as it finishes."""
    limit = asyncio.Semaphore(max(1, concurrency))
    limits = httpx.Limits(max_connections=max(1, concurrency))
    async with httpx.AsyncClient(
        base_url=url,
        timeout=timeout_s,
        limits=limits,
        trust_env=False,
        headers=client_headers(),
        verify=verify,
    ) as client:

        async def one(index: int, prompt: str) -> PromptResult:
            async with limit:
                result = await ask(client, model, prompt, parameters or {}, index)
            if on_result is not None:
                on_result(result)
            return result

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


async def ask(
    client: httpx.AsyncClient, model: str, prompt: str, parameters: dict[str, Any], index: int = 0
) -> PromptResult:
    """One streamed chat request; an error from the model is kept in the result."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "parameters": parameters,
        "stream": True,
    }
    result = PromptResult(index=index, prompt=prompt, answer="", model=model)
    parts: list[str] = []
    started = time.perf_counter()
    try:
        async with client.stream("POST", "/inference", json=body) as resp:
            if resp.status_code >= 400:
                raise GatewayError(_error_message(await resp.aread(), resp.status_code))
            async for event in _events(resp):
                _apply(result, event, parts, started)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except GatewayError as exc:
        result.error = exc.message
    result.answer = "".join(parts)
    result.latency_ms = round((time.perf_counter() - started) * 1000, 2)
    result.tokens_per_s = _rate(result)
    return result


async def _events(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def _apply(result: PromptResult, event: dict[str, Any], parts: list[str], started: float) -> None:
    if "text" in event:
        if result.ttft_ms is None:
            result.ttft_ms = round((time.perf_counter() - started) * 1000, 2)
        parts.append(event["text"])
    elif "error" in event:
        result.error = str(event["error"].get("message") or event["error"])
    elif event.get("done"):
        usage = event.get("usage") or {}
        result.prompt_tokens = usage.get("prompt_tokens")
        result.completion_tokens = usage.get("completion_tokens")
        result.finish_reason = event.get("finish_reason")


def _rate(result: PromptResult) -> float | None:
    """Generation speed: tokens after the first, over the time after the first."""
    n, total, first = result.completion_tokens, result.latency_ms, result.ttft_ms
    if not n or total is None or first is None or n < 2 or total <= first:
        return None
    return round((n - 1) / ((total - first) / 1000), 2)


def _error_message(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# Reading and writing results


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: JSONL (`{"prompt": ...}` or a string per line), a JSON list, or
    plain text with one prompt per line (blank lines and `#` comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        items: list[Any] = json.loads(stripped)
    elif stripped.startswith(("{", '"')):
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    prompts = [i["prompt"] if isinstance(i, dict) else str(i) for i in items]
    if not prompts:
        raise InvalidRequest(f"no prompts in {path}")
    return prompts


def format_for(path: Path | None, explicit: str | None, default: Format = "txt") -> Format:
    """The export format: explicit, else from the file's extension, else `default`."""
    name = explicit or (path.suffix.lstrip(".").lower() if path else "") or default
    name = {"markdown": "md", "text": "txt", "ndjson": "jsonl"}.get(name, name)
    if name not in FORMATS:
        raise InvalidRequest(f"unknown format {name!r}; use one of {', '.join(FORMATS)}")
    return name  # type: ignore[return-value]


def render(results: Sequence[PromptResult], fmt: Format) -> str:
    return _WRITERS[fmt](results)


def write_results(results: Sequence[PromptResult], path: Path, fmt: Format) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(results, fmt), encoding="utf-8")
    tmp.replace(path)


def load_results(path: Path) -> list[PromptResult]:
    """Results from a JSON file written by `mlo run` (or a JSONL one)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            rows = data["results"] if isinstance(data, dict) else data
        names = {f.name for f in fields(PromptResult)}
        return [PromptResult(**{k: v for k, v in row.items() if k in names}) for row in rows]
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{path} is not a results file from `mlo run`: {exc}") from None


def _json(results: Sequence[PromptResult]) -> str:
    data = {"count": len(results), "results": [asdict(r) for r in results]}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _jsonl(results: Sequence[PromptResult]) -> str:
    return "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in results)


def _csv(results: Sequence[PromptResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([f.name for f in fields(PromptResult)])
    for r in results:
        writer.writerow(["" if v is None else v for v in asdict(r).values()])
    return buf.getvalue()


_MD_COLUMNS = ("#", "prompt", "answer", "model", "tokens", "ttft ms", "total ms", "tok/s")


def _md(results: Sequence[PromptResult]) -> str:
    lines = ["| " + " | ".join(_MD_COLUMNS) + " |", "|" + "---|" * len(_MD_COLUMNS)]
    for r in results:
        answer = r.answer if r.error is None else f"error: {r.error}"
        cells = [
            str(r.index + 1),
            _md_cell(r.prompt),
            _md_cell(answer),
            _md_cell(r.model),
            _opt(r.completion_tokens),
            _opt(r.ttft_ms),
            _opt(r.latency_ms),
            _opt(r.tokens_per_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _txt(results: Sequence[PromptResult]) -> str:
    blocks = []
    for r in results:
        stats = f"{r.model}, {_opt(r.completion_tokens)} tokens, {_opt(r.latency_ms)} ms"
        answer = r.answer if r.error is None else f"error: {r.error}"
        blocks.append(f"[{r.index + 1}] {r.prompt}\n\n{answer.strip()}\n\n({stats})\n")
    return ("\n" + "-" * 72 + "\n\n").join(blocks)


def _opt(value: float | None) -> str:
    return "-" if value is None else str(value)


_WRITERS: dict[str, Callable[[Sequence[PromptResult]], str]] = {
    "json": _json,
    "jsonl": _jsonl,
    "csv": _csv,
    "md": _md,
    "txt": _txt,
}
