"""Small GGUF models of varied shapes, written with `gguf.GGUFWriter` (random weights).

llama.cpp loads them like real models, so their buffer sizes calibrate the memory estimate:
a GQA llama, a gemma3 with sliding-window layers and its own head size, a qwen3moe with
experts, a gemma2 (every other layer sliding). `bench/estimate.py` loads them; the unit tests
read their metadata back (`tests/unit/test_vram.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
_F16 = Q.F16
_Q8_0 = Q.Q8_0
# llama.cpp's file type for a model quantized mostly to this type (`general.file_type`)
_FILE_TYPES = {
    Q.F16: gguf.LlamaFileType.MOSTLY_F16,
    Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
    Q.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_M,
    Q.IQ4_NL: gguf.LlamaFileType.MOSTLY_IQ4_NL,
}


@dataclass(frozen=True)
class Shape:
    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    head_dim: int | None = None  # key/value length when not n_embd / n_head
    tied: bool = False  # no output.weight: the head reuses token_embd
    sliding_window: int | None = None
    swa_pattern: int | tuple[bool, ...] | None = None  # written only when set
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    qtype: gguf.GGMLQuantizationType = _F16
    output_qtype: gguf.GGMLQuantizationType | None = None  # the head's, when not qtype's
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


SHAPES = (
    Shape("llama-gqa-24L", "llama", 24, 512, 8, 2, 1408, 32000),
    Shape("llama-q8-tied-12L", "llama", 12, 768, 12, 4, 2048, 50304, tied=True, qtype=_Q8_0),
    Shape(
        "gemma3-swa-12L",
        "gemma3",
        12,
        640,
        4,
        1,
        2048,
        65536,
        head_dim=256,
        tied=True,
        sliding_window=512,
    ),
    Shape(
        "gemma2-swa-8L",
        "gemma2",
        8,
        512,
        8,
        4,
        1536,
        32768,
        head_dim=128,
        tied=True,
        sliding_window=1024,
    ),
    Shape(
        "qwen3moe-16L",
        "qwen3moe",
        16,
        512,
        8,
        4,
        1024,
        32000,
        head_dim=64,
        n_expert=16,
        n_expert_used=4,
        n_ff_exp=256,
    ),
    # CPU weight repacking (x86: Q4_0, Q4_K, IQ4_NL rows in eights): an untied Q4_0 head whose
    # 32001 rows do not repack, a Q4_K_M-like model with a Q6_K head, a Q4_0 MoE
    Shape("llama-q4_0-16L", "llama", 16, 768, 12, 4, 2048, 32001, qtype=Q.Q4_0),
    Shape(
        "llama-q4_k-12L",
        "llama",
        12,
        1024,
        16,
        4,
        2816,
        32000,
        qtype=Q.Q4_K,
        output_qtype=Q.Q6_K,
    ),
    Shape(
        "qwen3moe-q4_0-8L",
        "qwen3moe",
        8,
        512,
        8,
        4,
        1024,
        32000,
        head_dim=64,
        n_expert=8,
        n_expert_used=2,
        n_ff_exp=512,
        qtype=Q.Q4_0,
        tied=True,
    ),
)


def write_shape(shape: Shape, path: Path, seed: int = 0, *, zeros: bool = False) -> Path:
    """Write `shape` as a loadable GGUF file at `path` (random weights, a byte-level vocab).

    `zeros`: every weight 0 (fast for files of several GiB; llama.cpp loads them the same).
    Types that gguf-py cannot quantize (the K-quants, IQ4_NL) are always written as zeros.
    """
    rng = None if zeros else np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, shape.arch)
    _metadata(writer, shape)
    for name, dims in _tensors(shape):
        head = name == "output.weight" and shape.output_qtype is not None
        _add_tensor(writer, name, dims, shape.output_qtype if head else shape.qtype, rng)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _metadata(w: gguf.GGUFWriter, s: Shape) -> None:
    w.add_name(s.name)
    w.add_context_length(32768)
    w.add_block_count(s.n_layer)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(s.n_vocab)
    w.add_file_type(_FILE_TYPES.get(s.qtype, gguf.LlamaFileType.GUESSED))
    if s.head_dim:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    if s.sliding_window:
        w.add_sliding_window(s.sliding_window)
    if s.swa_pattern is not None:
        w.add_sliding_window_pattern(s.swa_pattern)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff_exp)
    for key, (value, vtype) in s.extra.items():
        w.add_key_value(key, value, vtype)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(s.n_vocab)])
    w.add_token_types([1] * s.n_vocab)
    w.add_token_merges(["t 0"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def _tensors(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) of every tensor; numpy order is the reverse of ggml's ne."""
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (s.n_vocab, s.n_embd))]
    for i in range(s.n_layer):
        out += [(f"blk.{i}.{n}", d) for n, d in _layer(s)]
    out.append(("output_norm.weight", (s.n_embd,)))
    if not s.tied:
        out.append(("output.weight", (s.n_vocab, s.n_embd)))
    return out


def _layer(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    e, q, kv = s.n_embd, s.n_head * s.hd, s.n_head_kv * s.hd
    out = [
        ("attn_norm.weight", (e,)),
        ("attn_q.weight", (q, e)),
        ("attn_k.weight", (kv, e)),
        ("attn_v.weight", (kv, e)),
        ("attn_output.weight", (e, q)),
        ("ffn_norm.weight", (e,)),
    ]
    if s.arch in ("gemma3", "qwen3moe"):
        out += [("attn_q_norm.weight", (s.hd,)), ("attn_k_norm.weight", (s.hd,))]
    if s.arch.startswith("gemma"):
        out += [("post_attention_norm.weight", (e,)), ("post_ffw_norm.weight", (e,))]
    if s.n_expert:
        x, f = s.n_expert, s.n_ff_exp
        return [
            *out,
            ("ffn_gate_inp.weight", (x, e)),
            ("ffn_gate_exps.weight", (x, f, e)),
            ("ffn_up_exps.weight", (x, f, e)),
            ("ffn_down_exps.weight", (x, e, f)),
        ]
    f = s.n_ff
    return [
        *out,
        ("ffn_gate.weight", (f, e)),
        ("ffn_up.weight", (f, e)),
        ("ffn_down.weight", (e, f)),
    ]


def _add_tensor(
    w: gguf.GGUFWriter,
    name: str,
    dims: tuple[int, ...],
    qtype: gguf.GGMLQuantizationType,
    rng: np.random.Generator | None,
) -> None:
    if len(dims) == 1:
        w.add_tensor(name, np.ones(dims, dtype=np.float32))
        return
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if rng is None or qtype not in (_F16, _Q8_0, Q.Q4_0):
        raw = np.zeros((*dims[:-1], dims[-1] // block * type_size), dtype=np.uint8)
        w.add_tensor(name, raw, raw_dtype=qtype)
        return
    data = (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)
    if qtype == _F16:
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
