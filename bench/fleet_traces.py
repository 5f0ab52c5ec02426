"""Inputs of the fleet simulator (`fleet_sim.py`): real model shapes, a fleet, request traces.

The models are the published shapes (layers, widths, heads, vocabulary) of common open models
at Q4_K_M (~4.85 bits per weight, the head at Q6_K); their memory is `vram.estimate_memory` of
a `GgufInfo` built from those shapes, served the way the gateway serves them (flash attention,
`parallel` slots sharing `ctx` tokens). Nothing is downloaded.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ml_offload.domain import GgufInfo
from ml_offload.vram import MemoryEstimate, estimate_memory

GIB = 2**30
Q4_K_M_BPW = 4.85  # llama.cpp's Q4_K_M averages ~4.85 bits per weight
Q6_K_BPW = 6.5625  # the head of a Q4_K_M file


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    head_dim: int | None = None
    tied: bool = False
    sliding_window: int | None = None  # every other layer (gemma-2)

    def info(self) -> GgufInfo:
        hd = self.head_dim or self.n_embd // self.n_head
        q, kv, e = self.n_head * hd, self.n_head_kv * hd, self.n_embd
        layer_params = 2 * e * q + 2 * e * kv + 3 * e * self.n_ff
        embd = self.n_vocab * e
        layer = _bytes(layer_params, Q4_K_M_BPW)
        head = 0 if self.tied else _bytes(embd, Q6_K_BPW)
        return GgufInfo(
            architecture="gemma2" if self.sliding_window else "llama",
            name=self.name,
            parameters=layer_params * self.n_layer + embd * (1 if self.tied else 2),
            quantization="Q4_K_M",
            context_length=32768,
            block_count=self.n_layer,
            head_count=self.n_head,
            head_count_kv=self.n_head_kv,
            embedding_length=e,
            file_size_bytes=layer * self.n_layer + _bytes(embd, Q4_K_M_BPW) + head,
            layer_weight_bytes=(layer,) * self.n_layer,
            input_weight_bytes=_bytes(embd, Q4_K_M_BPW),
            output_weight_bytes=head,
            output_tied=self.tied,
            vocab_size=self.n_vocab,
            feed_forward_length=self.n_ff,
            key_length=hd,
            value_length=hd,
            sliding_window=self.sliding_window,
            swa_layers=tuple(i % 2 == 0 for i in range(self.n_layer))
            if self.sliding_window
            else (),
        )

    def estimate(self, ctx: int, parallel: int) -> MemoryEstimate:
        return estimate_memory(self.info(), ctx_tokens=ctx, parallel=parallel, flash_attn=True)


def _bytes(params: int, bpw: float) -> int:
    return math.ceil(params * bpw / 8)


# Published configs (config.json of each model); most popular first for the skewed traces.
MODELS = (
    ModelShape("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256),
    ModelShape("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064),
    ModelShape("llama-3.2-3b", 28, 3072, 24, 8, 8192, 128256, tied=True),
    ModelShape("qwen2.5-14b", 48, 5120, 40, 8, 13824, 152064),
    ModelShape("gemma-2-9b", 42, 3584, 16, 8, 14336, 256000, 256, True, 4096),
    ModelShape("mistral-nemo-12b", 40, 5120, 32, 8, 14336, 131072, head_dim=128),
    ModelShape("qwen2.5-32b", 64, 5120, 40, 8, 27648, 152064),
    ModelShape("gemma-2-27b", 46, 4608, 32, 16, 36864, 256000, 128, True, 4096),
    ModelShape("llama-3.3-70b", 80, 8192, 64, 8, 28672, 128256),
    ModelShape("qwen2.5-72b", 80, 8192, 64, 8, 29568, 152064),
)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    device_bytes: tuple[int, ...]  # each GPU's memory
    host_bytes: int


# A mixed fleet: two single-GPU workstations, a two-GPU box, one large-memory card.
FLEET = (
    NodeSpec("ws-a", (24 * GIB,), 64 * GIB),
    NodeSpec("ws-b", (24 * GIB,), 64 * GIB),
    NodeSpec("duo", (24 * GIB, 24 * GIB), 128 * GIB),
    NodeSpec("big", (48 * GIB,), 128 * GIB),
)


@dataclass(frozen=True)
class Request:
    t: float  # arrival, seconds
    model: str
    service_s: float  # how long the model is busy answering it


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (k + 1) ** s for k in range(n)]


def uniform(names: list[str], n: int, rng: random.Random, rate: float) -> list[Request]:
    return _poisson(n, rng, rate, lambda _t: rng.choice(names))


def zipf(names: list[str], n: int, rng: random.Random, rate: float) -> list[Request]:
    weights = _zipf_weights(len(names))
    return _poisson(n, rng, rate, lambda _t: rng.choices(names, weights)[0])


def bursty(names: list[str], n: int, rng: random.Random, rate: float) -> list[Request]:
    """Sessions (zipf-popular models) of ~15 requests 2 s apart, sessions Poisson."""
    weights = _zipf_weights(len(names))
    out: list[Request] = []
    t = 0.0
    while len(out) < n:
        t += rng.expovariate(rate / 15)
        model, at = rng.choices(names, weights)[0], t
        for _ in range(min(n - len(out), 1 + int(rng.expovariate(1 / 14)))):
            out.append(Request(at, model, rng.expovariate(1 / 4)))
            at += rng.expovariate(1 / 2)
    return sorted(out, key=lambda r: r.t)


def diurnal(names: list[str], n: int, rng: random.Random, rate: float) -> list[Request]:
    """A day in 2 hours: the rate swings ±80% and the popular models shift from the small
    interactive ones (day) to the large ones (night batch)."""
    day_s = 7200.0
    base = _zipf_weights(len(names))

    def pick(t: float) -> str:
        night = (1 - math.cos(2 * math.pi * t / day_s)) / 2  # 0 at t=0, 1 at half a day
        weights = [w * (1 - night) + base[-1 - i] * night for i, w in enumerate(base)]
        return rng.choices(names, weights)[0]

    out: list[Request] = []
    t = 0.0
    while len(out) < n:  # thinning of a Poisson process at the peak rate
        t += rng.expovariate(rate * 1.8)
        if rng.random() < (1 + 0.8 * math.sin(2 * math.pi * t / day_s)) / 1.8:
            out.append(Request(t, pick(t), rng.expovariate(1 / 4)))
    return out


def _poisson(
    n: int, rng: random.Random, rate: float, pick: Callable[[float], str]
) -> list[Request]:
    out, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(Request(t, pick(t), rng.expovariate(1 / 4)))
    return out


TRACES = {"uniform": uniform, "zipf": zipf, "bursty": bursty, "diurnal": diurnal}
