"""The memory estimate: KV cache per type and layer, sliding windows, experts, offload split.

Figures against llama.cpp's own buffer sizes are in bench/estimate.py; the one measured bound
is tests/integration/test_vram_engine.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import pytest
from bench import gguf_shapes

from ml_offload.domain import GgufInfo
from ml_offload.gguf import read_gguf_info, repack_bytes, repack_family
from ml_offload.vram import (
    MemoryEstimate,
    engine_ubatch,
    estimate_bytes,
    estimate_memory,
    kv_cache_bytes,
    parse_llama_log,
)

MIB = 2**20
LAYER = 1_000_000

BASE = GgufInfo(
    architecture="llama",
    name="unit",
    parameters=None,
    quantization=None,
    context_length=8192,
    block_count=4,
    head_count=8,
    head_count_kv=2,
    embedding_length=512,
    file_size_bytes=10 * LAYER,
    layer_weight_bytes=(LAYER,) * 4,
    input_weight_bytes=3 * LAYER,
    output_weight_bytes=2 * LAYER,
    vocab_size=1000,
    feed_forward_length=1024,
)


def kv_of(est: MemoryEstimate, info: GgufInfo = BASE) -> list[int]:
    return [b - w for b, w in zip(est.layer_bytes, info.layer_weight_bytes, strict=True)]


@pytest.mark.parametrize(
    ("kv_type", "row_bytes"),
    [("f16", 128 * 2), ("f32", 128 * 4), ("q8_0", 4 * 34), ("q4_0", 4 * 18), ("Q8_0", 4 * 34)],
)
def test_kv_cache_per_type(kv_type: str, row_bytes: int) -> None:
    """2 KV heads × 64 = 128 values per token for K and again for V, in the type's blocks."""
    est = estimate_memory(BASE, ctx_tokens=4096, kv_type=kv_type)
    assert kv_of(est) == [4096 * 2 * row_bytes] * 4
    assert kv_cache_bytes(BASE, 4096, kv_type) == 4 * 4096 * 2 * row_bytes


def test_unknown_kv_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="q8_0"):
        estimate_memory(BASE, ctx_tokens=4096, kv_type="q3_z")


def test_grouped_query_attention_scales_with_kv_heads() -> None:
    mha = dataclasses.replace(BASE, head_count_kv=None)  # no key: as many KV heads as heads
    gqa = kv_of(estimate_memory(BASE, ctx_tokens=2048))
    assert kv_of(estimate_memory(mha, ctx_tokens=2048)) == [4 * k for k in gqa]


def test_per_layer_kv_heads_and_head_sizes() -> None:
    info = dataclasses.replace(
        BASE, head_count_kv_per_layer=(2, 0, 4, 1), key_length=128, value_length=64
    )
    per_head_cell = (128 + 64) * 2
    assert kv_of(estimate_memory(info, ctx_tokens=1024), info) == [
        1024 * per_head_cell * heads for heads in (2, 0, 4, 1)
    ]


def test_context_is_padded_to_256_cells_per_stream() -> None:
    one = kv_of(estimate_memory(BASE, ctx_tokens=256))[0]
    assert kv_of(estimate_memory(BASE, ctx_tokens=1000))[0] == 4 * one
    assert kv_of(estimate_memory(BASE, ctx_tokens=3000, parallel=3))[0] == 12 * one
    assert kv_of(estimate_memory(BASE, ctx_tokens=3000, parallel=3, kv_unified=True))[0] == 12 * one


SWA = dataclasses.replace(BASE, sliding_window=512, swa_layers=(True, True, True, False))


def test_sliding_window_layers_hold_window_plus_ubatch() -> None:
    cell = kv_of(estimate_memory(BASE, ctx_tokens=256))[0] // 256
    kv = kv_of(estimate_memory(SWA, ctx_tokens=8192), SWA)
    assert kv == [1024 * cell] * 3 + [8192 * cell]  # min(8192, 512 + 512) cells
    short = kv_of(estimate_memory(SWA, ctx_tokens=768), SWA)
    assert short == [768 * cell] * 4  # the window is longer than the context
    small_batch = kv_of(estimate_memory(SWA, ctx_tokens=8192, ubatch=100), SWA)
    assert small_batch[0] == 768 * cell  # 612 padded to 256


def test_sliding_window_with_parallel_streams() -> None:
    cell = kv_of(estimate_memory(BASE, ctx_tokens=256))[0] // 256
    split = kv_of(estimate_memory(SWA, ctx_tokens=8192, parallel=4), SWA)
    assert split == [4 * 1024 * cell] * 3 + [8192 * cell]  # each of 4 streams: min(2048, 1024)
    unified = kv_of(estimate_memory(SWA, ctx_tokens=8192, parallel=4, kv_unified=True), SWA)
    assert unified[0] == 2560 * cell  # one stream: 512 × 4 + 512


def test_window_without_layers_is_full_attention() -> None:
    info = dataclasses.replace(BASE, sliding_window=512)  # an arch whose pattern we do not know
    assert estimate_memory(info, ctx_tokens=8192) == estimate_memory(BASE, ctx_tokens=8192)


MOE = dataclasses.replace(
    BASE, expert_count=64, expert_used_count=8, expert_feed_forward_length=256
)


def test_experts_count_in_the_layers_and_the_compute_buffer() -> None:
    dense = estimate_memory(BASE, ctx_tokens=4096, flash_attn=True)
    moe = estimate_memory(MOE, ctx_tokens=4096, flash_attn=True)
    assert moe.layer_bytes == dense.layer_bytes  # the weights come from the tensor table
    # gate, up and activation for 8 experts of 256 (+ router) vs 3 × 1024 for the dense FFN
    per_token = (3 * 256 * 8 + 64 - 3 * 1024) * 4
    assert moe.gpu_compute_bytes - dense.gpu_compute_bytes == 512 * per_token


def test_compute_buffer_terms() -> None:
    fa = estimate_memory(BASE, ctx_tokens=4096, flash_attn=True).gpu_compute_bytes
    ffn_peak = 512 * (3 * 1024 + 5 * 512) * 4
    assert fa == ffn_peak + 4096 * 512 * 2  # + the f16 mask
    no_fa = estimate_memory(BASE, ctx_tokens=4096).gpu_compute_bytes
    attn_peak = 512 * (4096 * 8 + 5 * 512 + 512 + 2 * 128) * 4
    assert no_fa == attn_peak + 4096 * 512 * 4
    big_vocab = dataclasses.replace(BASE, vocab_size=50_000)
    emb = estimate_memory(big_vocab, ctx_tokens=4096, flash_attn=True, embeddings=True)
    assert emb.gpu_compute_bytes == 512 * (50_000 + 5 * 512) * 4 + 4096 * 512 * 2
    # without embeddings only one row of logits per slot: the FFN is the peak
    assert estimate_memory(big_vocab, ctx_tokens=4096, flash_attn=True).gpu_compute_bytes == fa


def test_gpu_bytes_follows_n_gpu_layers() -> None:
    est = estimate_memory(BASE, ctx_tokens=4096, flash_attn=True)
    assert est.layers == 5  # 4 blocks + the output head, as llama.cpp counts them
    sizes = [est.gpu_bytes(n) for n in range(est.layers + 1)]
    assert sizes[0] == 0
    assert sizes == sorted(sizes)
    assert sizes[1] == est.output_bytes + est.gpu_compute_bytes  # the head goes first
    assert sizes[2] - sizes[1] == est.layer_bytes[-1]  # then blocks from the last
    full = sum(est.layer_bytes) + est.output_bytes + est.gpu_compute_bytes
    assert sizes[-1] == full == est.gpu_bytes(-1) == est.gpu_bytes(999) == est.full_offload_bytes()


def test_cpu_total_counts_everything_once() -> None:
    est = estimate_memory(BASE, ctx_tokens=4096, flash_attn=True)
    kv = sum(kv_of(est))
    output_buffer = 1000 * 4
    assert est.cpu_total_bytes() == 9 * LAYER + kv + est.gpu_compute_bytes + output_buffer
    assert est.cpu_bytes == 3 * LAYER + output_buffer + est.host_compute_bytes


def test_tied_output_is_copied_to_the_gpu_but_not_twice_on_the_cpu() -> None:
    tied = dataclasses.replace(BASE, output_tied=True, output_weight_bytes=2048)
    est = estimate_memory(tied, ctx_tokens=4096)
    assert est.output_bytes == 3 * LAYER + 2048
    untied = estimate_memory(dataclasses.replace(tied, output_tied=False), ctx_tokens=4096)
    assert est.cpu_total_bytes() == untied.cpu_total_bytes()
    assert est.full_offload_bytes() - untied.full_offload_bytes() == 3 * LAYER


def test_estimate_bytes_keeps_its_signature() -> None:
    assert estimate_bytes(None, file_size_bytes=1000 * MIB, ctx_tokens=4096) > 1200 * MIB
    total = estimate_bytes(BASE, file_size_bytes=BASE.file_size_bytes, ctx_tokens=4096)
    launch = estimate_memory(BASE, ctx_tokens=4096, embeddings=True, flash_attn=True)
    assert total == launch.cpu_total_bytes()  # the defaults: how the gateway launches


def test_old_rows_without_layer_sizes_spread_the_file() -> None:
    old = dataclasses.replace(BASE, layer_weight_bytes=(), input_weight_bytes=0)
    est, new = estimate_memory(old, ctx_tokens=1024), estimate_memory(BASE, ctx_tokens=1024)
    spread = BASE.file_size_bytes // 4
    assert est.layer_bytes == tuple(b - LAYER + spread for b in new.layer_bytes)


LOG = """\
0.00.299 I load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
0.00.301 I load_tensors:        CUDA0 model buffer size =   100.00 MiB
0.00.303 I llama_context:        CPU  output buffer size =     0.19 MiB
0.00.303 I llama_kv_cache:        CPU KV buffer size =    90.00 MiB
0.00.402 I llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  1/1 seqs)
0.00.352 I sched_reserve:        CPU compute buffer size =    18.64 MiB
"""


def test_parse_llama_log() -> None:
    reported = parse_llama_log(LOG)
    assert reported is not None
    assert reported.model_bytes == round(192.10 * MIB)
    assert (reported.kv_bytes, reported.compute_bytes) == (90 * MIB, round(18.64 * MIB))
    assert reported.output_bytes == round(0.19 * MIB)
    assert reported.total_bytes == sum(
        (reported.model_bytes, reported.kv_bytes, reported.compute_bytes, reported.output_bytes)
    )
    assert parse_llama_log("srv init: model loaded") is None


def small(shape: gguf_shapes.Shape) -> gguf_shapes.Shape:
    """The bench's shape with small dimensions (same layers, heads, pattern, experts); rows
    of 256 values for the K-quants' blocks."""
    k_quant = gguf.GGML_QUANT_SIZES[shape.qtype][0] == 256
    return dataclasses.replace(
        shape,
        n_embd=256 if k_quant else 64,
        n_head=4,
        n_ff=256 if k_quant else 96,
        n_vocab=300,
        head_dim=32 if shape.head_dim else None,
        n_ff_exp=32 if shape.n_expert else 0,
    )


@pytest.mark.parametrize("shape", gguf_shapes.SHAPES, ids=lambda s: s.name)
def test_generated_shapes_read_back(tmp_path: Path, shape: gguf_shapes.Shape) -> None:
    s = small(shape)
    path = gguf_shapes.write_shape(s, tmp_path / "m.gguf")
    info = read_gguf_info(path)
    reader = gguf.GGUFReader(path)
    by_layer = [0] * s.n_layer
    for t in reader.tensors:
        if t.name.startswith("blk."):
            by_layer[int(t.name.split(".")[1])] += int(t.n_bytes)
    assert info.layer_weight_bytes == tuple(by_layer)
    embd = sum(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    assert info.input_weight_bytes == embd
    total = sum(int(t.n_bytes) for t in reader.tensors)
    assert info.input_weight_bytes + info.output_weight_bytes + sum(by_layer) == total
    assert (info.block_count, info.vocab_size, info.output_tied) == (s.n_layer, 300, s.tied)
    assert (info.head_count, info.head_count_kv) == (4, s.n_head_kv)
    assert info.feed_forward_length == s.n_ff
    assert info.key_length == info.value_length == s.head_dim
    assert info.expert_count == (s.n_expert or None)
    assert info.expert_used_count == (s.n_expert_used or None)
    period = {"gemma3": 6, "gemma2": 2}.get(s.arch)
    expected = tuple(i % period < period - 1 for i in range(s.n_layer)) if period else ()
    assert info.swa_layers == expected
    assert info.sliding_window == s.sliding_window


def test_compute_buffer_micro_batch_is_capped_by_the_whole_context() -> None:
    """4 slots of 256 tokens: llama.cpp still runs 512-token micro-batches (n_ctx is 1024)."""
    four = estimate_memory(BASE, ctx_tokens=1024, parallel=4, flash_attn=True)
    one = estimate_memory(BASE, ctx_tokens=1024, parallel=1, flash_attn=True)
    masks_one, masks_four = 1024 * 512 * 2, 256 * 512 * 2
    assert four.gpu_compute_bytes - masks_four == one.gpu_compute_bytes - masks_one
    tiny = estimate_memory(BASE, ctx_tokens=256, flash_attn=True)  # n_ctx below n_ubatch
    assert tiny.gpu_compute_bytes == 256 * (3 * 1024 + 5 * 512) * 4 + 256 * 256 * 2


def test_repack_families() -> None:
    avx512 = frozenset({"avx2", "avx512f"})
    assert repack_family("x86_64", avx512) == "avx512"
    assert repack_family("x86_64", frozenset({"avx2"})) == "avx2"
    assert repack_family("x86_64", frozenset({"sse4_2"})) is None
    assert repack_family("aarch64", frozenset({"asimd", "asimddp"})) == "neon"
    assert repack_family("riscv64", frozenset()) is None


Q4 = gguf_shapes.Shape("q4", "llama", 2, 64, 4, 2, 96, 300, qtype=gguf.GGMLQuantizationType.Q4_0)


def tensor_bytes(path: Path) -> dict[str, int]:
    return {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}


def test_q4_0_matrices_repack_when_their_rows_come_in_eights(tmp_path: Path) -> None:
    path = gguf_shapes.write_shape(Q4, tmp_path / "q4.gguf")
    info, sizes = read_gguf_info(path), tensor_bytes(path)
    per_block = sum(sizes[f"blk.0.{n}.weight"] for n in ("attn_q", "attn_k", "attn_v"))
    per_block += sum(sizes[f"blk.0.{n}.weight"] for n in ("attn_output", "ffn_gate", "ffn_up"))
    per_block += sizes["blk.0.ffn_down.weight"]  # every block matrix has 64 or 96 rows
    # the head's 300 rows are not a multiple of 8 (x86) but are of 4 (ARM); it is the file's
    # last tensor, so once repacked the mapped range stops before it
    assert repack_bytes(info, "avx2") == (per_block, per_block, 0, 0)
    head = sizes["output.weight"]
    assert repack_bytes(info, "neon") == (per_block, per_block, head, head)
    assert repack_bytes(info, None) == repack_bytes(info, "sparc") == ()


def test_tied_head_repacks_a_copy_of_the_embedding(tmp_path: Path) -> None:
    shape = dataclasses.replace(Q4, tied=True, n_vocab=304)
    path = gguf_shapes.write_shape(shape, tmp_path / "tied.gguf")
    info, sizes = read_gguf_info(path), tensor_bytes(path)
    assert repack_bytes(info, "avx2")[2:] == (sizes["token_embd.weight"], 0)
    f16 = gguf_shapes.write_shape(
        dataclasses.replace(shape, qtype=gguf.GGMLQuantizationType.F16), tmp_path / "f16.gguf"
    )
    assert read_gguf_info(f16).repack_bytes == ()


def test_repacked_copies_count_on_the_host_only() -> None:
    info = dataclasses.replace(BASE, repack_bytes=(5, 6, 7, 8, 100, 50) * 3)
    plain = estimate_memory(BASE, ctx_tokens=1024)
    est = estimate_memory(info, ctx_tokens=1024, repack=repack_bytes(info, "avx2"))
    assert est.cpu_total_bytes() == plain.cpu_total_bytes() + 5 + 6 + 7 + 8 + 100 - 50
    assert est.full_offload_bytes() == plain.full_offload_bytes()
    # 2 layers offloaded (the head and block 3): blocks 0-2 and their copies stay on the host
    assert est.host_bytes(2) == plain.host_bytes(2) + 5 + 6 + 7
    assert est.host_bytes(0) == est.cpu_total_bytes()


@pytest.mark.parametrize("parallel", range(1, 65))
def test_engine_micro_batch_is_a_multiple_of_the_slots_with_embeddings(parallel: int) -> None:
    ubatch = engine_ubatch(parallel, embeddings=True)
    assert ubatch % parallel == 0 and 0 < ubatch <= 512
    assert engine_ubatch(parallel, embeddings=False) == 512
