"""Notes and sessions kept for MCP clients: full-text search on SQLite (FTS5, bm25) or
PostgreSQL (tsvector, ts_rank_cd), one schema for both (migration 0005)."""
