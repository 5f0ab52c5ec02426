"""The GPU proof's parts that run without a GPU: the gateway config it writes, the model rows,
what it reads from llama.cpp's log. The whole proof runs with `bench/gpu/run.sh --dry-run`."""

from __future__ import annotations

from pathlib import Path

from bench.gpu import proof

from ml_offload.config import load_settings

MIB = 2**20


def setup(tmp_path: Path, *, dry: bool) -> proof.Setup:
    return proof.Setup(dry, tmp_path, tmp_path / "out", tmp_path / "llama-server")


def test_config_runs_llama_server_on_nvml(tmp_path: Path) -> None:
    s = setup(tmp_path, dry=False)
    entry = proof.model_entry(s, "llama8b-q4_0", 4096, 4, "q8_0")
    cfg = tmp_path / "config.toml"
    cfg.write_text(proof._config(s, tmp_path / "data", [entry], []))
    settings = load_settings(cfg)
    assert settings.engine.kind == "llama-server"
    assert settings.engine.llama_server_bin == str(tmp_path / "llama-server")
    assert settings.gpu.monitor == "nvml" and settings.gpu.reserve_bytes == proof.RESERVE
    (model,) = settings.models
    assert model.name == "llama8b-q4_0@4096x4-q8_0"
    assert (model.ctx_size, model.parallel) == (4096, 4)
    assert model.extra_args == ["-ctk", "q8_0", "-ctv", "q8_0"]


def test_dry_run_config_simulates_the_devices(tmp_path: Path) -> None:
    s = setup(tmp_path, dry=True)
    entry = proof.model_entry(s, "qwen3moe-16L", 1024, 4, "q8_0")
    cfg = tmp_path / "config.toml"
    cfg.write_text(proof._config(s, tmp_path / "data", [entry], [3 * MIB, 5 * MIB]))
    settings = load_settings(cfg)
    assert settings.engine.kind == "xllamacpp"
    assert settings.gpu.monitor == "simulated"
    assert [d.total_bytes for d in settings.gpu.simulated_devices] == [3 * MIB, 5 * MIB]
    assert settings.models[0].extra_args == ["cache_type_k=8", "cache_type_v=8"]


def test_every_row_names_a_model_it_writes() -> None:
    for rows, shapes in ((proof.ROWS, proof.BIG), (proof.DRY_ROWS, proof.SMALL)):
        assert {r[0] for r in rows} <= {s.name for s in shapes}


def test_logged_gpu_buffers_and_out_of_memory_lines() -> None:
    log = """\
load_tensors:        CUDA0 model buffer size =  4403.49 MiB
load_tensors:   CPU_Mapped model buffer size =   250.00 MiB
llama_kv_cache:      CUDA0 KV buffer size =  2048.00 MiB
llama_context:  CUDA_Host  output buffer size =     1.96 MiB
sched_reserve:      CUDA0 compute buffer size =   560.01 MiB
sched_reserve:  CUDA_Host compute buffer size =    40.01 MiB
"""
    assert proof.logged_gpu_bytes(log) == round(4403.49 * MIB) + 2048 * MIB + round(560.01 * MIB)
    assert proof.OOM.search("ggml_backend_cuda_buffer_type_alloc_buffer: ... out of memory")
    assert not proof.OOM.search("llama_context: n_ctx = 16384")
