"""The audit log's file format: one entry per line, hash-chained; the head file; rotated files.

Format (a JSONL file: greppable, any log shipper reads it, a ten-line script can check it)::

    {"seq":7,"prev":"<hash of entry 6>","event":{...},"hash":"<sha256 hex>"}

`hash` is the SHA-256 of the line's exact bytes up to, not including, `,"hash":"`. Hashing the
bytes as written (not a re-serialization) means verifying never depends on a JSON library's
formatting, and any changed byte is caught. `prev` links each entry to the one before (the first
to 64 zeros) and `seq` counts from 1: an edited entry breaks its own hash (or, rehashed, the next
entry's `prev`), a removed one leaves a gap in `seq`, a reordering shows as `seq` out of order.
A chain alone cannot show that its *last* entries were removed, so after writing the writer
replaces `<log>.head` (`{"seq": N, "hash": "..."}`) atomically with os.replace, and `verify`
checks that the log reaches it. The head is replaced after the log is written, so a crash leaves
it behind the log, never ahead.

Rotated files: when the writer rotates (`rotate_bytes`, `rotate_daily`), the live file is renamed
`<stem>.<seq of its first entry, 12 digits><suffix>` (`audit.000000000001.jsonl`) and a new live
file continues the chain: seq goes on and the first entry's `prev` is the last hash of the file
before. `log_files()` lists them in chain order, the live file last.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

GENESIS = "0" * 64
SUFFIX_LEN = 75  # ,"hash":"<64 hex>"}
HASH_KEY = b',"hash":"'
SEQ_RE = re.compile(rb'^\{"seq":(\d+),')
_BLOCK = 64 * 1024

Reason = Literal["malformed", "edited", "missing", "out_of_order", "chain", "head", "signature"]


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def rotated_path(path: Path, first_seq: int) -> Path:
    """Where the live file `path` goes when rotated: named by the seq of its first entry."""
    return path.with_name(f"{path.stem}.{first_seq:012d}{path.suffix}")


def log_files(path: Path) -> list[Path]:
    """The rotated files of the log `path` in chain order, then `path` itself when it exists."""
    pattern = re.compile(re.escape(path.stem) + r"\.(\d{12,})" + re.escape(path.suffix))
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    found = sorted((int(m.group(1)), n) for n in names if (m := pattern.fullmatch(n)))
    files = [path.with_name(name) for _, name in found]
    return [*files, path] if path.exists() else files


def prompt_sha256(prompt: Any) -> str:
    """The hash stored instead of the prompt: of the text, or of canonical JSON for messages."""
    if isinstance(prompt, str):
        data = prompt.encode("utf-8", "surrogatepass")
    else:
        data = to_json(prompt, sort=True)
    return hashlib.sha256(data).hexdigest()


def encode_entry(seq: int, prev: str, event_json: bytes) -> tuple[bytes, str]:
    """One log line (with its newline) and its hash."""
    body = b'{"seq":%d,"prev":"%s","event":%s' % (seq, prev.encode("ascii"), event_json)
    digest = hashlib.sha256(body).hexdigest()
    return body + HASH_KEY + digest.encode("ascii") + b'"}\n', digest


def to_json(value: Any, *, sort: bool = False) -> bytes:
    """JSON that never fails: odd types as str, lone surrogates through the stdlib's escapes."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS if sort else 0)
    except (TypeError, orjson.JSONEncodeError):
        try:
            return json.dumps(value, default=str, sort_keys=sort, ensure_ascii=True).encode()
        except (TypeError, ValueError):
            return json.dumps({"unserializable": repr(value)}).encode()


def complete_end(fd: int, size: int) -> int:
    """The offset just after the last newline (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(_BLOCK, pos)
        chunk = os.pread(fd, step, pos - step)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def lines_backward(fd: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its newline) of the lines before `end`, last first."""
    buf, pos = b"", end
    while True:
        i = buf.rfind(b"\n", 0, len(buf) - 1)
        if i >= 0:
            yield pos + i + 1, buf[i + 1 : -1]
            buf = buf[: i + 1]
        elif pos > 0:
            step = min(_BLOCK, pos)
            pos -= step
            buf = os.pread(fd, step, pos) + buf
        else:
            if buf:
                yield 0, buf[:-1]
            return


def write_head(path: Path, seq: int, digest: str, *, fsync: bool) -> None:
    target = head_path(path)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b'{"seq":%d,"hash":"%s"}\n' % (seq, digest.encode("ascii")))
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def read_head(path: Path) -> tuple[int, str] | str | None:
    """(seq, hash) from the head file; None when there is none; a string saying what is wrong."""
    try:
        data = orjson.loads(head_path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        return f"cannot read {head_path(path).name}: {exc}"
    seq, digest = (data.get("seq"), data.get("hash")) if isinstance(data, dict) else (None, None)
    if type(seq) is not int or not isinstance(digest, str):
        return f"{head_path(path).name} is not a head record"
    return seq, digest


def iso_time(t: Any) -> str | None:
    """`2026-12-06T04:29:34.123Z` (as `datetime.isoformat(timespec="milliseconds")` writes it);
    the date and time of day are formatted once a second (every audit event calls this)."""
    if not isinstance(t, int | float):
        return None if t is None else str(t)
    if t < 0:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    frac, whole = math.modf(t)
    micros = round(frac * 1e6)  # as datetime.fromtimestamp rounds
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    second = int(whole)
    if second != _SECOND[0]:
        _SECOND[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_SECOND[1]}.{micros // 1000:03d}Z"


_SECOND: list[Any] = [None, ""]  # the last second formatted, and its text


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class Entry:
    line: int  # 1-based line number (0 when read backwards)
    seq: int
    prev: str
    hash: str
    event: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        """The event with its seq and hash, as exported."""
        rest = {k: v for k, v in self.event.items() if k not in ("seq", "hash")}
        return {"seq": self.seq, **rest, "hash": self.hash}


@dataclass(frozen=True, slots=True)
class Broken:
    """The first entry that does not verify, and why."""

    line: int
    seq: int | None
    reason: Reason
    detail: str
    file: str = ""  # named when the log spans rotated files

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        where = f"{self.file} line" if self.file else "line"
        return f"{where} {self.line}{seq}: {self.reason.replace('_', ' ')}: {self.detail}"


def parse_line(raw: bytes, line: int) -> Entry | Broken:
    """An entry whose own hash matches, or why not. `raw` has no newline."""
    if (
        len(raw) <= SUFFIX_LEN
        or raw[-SUFFIX_LEN : -SUFFIX_LEN + len(HASH_KEY)] != HASH_KEY
        or raw[-2:] != b'"}'
    ):
        return Broken(line, seq_hint(raw), "malformed", "not an audit entry (no hash at its end)")
    digest = raw[-66:-2].decode("ascii", "replace")
    if hashlib.sha256(raw[:-SUFFIX_LEN]).hexdigest() != digest:
        return Broken(line, seq_hint(raw), "edited", "its content does not match its hash")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # the stdlib also reads escaped lone surrogates, which the writer may have written
            data = json.loads(raw)
        except ValueError:
            return Broken(line, seq_hint(raw), "malformed", "not valid JSON")
    if not isinstance(data, dict):
        return Broken(line, seq_hint(raw), "malformed", "not a JSON object")
    seq, prev, event = data.get("seq"), data.get("prev"), data.get("event")
    if type(seq) is not int or not isinstance(prev, str) or not isinstance(event, dict):
        return Broken(line, seq_hint(raw), "malformed", "missing seq, prev or event")
    return Entry(line, seq, prev, digest, event)


def seq_hint(raw: bytes) -> int | None:
    m = SEQ_RE.match(raw)
    return int(m.group(1)) if m else None
