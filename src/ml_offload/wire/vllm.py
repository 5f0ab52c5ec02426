"""vLLM: the `vllm serve` command line we start it with, and its Prometheus `/metrics`.

Followed: vLLM's docs, "OpenAI-Compatible Server" (`vllm serve` engine arguments
`--tensor-parallel-size`, `--quantization`, `--max-model-len`, `--gpu-memory-utilization`,
`--served-model-name`), "Parallelism and Scaling" (multi-node: `tensor_parallel_size` GPUs per
node, `pipeline_parallel_size` nodes, on a Ray cluster: `--distributed-executor-backend ray`, the
cluster found through Ray's `RAY_ADDRESS`) and "Production Metrics" (gauges
`vllm:num_requests_running`,
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
    pipeline_parallel_size: int | None = None,
    ray_address: str | None = None,
    quantization: str | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[str, ...]:
    """`vllm serve <model> ...` without host and port (chosen when it is started); with a Ray
    cluster, run through `env RAY_ADDRESS=...` so that vLLM joins it."""
    cluster = ["env", f"RAY_ADDRESS={ray_address}"] if ray_address else []
    argv = [*cluster, *command, "serve", model, "--served-model-name", served_name]
    if tensor_parallel_size is not None:
        argv += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if pipeline_parallel_size is not None:
        argv += ["--pipeline-parallel-size", str(pipeline_parallel_size)]
    if ray_address:
        argv += ["--distributed-executor-backend", "ray"]
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
