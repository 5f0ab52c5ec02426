"""Settings: the example config loads, env overrides, legacy variables, errors name the key."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ml_offload.config import Settings, load_settings
from ml_offload.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLO_CONFIG", "LLAMACPP_URL", "LLM_PARALLEL", "TF_MODELS", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def test_example_config_loads() -> None:
    s = load_settings(ROOT / "config.example.toml")
    assert s.server.port == 9000
    names = [m.name for m in s.models]
    assert names == ["smollm2-chat", "remote-llama", "llama3", "claude"]
    assert s.models[3].backend == "anthropic" and s.security.audit.enabled
    assert s.models[2].backend == "ollama" and s.models[2].remote_model == "llama3.2:latest"
    assert s.models[0].aliases == ["smol", "gpt-4o-mini"] and s.models[1].url


def test_env_overrides_file_and_legacy_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nport = 9100\n[engine]\ndefault_parallel = 2\n")
    monkeypatch.setenv("MLO_SERVER__PORT", "9200")
    monkeypatch.setenv("LLM_PARALLEL", "3")
    monkeypatch.setenv("TF_MODELS", str(tmp_path))
    monkeypatch.setenv("LLAMACPP_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    s = load_settings(cfg)
    assert s.server.port == 9200
    assert s.engine.default_parallel == 3
    assert s.storage.models_path == tmp_path
    assert s.llamacpp_url == "http://127.0.0.1:8080"
    assert s.hf_token is not None and "hf_secret" not in repr(s)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[scheduler]\nmax_loaded_models = 0\n", "scheduler.max_loaded_models"),
        ("[server]\nprot = 1\n", "server.prot"),
        ('[[models]]\nname = "x"\n', "models.0"),
        (
            '[[models]]\nname = "x"\npath = "a.gguf"\n[[models]]\nname = "x"\nurl = "http://h"\n',
            "declared twice",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(cfg)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(bad)


def test_config_check_masks_secrets_and_names_bad_keys(tmp_path: Path) -> None:
    """`mlo config check FILE` (issue 14): effective settings, secrets and URL credentials
    masked; an invalid file is one line naming the key (exit status 2)."""
    from typer.testing import CliRunner

    from ml_offload.cli.commands import app

    good = tmp_path / "good.toml"
    good.write_text(
        '[security]\nadmin_key = "admin-secret-1"\n'
        '[storage]\ndatabase_url = "postgresql://mlo:db-pass-2@127.0.0.1/mlo"\n'
        '[[models]]\nname = "c"\nbackend = "openai"\napi_key = "sk-secret-3"\n'
    )
    done = CliRunner().invoke(app, ["config", "check", str(good), "--json"], env={"MLO_CONFIG": ""})
    assert done.exit_code == 0, done.output
    effective = json.loads(done.stdout)
    assert effective["models"][0]["name"] == "c"
    assert not [s for s in ("admin-secret-1", "db-pass-2", "sk-secret-3") if s in done.output]
    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler]\nmax_loaded_models = 0\n")
    refused = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert isinstance(refused.exception, ConfigError)
    assert "scheduler.max_loaded_models" in str(refused.exception)


def test_fleet_gateway_role_holds_no_engines() -> None:
    from ml_offload.config import Settings

    gw = Settings(fleet={"role": "gateway"}, models=[{"name": "r", "url": "http://10.0.0.2:8080"}])
    assert not gw.scan_models_dir and not gw.demo_model  # nothing found here runs here
    with pytest.raises(ValueError, match="holds no engines but model 'local' runs here"):
        Settings(fleet={"role": "gateway"}, models=[{"name": "local", "path": "/m/x.gguf"}])
    with pytest.raises(ValueError, match="lease_s must be longer"):
        Settings(fleet={"heartbeat_s": 5, "lease_s": 5})


def test_pipeline_stages_need_a_ray_cluster() -> None:
    serve = {"model": "x", "pipeline_parallel_size": 2}
    with pytest.raises(ValidationError, match="ray_address"):
        Settings(models=[{"name": "big", "backend": "vllm", "serve": serve}])
    ok = Settings(
        models=[{"name": "big", "backend": "vllm", "serve": {**serve, "ray_address": "h:6379"}}]
    )
    assert ok.models[0].serve is not None and ok.models[0].serve.ray_address == "h:6379"
