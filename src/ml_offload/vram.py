"""Memory estimate for a GGUF model from its metadata (first cut: weights + KV cache + buffers).

The calibrated per-layer estimate with partial offload is the VRAM issue's work.
"""

from __future__ import annotations

from ml_offload.domain import GgufInfo

COMPUTE_BUFFER_BYTES = 64 * 2**20
KV_BYTES_PER_ELEMENT = 2  # f16 cache


def kv_cache_bytes(info: GgufInfo, ctx_tokens: int) -> int:
    """K and V for every layer and token: layers × ctx × kv_heads × head_dim × 2 × bytes."""
    if not (info.block_count and info.embedding_length and info.head_count):
        return 0
    head_dim = info.embedding_length // info.head_count
    kv_heads = info.head_count_kv or info.head_count
    return 2 * info.block_count * ctx_tokens * kv_heads * head_dim * KV_BYTES_PER_ELEMENT


def estimate_bytes(info: GgufInfo | None, *, file_size_bytes: int, ctx_tokens: int) -> int:
    if info is None:
        return int(file_size_bytes * 1.2) + COMPUTE_BUFFER_BYTES
    return info.file_size_bytes + kv_cache_bytes(info, ctx_tokens) + COMPUTE_BUFFER_BYTES
