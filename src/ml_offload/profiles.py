"""Named hardware profiles (`profile = "h100"` in the config): settings laid under the user's
own, so that any key the user sets wins."""

from __future__ import annotations

from typing import Any, Literal

ProfileName = Literal["b200", "h100", "a100-80g", "rtx4090", "cpu"]

# Named hardware profiles: settings laid under the user's own (any key set explicitly wins).
# `b200` is the original stack's `b200Optimized`: vLLM with tensor parallel 4 and FP8, llama.cpp
# with flash attention and a 32,768-token context, GPU monitoring on.
PROFILES: dict[str, dict[str, Any]] = {
    "b200": {
        "engine": {"flash_attn": "on", "default_ctx_size": 32768},
        "vllm": {"tensor_parallel_size": 4, "quantization": "fp8", "gpu_memory_utilization": 0.9},
        "gpu": {"monitor": "nvml"},
    },
    "h100": {
        "engine": {"flash_attn": "on", "default_ctx_size": 16384},
        "vllm": {"quantization": "fp8", "gpu_memory_utilization": 0.9},
        "gpu": {"monitor": "nvml"},
    },
    "a100-80g": {  # Ampere has no FP8: vLLM keeps the checkpoint's own precision
        "engine": {"flash_attn": "on", "default_ctx_size": 16384},
        "vllm": {"gpu_memory_utilization": 0.9},
        "gpu": {"monitor": "nvml"},
    },
    "rtx4090": {  # 24 GiB, also drives a display: leave more of it free
        "engine": {"flash_attn": "on", "default_ctx_size": 8192},
        "vllm": {"gpu_memory_utilization": 0.85, "max_model_len": 8192},
        "gpu": {"monitor": "nvml", "reserve_bytes": 1024**3},
    },
    "cpu": {
        "engine": {"default_ctx_size": 4096},
        "gpu": {"monitor": "none"},
    },
}


def laid_under(defaults: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """`explicit` over `defaults`, section by section (a section given as a model object wins
    whole)."""
    merged = dict(defaults)
    for key, value in explicit.items():
        base = merged.get(key)
        merged[key] = (
            laid_under(base, value) if isinstance(base, dict) and isinstance(value, dict) else value
        )
    return merged
