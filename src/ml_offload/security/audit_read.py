"""Reading the audit log: verify its chain and head, iterate, tail, follow and export entries.

The file format and its writer are in `audit.py`; this module only reads what it defines.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ml_offload.security.audit import (
    GENESIS,
    Broken,
    Entry,
    complete_end,
    head_path,
    iso_time,
    lines_backward,
    parse_line,
    read_head,
    seq_hint,
    to_json,
)
from ml_offload.security.audit_sign import CHECKPOINT, check_checkpoint


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int  # entries checked and found good
    last_seq: int
    last_hash: str
    broken: Broken | None = None
    torn_bytes: int = 0  # an incomplete last line (a crash mid-write); cut on the next start
    head_seq: int | None = None  # what the head file records (None: no head file)
    checkpoints: int = 0  # signed checkpoints seen (their signatures checked with keys given)
    unsigned_tail: int = 0  # entries after the last checkpoint


class _Signatures:
    """Checks checkpoints against public keys, and that no stretch longer than their interval
    goes unsigned (a forger cannot make checkpoints, so dropping them must show)."""

    def __init__(self, keys: list[Ed25519PublicKey] | None) -> None:
        self.keys = keys
        self.checkpoints = 0
        self.unsigned = 0
        self.every: int | None = None

    def feed(self, entry: Entry) -> Broken | None:
        if entry.event.get("audit") != CHECKPOINT:
            self.unsigned += 1
            return None
        self.checkpoints += 1
        if not self.keys:
            self.unsigned = 0
            return None
        wrong = check_checkpoint(self.keys, entry.seq, entry.prev, entry.event)
        if wrong is not None:
            return Broken(entry.line, entry.seq, "signature", wrong)
        self.every = entry.event["every"]
        too_many = self._too_many(entry.line, entry.seq)
        self.unsigned = 0
        return too_many

    def end(self, line: int, seq: int) -> Broken | None:
        if not self.keys:
            return None
        if self.checkpoints == 0:
            why = "no signed checkpoint: the log was not signed, or its checkpoints were removed"
            return Broken(line, None, "signature", why)
        return self._too_many(line, seq)

    def _too_many(self, line: int, seq: int) -> Broken | None:
        if self.every is None or self.unsigned <= self.every:
            return None
        why = (
            f"{self.unsigned} entries before it are unsigned, more than the {self.every} between "
            "checkpoints: checkpoints were removed"
        )
        return Broken(line, seq, "signature", why)


def verify(path: Path, keys: list[Ed25519PublicKey] | None = None) -> VerifyResult:
    """Check the chain from the first entry to the last, and the last against the head file;
    with public `keys`, each checkpoint's signature and that none was removed.

    Stops at the first broken entry. Raises FileNotFoundError when neither log nor head exists."""
    head = read_head(path)
    if not path.exists():
        if isinstance(head, tuple):
            why = f"the log is gone but {head_path(path).name} records seq {head[0]}"
            return VerifyResult(False, 0, 0, GENESIS, Broken(1, 1, "missing", why), 0, head[0])
        raise FileNotFoundError(path)
    head_seq = head[0] if isinstance(head, tuple) else None
    seq, prev, n, line, torn = 0, GENESIS, 0, 0, 0
    pinned: Entry | None = None  # the entry the head names
    signed = _Signatures(keys)

    def result(broken: Broken | None, torn: int = 0) -> VerifyResult:
        counts = (signed.checkpoints, signed.unsigned)
        return VerifyResult(broken is None, n, seq, prev, broken, torn, head_seq, *counts)

    with path.open("rb") as f:
        for raw in f:
            line += 1
            if not raw.endswith(b"\n"):
                torn = len(raw)
                break
            entry = parse_line(raw[:-1], line)
            if isinstance(entry, Entry) and entry.seq != seq + 1:
                entry = _misplaced(entry, seq + 1, f)
            elif isinstance(entry, Entry) and entry.prev != prev:
                why = f"its prev does not match the hash of line {line - 1} (one was rewritten)"
                entry = Broken(line, entry.seq, "chain", why)
            if isinstance(entry, Entry):
                entry = signed.feed(entry) or entry
            if isinstance(entry, Broken):
                return result(entry)
            seq, prev, n = entry.seq, entry.hash, n + 1
            if entry.seq == head_seq:
                pinned = entry
    end_line = line + (0 if torn else 1)
    broken = _check_head(path, head, seq, pinned, end_line) or signed.end(end_line, seq + 1)
    return result(broken, torn)


def _misplaced(entry: Entry, expected: int, rest: Iterable[bytes]) -> Broken:
    """Why `entry` is not seq `expected`: removed entries, or entries moved (looks ahead)."""
    for offset, raw in enumerate(rest, start=1):
        if seq_hint(raw) == expected:
            why = f"expected seq {expected} here, but it is at line {entry.line + offset}"
            return Broken(entry.line, entry.seq, "out_of_order", why)
    if entry.seq > expected:
        last = entry.seq - 1
        gone = f"seq {expected}" if last == expected else f"seqs {expected} to {last}"
        return Broken(entry.line, entry.seq, "missing", f"{gone} removed before this line")
    why = f"seq {entry.seq} comes after seq {expected - 1} (moved or duplicated)"
    return Broken(entry.line, entry.seq, "out_of_order", why)


def _check_head(
    path: Path, head: tuple[int, str] | str | None, seq: int, pinned: Entry | None, line: int
) -> Broken | None:
    name = head_path(path).name
    if isinstance(head, str):
        return Broken(line, None, "head", head)
    if head is None:
        return None  # a log written before its first head, or one whose head was removed
    if head[0] > seq:
        why = f"the log ends at seq {seq} but {name} records seq {head[0]}: entries removed"
        return Broken(line, seq + 1, "missing", why)
    if head[0] > 0 and (pinned is None or pinned.hash != head[1]):
        where = pinned.line if pinned is not None else line
        return Broken(where, head[0], "head", f"the entry differs from the one {name} records")
    return None


def iter_entries(path: Path, since: float | None = None) -> Iterator[Entry]:
    """Entries whose own hash matches (others skipped; `verify` reports them), in file order."""
    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                return
            entry = parse_line(raw[:-1], line)
            if isinstance(entry, Entry) and (since is None or _time(entry) >= since):
                yield entry


def tail(path: Path, n: int) -> tuple[list[Entry], int]:
    """The last `n` valid entries (oldest first) and the offset to follow the file from."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = complete_end(fd, os.fstat(fd).st_size)
        found: list[Entry] = []
        for _, raw in lines_backward(fd, end):
            if len(found) >= n:
                break
            entry = parse_line(raw, 0)
            if isinstance(entry, Entry):
                found.append(entry)
    finally:
        os.close(fd)
    return found[::-1], end


def follow(path: Path, offset: int, poll_s: float = 0.5) -> Iterator[Entry]:
    """Entries appended after `offset`, forever (a restart that cuts a torn tail is followed)."""
    pending = b""
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:
            offset, pending = size, b""
        if size == offset:
            time.sleep(poll_s)
            continue
        with path.open("rb") as f:
            f.seek(offset)
            data = pending + f.read(size - offset)
        offset = size
        *lines, pending = data.split(b"\n")
        for raw in lines:
            entry = parse_line(raw, 0)
            if isinstance(entry, Entry):
                yield entry


def _time(entry: Entry) -> float:
    """The event's unix time, from a number or an ISO 8601 string (UTC unless it has an offset)."""
    t = entry.event.get("time")
    if isinstance(t, int | float):
        return float(t)
    try:
        when = datetime.fromisoformat(str(t))
    except ValueError:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


# --------------------------------------------------------------------------- export

# fmt: off
CSV_FIELDS = (
    "seq", "time", "request_id", "key_id", "key_name", "client", "cert_subject", "method",
    "path", "model", "backend", "status", "prompt_tokens", "completion_tokens", "latency_ms",
    "prompt_sha256", "redactions", "prompt", "extra", "hash",
)
# fmt: on
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export(
    path: Path, out: TextIO, fmt: Literal["jsonl", "csv"], since: float | None = None
) -> int:
    """Write the entries (the event with seq and hash) as JSON lines or CSV; the count written.

    CSV: `time` as ISO 8601 UTC, keys outside CSV_FIELDS in `extra` (JSON), and a text cell that
    a spreadsheet would run as a formula is prefixed with `'`."""
    n = 0
    if fmt == "jsonl":
        for entry in iter_entries(path, since):
            out.write(to_json(entry.flat()).decode() + "\n")
            n += 1
        return n
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for entry in iter_entries(path, since):
        writer.writerow(csv_row(entry))
        n += 1
    return n


def csv_row(entry: Entry) -> list[str]:
    flat = entry.flat()
    extra = {k: v for k, v in flat.items() if k not in CSV_FIELDS}
    flat["time"] = iso_time(flat.get("time"))
    flat["extra"] = extra or None
    return [_cell(flat.get(k)) for k in CSV_FIELDS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    text = value if isinstance(value, str) else to_json(value, sort=True).decode()
    return "'" + text if text.startswith(_FORMULA_START) else text
