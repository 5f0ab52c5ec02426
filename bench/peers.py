"""Peer gateways for `overhead.py --compare`, run on the same upstream fake and measured the same
way: LiteLLM's proxy (https://docs.litellm.ai/docs/proxy/configs: a `model_list` entry with
`litellm_params` `model: openai/<name>` and `api_base`), installed by `bench/peers.sh` in its own
virtual environment (never the project's).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import procs

DEFAULT_VENV = Path(__file__).resolve().parent / ".peers"
MASTER_KEY = "sk-bench-" + "0" * 32  # LiteLLM refuses to start without one (auth is always on)
LITELLM_CONFIG = """model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: {upstream}/v1
      api_key: unused
litellm_settings:
  telemetry: false
  drop_params: true
"""


@dataclass
class Peer:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    pid: int
    startup_s: float
    headers: dict[str, str]
    rss_idle_mb: float = 0.0


def litellm(venv: Path, upstream: str, workdir: Path, timeout_s: float = 180.0) -> Peer:
    """LiteLLM's proxy (`litellm --config`, one worker) in front of `upstream`; RuntimeError
    naming `bench/peers.sh` when it is not installed."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(f"LiteLLM is not installed in {venv}: run `bash bench/peers.sh`")
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(upstream=upstream))
    port = procs.free_port()
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MASTER_KEY": MASTER_KEY,
    }
    env.pop("PYTHONPATH", None)  # its own venv, not the project's sources
    log = workdir / "litellm.log"
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    url = f"http://127.0.0.1:{port}"
    ready = procs.wait_health(url + "/health/liveliness", proc, timeout_s)
    if ready is None:
        procs.stop_group(proc)
        raise RuntimeError("LiteLLM did not start:\n" + procs.tail(log))
    pid = procs.listener_pid(port) or proc.pid
    peer = Peer("litellm", url, proc, pid, ready - t0, {"Authorization": f"Bearer {MASTER_KEY}"})
    time.sleep(1.0)
    peer.rss_idle_mb = (procs.status_kb(peer.pid, "VmRSS") or 0) / 1024
    return peer
