"""What a load takes beside the model: companions named in extra_args, the GPU context."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
from bench import gguf_shapes

from ml_offload.domain import ModelSpec
from ml_offload.gguf import read_gguf_info
from ml_offload.sizing import (
    MMPROJ_COMPUTE_ALLOWANCE,
    companion_bytes,
    encoder_compute_bytes,
    flag_value,
    load_estimate,
)

SHAPE = gguf_shapes.Shape("s", "llama", 2, 64, 4, 2, 96, 300)


def model(tmp_path: Path, name: str) -> Path:
    return gguf_shapes.write_shape(SHAPE, tmp_path / f"{name}.gguf")


def spec_of(path: Path, *args: str) -> ModelSpec:
    return ModelSpec(
        name="m", path=path, ctx_size=512, parallel=2, info=read_gguf_info(path), extra_args=args
    )


def test_flag_value_takes_both_forms_and_the_last() -> None:
    assert flag_value(["--mmproj", "a.gguf", "-c", "5"], ("-mm", "--mmproj")) == "a.gguf"
    assert flag_value(["--mmproj=b.gguf"], ("-mm", "--mmproj")) == "b.gguf"
    assert flag_value(["-mm", "a", "--mmproj", "c"], ("-mm", "--mmproj")) == "c"
    assert flag_value(["--mmproj"], ("--mmproj",)) is None
    assert flag_value(["--no-mmproj"], ("--mmproj",)) is None


def test_projector_counts_its_weights_and_an_encoder_allowance(tmp_path: Path) -> None:
    main, proj = model(tmp_path, "main"), model(tmp_path, "mmproj")
    weights = sum(int(t.n_bytes) for t in gguf.GGUFReader(proj).tensors)
    assert companion_bytes(spec_of(main, "--mmproj", str(proj))) == (
        weights + MMPROJ_COMPUTE_ALLOWANCE
    )
    assert companion_bytes(spec_of(main)) == 0


def test_draft_model_is_a_second_model_with_the_same_slots(tmp_path: Path) -> None:
    main, draft = model(tmp_path, "main"), model(tmp_path, "draft")
    alone = load_estimate(dataclasses.replace(spec_of(main), embeddings=False))
    extra = companion_bytes(spec_of(main, "-md", str(draft)))
    assert extra == max(alone.cpu_total_bytes(), alone.full_offload_bytes())
    both = load_estimate(spec_of(main, "--model-draft", str(draft)))
    assert both.cpu_total_bytes() == load_estimate(spec_of(main)).cpu_total_bytes() + extra


def test_unreadable_companion_counts_its_size(tmp_path: Path) -> None:
    main, junk = model(tmp_path, "main"), tmp_path / "mmproj-junk.gguf"
    junk.write_bytes(b"not a gguf" * 100)
    assert companion_bytes(spec_of(main, "--mmproj", str(junk))) == (
        1000 + MMPROJ_COMPUTE_ALLOWANCE
    )


def test_context_overhead_is_on_gpus_only(tmp_path: Path) -> None:
    spec = spec_of(model(tmp_path, "main"))
    plain, ctx = load_estimate(spec), load_estimate(spec, context_overhead_bytes=300)
    assert ctx.cpu_total_bytes() == plain.cpu_total_bytes()
    assert ctx.gpu_bytes(1) == plain.gpu_bytes(1) + 300
    assert ctx.full_offload_bytes() == plain.full_offload_bytes() + 300


def test_launch_flags_in_extra_args_shape_the_estimate(tmp_path: Path) -> None:
    path = model(tmp_path, "main")
    info = read_gguf_info(path)
    plain = load_estimate(spec_of(path))
    q8 = load_estimate(spec_of(path, "-ctk", "q8_0", "--cache-type-v=q8_0"))
    kv = sum(plain.layer_bytes) - sum(info.layer_weight_bytes)
    kv_q8 = sum(q8.layer_bytes) - sum(info.layer_weight_bytes)
    assert kv_q8 * 128 == kv * 68  # 34 bytes per 32 values instead of 64
    k_only = load_estimate(spec_of(path, "-ctk", "q8_0"))
    assert sum(k_only.layer_bytes) - sum(info.layer_weight_bytes) == (kv + kv_q8) // 2
    no_fa = load_estimate(spec_of(path, "-fa", "off"))
    assert no_fa.gpu_compute_bytes > plain.gpu_compute_bytes
    small_batch = load_estimate(spec_of(path, "-ub", "128"))
    assert small_batch.gpu_compute_bytes < plain.gpu_compute_bytes


def test_xllamacpp_engine_parameters_name_the_cache_type_by_number(tmp_path: Path) -> None:
    path = model(tmp_path, "main")
    by_flag = load_estimate(spec_of(path, "-ctk", "q8_0", "-ctv", "q8_0"))
    by_number = load_estimate(spec_of(path, "cache_type_k=8", "cache_type_v=8"))
    assert by_number == by_flag


def test_projector_encoder_bound_from_its_header(tmp_path: Path) -> None:
    proj = tmp_path / "mmproj-clip.gguf"
    w = gguf.GGUFWriter(proj, "clip")
    for key, value in {
        "image_size": 224,
        "patch_size": 14,
        "embedding_length": 1024,
        "feed_forward_length": 4096,
        "attention.head_count": 16,
    }.items():
        w.add_uint32(f"clip.vision.{key}", value)
    w.add_tensor("v.patch_embd.weight", np.zeros((1024, 588), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tokens = 16 * 16 + 1
    encoder = (tokens * tokens * 16 + tokens * (4096 + 5 * 1024)) * 4
    assert encoder_compute_bytes(proj) == encoder
    main = model(tmp_path, "main")
    assert companion_bytes(spec_of(main, "--mmproj", str(proj))) == 1024 * 588 * 2 + encoder
