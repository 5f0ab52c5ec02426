"""TLS end to end through the CLI (issue 12): the daemon started with `--tls-*` flags and probed
over HTTPS, every client command trusting a private CA and presenting a client certificate
(`--ca-file/--cert/--key` or `$MLO_CA_BUNDLE`, `$MLO_CLIENT_CERT`, `$MLO_CLIENT_KEY`), and
`mlo run` starting its own HTTPS gateway from a config that serves TLS; certificates from
`trustme`, real handshakes on loopback, the real engine behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import MODEL, _free_port, write_config
from tests.integration.test_cli_pipeline import env_for, gateway_processes, mlo, one_error_line

pytestmark = pytest.mark.integration


@dataclass
class Files:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # alice, from the same CA
    client_key: Path
    stranger_ca: Path  # a CA that signed nothing here

    def client_env(self) -> dict[str, str]:
        return {
            "MLO_CA_BUNDLE": str(self.ca),
            "MLO_CLIENT_CERT": str(self.client_cert),
            "MLO_CLIENT_KEY": str(self.client_key),
        }

    def flags(self) -> list[str]:
        files = {"--ca-file": self.ca, "--cert": self.client_cert, "--key": self.client_key}
        return [arg for flag, path in files.items() for arg in (flag, str(path))]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    alice = ca.issue_cert("alice.example", common_name="alice")
    paths = Files(*(folder / n for n in ("ca", "s.pem", "s.key", "a.pem", "a.key", "other")))
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    alice.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    alice.private_key_pem.write_to_path(str(paths.client_key))
    trustme.CA().cert_pem.write_to_path(str(paths.stranger_ca))
    return paths


def _ok(done: object) -> str:
    assert getattr(done, "returncode", None) == 0, getattr(done, "stderr", "")
    stdout: str = getattr(done, "stdout", "")
    return stdout


@dataclass
class Daemon:
    url: str
    env: dict[str, str]  # the state folder, no client TLS
    start: list[str]  # `mlo server start ...` with mutual TLS
    config: Path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, files: Files) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("daemon")
    port = _free_port()
    cfg = tmp / "config.toml"
    write_config(cfg, tmp / "data", {"server": {"port": port}})
    serve_tls = ["--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key)]
    serve_tls += ["--tls-client-ca", str(files.ca)]
    found = Daemon(
        f"https://127.0.0.1:{port}",
        env_for(tmp, COLUMNS="200"),
        ["server", "start", "--config", str(cfg), *serve_tls],
        cfg,
    )
    assert found.url in _ok(mlo(found.env | files.client_env(), *found.start))
    yield found
    _ok(mlo(found.env, "server", "stop"))
    assert gateway_processes(str(cfg)) == []


def test_a_daemon_start_without_a_client_certificate_says_what_to_give(
    tmp_path: Path, files: Files
) -> None:
    # The probe cannot pass mutual TLS: the start says so and leaves no gateway behind (it
    # used to probe over plain http, then kill a healthy TLS gateway at the timeout).
    cfg = tmp_path / "config.toml"
    write_config(cfg, tmp_path / "data", {"server": {"port": _free_port()}})
    env = env_for(tmp_path) | {"MLO_CA_BUNDLE": str(files.ca)}
    start = ["server", "start", "--config", str(cfg), "--tls-cert", str(files.server_cert)]
    start += ["--tls-key", str(files.server_key), "--tls-client-ca", str(files.ca)]
    refused = one_error_line(mlo(env, *start))
    assert "--cert and --key" in refused and "mutual TLS" in refused
    assert gateway_processes(str(cfg)) == []


def test_client_commands_reach_the_daemon_over_mutual_tls(daemon: Daemon, files: Files) -> None:
    env = daemon.env | files.client_env()
    status = mlo(env, "server", "status")
    assert daemon.url in _ok(status) and "models: 1 known" in status.stdout
    loaded = mlo(daemon.env, "load", MODEL, *files.flags())  # flags instead of the variables
    assert f"{MODEL} ready" in _ok(loaded)
    report = json.loads(_ok(mlo(env, "health", "--requests", "1", "--json")))
    assert report["latency"][0]["model"] == MODEL and report["latency"][0]["errors"] == []
    ran = mlo(env, "run", "--prompt", "Hi", "--max-tokens", "3")
    assert _ok(ran).strip() and "starting a gateway" not in ran.stderr


def test_client_tls_mistakes_are_one_line_with_the_fix(
    daemon: Daemon, files: Files, tmp_path: Path
) -> None:
    no_cert = one_error_line(mlo(daemon.env | {"MLO_CA_BUNDLE": str(files.ca)}, "ps"))
    assert "--cert and --key" in no_cert
    other_ca = {"MLO_CA_BUNDLE": str(files.stranger_ca)}
    untrusted = mlo(daemon.env | files.client_env() | other_ca, "ps")
    assert "--ca-file" in one_error_line(untrusted) and "not trust" in untrusted.stderr
    missing = one_error_line(mlo(daemon.env, "ps", "--ca-file", str(tmp_path / "nope.pem")))
    assert "--ca-file" in missing and "nope.pem" in missing


def test_a_restart_keeps_the_tls_files(daemon: Daemon, files: Files) -> None:
    env = daemon.env | files.client_env()
    assert daemon.url in _ok(mlo(env, "server", "restart"))
    assert "models: 1 known" in _ok(mlo(env, "server", "status"))


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_run_starts_its_own_https_gateway(tmp_path: Path, files: Files, mutual: bool) -> None:
    tls = {"cert_file": files.server_cert, "key_file": files.server_key}
    if mutual:
        tls["client_ca_file"] = files.ca
    cfg = tmp_path / "config.toml"
    write_config(
        cfg, tmp_path / "data", {"server": {"port": _free_port()}, "security": {"tls": tls}}
    )
    env = env_for(tmp_path) | {"MLO_CA_BUNDLE": str(files.ca)}
    if mutual:
        env |= files.client_env()
    out = tmp_path / "answers.jsonl"
    done = mlo(env, "run", "--config", str(cfg), "--prompt", "Say hi",
               "--max-tokens", "4", "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "starting a gateway at https://" in done.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["model"] == MODEL and row["error"] is None and 0 < row["completion_tokens"] <= 4
    assert gateway_processes(str(cfg)) == []
