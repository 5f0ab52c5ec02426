"""What the key check costs per request: the stored key's lookup (by id, from the database on
every request so that revocation is seen at once), and the guard's whole path for one request
(authenticate with a key, admit with rpm and tpm limits, finish), one at a time and 16 at once.
Figures are printed, never asserted.

    python bench/auth.py [--n 5000] [--database-url URL] [--audit]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from ml_offload.config import SecuritySettings
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.security.keys import KeyStore, split_key
from ml_offload.services import build_guard
from ml_offload.storage.db import Database
from ml_offload.storage.keys_repo import KeyRepository

MESSAGES = [{"role": "user", "content": "Say hello."}]


async def timed(label: str, n: int, once: Callable[[], Awaitable[object]], conc: int = 1) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            await once()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n // conc) for _ in range(conc)))
    took = time.perf_counter() - started
    done = n // conc * conc
    print(f"{label:<44} {done / took:>9.0f}/s {took / done * 1e6:>8.1f} us")


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mlo-auth-bench-"))
    db = await Database.open(args.database_url or f"sqlite+aiosqlite:///{folder / 'r.db'}")
    repo = KeyRepository(db)
    token = (await KeyStore(repo).create("bench")).secret
    key_id = split_key(token)[0]  # type: ignore[index]
    settings = SecuritySettings.model_validate(
        {
            "auth": "required",
            "audit": {"enabled": args.audit, "path": str(folder / "audit.jsonl")},
            "limits": {"default_rpm": 10**9, "default_tpm": 10**12},
        }
    )
    guard = build_guard(
        settings, lambda name: ModelSpec(name=name, kind=DeploymentKind.REMOTE, url="http://x"), db
    )
    await guard.start()
    headers = {"authorization": f"Bearer {token}"}

    async def request() -> None:
        ctx = await guard.authenticate(
            headers,
            method="POST",
            path="/v1/chat/completions",
            client="1.2.3.4:5",
            cert_subject=None,
        )
        await guard.admit(ctx, "chat", {"model": "m", "messages": MESSAGES, "max_tokens": 16})
        ctx.prompt_tokens, ctx.completion_tokens, ctx.status = 9, 2, 200
        await guard.finish(ctx)

    print(f"database: {db.url}; audit log {'on' if args.audit else 'off'}")
    await timed("key lookup, through the pool (SQLAlchemy)", args.n // 5, lambda: repo.get(key_id))
    await timed("key lookup, direct (the request path)", args.n, lambda: repo.lookup(key_id))
    await timed("guard: authenticate + admit + finish", args.n, request)
    await timed("guard: the same, 16 at once", args.n, request, conc=16)
    await guard.close()
    await repo.close()
    await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--audit", action="store_true", help="with the audit log on")
    uvloop.run(main(parser.parse_args()))
