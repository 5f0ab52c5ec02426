"""What OTLP tracing costs per request, in this process's CPU time: the span calls one request
makes (the request span, auth, routing, load wait, upstream and streaming children, provider,
deployment and usage attributes) with tracing off (the no-op spans) against no calls at all, and
with tracing on (spans batched by otlp.Exporter's thread to an OTLP/HTTP receiver in another
process, so encoding and sending count, decoding does not), all kept and one in ten kept
(`sample_ratio = 0.1`). The share of the request rate is the added time per request times that
rate.

    python bench/tracing.py [--n 100000] [--rps 1500]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable

from ml_offload.config import TracingSettings
from ml_offload.otlp import QUEUE_ENV
from ml_offload.tracing import Tracer, open_tracer

RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def otlp_receiver() -> tuple[str, subprocess.Popen[str]]:
    """An OTLP/HTTP receiver in another process (it reads and drops what it is sent): its
    endpoint and its process."""
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return f"http://127.0.0.1:{proc.stdout.readline().strip()}", proc


def per_call_us(n: int, once: Callable[[], None]) -> float:
    for _ in range(1000):
        once()
    started = time.process_time()  # CPU time: other processes on the machine do not count
    for _ in range(n):
        once()
    return (time.process_time() - started) / n * 1e6


def bare() -> None:
    pass


def traced(tracer: Tracer) -> Callable[[], None]:
    def once() -> None:  # the calls inference.py makes for one streamed chat request
        span = tracer.request("chat", "m")
        with span.child("auth"):
            pass
        with span.child("routing"):
            pass
        span.set("gen_ai.provider.name", "llama.cpp")
        span.set("mlo.deployment", "m")
        with span.child("load wait"):
            pass
        with span.child("upstream"):
            pass
        streaming = span.child("streaming")
        span.set("gen_ai.usage.input_tokens", 12)
        span.set("gen_ai.usage.output_tokens", 16)
        streaming.end()
        span.end()

    return once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000, help="requests traced per figure")
    ap.add_argument("--rps", type=float, default=1500.0, help="request rate for the share")
    args = ap.parse_args()
    # Room for every span: a tight loop outruns the export thread, and a dropped span would
    # not be encoded, so its cost would not be counted.
    os.environ[QUEUE_ENV] = str(args.n * 8)
    endpoint, receiver = otlp_receiver()
    try:
        settings = TracingSettings(otlp_endpoint=endpoint)
        on = open_tracer(settings, {})
        tenth = open_tracer(settings.model_copy(update={"sample_ratio": 0.1}), {})
        base = per_call_us(args.n, bare)
        print(f"{'':<18} {'us/request':>10} {'added us':>9} {'share':>8}")
        off = open_tracer(TracingSettings(), {})
        for name, tracer in (("tracing off", off), ("tracing on", on), ("on, 1 in 10", tenth)):
            cost = per_call_us(args.n, traced(tracer))
            started = time.process_time()
            tracer.close()  # the spans still batched are encoded and sent: their CPU counts
            cost += (time.process_time() - started) / args.n * 1e6
            share = (cost - base) * args.rps / 1e6
            print(f"{name:<18} {cost:>10.2f} {cost - base:>9.2f} {share:>8.2%}")
        print(f"(share: added time per request x {args.rps:.0f} req/s, of one core)")
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
