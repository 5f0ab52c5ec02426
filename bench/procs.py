"""Process helpers shared by the benchmarks: free ports, health polling, RSS, clean shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mlo_command() -> list[str]:
    """The gateway's CLI: the repo venv's ``mlo`` if present, else the one on PATH."""
    local = REPO / ".venv" / "bin" / "mlo"
    return [str(local)] if local.exists() else ["mlo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> float | None:
    """Poll ``url`` every 10 ms until it answers 200; returns when (perf_counter) or None."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.perf_counter()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.01)
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def listener_pid(port: int) -> int | None:
    """The pid of the process that holds the listening socket on ``port`` (via /proc)."""
    targets = {f"socket:[{i}]" for i in _listening_inodes(port)}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(pid_dir.name)
        except OSError:
            continue
    return None


def status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status, such as VmRSS or VmHWM."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") or 0 for p in descendants(pid)) / 1024


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM the process group started with ``start_new_session=True``; SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def machine_note() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    note = f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB; load average {load}"
    if os.getloadavg()[0] > 0.8:
        note += " (the machine was busy before the run: figures are likely disturbed)"
    return note


def _busy_s() -> float:
    """CPU-seconds all processes have spent busy since boot (/proc/stat, every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuWatch:
    """How much CPU processes outside this benchmark used while it ran (noise indicator).

    Read it after every child has been waited for: only then do their CPU times count as ours.
    """

    def __init__(self) -> None:
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy_s(), _own_s()

    def foreign_cores(self) -> float:
        """Average number of cores busy with other work during the run."""
        wall = time.perf_counter() - self._t0
        foreign = (_busy_s() - self._busy0) - (_own_s() - self._own0)
        return max(0.0, foreign / wall) if wall > 0 else 0.0


def noise_note(cores: float) -> str:
    note = f"other processes used {cores:.2f} cores on average during the run"
    return note + (" (figures likely disturbed)" if cores > 0.1 else "")


@contextlib.contextmanager
def gateway(
    cfg: Path, log: Path, timeout_s: float = 90.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mlo serve --config cfg` on a free port, its output in `log`: its base URL and process
    once `/health` answers 200 (RuntimeError with the log's tail otherwise); stopped after."""
    port = free_port()
    cmd = [*mlo_command(), "serve", "--config", str(cfg), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        if wait_health(base + "/health", proc, timeout_s) is None:
            raise RuntimeError("gateway did not answer /health 200:\n" + tail(log))
        yield base, proc
    finally:
        stop_group(proc)
