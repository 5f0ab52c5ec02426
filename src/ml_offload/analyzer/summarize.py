"""The LLM pass: a summary per module and one for the whole architecture, map-reduce so each
call fits the model's context, prompts carrying the measured facts so the model explains them
rather than guesses; summaries cached by file hash so a re-run pays only for what changed.

The model is reached through `Ask` (system, user, max_tokens) -> text: the CLI sends it to the
gateway's OpenAI API, `POST /analyze` to the in-process inference service; both route it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ml_offload.analyzer.model import Analysis, FileFacts, Summaries
from ml_offload.analyzer.report import hubs
from ml_offload.errors import MloError

Ask = Callable[[str, str, int], Awaitable[str]]
Progress = Callable[[int, int, str], None]

PROMPT_VERSION = "1"  # bump when prompts change: cached summaries of older prompts are not reused
SYSTEM = (
    "You explain software architecture. Answer in plain prose, briefly, using only the facts "
    "and code you are given. Do not invent names."
)
_TEMPLATE_TOKENS = 64  # the chat template's own tokens around the messages


@dataclass(frozen=True)
class Budget:
    """How much text one call may carry: the model's context less the answer, in characters."""

    context_tokens: int = 4096
    module_answer_tokens: int = 96  # two or three sentences
    overview_answer_tokens: int = 200
    chars_per_token: float = 2.0  # code tokenises densely (SmolLM2: ~2.2 on these prompts)
    max_files: int = 50  # modules summarised per run (the most imported first)
    concurrency: int = 2

    def answer_tokens(self, wanted: int) -> int:
        """At most a quarter of a small context goes to the answer."""
        return max(16, min(wanted, self.context_tokens // 4))

    def prompt_chars(self, answer_tokens: int) -> int:
        room = self.context_tokens - self.answer_tokens(answer_tokens) - _TEMPLATE_TOKENS
        return max(200, int(room * self.chars_per_token) - len(SYSTEM))


class SummaryCache:
    """Summaries by (prompt version, model, file hash) in one JSON file per model."""

    def __init__(self, folder: Path | None, model: str) -> None:
        safe = hashlib.sha256(model.encode()).hexdigest()[:16]
        self._file = folder / f"summaries-{safe}.json" if folder is not None else None
        self._model = model
        self._data: dict[str, str] = {}
        if self._file is not None:
            try:
                loaded = json.loads(self._file.read_text())
                self._data = {k: v for k, v in loaded.items() if isinstance(v, str)}
            except (OSError, ValueError, AttributeError):
                self._data = {}

    def key(self, *parts: str) -> str:
        raw = "\0".join((PROMPT_VERSION, self._model, *parts))
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, summary: str) -> None:
        self._data[key] = summary

    def save(self) -> None:
        if self._file is None:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._data, indent=0, sort_keys=True))
        tmp.replace(self._file)


async def summarize(
    a: Analysis,
    ask: Ask,
    model: str,
    budget: Budget = Budget(),
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Summaries:
    cache = SummaryCache(cache_dir, model)
    result = Summaries(model=model)
    chosen = choose_files(a, budget.max_files)
    gate = asyncio.Semaphore(budget.concurrency)
    done = 0

    async def one(facts: FileFacts) -> None:
        nonlocal done
        async with gate:
            await _module(a, facts, ask, budget, cache, result)
        done += 1
        if progress is not None:
            progress(done, len(chosen), facts.path)

    await asyncio.gather(*(one(f) for f in chosen))
    _add_cached(a, cache, budget.max_files, result)
    if result.modules:
        await _overview(a, ask, budget, cache, result)
    cache.save()
    return result


def _add_cached(a: Analysis, cache: SummaryCache, limit: int, out: Summaries) -> None:
    """With --changed-since, the unchanged files' summaries from earlier runs join the
    architecture summary at no cost."""
    if a.changed is None:
        return
    for facts in choose_files(replace(a, changed=None), limit):
        found = cache.get(cache.key("module", facts.path, facts.sha256))
        if found is not None and facts.path not in out.modules:
            out.modules[facts.path] = found
            out.cached += 1


def choose_files(a: Analysis, limit: int) -> list[FileFacts]:
    """The files to explain: changed ones first (with --changed-since), then the most imported,
    then the largest; at most `limit`."""
    changed = set(a.changed or ())
    g = a.graph
    ranked = sorted(
        a.files, key=lambda f: (f.path not in changed, -g.fan_in[f.path], -f.lines, f.path)
    )
    if a.changed is not None:
        ranked = [f for f in ranked if f.path in changed]
    return ranked[:limit]


async def _module(
    a: Analysis, facts: FileFacts, ask: Ask, budget: Budget, cache: SummaryCache, out: Summaries
) -> None:
    key = cache.key("module", facts.path, facts.sha256)
    cached = cache.get(key)
    if cached is not None:
        out.modules[facts.path] = cached
        out.cached += 1
        return
    prompt = module_prompt(a, facts, budget.prompt_chars(budget.module_answer_tokens))
    try:
        answer = budget.answer_tokens(budget.module_answer_tokens)
        text = (await ask(SYSTEM, prompt, answer)).strip()
    except Exception as exc:  # one module's failure must not end the run
        if is_fatal(exc):
            raise
        out.errors.append(f"{facts.path}: {exc}")
        return
    out.calls += 1
    if text:
        out.modules[facts.path] = text
        cache.put(key, text)


def module_prompt(a: Analysis, f: FileFacts, limit: int) -> str:
    g = a.graph
    symbols = ", ".join(
        f"{s.name} ({s.kind}{f', complexity {s.complexity}' if s.complexity else ''})"
        for s in f.symbols
    )
    cycle = next((c for c in g.cycles if f.path in c), None)
    facts = [
        f"File {f.path} ({f.language}, module {f.module}): {f.lines} lines.",
        f"Defines: {symbols or 'nothing at top level'}.",
        f"Imports in the project: {', '.join(f.internal) or 'none'}.",
        f"External dependencies: {', '.join(f.external) or 'none'}.",
        f"Imported by {g.fan_in[f.path]} files; layer {g.layer[f.path]} of the import graph.",
    ]
    if cycle:
        facts.append(f"In an import cycle with: {', '.join(p for p in cycle if p != f.path)}.")
    head = _clip("\n".join(facts), limit // 2)
    ask = "\nIn two or three sentences, say what this file is for and how it fits the project."
    room = limit - len(head) - len(ask) - 20
    source = _source(a, f, room)
    body = f"\nSource (start):\n{source}\n" if source else ""
    return f"{head}{body}{ask}"


def _source(a: Analysis, f: FileFacts, room: int) -> str:
    if room < 80:
        return ""
    try:
        text = (Path(a.root) / f.path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return _clip(text, room)


async def _overview(
    a: Analysis, ask: Ask, budget: Budget, cache: SummaryCache, out: Summaries
) -> None:
    """Reduce the module summaries to one architecture summary: groups that fit one call are
    summarised, then the group summaries, until one call holds them all with the graph facts."""
    facts = graph_facts(a)
    limit = budget.prompt_chars(budget.overview_answer_tokens)
    parts = [f"{p}: {s}" for p, s in sorted(out.modules.items())]
    key = cache.key("architecture", facts, *parts)
    cached = cache.get(key)
    if cached is not None:
        out.architecture = cached
        out.cached += 1
        return
    question = (
        "\nIn one paragraph, explain the architecture of this codebase: its parts, how they "
        "depend on each other, and the cycles or hubs a maintainer should know about."
    )
    head = _clip(facts, limit // 2) + "\nModules:\n"
    room = limit - len(head) - len(question)
    try:
        while len(parts) > 1 and sum(len(p) + 1 for p in parts) > room:
            parts = await _reduce_round(parts, ask, budget, limit, out)
        prompt = head + _clip("\n".join(parts), room) + question
        answer = budget.answer_tokens(budget.overview_answer_tokens)
        text = (await ask(SYSTEM, prompt, answer)).strip()
    except Exception as exc:
        if is_fatal(exc):
            raise
        out.errors.append(f"architecture: {exc}")
        return
    out.calls += 1
    out.architecture = text
    cache.put(key, text)


async def _reduce_round(
    parts: list[str], ask: Ask, budget: Budget, limit: int, out: Summaries
) -> list[str]:
    groups: list[list[str]] = [[]]
    size = 0
    room = max(100, limit - 150)
    for part in (_clip(p, room // 2) for p in parts):
        if groups[-1] and size + len(part) > room:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += len(part) + 1
    if len(groups) == len(parts):  # each part alone fills a call: clip harder to progress
        return [_clip(" ".join(parts), room)]
    merged = []
    for group in groups:
        prompt = (
            "Module summaries:\n" + "\n".join(group) + "\nSummarise what these modules do "
            "together, in three sentences, naming the most important files."
        )
        answer = budget.answer_tokens(budget.module_answer_tokens)
        merged.append((await ask(SYSTEM, prompt, answer)).strip())
        out.calls += 1
    return merged


def is_fatal(exc: BaseException) -> bool:
    """Refusals that every further call would get too (no key, out of scope, no such model)
    end the pass; anything else costs one summary."""
    return isinstance(exc, MloError) and exc.status in (401, 403, 404)


def graph_facts(a: Analysis) -> str:
    g = a.graph
    langs = sorted({f.language for f in a.files})
    top = ", ".join(f"{p} (imported by {g.fan_in[p]})" for p in hubs(a, 3))
    cycles = "; ".join(" <-> ".join(c) for c in g.cycles[:5]) or "none"
    external = ", ".join(list(a.external)[:15]) or "none"
    return (
        f"Codebase: {len(a.files)} files ({', '.join(langs)}), {len(g.edges)} internal "
        f"imports, {1 + max(g.layer.values(), default=-1)} layers.\n"
        f"Import cycles: {cycles}.\nMost imported: {top}.\n"
        f"Dead files: {', '.join(g.dead[:10]) or 'none'}.\nExternal dependencies: {external}."
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"
