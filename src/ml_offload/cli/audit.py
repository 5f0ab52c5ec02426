"""`mlo audit tail|verify|export`: read the audit log file straight from disk.

They read the file the config names (security.audit.path, else <data_dir>/audit/audit.jsonl),
or --file, so they work with the gateway down and on copies of a log.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from ml_offload.cli.client import CliError
from ml_offload.cli.common import ConfigOpt, JsonOpt, out, settings_for
from ml_offload.security.audit import audit_path
from ml_offload.security.audit_format import Entry, iso_time, log_files, to_json
from ml_offload.security.audit_read import VerifyResult, export, follow, tail, verify
from ml_offload.security.audit_sign import load_public_key, public_pem, signing_key_path

app = typer.Typer(
    help="The tamper-evident audit log (read from disk; the gateway may be down).",
    no_args_is_help=True,
)

FileOpt = Annotated[
    Path | None,
    typer.Option("--file", help="A log file (default: security.audit.path or its default)."),
]
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def _log_file(config: Path | None, file: Path | None) -> Path:
    path = file or audit_path(settings_for(config))
    if not log_files(path):
        raise CliError(
            f"no audit log at {path} (the gateway writes it as it serves requests; "
            "see security.audit in the config, or give --file)"
        )
    return path


@app.command("tail")
def tail_cmd(
    n: Annotated[int, typer.Option("-n", "--lines", help="How many entries.", min=0)] = 20,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new entries.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOpt = None,
    file: FileOpt = None,
) -> None:
    """Show the last entries (oldest first)."""
    path = _log_file(config, file)
    entries, offset = tail(path, n)
    if as_json:
        _print_json(entries)
    elif follow_:
        for e in entries:
            out.print(_one_line(e))
    else:
        _print_table(entries)
    if follow_:
        for e in follow(path, offset):
            _print_json([e]) if as_json else out.print(_one_line(e))


@app.command("verify")
def verify_cmd(
    logs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Logs to check, e.g. one per gateway of a fleet, each its own chain (default: "
            "--file, or the config's).",
            show_default=False,
        ),
    ] = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--public-key",
            help="Check the signed checkpoints with this key (`mlo audit public-key`); repeat "
            "for keys used before, or for each gateway whose log is checked.",
        ),
    ] = None,
    config: ConfigOpt = None,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the hash chain: exit 0 ("ok: N entries") or 1 naming the first broken entry;
    with several logs, a line for each, and exit 1 if any is broken."""
    paths = [_log_file(None, p) for p in logs] if logs else [_log_file(config, file)]
    try:
        keys = [load_public_key(p) for p in public_key or []]
    except ValueError as exc:
        raise CliError(f"{exc}; give the file `mlo audit public-key` wrote") from None
    results = [(path, verify(path, keys or None)) for path in paths]
    broken = [path for path, result in results if result.broken is not None]
    if as_json:
        data = [_verified_json(path, result, bool(keys)) for path, result in results]
        sys.stdout.write(to_json(data if logs else data[0]).decode() + "\n")
        if broken:
            raise typer.Exit(1)
        return
    if not logs:
        path, result = results[0]
        if result.broken is not None:
            raise CliError(f"audit log {path} is broken at {result.broken}")
        out.print(_verified_line(result, bool(keys)))
        return
    for path, result in results:
        if result.broken is None:
            out.print(f"{path}: {_verified_line(result, bool(keys))}")
        else:
            out.print(f"{path}: broken at {result.broken}")
    if broken:
        raise CliError(f"{len(broken)} of {len(results)} audit logs are broken")


def _verified_json(path: Path, result: VerifyResult, signatures: bool) -> dict[str, Any]:
    return {
        "file": str(path),
        "ok": result.ok,
        "entries": result.entries,
        "last_seq": result.last_seq,
        "last_hash": result.last_hash,
        "torn_bytes": result.torn_bytes,
        "checkpoints": result.checkpoints,
        "signatures_checked": signatures,
        "unsigned_tail": result.unsigned_tail,
        "broken": None if result.broken is None else str(result.broken),
    }


def _verified_line(result: VerifyResult, signatures: bool) -> str:
    torn = (
        f"; an incomplete last line ({result.torn_bytes} bytes, left by a crash) is cut when "
        "the gateway next starts"
        if result.torn_bytes
        else ""
    )
    signed = (
        f"; {result.checkpoints} signed checkpoints verified"
        if signatures
        else "; signatures not checked (give --public-key)"
        if result.checkpoints
        else ""
    )
    return f"ok: {result.entries} entries, last hash {result.last_hash}{signed}{torn}"


@app.command("public-key")
def public_key_cmd(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the public key that verifies the log's signed checkpoints (PEM): keep a copy
    away from the gateway's machine."""
    settings = settings_for(config)
    key_file = signing_key_path(settings.security.audit, audit_path(settings))
    if not key_file.is_file():
        raise CliError(
            f"no audit signing key at {key_file}: the gateway creates it when it first starts "
            "with security.audit.sign on (security.audit.signing_key_file sets where)"
        )
    try:
        pem = public_pem(load_public_key(key_file)).decode("ascii")
    except ValueError as exc:
        raise CliError(f"{exc}; check security.audit.signing_key_file") from None
    if output is None:
        sys.stdout.write(pem)
        return
    try:
        output.write_text(pem)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    out.print(f"wrote the audit public key to {output}")


@app.command("export")
def export_cmd(
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl or csv.", case_sensitive=False)
    ] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only entries from then on: 30m, 2h, 7d, an ISO date/time, or unix s."),
    ] = None,
    config: ConfigOpt = None,
    file: FileOpt = None,
) -> None:
    """Write the entries as JSON lines or CSV (each with its seq and hash)."""
    kind = fmt.lower()
    if kind not in ("jsonl", "csv"):
        raise CliError(f"unknown --format {fmt!r}: use jsonl or csv")
    chosen: Literal["jsonl", "csv"] = "csv" if kind == "csv" else "jsonl"
    path = _log_file(config, file)
    start = None if since is None else parse_since(since)
    if output is None:
        export(path, sys.stdout, chosen, start)
        return
    try:
        with output.open("w", encoding="utf-8", newline="") as f:
            count = export(path, f, chosen, start)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    out.print(f"exported {count} entries to {output}")


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time from `30m`/`2h`/`7d` (ago), an ISO 8601 date or time (local unless it has an
    offset), or a unix timestamp."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        return now - float(m.group(1)) * _UNITS_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise CliError(
            f"cannot read --since {text!r}: use 30m, 2h, 7d, 2026-01-31, 2026-01-31T08:00 "
            "or a unix timestamp"
        ) from None


def _print_json(entries: list[Entry]) -> None:
    for e in entries:
        sys.stdout.write(to_json(e.flat()).decode() + "\n")
    sys.stdout.flush()


def _print_table(entries: list[Entry]) -> None:
    if not entries:
        out.print("no entries")
        return
    table = Table("SEQ", "TIME (UTC)", "KEY", "CLIENT", "MODEL", "BACKEND", "STATUS", "TOKENS")
    table.add_column("LATENCY", justify="right")
    table.add_column("PATH")
    for e in entries:
        table.add_row(*_fields(e))
    out.print(table)


def _one_line(e: Entry) -> str:
    return "  ".join(_fields(e))


def _fields(e: Entry) -> list[str]:
    ev: dict[str, Any] = e.event
    if ev.get("audit") == "dropped":
        return [
            str(e.seq),
            _when(ev),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            f"{ev.get('count')} dropped",
        ]
    tokens = f"{ev.get('prompt_tokens') or 0}/{ev.get('completion_tokens') or 0}"
    latency = ev.get("latency_ms")
    return [
        str(e.seq),
        _when(ev),
        str(ev.get("key_name") or ev.get("key_id") or "-"),
        str(ev.get("client") or "-"),
        str(ev.get("model") or "-"),
        str(ev.get("backend") or "-"),
        str(ev.get("status") or "-"),
        tokens,
        f"{latency:.0f} ms" if isinstance(latency, int | float) else "-",
        f"{ev.get('method') or ''} {ev.get('path') or ''}".strip() or "-",
    ]


def _when(ev: dict[str, Any]) -> str:
    iso = iso_time(ev.get("time"))
    return "-" if iso is None else iso[:19].replace("T", " ")
