"""`build_and_test`: a workspace's configured command, never one from the client, bounded in
time and output, in its own process group (killed whole on timeout or cancel)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from pydantic import BaseModel

from ml_offload.config import McpSettings
from ml_offload.mcp.errors import ToolFailure

Progress = Callable[[float, str], Awaitable[None]]
_TICK_S = 1.0


class BuildResult(BaseModel):
    workspace: str
    command: list[str]
    exit_code: int | None  # None: killed on timeout
    timed_out: bool
    duration_s: float
    output_tail: str


def allowed_command(settings: McpSettings, workspace: str, command: str) -> list[str]:
    ws = settings.workspaces.get(workspace)
    if ws is None:
        known = ", ".join(sorted(settings.workspaces)) or "none configured"
        raise ToolFailure(
            f"workspace {workspace!r} is not on the allow-list ({known}); add it under "
            "[mcp.workspaces] in the gateway's config"
        )
    argv = ws.commands.get(command)
    if argv is None:
        raise ToolFailure(
            f"workspace {workspace!r} has no command {command!r}; it has "
            f"{', '.join(sorted(ws.commands)) or 'none'}"
        )
    return argv


async def run_command(
    settings: McpSettings, workspace: str, command: str, timeout_s: float, progress: Progress
) -> BuildResult:
    argv = allowed_command(settings, workspace, command)
    limit_s = min(timeout_s, settings.build_timeout_s)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=settings.workspaces[workspace].path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, killed whole
    )
    tail = bytearray()
    reader = asyncio.create_task(_read_tail(proc, tail, settings.build_output_bytes))
    timed_out = False
    try:
        timed_out = not await _wait(proc, started, limit_s, progress)
    finally:
        _kill_group(proc)  # what it started, on timeout, cancel or a finished leader
        await proc.wait()
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, 5)
    return BuildResult(
        workspace=workspace,
        command=argv,
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        duration_s=round(time.monotonic() - started, 3),
        output_tail=tail.decode(errors="replace"),
    )


async def _wait(
    proc: asyncio.subprocess.Process, started: float, limit_s: float, progress: Progress
) -> bool:
    """Wait for the command, reporting progress each second; False when it ran out of time."""
    while True:
        left = limit_s - (time.monotonic() - started)
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(proc.wait(), min(_TICK_S, left))
            return True
        except TimeoutError:
            elapsed = time.monotonic() - started
            await progress(elapsed, f"running for {elapsed:.0f}s (limit {limit_s:.0f}s)")


async def _read_tail(proc: asyncio.subprocess.Process, tail: bytearray, keep: int) -> None:
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(65536):
        tail += chunk
        if len(tail) > keep:
            del tail[: len(tail) - keep]


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
