"""Tamper-evident audit log: one JSON line per request, hash-chained, written off the hot path.

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

Writing: `record()` hashes the prompt (when the caller passed it), serializes the event with
orjson (a few µs) and appends the bytes to a deque: no I/O on the request's task, and waiting
events are bytes the garbage collector ignores. A writer thread wakes every `flush_interval_s`,
or when `batch_size` events wait, chains them and appends each batch with one os.write on an
O_APPEND descriptor; at most every `sync_interval_s` (and at close) it fdatasyncs (`fsync = true`)
and replaces the head: doing that per batch cost a quarter of the gateway's throughput on a
2-core machine. A thread rather than an asyncio task because fsync blocks and the event loop
must not.
If the disk fails, the encoded batch is kept and retried (a partial write is truncated away) and
new events wait in memory up to a cap; beyond it they are counted and the count is written as an
`{"audit": "dropped", "count": n}` entry, so a gap is visible in the log itself.

Crashes: a process killed during a write leaves at most an incomplete last line (no newline).
`verify` reports it without failing (the head never covers it); the next `start()` cuts it and
continues the chain from the last complete entry. Events still in memory are lost (at most about
`flush_interval_s` of them); after a power loss, up to `sync_interval_s` of them.

One writer per file: `start()` takes an exclusive lock on `<log>.lock` and refuses a second
process, because two writers would fork the chain. Several gateways each write their own file
(the default path is under their own `storage.data_dir`); verify each file on its own.

The file format (encoding and parsing one entry, the head file) and its writer live here; the
readers (verify, tail, follow, export) are in `audit_read.py` and parse through this module, so
the format is defined in one place.

Signed checkpoints (`sign`, on by default; `audit_sign.py`): every `checkpoint_every` entries,
when the log starts empty and when it closes, the writer thread appends an Ed25519-signed
checkpoint entry, so `mlo audit verify --public-key` catches a forger who rewrites every hash
and the head. One signature per checkpoint: nothing is signed per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

from ml_offload.config import AuditSettings, Settings
from ml_offload.errors import ConfigError
from ml_offload.security.audit_sign import CHECKPOINT, Signer, load_or_create_key, signing_key_path

log = logging.getLogger("ml_offload.audit")

GENESIS = "0" * 64
SUFFIX_LEN = 75  # ,"hash":"<64 hex>"}
HASH_KEY = b',"hash":"'
SEQ_RE = re.compile(rb'^\{"seq":(\d+),')
_BLOCK = 64 * 1024
_BATCHES_PER_SYNC = 16
_ERROR_LOG_EVERY_S = 60.0
_RESUME_SCAN_LINES = 10_000

Reason = Literal["malformed", "edited", "missing", "out_of_order", "chain", "head", "signature"]


def audit_path(settings: Settings) -> Path:
    """The log file: `security.audit.path`, else `<storage.data_dir>/audit/audit.jsonl`."""
    return settings.security.audit.path or settings.storage.data_dir / "audit" / "audit.jsonl"


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


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


# --------------------------------------------------------------------------- writer


class AuditLog:
    """Appends events to one hash-chained file from a writer thread (see the module docstring)."""

    def __init__(
        self, settings: AuditSettings, path: Path, *, max_pending: int | None = None
    ) -> None:
        self.path = path
        self._settings = settings
        self._batch_size = settings.batch_size
        # events waiting beyond this are counted, not kept (memory stays bounded if disk stalls)
        self._max_pending = max_pending or max(100_000, settings.batch_size * 64)
        # events as JSON: serialised when recorded (a few µs), so that the writer thread holds
        # the GIL only to chain and write, and waiting events are bytes the collector ignores
        self._pending: deque[bytes | dict[str, Any]] = deque()
        self._unsynced = False  # appended since the last fsync and head write
        self._synced_at = 0.0
        self._accepting = settings.enabled
        self._dropped_seen = 0  # counted by record()
        self._dropped_logged = 0  # written as "dropped" entries by the writer
        self._wake = threading.Event()
        self._io = threading.Lock()  # one flush at a time (writer thread, flush(), close())
        self._stop = False
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._lock_fd = -1
        self._seq = 0
        self._prev = GENESIS
        self._stalled: Batch | None = None  # encoded, not yet appended
        self._signer: Signer | None = None
        self._unsigned = 0  # entries since the last checkpoint
        self._last_error_at = 0.0
        self.written = 0  # entries appended since start
        self.cut_bytes = 0  # torn tail cut at start

    async def __aenter__(self) -> AuditLog:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def dropped_total(self) -> int:
        """Events dropped because the writer was too far behind (each batch of them logged)."""
        return self._dropped_seen

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks, never raises. The dict belongs to the log afterwards.

        Give the prompt as `prompt` (text or messages): the writer thread hashes it into
        `prompt_sha256` (unless given) and keeps the text only when `log_prompts` is on.
        """
        try:
            if not self._accepting:
                return
            if len(self._pending) >= self._max_pending:
                self._dropped_seen += 1
                return
            self._pending.append(to_json(self._prepare(event)))
            if len(self._pending) >= self._batch_size and not self._wake.is_set():
                self._wake.set()
        except Exception:  # an audit hiccup must never fail a request
            return

    async def start(self) -> None:
        """Open (and lock) the file, cut a torn tail, resume the chain, start the writer thread.

        Raises ConfigError when the file cannot be opened or another process writes it."""
        if not self._settings.enabled or self._thread is not None:
            return
        await asyncio.to_thread(self._open)
        self._stop, self._accepting = False, True
        self._thread = threading.Thread(target=self._run, name="mlo-audit-writer", daemon=True)
        self._thread.start()

    async def flush(self) -> None:
        """Write everything recorded so far (tests, shutdown)."""
        if self._fd >= 0:
            await asyncio.to_thread(self._flush)

    async def close(self) -> None:
        """Write everything recorded, stop the writer thread, release the file."""
        self._accepting = False
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop = True
            self._wake.set()
            await asyncio.to_thread(thread.join)
        if self._fd >= 0:
            await asyncio.to_thread(self._drain)  # events recorded while the thread stopped
        if self._fd >= 0 and self._signer is not None:
            await asyncio.to_thread(self._seal)
        lost = len(self._pending) + (self._stalled.events if self._stalled else 0)
        if lost:
            log.error(
                "audit log %s closed with %d events unwritten (see errors above)", self.path, lost
            )
        self._close_fds()

    # -- writer thread

    def _run(self) -> None:
        interval = self._settings.flush_interval_s
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            stopping = self._stop
            try:
                self._drain() if stopping else self._flush()
            except Exception:  # keep the writer alive whatever an event held
                log.exception("audit writer failed on a batch")
            if stopping:
                return

    def _drain(self) -> None:
        """Flush until nothing waits, or until a flush makes no progress (a failing disk)."""
        while True:
            before = (len(self._pending), self._stalled is None)
            self._flush()
            if not self._pending or (len(self._pending), self._stalled is None) == before:
                return

    def _flush(self) -> None:
        with self._io:
            wrote = False
            if self._stalled is not None:
                if not self._write_stalled():
                    return
                wrote = True
            # only what waits now, and at most a few batches, so that a steady stream or a
            # long backlog still gets its fsync and head regularly; the rest comes next round
            left = min(len(self._pending), self._batch_size * _BATCHES_PER_SYNC)
            dropped = self._dropped_seen > self._dropped_logged
            while left or dropped:
                n = min(left, self._batch_size)
                left -= n
                events = [self._pending.popleft() for _ in range(n)]
                if dropped:
                    events.append(self._dropped_event())
                    dropped = False
                self._stalled = self._encode(events)
                if not self._write_stalled():
                    return
                wrote = True
            self._unsynced |= wrote
            due = time.monotonic() - self._synced_at >= self._settings.sync_interval_s
            if self._unsynced and (due or self._stop):
                self._sync()
            if self._pending:
                self._wake.set()  # a backlog: go on without waiting for the interval

    def _dropped_event(self) -> dict[str, Any]:
        n = self._dropped_seen - self._dropped_logged
        self._dropped_logged += n
        why = "the writer fell behind (slow or failing disk)"
        return {"time": time.time(), "audit": "dropped", "count": n, "why": why}

    def _seal(self) -> None:
        """A last checkpoint over what is written (at close), and its sync."""
        with self._io:
            if self._unsigned and self._stalled is None:
                self._stalled = self._encode([], seal=True)
                if self._write_stalled():
                    self._sync()

    def _encode(self, events: list[bytes | dict[str, Any]], *, seal: bool = False) -> Batch:
        """Chain `events` after the last entry, with a signed checkpoint wherever one is due."""
        seq, prev, unsigned = self._seq, self._prev, self._unsigned
        every = self._signer.every if self._signer is not None else 0
        lines = []
        for event in events:
            seq += 1
            payload = event if isinstance(event, bytes) else to_json(self._prepare(event))
            line, prev = encode_entry(seq, prev, payload)
            lines.append(line)
            unsigned += 1
            if unsigned == every:
                seq, prev, unsigned = seq + 1, self._checkpoint(seq + 1, prev, lines), 0
        if seal and (unsigned or seq == 0) and self._signer is not None:
            seq, prev, unsigned = seq + 1, self._checkpoint(seq + 1, prev, lines), 0
        return Batch(b"".join(lines), seq, prev, len(events), unsigned)

    def _checkpoint(self, seq: int, prev: str, lines: list[bytes]) -> str:
        assert self._signer is not None
        event = self._signer.checkpoint(seq, prev, iso_time(time.time()))
        line, digest = encode_entry(seq, prev, to_json(event))
        lines.append(line)
        return digest

    def _prepare(self, event: Any) -> Any:
        if not isinstance(event, dict):
            return {"unexpected": repr(event)}
        stamp = event.setdefault("time", time.time())
        if isinstance(stamp, int | float):
            event["time"] = iso_time(stamp)
        prompt = event.get("prompt")
        if prompt is not None and not event.get("prompt_sha256"):
            event["prompt_sha256"] = prompt_sha256(prompt)
        if not self._settings.log_prompts:
            event.pop("prompt", None)
        return event

    def _write_stalled(self) -> bool:
        assert self._stalled is not None
        data = self._stalled.data
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:  # one write unless the kernel writes short (signal, disk full)
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # never leave half a batch in the chain
            self._report(f"cannot append to audit log {self.path}: {exc}; retrying")
            return False
        batch, self._stalled = self._stalled, None
        self._seq, self._prev, self._unsigned = batch.seq, batch.hash, batch.unsigned
        self.written += batch.events
        return True

    def _sync(self) -> None:
        """fsync the log and replace the head file: at most every `sync_interval_s` (metadata
        writes cost the whole machine CPU under load), and always when closing."""
        self._synced_at, self._unsynced = time.monotonic(), False
        try:
            if self._settings.fsync:
                getattr(os, "fdatasync", os.fsync)(self._fd)
            _write_head(self.path, self._seq, self._prev, fsync=self._settings.fsync)
        except OSError as exc:
            self._report(f"cannot sync audit log {self.path}: {exc}")

    def _report(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_at >= _ERROR_LOG_EVERY_S:
            self._last_error_at = now
            log.error(message)

    # -- opening

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = _lock(self.path)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
            self._seq, self._prev, self.cut_bytes = _resume(self._fd, self.path)
            if self._settings.sign:
                self._start_signing()
        except OSError as exc:
            self._close_fds()
            raise ConfigError(
                f"cannot open audit log {self.path}: {exc.strerror or exc}; "
                "check security.audit.path and its folder's permissions"
            ) from None
        except ConfigError:
            self._close_fds()
            raise

    def _start_signing(self) -> None:
        """Load (or create) the key; count the unsigned entries at the end; sign a new log."""
        key = load_or_create_key(signing_key_path(self._settings, self.path))
        self._signer = Signer(key, self._settings.checkpoint_every)
        self._unsigned = _unsigned_at_end(self._fd, self._signer.every)
        if self._seq == 0:  # a new log begins with a checkpoint: no stretch of it is unsigned
            self._stalled = self._encode([], seal=True)

    def _close_fds(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries encoded and chained, waiting to be appended (kept for a retry if that fails)."""

    data: bytes
    seq: int  # the last entry's
    hash: str
    events: int  # recorded events in it (not checkpoints)
    unsigned: int  # entries after its last checkpoint


def _unsigned_at_end(fd: int, every: int) -> int:
    """How many entries follow the last checkpoint (at most `every`: then one is due)."""
    count = 0
    for _, raw in lines_backward(fd, os.fstat(fd).st_size):
        if count >= every:
            break
        entry = parse_line(raw, 0)
        if isinstance(entry, Entry) and entry.event.get("audit") == CHECKPOINT:
            break
        count += 1
    return count


def _lock(path: Path) -> int:
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"audit log {path} is being written by another process (pid {holder}); give each "
            "gateway its own security.audit.path (or storage.data_dir)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _resume(fd: int, path: Path) -> tuple[int, str, int]:
    """(last seq, last hash, bytes cut): cut an incomplete last line, find the last valid entry."""
    size = os.fstat(fd).st_size
    end = complete_end(fd, size)
    if end < size:
        os.ftruncate(fd, end)
        log.warning("audit log %s: cut an incomplete last line (%d bytes)", path, size - end)
    seq, prev = 0, GENESIS
    for skipped, (_, raw) in enumerate(lines_backward(fd, end)):
        entry = parse_line(raw, 0)
        if isinstance(entry, Entry):
            seq, prev = entry.seq, entry.hash
            break
        if skipped == 0:
            log.error("audit log %s ends with an invalid entry; `mlo audit verify` shows it", path)
        if skipped >= _RESUME_SCAN_LINES:
            break  # a log that is mostly garbage: start a new chain after it; verify flags it
    head = read_head(path)
    if isinstance(head, tuple) and head[0] > seq:
        log.error("audit log %s ends at seq %d but its head records %d", path, seq, head[0])
    return seq, prev, size - end


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


def _write_head(path: Path, seq: int, digest: str, *, fsync: bool) -> None:
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
    if not isinstance(t, int | float):
        return None if t is None else str(t)
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"line {self.line}{seq}: {self.reason.replace('_', ' ')}: {self.detail}"


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
