"""The MCP server (issue 16): the platform's tools, a knowledge base and sessions for IDEs and
agents, over stdio (`mlo mcp`) and streamable HTTP on the gateway at `/mcp`."""
