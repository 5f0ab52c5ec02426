"""What loading a model takes: its GGUF estimate and what a load adds beside the model.

`vram.estimate_memory` sizes the model's own buffers. A load also brings:
- CPU weight repacking, on hosts whose kernels repack (`gguf.host_repack_family`);
- companions named in the model's `extra_args`: a multimodal projector (`--mmproj FILE`,
  its weights plus the image encoder's compute buffer, see `encoder_compute_bytes`) and a draft
  model for speculative decoding (`--model-draft FILE`, a second model with the same context
  and slots: checked against the engine in tests/integration/test_vram_engine.py);
- on each GPU the engine uses, the backend's own context (`gpu.context_overhead_bytes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ml_offload.domain import ModelSpec
from ml_offload.errors import InvalidModelFile
from ml_offload.gguf import host_repack_family, read_fields, read_gguf_info, repack_bytes
from ml_offload.vram import MemoryEstimate, coarse_estimate, engine_ubatch, estimate_memory

MIB = 2**20
F32 = 4
# The image encoder's compute buffer when the projector's header does not give its shape.
# Not measured (no projector model on the test machine): a generous margin.
MMPROJ_COMPUTE_ALLOWANCE = 512 * MIB
_MMPROJ_FLAGS = ("-mm", "--mmproj")
_DRAFT_FLAGS = ("-md", "--model-draft")
# llama-server's flags, then xllamacpp's `key=value` engine parameters (types by ggml number)
_KV_K_FLAGS = ("-ctk", "--cache-type-k", "cache_type_k")
_KV_V_FLAGS = ("-ctv", "--cache-type-v", "cache_type_v")
_FLASH_FLAGS = ("-fa", "--flash-attn")
_UBATCH_FLAGS = ("-ub", "--ubatch-size", "n_ubatch")
_GGML_TYPES = {"0": "f32", "1": "f16", "2": "q4_0", "3": "q4_1", "6": "q5_0", "7": "q5_1"}
_GGML_TYPES |= {"8": "q8_0", "20": "iq4_nl", "30": "bf16"}


def load_estimate(spec: ModelSpec, *, context_overhead_bytes: int = 0) -> MemoryEstimate:
    """The calibrated per-layer estimate for the settings the engine is launched with."""
    est = _model_estimate(spec)
    return dataclasses.replace(
        est,
        context_bytes=context_overhead_bytes,
        companion_bytes=companion_bytes(spec),
    )


def companion_bytes(spec: ModelSpec) -> int:
    """The projector's and the draft model's memory, from the files `extra_args` names."""
    total = 0
    mmproj = flag_value(spec.extra_args, _MMPROJ_FLAGS)
    if mmproj is not None:
        total += _file_weights(Path(mmproj)) + encoder_compute_bytes(Path(mmproj))
    draft = flag_value(spec.extra_args, _DRAFT_FLAGS)
    if draft is not None:
        total += _draft_bytes(spec, Path(draft))
    return total


def flag_value(args: Sequence[str], flags: Sequence[str]) -> str | None:
    """The value of the last of `flags` in a command line (`-f VALUE` or `--flag=VALUE`)."""
    found = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in flags:
            found = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def encoder_compute_bytes(path: Path) -> int:
    """The image encoder's compute buffer for one image of the projector's size, bounded from
    its header (`clip.vision.*`): per layer at most the attention scores without flash
    attention (tokens² × heads) and the FFN's activations (tokens × (n_ff + 5·n_embd)), in f32.
    An upper bound from the graph's shape, not calibrated against the engine (no projector
    model here); MMPROJ_COMPUTE_ALLOWANCE when the header does not say."""
    try:
        fields = read_fields(path)
    except InvalidModelFile:
        return MMPROJ_COMPUTE_ALLOWANCE
    keys = ("image_size", "patch_size", "embedding_length", "feed_forward_length")
    values = [fields.get(f"clip.vision.{k}") for k in (*keys, "attention.head_count")]
    if not all(isinstance(v, int) and v > 0 for v in values):
        return MMPROJ_COMPUTE_ALLOWANCE
    image, patch, n_embd, n_ff, heads = (int(v) for v in values)  # type: ignore[arg-type]
    tokens = (image // patch) ** 2 + 1  # the patches and a class token
    return (tokens * tokens * heads + tokens * (n_ff + 5 * n_embd)) * F32


def _model_estimate(spec: ModelSpec) -> MemoryEstimate:
    if spec.info is None or not spec.info.layer_weight_bytes:
        size = spec.path.stat().st_size if spec.path and spec.path.exists() else 0
        return coarse_estimate(size, ctx_tokens=spec.ctx_size * spec.parallel)
    args = spec.extra_args
    ubatch = flag_value(args, _UBATCH_FLAGS)
    launched_ubatch = engine_ubatch(spec.parallel, spec.embeddings)  # what the launch sets
    return estimate_memory(
        spec.info,
        ctx_tokens=spec.ctx_size * spec.parallel,
        parallel=spec.parallel,
        embeddings=spec.embeddings,
        # llama.cpp's default `auto` turns it on for CPU and CUDA
        flash_attn=flag_value(args, _FLASH_FLAGS) not in ("off", "0", "false"),
        repack=repack_bytes(spec.info, host_repack_family()),
        kv_type=_kv_type(flag_value(args, _KV_K_FLAGS)),
        kv_type_v=_kv_type(flag_value(args, _KV_V_FLAGS)),
        ubatch=int(ubatch) if ubatch and ubatch.isdigit() else launched_ubatch,
    )


def _kv_type(value: str | None) -> str:
    """A cache type as llama-server names it, or as xllamacpp's ggml_type number; f16 default."""
    return _GGML_TYPES.get(value, value) if value else "f16"


def _file_weights(path: Path) -> int:
    """A companion's tensor bytes from its header; its size on disk if it is not readable."""
    try:
        info = read_gguf_info(path)
    except InvalidModelFile:
        return path.stat().st_size if path.is_file() else 0
    return info.input_weight_bytes + info.output_weight_bytes + sum(info.layer_weight_bytes)


def _draft_bytes(spec: ModelSpec, path: Path) -> int:
    """A draft model served beside the main one: same context and slots, no embeddings."""
    try:
        info = read_gguf_info(path)
    except InvalidModelFile:
        return coarse_estimate(
            path.stat().st_size if path.is_file() else 0, ctx_tokens=0
        ).cpu_total_bytes()
    draft = _model_estimate(
        dataclasses.replace(spec, path=path, info=info, embeddings=False, extra_args=())
    )
    return max(draft.cpu_total_bytes(), draft.full_offload_bytes())
