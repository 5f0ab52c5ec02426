"""Memory estimate for a GGUF model from its metadata, in llama.cpp's own terms.

llama.cpp allocates, per model instance: the weights (per layer, plus the input embedding, which
stays in host memory, and the output head), the KV cache (per layer: cells × K and V row
bytes; sliding-window layers hold only `window + ubatch` cells), a compute buffer sized by a dry
run of its graph for one ubatch, and a host output buffer for the logits. `n_gpu_layers` counts
`block_count + 1` layers, the output head being the last: `-ngl 1` offloads the head only,
`-ngl block_count + 1` (or -1) everything. `MemoryEstimate.gpu_bytes(n)` follows that rule.

The compute-buffer terms are calibrated against the buffer sizes llama.cpp logs (CPU backend,
llama, gemma2/3 and qwen3moe shapes; `bench/estimate.py` prints the comparison):
  flash attention:  ubatch × 4 × max(3·n_ff + 5·n_embd, outputs/ubatch·n_vocab + 5·n_embd)
                    + the attention masks, kv cells × ubatch × 2 bytes (one per window size)
  without it, also: ubatch × 4 × (kv cells·n_head + 5·n_embd + q + 2·k + 4·max(0, q - n_embd)),
                    masks at 4 bytes.
A model with sliding-window layers has two masks (full and window), even of equal sizes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ml_offload.domain import GgufInfo

CELL_PAD = 256  # llama.cpp pads each KV stream (and the SWA cache) to 256 cells
F32 = 4
# (elements per block, bytes per block) of the KV cache types llama.cpp accepts
KV_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "iq4_nl": (32, 18),
}
FALLBACK_OVERHEAD = 1.2  # file size × this when the header could not be read


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """A model's memory in llama.cpp, split the way offloading moves it."""

    layer_bytes: tuple[int, ...]  # per layer: weights + that layer's KV cache
    output_bytes: int  # output head (+ norm): on a GPU as soon as any layer is offloaded
    gpu_compute_bytes: int  # compute buffer on a GPU when any layer is offloaded
    cpu_bytes: int  # in host memory at full offload: input embedding, host buffers
    host_compute_bytes: int = 0  # the part of cpu_bytes that is a compute buffer
    tied_output_bytes: int = 0  # the part of output_bytes copied from the input embedding
    # CPU weight repacking: the copies a block (then the head, last) adds while in host memory
    host_repack_bytes: tuple[int, ...] = ()
    unmapped_bytes: int = 0  # file bytes the CPU mapping stops spanning when all is on the CPU
    context_bytes: int = 0  # on each GPU the process uses: the backend's context (CUDA's)
    # beside the model, wherever its layers go (on each GPU used, or in host memory): a
    # multimodal projector, a draft model (see sizing.py)
    companion_bytes: int = 0

    @property
    def layers(self) -> int:
        """What llama.cpp's `n_gpu_layers` counts: every block plus the output head."""
        return len(self.layer_bytes) + 1

    def gpu_bytes(self, n_layers: int) -> int:
        """GPU memory with `n_gpu_layers = n_layers` (-1 or more than `layers`: all).

        llama.cpp offloads the last layers: the output head first, then blocks from the end.
        """
        n = self.layers if n_layers < 0 else min(n_layers, self.layers)
        if n == 0:
            return 0
        blocks = sum(self.layer_bytes[len(self.layer_bytes) - (n - 1) :]) if n > 1 else 0
        fixed = self.gpu_compute_bytes + self.context_bytes + self.companion_bytes
        return self.output_bytes + blocks + fixed

    def cpu_total_bytes(self) -> int:
        """Everything in host memory (`n_gpu_layers = 0`, or no GPU)."""
        output = self.output_bytes - self.tied_output_bytes
        host = self.cpu_bytes - self.host_compute_bytes
        repacked = sum(self.host_repack_bytes) - self.unmapped_bytes
        compute = self.gpu_compute_bytes + self.companion_bytes
        return sum(self.layer_bytes) + output + host + compute + repacked

    def host_bytes(self, n_layers: int) -> int:
        """Host memory with `n_layers` offloaded: the blocks not offloaded stay on the CPU,
        with their repacked copies."""
        if n_layers <= 0:
            return self.cpu_total_bytes()
        kept = max(len(self.layer_bytes) - (n_layers - 1), 0)
        return self.cpu_bytes + sum(self.layer_bytes[:kept]) + sum(self.host_repack_bytes[:kept])

    def full_offload_bytes(self) -> int:
        return self.gpu_bytes(self.layers)


@dataclass(frozen=True, slots=True)
class _Shape:
    """The numbers the KV cache and compute buffer depend on, defaults filled in."""

    n_layer: int
    n_embd: int
    n_head: int
    head_k: int
    head_v: int
    kv_heads: tuple[int, ...]
    swa: tuple[bool, ...]
    window: int
    n_vocab: int
    ffn: int  # f32 values per token alive at the FFN's peak, less the residual stream


DEFAULT_UBATCH = 512  # llama.cpp's n_ubatch


def engine_ubatch(parallel: int, embeddings: bool) -> int:
    """The micro-batch the gateway gives llama.cpp: with embeddings on, every token is an
    output and llama.cpp reserves its graph with n_ubatch // n_seq tokens per slot, so a
    micro-batch that is not a multiple of `parallel` aborts the engine on load
    (`GGML_ASSERT(ggml_can_mul_mat)` for parallel 3, 5, 6, 7...). Rounded down to a multiple."""
    if not embeddings or parallel <= 1:
        return DEFAULT_UBATCH
    return max(parallel, DEFAULT_UBATCH // parallel * parallel)


def estimate_memory(
    info: GgufInfo,
    *,
    ctx_tokens: int,
    parallel: int = 1,
    kv_type: str = "f16",
    flash_attn: bool = False,
    ubatch: int = DEFAULT_UBATCH,
    embeddings: bool = False,
    kv_unified: bool = False,
    repack: tuple[int, ...] = (),
    kv_type_v: str | None = None,
) -> MemoryEstimate:
    """Estimate llama.cpp's buffers for `info` served with n_ctx = `ctx_tokens` (all slots).

    `embeddings`: the engine also serves embeddings (every token of a ubatch is an output, so
    the compute buffer holds ubatch × n_vocab logits). `flash_attn`: llama.cpp's `auto` turns
    it on wherever the backend supports it (CPU, CUDA); False is the larger, safe estimate.
    `repack`: the host CPU's weight repacking, `gguf.repack_bytes(info, family)`.
    `kv_type` is the K cache's type, and V's unless `kv_type_v` says otherwise.
    """
    shape = _shape(info)
    streams = 1 if kv_unified else max(parallel, 1)
    base = _pad(max(ctx_tokens // streams, 1))
    swa = _pad(min(base, shape.window * (parallel if kv_unified else 1) + ubatch))
    types = (kv_type, kv_type_v or kv_type)
    kv = [
        _kv_layer_bytes(shape, i, swa if shape.swa[i] else base, types) * streams
        for i in range(shape.n_layer)
    ]
    weights = _layer_weights(info, shape.n_layer)
    n_outputs = ubatch if embeddings else streams
    # a model with sliding-window layers gets two caches and two masks, even of equal sizes
    sizes = [base, swa] if any(shape.swa) else [base]
    tied = info.input_weight_bytes if info.output_tied else 0
    output_buffer = max(parallel, 1) * (shape.n_vocab + (shape.n_embd if embeddings else 0)) * F32
    host_compute = ubatch * F32 * (shape.n_embd + sum(sizes))
    # llama.cpp caps the micro-batch by the whole context (n_ctx), not by a slot's share
    graph_tokens = min(ubatch, base * streams)
    return MemoryEstimate(
        layer_bytes=tuple(w + k for w, k in zip(weights, kv, strict=True)),
        output_bytes=info.output_weight_bytes + tied,
        gpu_compute_bytes=_compute_bytes(shape, sizes, graph_tokens, n_outputs, flash_attn),
        cpu_bytes=info.input_weight_bytes + output_buffer + host_compute,
        host_compute_bytes=host_compute,
        tied_output_bytes=tied,
        host_repack_bytes=repack[: shape.n_layer + 1],
        unmapped_bytes=repack[shape.n_layer + 1] if len(repack) > shape.n_layer + 1 else 0,
    )


def kv_cache_bytes(info: GgufInfo, ctx_tokens: int, kv_type: str = "f16") -> int:
    """K and V for every layer and token, one stream of `ctx_tokens` cells (no SWA saving)."""
    shape = _shape(info)
    types = (kv_type, kv_type)
    return sum(_kv_layer_bytes(shape, i, ctx_tokens, types) for i in range(shape.n_layer))


def coarse_estimate(file_size_bytes: int, *, ctx_tokens: int) -> MemoryEstimate:
    """A guess when the header could not be read: the file as one block, with headroom."""
    guess = int(file_size_bytes * FALLBACK_OVERHEAD) + 64 * 2**20
    return MemoryEstimate(layer_bytes=(guess,), output_bytes=0, gpu_compute_bytes=0, cpu_bytes=0)


def estimate_bytes(
    info: GgufInfo | None,
    *,
    file_size_bytes: int,
    ctx_tokens: int,
    parallel: int = 1,
    embeddings: bool = True,
    flash_attn: bool = True,
) -> int:
    """Everything the model needs in one memory (the CPU-only total); a guess without a header.

    The defaults are how the gateway launches a model: `ModelSpec.embeddings` is on by default
    and llama.cpp's flash-attention `auto` is on for CPU and CUDA. Pass the spec's `parallel`
    (without it the whole context is one stream, which over-counts the attention mask).
    """
    if info is None or not info.block_count:
        return coarse_estimate(file_size_bytes, ctx_tokens=ctx_tokens).cpu_total_bytes()
    estimate = estimate_memory(
        info,
        ctx_tokens=ctx_tokens,
        parallel=parallel,
        embeddings=embeddings,
        flash_attn=flash_attn,
    )
    return estimate.cpu_total_bytes()


def _shape(info: GgufInfo) -> _Shape:
    n_layer = info.block_count or len(info.layer_weight_bytes)
    n_embd = info.embedding_length or 0
    n_head = info.head_count or 1
    head_k = info.key_length or n_embd // n_head
    kv_heads = info.head_count_kv_per_layer or (info.head_count_kv or n_head,) * n_layer
    swa = (*info.swa_layers[:n_layer], *(False,) * (n_layer - len(info.swa_layers)))
    return _Shape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        head_k=head_k,
        head_v=info.value_length or head_k,
        kv_heads=(*kv_heads[:n_layer], *(kv_heads[-1:] or (0,)) * (n_layer - len(kv_heads))),
        swa=swa if info.sliding_window else (False,) * n_layer,
        window=info.sliding_window or 0,
        n_vocab=info.vocab_size or 0,
        ffn=_ffn_values(info, n_embd),
    )


def _ffn_values(info: GgufInfo, n_embd: int) -> int:
    """f32 values per token alive at the FFN's peak: gate, up and activation (per expert used)."""
    if info.expert_count and info.expert_used_count:
        per_expert = info.expert_feed_forward_length or info.feed_forward_length or 0
        used = info.expert_used_count
        return max(3 * per_expert * used, (per_expert + n_embd) * used) + info.expert_count
    return 3 * (info.feed_forward_length or 4 * n_embd)


def _kv_layer_bytes(shape: _Shape, layer: int, cells: int, types: tuple[str, str]) -> int:
    heads = shape.kv_heads[layer]
    return cells * (
        _row_bytes(heads * shape.head_k, types[0]) + _row_bytes(heads * shape.head_v, types[1])
    )


def _row_bytes(n_values: int, kv_type: str) -> int:
    try:
        block, size = KV_TYPES[kv_type.lower()]
    except KeyError:
        raise ValueError(
            f"unknown KV cache type {kv_type!r}; use one of {sorted(KV_TYPES)}"
        ) from None
    return math.ceil(n_values / block) * size


def _layer_weights(info: GgufInfo, n_layer: int) -> list[int]:
    """Per-layer weights from the tensor table, or the file size spread evenly (old rows)."""
    weights = list(info.layer_weight_bytes[:n_layer])
    if len(weights) < n_layer:
        even = info.file_size_bytes // max(n_layer, 1) if not weights else 0
        weights.extend([even] * (n_layer - len(weights)))
    return weights


def _compute_bytes(
    shape: _Shape, kv_sizes: list[int], ubatch: int, n_outputs: int, flash_attn: bool
) -> int:
    """llama.cpp's compute buffer: the graph's peak for one ubatch, calibrated (see top)."""
    residual = 5 * shape.n_embd
    peaks = [ubatch * (shape.ffn + residual), n_outputs * shape.n_vocab + ubatch * residual]
    if not flash_attn:
        q = shape.n_head * shape.head_k
        qkv = q + 2 * max(shape.kv_heads, default=0) * shape.head_k
        # heads wider than the embedding (gemma's 256): up to four more rows of that excess
        wide = 4 * max(0, q - shape.n_embd)
        peaks.append(ubatch * (max(kv_sizes, default=0) * shape.n_head + residual + qkv + wide))
    masks = sum(kv_sizes) * ubatch * (2 if flash_attn else F32)
    return max(peaks) * F32 + masks


def _pad(cells: int) -> int:
    return -(-cells // CELL_PAD) * CELL_PAD


@dataclass(frozen=True, slots=True)
class ReportedMemory:
    """The buffer sizes llama.cpp logs while loading (at verbosity 4 or more), summed by kind."""

    model_bytes: int
    kv_bytes: int
    compute_bytes: int
    output_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.kv_bytes + self.compute_bytes + self.output_bytes


_BUFFER_LINE = re.compile(r"\b(\S+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")


def parse_llama_log(text: str) -> ReportedMemory | None:
    """Sum `<device> model|KV|compute|output buffer size = N MiB` lines; None if there are none."""
    sums = {"model": 0.0, "KV": 0.0, "compute": 0.0, "output": 0.0}
    found = False
    for match in _BUFFER_LINE.finditer(text):
        sums[match[2]] += float(match[3])
        found = True
    if not found:
        return None
    mib = {kind: round(value * 2**20) for kind, value in sums.items()}
    return ReportedMemory(mib["model"], mib["KV"], mib["compute"], mib["output"])
