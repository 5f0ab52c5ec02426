"""One access-log line per request and `mlo logs [-f] [--model M]` (issue 14), on a daemon
started by the real CLI serving the real model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.conftest import MODEL, _free_port
from tests.integration.test_audit_cli import wait_for
from tests.integration.test_cli_pipeline import config, env_for, mlo, one_error_line

pytestmark = pytest.mark.integration
STREAM_LINE = re.compile(
    r"POST /v1/chat/completions status=200 key=- model=smollm2-135m deployment=smollm2-135m "
    r"tokens=[1-9]\d*\+[1-9]\d* latency_ms=[\d.]+ ttft_ms=[\d.]+"
)


def test_access_lines_and_mlo_logs(tmp_path: Path) -> None:
    port = _free_port()
    cfg = config(tmp_path, port)
    env = env_for(tmp_path)
    started = mlo(env, "server", "start", "--config", str(cfg))
    assert started.returncode == 0, started.stderr
    following = tmp_path / "following.txt"
    with following.open("wb") as sink:
        follow = subprocess.Popen(
            [sys.executable, "-m", "ml_offload.cli.main", "logs", "-f", "-n", "0"],
            env=env,
            stdout=sink,
        )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        ask: Any = [{"role": "user", "content": "Hi"}]
        usage: Any = {"include_usage": True}
        stream = client.chat.completions.create(
            model=MODEL, messages=ask, max_tokens=4, stream=True, stream_options=usage
        )
        assert [c for c in stream if c.usage]  # read to the end
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=ask)

        shown = mlo(env, "logs", "-n", "200")
        assert shown.returncode == 0, shown.stderr
        assert STREAM_LINE.search(shown.stdout), shown.stdout[-2000:]
        assert re.search(r"POST /v1/chat/completions status=404 key=- model=nope", shown.stdout)
        wait_for(lambda: STREAM_LINE.search(following.read_text()) is not None, what="logs -f")

        engine = mlo(env, "logs", "--model", MODEL, "--config", str(cfg))
        assert engine.returncode == 0 and engine.stdout.strip(), engine.stderr
        missing = one_error_line(mlo(env, "logs", "--model", "nope", "--config", str(cfg)))
        assert "no log at" in missing
    finally:
        follow.terminate()
        follow.wait(10)
        assert mlo(env, "server", "stop").returncode == 0
