"""The GenAI semantic conventions' instruments as Prometheus exports them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ml_offload.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


ATTRS = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "llama.cpp",
    "gen_ai_request_model": "alias",
    "gen_ai_response_model": "smollm",
}


def test_a_streamed_request_records_each_instrument_once() -> None:
    m = Metrics()
    call = m.genai.call("chat", "llama.cpp", "alias", "smollm")
    call.sent()
    call.first_token()
    call.first_token()  # only the first counts
    call.usage({"prompt_tokens": 7, "completion_tokens": 1})
    call.usage({"prompt_tokens": 7, "completion_tokens": 5})  # the last report wins
    call.finish()
    got = samples(m)
    ok = frozenset({**ATTRS, "error_type": ""}.items())
    attrs = frozenset(ATTRS.items())
    assert got[("gen_ai_server_request_duration_seconds_count", ok)] == 1
    assert got[("gen_ai_client_operation_duration_seconds_count", ok)] == 1
    assert got[("gen_ai_server_time_to_first_token_seconds_count", attrs)] == 1
    assert got[("gen_ai_server_time_per_output_token_seconds_count", attrs)] == 1
    tokens = "gen_ai_client_token_usage_sum"
    assert got[(tokens, frozenset({**ATTRS, "gen_ai_token_type": "input"}.items()))] == 7
    assert got[(tokens, frozenset({**ATTRS, "gen_ai_token_type": "output"}.items()))] == 5


def test_a_failure_before_the_upstream_call_has_an_error_type_and_no_client_duration() -> None:
    m = Metrics()
    m.genai.call("completion", "vllm", "big", "big").finish("model_load_failed")
    got = samples(m)
    labels = {
        "gen_ai_operation_name": "text_completion",
        "gen_ai_provider_name": "vllm",
        "gen_ai_request_model": "big",
        "gen_ai_response_model": "big",
        "error_type": "model_load_failed",
    }
    assert got[("gen_ai_server_request_duration_seconds_count", frozenset(labels.items()))] == 1
    counts = {n: v for (n, _), v in got.items() if n.endswith("_count")}
    assert counts["gen_ai_client_operation_duration_seconds_count"] == 0  # never sent
    assert counts["gen_ai_client_token_usage_count"] == 0
