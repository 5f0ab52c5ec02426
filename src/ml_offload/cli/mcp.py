"""`mlo mcp`: the MCP server over stdio, for Claude Desktop, Cline, Claude Code, Continue.

The one place the CLI reaches into `mcp/` (declared in pyproject's import contracts)."""

from __future__ import annotations

import asyncio
import logging
import sys

from ml_offload.cli.client import resolve_gateway
from ml_offload.cli.common import ConfigOpt, UrlOpt, settings_for


def mcp(url: UrlOpt = None, config: ConfigOpt = None) -> None:
    """Serve MCP over stdin/stdout (knowledge and sessions need no gateway; the model tools
    call the running one, with MLO_API_KEY)."""
    from ml_offload.mcp.stdio import serve_stdio

    # stdout is the protocol's: every log line goes to stderr
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    settings = settings_for(config)
    asyncio.run(serve_stdio(settings, resolve_gateway(url, config).url))
