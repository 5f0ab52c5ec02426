"""The gateway as a background process: a pid file and a log file in the XDG state folder.

`start` spawns `python -m ml_offload.cli.main serve` in its own session (it outlives the
shell), waits for `/health`, then writes the pid file (JSON: pid, url, start time, log).
`stop` sends SIGTERM and waits, SIGKILL after a grace period. A pid file whose process is
gone, or is some other program that reused the pid, is stale and removed.

With TLS (`--tls-*` files, or the config's `security.tls`) the daemon serves HTTPS and is
probed over HTTPS with the client's CA bundle and certificate (`ClientTls`): the chain is
checked, the host name is not (the certificate names the public address, the probe goes to
loopback). A certificate the client does not trust stops the start with what to give.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ml_offload.client_tls import ClientTls, explain
from ml_offload.errors import MloError

START_TIMEOUT_S = 60.0
_START_MARK = "--- ml-offload daemon: "
STOP_TIMEOUT_S = 20.0


class DaemonError(MloError):
    code = "daemon_error"


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    pid: int
    url: str
    started_at: float
    log_path: str
    config: str | None = None
    allow_insecure: bool = False  # started with --allow-insecure (a restart keeps it)
    tls: dict[str, str] = field(default_factory=dict)  # its ServeTls files (a restart keeps them)


@dataclass(frozen=True, slots=True)
class ServeTls:
    """The `mlo serve --tls-*` files given on the daemon's command line."""

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None

    def argv(self) -> list[str]:
        flags = ("--tls-cert", "--tls-key", "--tls-client-ca")
        paths = (self.cert_file, self.key_file, self.client_ca_file)
        return [a for flag, path in zip(flags, paths, strict=True) if path for a in (flag, path)]


class Daemon:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.pid_path = state_dir / "gateway.pid"
        self.log_path = state_dir / "gateway.log"

    def running(self) -> DaemonInfo | None:
        """The running daemon, or None; a stale pid file is removed."""
        try:
            data = json.loads(self.pid_path.read_text())
            info = DaemonInfo(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            self.pid_path.unlink(missing_ok=True)  # unreadable: stale
            return None
        if not is_gateway(info.pid):
            self.pid_path.unlink(missing_ok=True)
            return None
        return info

    def start(
        self,
        *,
        host: str,
        port: int,
        config: Path | None = None,
        allow_insecure: bool = False,
        tls: ServeTls | None = None,
        https: bool = False,
        client: ClientTls | None = None,
        timeout_s: float = START_TIMEOUT_S,
    ) -> DaemonInfo:
        """Start the gateway; `https` when it serves TLS (from `tls` or the config), probed
        with `client`'s trust and certificate."""
        current = self.running()
        if current is not None:
            raise DaemonError(f"the gateway is already running (pid {current.pid}, {current.url})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        url = connect_url(host, port, tls=https)
        if listening(url):
            raise DaemonError(
                f"another server already listens on {url}: stop it, or start on another --port"
            )
        proc = spawn(
            host=host,
            port=port,
            config=config,
            allow_insecure=allow_insecure,
            tls=tls,
            log_path=self.log_path,
        )
        wait_ready(url, proc, self.log_path, timeout_s, client)
        info = DaemonInfo(
            proc.pid,
            url,
            time.time(),
            str(self.log_path),
            str(config) if config else None,
            allow_insecure,
            {k: v for k, v in asdict(tls or ServeTls()).items() if v},
        )
        tmp = self.pid_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(info)))
        tmp.replace(self.pid_path)
        return info

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> DaemonInfo:
        info = self.running()
        if info is None:
            raise DaemonError(f"the gateway daemon is not running (no live pid in {self.pid_path})")
        terminate(info.pid, timeout_s)
        self.pid_path.unlink(missing_ok=True)
        return info


def spawn(
    *,
    host: str,
    port: int,
    config: Path | None,
    log_path: Path,
    allow_insecure: bool = False,
    tls: ServeTls | None = None,
) -> subprocess.Popen[bytes]:
    """`mlo serve` detached from this terminal, its output appended to `log_path`; every
    setting it needs is on its command line (nothing is passed through the environment)."""
    args = [sys.executable, "-m", "ml_offload.cli.main", "serve", "--host", host]
    args += ["--port", str(port)]
    if config is not None:
        args += ["--config", str(config.resolve())]
    if allow_insecure:
        args.append("--allow-insecure")
    args += (tls or ServeTls()).argv()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"{_START_MARK}{stamp} starting: {' '.join(args)}\n".encode())
        log.flush()
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    timeout_s: float,
    client: ClientTls | None = None,
) -> None:
    """Until the process started (`proc`) answers `/health` (its pid in the answer: another
    server on the port is not taken for it); the log's first error explains an early exit, and
    a TLS handshake the client cannot complete (trust, client certificate) stops it at once."""
    client = client or ClientTls()
    verify = client.verify(check_hostname=False)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(verify=verify, timeout=1.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DaemonError(
                    f"the gateway exited during start-up (code {proc.returncode}): "
                    f"{first_error(log_path)} (log: {log_path})"
                )
            if _health(http, url, proc, client):
                return
            time.sleep(0.1)
    terminate(proc.pid, 5.0)
    raise DaemonError(
        f"the gateway did not answer at {url} within {timeout_s:.0f}s (log: {log_path})"
    )


def _health(http: httpx.Client, url: str, proc: subprocess.Popen[bytes], client: ClientTls) -> bool:
    try:
        resp = http.get(f"{url}/health")
        return resp.status_code == 200 and resp.json().get("pid") == proc.pid
    except ValueError:
        return False  # not JSON: not a gateway of ours
    except httpx.HTTPError as exc:
        reason = explain(exc, url, client)
        if reason is None:
            return False  # not listening yet
    terminate(proc.pid, 5.0)
    raise DaemonError(f"{reason} (the gateway it started is stopped)")


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, wait, then SIGKILL; reaps the process when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (reaped or not, a zombie is gone)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_gateway(pid: int) -> bool:
    """The process is alive and runs `mlo serve` (not another program that reused the pid)."""
    if not alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    words = [a.decode(errors="replace") for a in argv]
    return "serve" in words and any("ml_offload" in w or w.endswith("mlo") for w in words)


def first_error(path: Path) -> str:
    """The reason a start failed: the first error line of the latest start in the log (later
    ones are often its consequences: shutdown noise, unclosed sessions)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    latest = text.rsplit(_START_MARK, 1)[-1].splitlines()[1:]
    lines = [ln.strip() for ln in latest if ln.strip()]
    errors = [ln for ln in lines if re.search(r"\berror\b", ln, re.IGNORECASE)]
    return errors[0] if errors else (lines or ["(empty log)"])[-1]


def listening(url: str) -> bool:
    """Whether something accepts connections at `url` (checked before the long start-up)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=1.0):
            return True
    except OSError:
        return False


def connect_url(host: str, port: int, *, tls: bool = False) -> str:
    """The URL to reach a server bound to `host`:`port` (wildcards mean this machine);
    https when it serves TLS."""
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
