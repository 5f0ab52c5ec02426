"""Tamper-evident audit log: one JSON line per request, hash-chained, written off the hot path.

The format (one hash-chained entry per line, the head file, rotated files) is in
`audit_format.py`; the readers (verify, tail, follow, export) in `audit_read.py`.

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

Signed checkpoints (`sign`, on by default; `audit_sign.py`): every `checkpoint_every` entries,
when the log starts empty and when it closes, the writer thread appends an Ed25519-signed
checkpoint entry, so `mlo audit verify --public-key` catches a forger who rewrites every hash
and the head. One signature per checkpoint: nothing is signed per request.

Rotation (`rotate_bytes`, `rotate_daily`): before a batch, a live file that has reached the size
(or was started on an earlier UTC day) is sealed with a checkpoint and renamed after its first
seq (`audit_format.rotated_path`); a new live file continues the chain. A crash between the
rename and the new file is resumed from the last rotated file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ml_offload.config import AuditSettings, Settings
from ml_offload.errors import ConfigError
from ml_offload.security.audit_format import (
    GENESIS,
    Entry,
    complete_end,
    encode_entry,
    iso_time,
    lines_backward,
    lock_path,
    log_files,
    parse_line,
    prompt_sha256,
    read_head,
    rotated_path,
    seq_hint,
    to_json,
    write_head,
)
from ml_offload.security.audit_sign import CHECKPOINT, Signer, load_or_create_key, signing_key_path

log = logging.getLogger("ml_offload.audit")

_BATCHES_PER_SYNC = 16
_ERROR_LOG_EVERY_S = 60.0
_RESUME_SCAN_LINES = 10_000


def audit_path(settings: Settings) -> Path:
    """The log file: `security.audit.path`, else `<storage.data_dir>/audit/audit.jsonl`."""
    return settings.security.audit.path or settings.storage.data_dir / "audit" / "audit.jsonl"


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
        self._file_first_seq = 1  # of the live file (its name once rotated)
        self._file_day = ""  # UTC date the live file was started or last written
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
                self._rotate_if_due()
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
            write_head(self.path, self._seq, self._prev, fsync=self._settings.fsync)
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
            self._file_first_seq = _first_seq(self._fd) or self._seq + 1
            self._file_day = _utc_day(os.fstat(self._fd).st_mtime)
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

    # -- rotation

    def _rotate_if_due(self) -> None:
        """Start a new live file when this one is big or old enough (`rotate_bytes`,
        `rotate_daily`), after sealing it with a checkpoint; the chain goes on in the new one."""
        rotate_bytes, daily = self._settings.rotate_bytes, self._settings.rotate_daily
        if rotate_bytes is None and not daily:
            return
        size = os.fstat(self._fd).st_size
        today = _utc_day(time.time())
        big = rotate_bytes is not None and size >= rotate_bytes
        if size == 0 or not (big or (daily and today != self._file_day)):
            return
        if self._signer is not None and self._unsigned:
            self._stalled = self._encode([], seal=True)
            if not self._write_stalled():
                return
        target = rotated_path(self.path, self._file_first_seq)
        try:
            if self._settings.fsync:
                getattr(os, "fdatasync", os.fsync)(self._fd)
            if target.exists():
                raise FileExistsError(f"{target.name} exists")
            os.rename(self.path, target)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            fd, old = os.open(self.path, flags, 0o600), self._fd
        except OSError as exc:
            self._report(f"cannot rotate audit log {self.path}: {exc}; writing on in it")
            return
        self._fd = fd
        os.close(old)
        self._file_first_seq, self._file_day = self._seq + 1, today
        self._sync()
        log.info("audit log rotated: %s, continuing at seq %d", target.name, self._seq + 1)

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


def _last_entry(fd: int, end: int, path: Path) -> tuple[int, str]:
    """(seq, hash) of the last valid entry before `end`, or (0, GENESIS)."""
    for skipped, (_, raw) in enumerate(lines_backward(fd, end)):
        entry = parse_line(raw, 0)
        if isinstance(entry, Entry):
            return entry.seq, entry.hash
        if skipped == 0:
            log.error("audit log %s ends with an invalid entry; `mlo audit verify` shows it", path)
        if skipped >= _RESUME_SCAN_LINES:
            break  # a log that is mostly garbage: start a new chain after it; verify flags it
    return 0, GENESIS


def _first_seq(fd: int) -> int | None:
    return seq_hint(os.pread(fd, 64, 0))


def _utc_day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


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
    seq, prev = _last_entry(fd, end, path)
    rotated = [f for f in log_files(path) if f != path]
    if end == 0 and rotated:  # a new live file (rotated, maybe crashed then): go on from the last
        old = os.open(rotated[-1], os.O_RDONLY | os.O_CLOEXEC)
        try:
            seq, prev = _last_entry(old, complete_end(old, os.fstat(old).st_size), rotated[-1])
        finally:
            os.close(old)
    head = read_head(path)
    if isinstance(head, tuple) and head[0] > seq:
        log.error("audit log %s ends at seq %d but its head records %d", path, seq, head[0])
    return seq, prev, size - end
