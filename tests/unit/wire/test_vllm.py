"""vLLM: the `vllm serve` command line built from a profile, and its /metrics read as load."""

from __future__ import annotations

from ml_offload.wire.vllm import VllmLoad, parse_metrics, serve_argv, with_address


def test_serve_argv_from_a_profile() -> None:
    argv = serve_argv(
        ["vllm"],
        "meta-llama/Llama-3.1-70B-Instruct",
        served_name="llama70",
        tensor_parallel_size=4,
        quantization="fp8",
        max_model_len=32768,
        gpu_memory_utilization=0.92,
        extra_args=["--enable-prefix-caching"],
    )
    assert with_address(argv, 8123) == [
        "vllm",
        "serve",
        "meta-llama/Llama-3.1-70B-Instruct",
        "--served-model-name",
        "llama70",
        "--tensor-parallel-size",
        "4",
        "--quantization",
        "fp8",
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.92",
        "--enable-prefix-caching",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
    ]


def test_serve_argv_leaves_out_what_is_not_set() -> None:
    argv = serve_argv(["/opt/vllm/bin/vllm"], "/models/qwen", served_name="qwen")
    assert argv == ("/opt/vllm/bin/vllm", "serve", "/models/qwen", "--served-model-name", "qwen")


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 3.0
vllm:num_requests_running{engine="1",model_name="a"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.5
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="a"} 99.0
"""


def test_metrics_summed_over_engines() -> None:
    load = parse_metrics(METRICS)
    assert load == VllmLoad(running=5, waiting=7, kv_cache_usage=0.5) and load.work == 12


def test_older_gauge_name_and_missing_gauges() -> None:
    old = METRICS.replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert parse_metrics(old) == VllmLoad(5, 7, 0.5)
    no_kv = "\n".join(line for line in METRICS.splitlines() if "kv_cache" not in line)
    assert parse_metrics(no_kv) == VllmLoad(5, 7, None)
    assert parse_metrics("# a llama.cpp server\nllamacpp:requests_processing 1\n") is None
