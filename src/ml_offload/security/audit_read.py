"""Reading the audit log: verify its chain and head, iterate, tail, follow and export entries.

The file format is in `audit_format.py`, its writer in `audit.py`; this module only reads.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TextIO

from ml_offload.security.audit_format import (
    GENESIS,
    Broken,
    Entry,
    complete_end,
    head_path,
    iso_time,
    lines_backward,
    log_files,
    parse_line,
    read_head,
    seq_hint,
    to_json,
)
from ml_offload.security.audit_sign import CHECKPOINT, check_checkpoint

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


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
    """Check the chain from the first entry to the last, across rotated files, and the last
    against the head file; with public `keys`, each checkpoint's signature and that none was
    removed. A first rotated file that starts after seq 1 is accepted (older files removed on
    purpose); a file missing in the middle is not.

    Stops at the first broken entry. Raises FileNotFoundError when neither log nor head exists."""
    head = read_head(path)
    files = log_files(path)
    if not files:
        if isinstance(head, tuple):
            why = f"the log is gone but {head_path(path).name} records seq {head[0]}"
            return VerifyResult(False, 0, 0, GENESIS, Broken(1, 1, "missing", why), 0, head[0])
        raise FileNotFoundError(path)
    chain = _Chain(head[0] if isinstance(head, tuple) else None, _Signatures(keys))
    for i, file in enumerate(files):
        broken = chain.check_file(file, may_start_late=i == 0 and file != path)
        if broken is None and chain.torn and i < len(files) - 1:
            broken = Broken(chain.line, None, "malformed", "a rotated file ends mid-line")
        if broken is not None:
            return chain.result(replace(broken, file=file.name) if len(files) > 1 else broken)
    end_line = chain.line + (0 if chain.torn else 1)
    broken = _check_head(path, head, chain.seq, chain.pinned, end_line)
    broken = broken or chain.signed.end(end_line, chain.seq + 1)
    if broken is not None and len(files) > 1:
        broken = replace(broken, file=files[-1].name)
    return chain.result(broken)


class _Chain:
    """The chain as verified so far, file after file."""

    def __init__(self, head_seq: int | None, signed: _Signatures) -> None:
        self.head_seq, self.signed = head_seq, signed
        self.seq, self.prev, self.n, self.line, self.torn = 0, GENESIS, 0, 0, 0
        self.pinned: Entry | None = None  # the entry the head names

    def result(self, broken: Broken | None) -> VerifyResult:
        signed = (self.signed.checkpoints, self.signed.unsigned)
        torn = self.torn if broken is None else 0
        return VerifyResult(
            broken is None, self.n, self.seq, self.prev, broken, torn, self.head_seq, *signed
        )

    def check_file(self, file: Path, *, may_start_late: bool) -> Broken | None:
        self.line, self.torn = 0, 0
        with file.open("rb") as f:
            for raw in f:
                self.line += 1
                if not raw.endswith(b"\n"):
                    self.torn = len(raw)
                    return None
                entry = parse_line(raw[:-1], self.line)
                if isinstance(entry, Entry) and may_start_late and self.n == 0:
                    self.seq, self.prev = entry.seq - 1, entry.prev  # older files removed
                entry = self._linked(entry, f)
                if isinstance(entry, Broken):
                    return entry
                self.seq, self.prev, self.n = entry.seq, entry.hash, self.n + 1
                if entry.seq == self.head_seq:
                    self.pinned = entry
        return None

    def _linked(self, entry: Entry | Broken, rest: Iterable[bytes]) -> Entry | Broken:
        if isinstance(entry, Broken):
            return entry
        if entry.seq != self.seq + 1:
            return _misplaced(entry, self.seq + 1, rest)
        if entry.prev != self.prev:
            before = (
                f"line {self.line - 1}" if self.line > 1 else "the last entry of the file before"
            )
            why = f"its prev does not match the hash of {before} (one was rewritten)"
            return Broken(self.line, entry.seq, "chain", why)
        return self.signed.feed(entry) or entry


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
    """Entries whose own hash matches (others skipped; `verify` reports them), in chain order
    across rotated files."""
    for file in log_files(path):
        with file.open("rb") as f:
            for line, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    break
                entry = parse_line(raw[:-1], line)
                if isinstance(entry, Entry) and (since is None or _time(entry) >= since):
                    yield entry


def tail(path: Path, n: int) -> tuple[list[Entry], int]:
    """The last `n` valid entries (oldest first, from rotated files too) and the offset in the
    live file to follow it from."""
    found: list[Entry] = []
    offset = 0
    for file in reversed(log_files(path)):
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            end = complete_end(fd, os.fstat(fd).st_size)
            offset = end if file == path else offset
            for _, raw in lines_backward(fd, end):
                if len(found) >= n:
                    break
                entry = parse_line(raw, 0)
                if isinstance(entry, Entry):
                    found.append(entry)
        finally:
            os.close(fd)
        if len(found) >= n:
            break
    return found[::-1], offset


def follow(path: Path, offset: int, poll_s: float = 0.5) -> Iterator[Entry]:
    """Entries appended after `offset`, forever: through a rotation (the old file is read to its
    end, then the new one from its start) and a restart that cuts a torn tail."""
    pending, f = b"", _open_or_none(path)
    while True:
        if f is None:
            time.sleep(poll_s)
            f, offset = _open_or_none(path), 0
            continue
        size = os.fstat(f.fileno()).st_size
        if size < offset:  # a torn tail cut by a restart
            offset, pending = size, b""
        rotated = _rotated(f, path)  # before reading: what was written before the rename is read
        f.seek(offset)
        data = f.read()
        offset += len(data)
        *lines, pending = (pending + data).split(b"\n")
        for raw in lines:
            entry = parse_line(raw, 0)
            if isinstance(entry, Entry):
                yield entry
        if rotated:  # read to its end: go on in the file after it (more than one may be new)
            f, offset, pending = _next_file(f, path), 0, b""
        elif not data:
            time.sleep(poll_s)


def _open_or_none(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None


def _next_file(f: BinaryIO, path: Path) -> BinaryIO | None:
    """The file after the (rotated) open `f` in chain order; `f` is closed."""
    mine = os.fstat(f.fileno())
    f.close()
    files = log_files(path)
    for i, file in enumerate(files[:-1]):
        try:
            st = file.stat()
        except FileNotFoundError:
            continue
        if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
            return _open_or_none(files[i + 1])
    return _open_or_none(path)


def _rotated(f: BinaryIO, path: Path) -> bool:
    """Whether `path` now names another file than the open `f` (renamed away by a rotation)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False  # renamed, the new one not yet there: wait for it
    mine = os.fstat(f.fileno())
    return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev)


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
