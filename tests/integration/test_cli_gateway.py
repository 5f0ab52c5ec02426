"""Which gateway the CLI talks to (issue 14): `--url`, then `$MLO_URL`, then the daemon's recorded
address (`mlo server start`), then the config; checked by state, through the real CLI, with two
real gateways: one on the config's address and a daemon on another port."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.integration.conftest import MODEL, GatewayFactory, _free_port, write_config
from tests.integration.test_cli_pipeline import env_for, mlo


def _state(url: str) -> str:
    state: str = httpx.get(f"{url}/models/{MODEL}", timeout=30).json()["state"]
    return state


def _ok(done: object) -> str:
    assert getattr(done, "returncode", None) == 0, getattr(done, "stderr", "")
    stdout: str = getattr(done, "stdout", "")
    return stdout


def test_every_client_command_reaches_the_daemon(
    tmp_path: Path, gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    other = gateway_factory()  # answers on the address the user's config names
    env = env_for(tmp_path, COLUMNS="200")  # tables unwrapped
    user_config = tmp_path / "config" / "ml-offload" / "config.toml"
    user_config.parent.mkdir(parents=True)
    user_config.write_text(f"[server]\nport = {other.url.rsplit(':', 1)[1]}\n")

    port = _free_port()
    daemon_config = tmp_path / "daemon.toml"
    write_config(daemon_config, tmp_path / "daemon-data", {})
    _ok(mlo(env, "server", "start", "--config", str(daemon_config), "--port", str(port)))
    daemon = f"http://127.0.0.1:{port}"
    try:
        pid = json.loads((tmp_path / "state" / "ml-offload" / "gateway.pid").read_text())["pid"]
        said = f"gateway {daemon} (the daemon, pid {pid})"

        loaded = mlo(env, "load", MODEL)
        assert f"{MODEL} ready" in _ok(loaded) and said in loaded.stderr
        assert (_state(daemon), _state(other.url)) == ("ready", "stopped")

        for command in (["ps"], ["models", "ls"], ["vram"], ["health", "--requests", "0"]):
            done = mlo(env, *command)
            assert MODEL in _ok(done) and said in done.stderr, command
        assert "ready" in _ok(mlo(env, "models", "ls", "--json"))

        # $MLO_URL beats the daemon (silently here: it is the config's own address), --url
        # beats both and says so.
        via_env = mlo(env | {"MLO_URL": other.url}, "ps")
        assert "no models loaded" in _ok(via_env) and via_env.stderr == ""
        via_flag = mlo(env | {"MLO_URL": other.url}, "ps", "--url", daemon)
        assert MODEL in _ok(via_flag) and f"gateway {daemon} (--url)" in via_flag.stderr

        unloaded = mlo(env, "unload", MODEL)
        assert f"{MODEL} stopped" in _ok(unloaded) and said in unloaded.stderr
        assert _state(daemon) == "stopped"
    finally:
        _ok(mlo(env, "server", "stop"))

    # No daemon: the config's gateway, and no line about it (it is the default).
    by_config = mlo(env, "load", MODEL)
    assert f"{MODEL} ready" in _ok(by_config) and "gateway" not in by_config.stderr
    assert _state(other.url) == "ready"
