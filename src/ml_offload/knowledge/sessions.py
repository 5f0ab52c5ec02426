"""Named conversations with a model, kept in the database so they outlive the gateway."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ml_offload.errors import InvalidRequest, NotFound, Unavailable
from ml_offload.knowledge.views import SessionInfo, SessionMessage
from ml_offload.storage.db import Database
from ml_offload.storage.tables import mcp_sessions, session_messages

ROLES = ("system", "user", "assistant")


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, model: str, system: str | None = None) -> SessionInfo:
        if not name.strip() or len(name) > 255:
            raise InvalidRequest("name: give the session a name of 1 to 255 characters")
        info = SessionInfo(name=name, model=model, system=system, created_at=time.time())
        try:
            async with self.db.begin() as conn:
                await conn.execute(mcp_sessions.insert().values(**info.model_dump()))
        except Unavailable as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise InvalidRequest(
                    f"a session named {name!r} exists; continue it with session_message "
                    "or pick another name"
                ) from None
            raise
        return info

    async def get(self, name: str) -> SessionInfo:
        async with self.db.begin() as conn:
            row = (
                await conn.execute(sa.select(mcp_sessions).where(mcp_sessions.c.name == name))
            ).first()
        if row is None:
            raise NotFound(f"no session {name!r}; start one with create_session")
        return SessionInfo(**row._mapping)

    async def history(self, name: str, *, limit: int | None = None) -> list[SessionMessage]:
        await self.get(name)
        stmt = (
            sa.select(session_messages)
            .where(session_messages.c.session == name)
            .order_by(session_messages.c.id)
        )
        async with self.db.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        messages = [
            SessionMessage(role=r.role, content=r.content, created_at=r.created_at) for r in rows
        ]
        return messages[-limit:] if limit else messages

    async def append(self, name: str, *messages: tuple[str, str]) -> None:
        now = time.time()
        rows = [{"session": name, "role": r, "content": c, "created_at": now} for r, c in messages]
        async with self.db.begin() as conn:
            await conn.execute(session_messages.insert(), rows)
