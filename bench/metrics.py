"""What the GenAI metrics cost per request, in this process's CPU time: the observations one
request makes now (`GenAiCall`: server and client duration, input and output token usage, plus
time to first token and time per output token for a stream) against the ones it made before
(one latency histogram, two token counters, a TTFT histogram for a stream), and one scrape of
/metrics. The share of the request rate is the added time per request times that rate.

    python bench/metrics.py [--n 200000] [--rps 1500]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from ml_offload.metrics import Metrics

USAGE = {"prompt_tokens": 12, "completion_tokens": 16}
OLD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def per_call_us(n: int, once: Callable[[], None]) -> float:
    for _ in range(1000):
        once()
    started = time.process_time()  # CPU time: other processes on the machine do not count
    for _ in range(n):
        once()
    return (time.process_time() - started) / n * 1e6


def before(stream: bool) -> Callable[[], None]:
    """The series the gateway recorded before the GenAI instruments (mlo_request_latency_seconds,
    mlo_tokens, mlo_time_to_first_token_seconds), with their labels."""
    r = CollectorRegistry()
    latency = Histogram("lat", "", ["endpoint", "model"], buckets=OLD_BUCKETS, registry=r)
    ttft = Histogram("ttft", "", ["model"], buckets=OLD_BUCKETS, registry=r)
    tokens = Counter("tok", "", ["model", "direction"], registry=r)

    def once() -> None:
        started = time.perf_counter()
        if stream:
            ttft.labels("m").observe(time.perf_counter() - started)
        tokens.labels("m", "in").inc(USAGE["prompt_tokens"])
        tokens.labels("m", "out").inc(USAGE["completion_tokens"])
        latency.labels("chat", "m").observe(time.perf_counter() - started)

    return once


def now(stream: bool) -> Callable[[], None]:
    genai = Metrics().genai

    def once() -> None:
        call = genai.call("chat", "llama.cpp", "m", "m")
        call.sent()
        if stream:
            call.first_token()
        call.usage(USAGE)
        call.finish()

    return once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200_000, help="requests recorded per figure")
    ap.add_argument("--rps", type=float, default=1500.0, help="request rate for the share")
    args = ap.parse_args()
    print(f"{'':<22} {'before us':>10} {'now us':>8} {'added us':>9} {'share':>8}")
    for mode in ("json", "stream"):
        old = per_call_us(args.n, before(mode == "stream"))
        new = per_call_us(args.n, now(mode == "stream"))
        share = (new - old) * args.rps / 1e6
        print(f"{mode + ' request':<22} {old:>10.2f} {new:>8.2f} {new - old:>9.2f} {share:>8.2%}")
    metrics = Metrics()
    for i in range(10):  # ten models, each with a finished call
        call = metrics.genai.call("chat", "llama.cpp", f"m{i}", f"m{i}")
        call.usage(USAGE)
        call.finish()
    scrape = per_call_us(max(args.n // 200, 50), metrics.render)
    print(f"one /metrics scrape (10 models): {scrape:.0f} us")
    print(f"(share: added time per request x {args.rps:.0f} req/s, of one core)")


if __name__ == "__main__":
    main()
