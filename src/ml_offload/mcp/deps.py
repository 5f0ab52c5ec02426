"""What the MCP tools work with, opened for stdio or for the gateway's `/mcp`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from ml_offload.config import Settings
from ml_offload.knowledge.notes import KnowledgeBase
from ml_offload.knowledge.sessions import SessionStore
from ml_offload.mcp.gateway import GatewayClient
from ml_offload.security.guard import Guard
from ml_offload.storage.db import Database


@dataclass(frozen=True, slots=True)
class McpDeps:
    settings: Settings
    knowledge: KnowledgeBase
    sessions: SessionStore
    gateway: GatewayClient
    guard: Guard | None  # on the gateway: scopes and the audit log; None over stdio (local user)


@asynccontextmanager
async def knowledge_database(settings: Settings, main: Database | None) -> AsyncIterator[Database]:
    """`mcp.knowledge_db_path` (its own SQLite file) when set, else the registry database."""
    path = settings.mcp.knowledge_db_path
    if path is None and main is not None:
        yield main
        return
    url = f"sqlite+aiosqlite:///{path}" if path else settings.storage.db_url
    db = await Database.open(url)
    try:
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def open_deps(
    settings: Settings, gateway: GatewayClient, *, db: Database | None = None, guard: Guard | None
) -> AsyncIterator[McpDeps]:
    async with AsyncExitStack() as stack:
        stack.push_async_callback(gateway.close)
        kdb = await stack.enter_async_context(knowledge_database(settings, db))
        yield McpDeps(settings, KnowledgeBase(kdb), SessionStore(kdb), gateway, guard)
