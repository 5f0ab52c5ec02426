"""Redaction throughput: MB/s of `Redactor.redact_request` on a typical chat request (a few
messages, one secret, a tool call) and on a long prompt without secrets (code and prose, the
common case for a cloud model), with secrets only and with e-mail and phone masking on.

    python bench/redact.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ml_offload.config import RedactionSettings
from ml_offload.security.redact import Redactor

PROSE = (
    "The scheduler keeps recently used models warm and evicts idle ones when memory runs "
    "short; requests for a model that is loading wait on it. See the guide for details. "
)
CODE = (
    "def handler(request: Request) -> Response:\n"
    "    data = await request.json()\n"
    "    result = service.complete(data['model'], data['messages'])\n"
    "    return JSONResponse(result, status_code=200)\n"
)


def chat_request() -> dict[str, Any]:
    args = json.dumps({"path": "src/app.py", "line": 42})
    return {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "You are a careful coding assistant. " * 8},
            {"role": "user", "content": PROSE * 6 + "my key is " + "AKIA" + "IOSFODNN7EXAMPLE"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "read", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": CODE * 20},
            {"role": "user", "content": [{"type": "text", "text": "Why does this fail? " * 10}]},
        ],
    }


def long_prompt() -> dict[str, Any]:
    text = (PROSE + CODE) * 2500  # about 1 MB, no secrets
    return {"model": "gpt-x", "messages": [{"role": "user", "content": text}]}


def text_bytes(data: dict[str, Any]) -> int:
    return len(json.dumps(data["messages"]).encode())


def measure(redactor: Redactor, data: dict[str, Any], seconds: float) -> tuple[float, int]:
    size = text_bytes(data)
    runs, count = 0, 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        _, count = redactor.redact_request(data)
        runs += 1
    return size * runs / elapsed / 1e6, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    modes = {
        "secrets": RedactionSettings(),
        "secrets+emails+phones": RedactionSettings(emails=True, phones=True),
    }
    cases = {"typical chat request": chat_request(), "long prompt, no secrets": long_prompt()}
    print(f"{'case':<26}{'size':>10}  {'mode':<24}{'MB/s':>9}  masks")
    for case, data in cases.items():
        for mode, settings in modes.items():
            mbps, count = measure(Redactor(settings), data, args.seconds)
            size = f"{text_bytes(data) / 1e3:.1f} kB"
            print(f"{case:<26}{size:>10}  {mode:<24}{mbps:>9.1f}  {count}")


if __name__ == "__main__":
    main()
