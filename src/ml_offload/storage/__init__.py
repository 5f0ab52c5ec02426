"""The database: one schema for SQLite (default) and PostgreSQL (shared deployments)."""

from ml_offload.storage.db import Database, async_url
from ml_offload.storage.models_repo import FileStamp, ModelRepository

__all__ = ["Database", "FileStamp", "ModelRepository", "async_url"]
