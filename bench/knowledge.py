"""`search_knowledge` over 100,000 notes (SQLite FTS5, bm25): latency of the knowledge base's
search (what the tool runs), and of the tool called through the MCP SDK's client (in-process
transport: the protocol's own encoding and dispatch, the policy middleware, no network).

Notes are generated from a fixed vocabulary with Zipf-like word frequencies (seeded), bulk
inserted (the FTS5 index is kept by the schema's triggers); queries are one or two words drawn
from the same vocabulary, common and rare alike, 10 results each.

    python bench/knowledge.py [--notes 100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from mcp import Client
from mcp.server.mcpserver import MCPServer

from ml_offload.config import Settings
from ml_offload.knowledge.notes import KnowledgeBase
from ml_offload.mcp.deps import open_deps
from ml_offload.mcp.gateway import GatewayClient
from ml_offload.mcp.server import build_server
from ml_offload.storage.tables import knowledge_notes

SYLLABLES = ["ka", "ro", "mi", "te", "su", "na", "lo", "pe", "vi", "da", "ge", "zu", "ho", "ri"]
BATCH = 5000


def vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def zipf_cumulative(n: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) for rank in range(n)))


def notes(rng: random.Random, vocab: list[str], count: int) -> list[dict[str, object]]:
    cum = zipf_cumulative(len(vocab))
    now = time.time()
    rows: list[dict[str, object]] = []
    for i in range(count):
        title = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(3, 6)))
        body = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(40, 80)))
        tags = " ".join(sorted(set(rng.choices(vocab[:50], k=2))))
        rows.append(
            {"title": title, "body": body, "tags": tags, "source": None, "created_at": now + i}
        )
    return rows


def queries(rng: random.Random, vocab: list[str], count: int) -> list[str]:
    out = []
    for _ in range(count):
        common = rng.choice(vocab[:200])
        rare = rng.choice(vocab[200:])
        out.append(rng.choice([common, rare, f"{common} {rare}", f"{rare} {rng.choice(vocab)}"]))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(label: str, times_ms: list[float], hits: list[int]) -> None:
    p50, p95, p99 = (percentile(times_ms, q) for q in (0.50, 0.95, 0.99))
    print(
        f"{label:<34} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  p99 {p99:7.2f} ms"
        f"  mean hits {statistics.mean(hits):.1f}"
    )


async def main(count: int, n_queries: int) -> None:
    rng = random.Random(16)
    vocab = vocabulary(rng)
    with tempfile.TemporaryDirectory() as tmp:
        db_file = Path(tmp) / "knowledge.db"
        settings = Settings(
            storage={"data_dir": Path(tmp)},
            mcp={"knowledge_db_path": db_file},
        )
        gateway = GatewayClient(httpx.AsyncClient(base_url="http://127.0.0.1:9"), "nowhere", {})
        async with open_deps(settings, gateway, guard=None) as deps:
            started = time.perf_counter()
            for start in range(0, count, BATCH):
                batch = notes(rng, vocab, min(BATCH, count - start))
                async with deps.knowledge.db.begin() as conn:
                    await conn.execute(knowledge_notes.insert(), batch)
            load_s = time.perf_counter() - started
            size_mb = db_file.stat().st_size / 1e6
            print(
                f"{count} notes inserted (with the FTS5 index) in {load_s:.1f} s; {size_mb:.0f} MB"
            )
            qs = queries(rng, vocab, n_queries)
            await direct(deps.knowledge, qs)
            await through_mcp(build_server(deps), qs)


async def direct(kb: KnowledgeBase, qs: list[str]) -> None:
    for q in qs[:20]:  # warm the page cache
        await kb.search(q, limit=10)
    times, hits = [], []
    for q in qs:
        t0 = time.perf_counter()
        found = await kb.search(q, limit=10)
        times.append((time.perf_counter() - t0) * 1000)
        hits.append(len(found))
    report("KnowledgeBase.search", times, hits)


async def through_mcp(server: MCPServer[Any], qs: list[str]) -> None:
    async with Client(server) as client:
        for q in qs[:20]:
            await client.call_tool("search_knowledge", {"query": q})
        times, hits = [], []
        for q in qs:
            t0 = time.perf_counter()
            result = await client.call_tool("search_knowledge", {"query": q, "limit": 10})
            times.append((time.perf_counter() - t0) * 1000)
            assert not result.is_error, result.content
            sc = result.structured_content or {}
            hits.append(len(sc.get("result", [])))
    report("search_knowledge (MCP client)", times, hits)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.notes, args.queries))
