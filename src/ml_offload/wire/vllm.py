"""vLLM: the `vllm serve` command line we start it with, and its Prometheus `/metrics`.

Followed: vLLM's docs, "OpenAI-Compatible Server" (`vllm serve` engine arguments
`--tensor-parallel-size`, `--quantization`, `--max-model-len`, `--gpu-memory-utilization`,
`--served-model-name`) and "Production Metrics" (gauges `vllm:num_requests_running`,
`vllm:num_requests_waiting`, `vllm:gpu_cache_usage_perc`, renamed `vllm:kv_cache_usage_perc`
in V1; each carries a `model_name` label). The request API is OpenAI's, spoken as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def serve_argv(
    command: Sequence[str],
    model: str,
    *,
    served_name: str,
    tensor_parallel_size: int | None = None,
    quantization: str | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[str, ...]:
    """`vllm serve <model> ...` without host and port (chosen when it is started)."""
    argv = [*command, "serve", model, "--served-model-name", served_name]
    if tensor_parallel_size is not None:
        argv += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if quantization:
        argv += ["--quantization", quantization]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    return (*argv, *extra_args)


def with_address(argv: Sequence[str], port: int) -> list[str]:
    return [*argv, "--host", "127.0.0.1", "--port", str(port)]


@dataclass(frozen=True, slots=True)
class VllmLoad:
    """The work a vLLM server reports: requests being generated and queued, KV cache in use."""

    running: int
    waiting: int
    kv_cache_usage: float | None  # 0..1

    @property
    def work(self) -> int:
        return self.running + self.waiting


def parse_metrics(text: str) -> VllmLoad | None:
    """The load in a `/metrics` page (summed over models); None when it has no vLLM gauges."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (RUNNING, WAITING, *KV_CACHE):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    if RUNNING not in sums and WAITING not in sums:
        return None
    kv = next((sums[name] for name in KV_CACHE if name in sums), None)
    return VllmLoad(int(sums.get(RUNNING, 0)), int(sums.get(WAITING, 0)), kv)
