"""How a tool says it failed: `isError` with the reason (the SDK's ToolError)."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError


class ToolFailure(ToolError):
    """A tool that ran and failed, in words that say what to do."""
