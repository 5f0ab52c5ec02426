"""Hardware profiles: named defaults under the user's settings, and the one bootstrap suggests."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from ml_offload import bootstrap
from ml_offload.bootstrap import Gpu, Machine, diagnose, suggest_profile
from ml_offload.config import Settings, load_settings
from ml_offload.errors import ConfigError
from ml_offload.profiles import PROFILES, ProfileName


def test_every_profile_name_has_a_table_entry() -> None:
    assert set(get_args(ProfileName)) == set(PROFILES)
    assert {rule[2] for rule in bootstrap._PROFILE_RULES} <= set(PROFILES)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_validates(name: str) -> None:
    settings = Settings(profile=name)
    assert settings.profile == name
    assert settings.engine.default_ctx_size >= 256


def test_b200_is_the_original_b200_optimized() -> None:
    s = Settings(profile="b200")
    assert (s.engine.flash_attn, s.engine.default_ctx_size) == ("on", 32768)
    assert (s.vllm.tensor_parallel_size, s.vllm.quantization) == (4, "fp8")
    assert s.gpu.monitor == "nvml"


def test_no_profile_keeps_the_defaults() -> None:
    s = Settings()
    assert s.profile is None
    assert (s.engine.flash_attn, s.engine.default_ctx_size) == ("auto", 4096)
    assert s.vllm.tensor_parallel_size is None


def test_explicit_settings_win_over_the_profile(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        'profile = "b200"\n[engine]\ndefault_ctx_size = 8192\n'
        '[[models]]\nname = "big"\nbackend = "vllm"\n'
        'serve = {model = "org/big", tensor_parallel_size = 2}\n'
    )
    s = load_settings(cfg)
    assert s.engine.default_ctx_size == 8192  # the file's
    assert s.engine.flash_attn == "on"  # the profile's, in the same section
    serve = s.models[0].serve
    assert serve is not None
    assert serve.tensor_parallel_size == 2  # the model's own
    assert serve.quantization == "fp8"  # the profile's vLLM default


def test_profile_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLO_PROFILE", "cpu")
    monkeypatch.setenv("MLO_ENGINE__DEFAULT_CTX_SIZE", "2048")
    s = load_settings(None)
    assert s.gpu.monitor == "none" and s.engine.default_ctx_size == 2048


def test_unknown_profile_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('profile = "b300"\n')
    with pytest.raises(ConfigError, match="profile"):
        load_settings(cfg)


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (Gpu(0, "NVIDIA B200", "sm_100", 180 * 2**30), "b200"),
        (Gpu(0, "NVIDIA H100 80GB HBM3", "sm_90", 80 * 2**30), "h100"),
        (Gpu(0, "NVIDIA A100-SXM4-80GB", "sm_80", 80 * 2**30), "a100-80g"),
        (Gpu(0, "NVIDIA A100-SXM4-40GB", "sm_80", 40 * 2**30), None),
        (Gpu(0, "NVIDIA GeForce RTX 4090", "sm_89", 24 * 2**30), "rtx4090"),
        (Gpu(0, "NVIDIA GeForce RTX 3060", "sm_86", 12 * 2**30), None),
    ],
)
def test_bootstrap_suggests_the_profile(gpu: Gpu, expected: str | None) -> None:
    machine = Machine(gpus=[gpu, gpu])
    assert suggest_profile(machine) == expected
    finding = {f.name: f for f in diagnose(machine)}["profile"]
    assert finding.status == "ok"
    if expected:
        assert finding.fix == f'set profile = "{expected}" in the config file'
        assert "2× " in finding.detail


def test_bootstrap_suggests_cpu_without_a_gpu() -> None:
    assert suggest_profile(Machine()) == "cpu"


def test_flash_attn_values_are_the_engine_s_own() -> None:
    """Every engine.flash_attn value maps to one of xllamacpp's llama_flash_attn_type values."""
    xllamacpp = pytest.importorskip("xllamacpp")
    from ml_offload.backends.llamacpp import _FLASH_PARAM
    from ml_offload.config import EngineSettings

    assert set(_FLASH_PARAM) == set(get_args(EngineSettings.model_fields["flash_attn"].annotation))
    named = {
        "on": xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }
    for value, member in named.items():
        assert _FLASH_PARAM[value] == {"flash_attn_type": int(member)}
    assert _FLASH_PARAM["auto"] == {}  # the engine's own default (auto)
