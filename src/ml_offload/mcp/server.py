"""The MCP server: tools with schemas from their signatures, a scope check and an audit event
for each call (policy.py), resources and a prompt. One server for stdio and for `/mcp`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from ml_offload import __version__
from ml_offload.errors import MloError
from ml_offload.knowledge.views import Note, SearchHit, SessionInfo, SessionMessage
from ml_offload.mcp.build import BuildResult, run_command
from ml_offload.mcp.deps import McpDeps
from ml_offload.mcp.errors import ToolFailure
from ml_offload.mcp.gateway import forwarded
from ml_offload.mcp.policy import ToolPolicy
from ml_offload.mcp.tools_ops import register_ops_tools

T = TypeVar("T")
Name = Annotated[str, Field(min_length=1, max_length=255, description="a model name or alias")]
Limit = Annotated[int, Field(ge=1, le=100)]

INSTRUCTIONS = (
    "ml-offload: list, load and query the gateway's models, keep notes (save_knowledge, "
    "search_knowledge), hold conversations with a model (create_session, session_message) and "
    "run a workspace's configured build or tests (build_and_test), analyze a codebase's "
    "structure (analyze_codebase), and check providers, "
    "limits, config snippets and the security posture (provider_test, rate_limit_check, "
    "provider_config_validate, security_audit)."
)


async def plain(aw: Awaitable[T]) -> T:
    """Our errors as the tool's failure, in their own words (the SDK hides other errors')."""
    try:
        return await aw
    except MloError as exc:
        raise ToolFailure(exc.message) from None


def build_server(deps: McpDeps) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer(
        "ml-offload", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    schemas: dict[str, dict[str, Any]] = {}

    async def input_schemas() -> dict[str, dict[str, Any]]:
        if not schemas:
            schemas.update({t.name: t.input_schema for t in await server.list_tools()})
        return schemas

    server.middleware.append(ToolPolicy(deps.guard, input_schemas))
    _platform_tools(server, deps)
    _knowledge_tools(server, deps)
    _session_tools(server, deps)
    _build_tools(server, deps)
    _analyzer_tools(server, deps)
    register_ops_tools(server, deps)
    _resources(server, deps)
    return server


def _call(deps: McpDeps, ctx: Context[Any], method: str, path: str, body: Any = None) -> Any:
    return plain(deps.gateway.call(method, path, body, forwarded(ctx.headers)))


def _platform_tools(server: MCPServer[Any], deps: McpDeps) -> None:
    @server.tool()
    async def list_models(ctx: Context[Any]) -> list[dict[str, Any]]:
        """Every model the gateway can serve, with its state and memory estimate."""
        data = await _call(deps, ctx, "GET", "/models")
        return list(data["data"])

    @server.tool()
    async def model_status(name: Name, ctx: Context[Any]) -> dict[str, Any]:
        """One model: its state, where it runs, its memory estimate."""
        return dict(await _call(deps, ctx, "GET", f"/models/{quote(name)}"))

    @server.tool()
    async def vram_status(ctx: Context[Any]) -> dict[str, Any]:
        """GPU devices, their free and used memory, and what each loaded model holds."""
        return dict(await _call(deps, ctx, "GET", "/vram/status"))

    @server.tool()
    async def load_model(name: Name, ctx: Context[Any]) -> dict[str, Any]:
        """Load a model now (admin key)."""
        return dict(await _call(deps, ctx, "POST", f"/models/{quote(name)}/load"))

    @server.tool()
    async def unload_model(name: Name, ctx: Context[Any]) -> dict[str, Any]:
        """Unload a model, giving its memory back (admin key)."""
        return dict(await _call(deps, ctx, "POST", f"/models/{quote(name)}/unload"))

    @server.tool()
    async def infer(
        model: Name,
        prompt: Annotated[str, Field(min_length=1)],
        ctx: Context[Any],
        max_tokens: Annotated[int, Field(ge=1, le=32768)] = 256,
        temperature: Annotated[float, Field(ge=0, le=2)] = 0.0,
    ) -> dict[str, Any]:
        """A completion through the gateway's own routing, with the caller's key."""
        messages = [{"role": "user", "content": prompt}]
        return await _chat(deps, ctx, model, messages, max_tokens, temperature)


async def _chat(
    deps: McpDeps,
    ctx: Context[Any],
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    temperature: float,
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    data = await _call(deps, ctx, "POST", "/v1/chat/completions", body)
    choice = data["choices"][0]
    return {
        "model": data.get("model", model),
        "text": choice["message"].get("content") or "",
        "finish_reason": choice.get("finish_reason"),
        "usage": data.get("usage"),
    }


def _knowledge_tools(server: MCPServer[Any], deps: McpDeps) -> None:
    kb = deps.knowledge

    @server.tool()
    async def save_knowledge(
        title: Annotated[str, Field(min_length=1, max_length=500)],
        content: str,
        tags: list[str] | None = None,
        source: str | None = None,
    ) -> Note:
        """Save a note (title, content, tags, source) to the knowledge base."""
        return await plain(kb.save(title, content, tags or [], source))

    @server.tool()
    async def search_knowledge(
        query: Annotated[str, Field(min_length=1)],
        tag: str | None = None,
        limit: Limit = 10,
    ) -> list[SearchHit]:
        """Full-text search of the notes, best match first (bm25 / ts_rank)."""
        return await plain(kb.search(query, tag=tag, limit=limit))

    @server.tool()
    async def list_knowledge(tag: str | None = None, limit: Limit = 50) -> list[Note]:
        """The newest notes, optionally with one tag."""
        return await plain(kb.list(tag=tag, limit=limit))

    @server.tool()
    async def delete_knowledge(note_id: Annotated[int, Field(ge=1)]) -> Note:
        """Delete a note by its id; returns what was deleted."""
        return await plain(kb.delete(note_id))


def _session_tools(server: MCPServer[Any], deps: McpDeps) -> None:
    store = deps.sessions

    @server.tool()
    async def create_session(name: Name, model: Name, system: str | None = None) -> SessionInfo:
        """Start a named conversation with a model, kept across calls and restarts."""
        return await plain(store.create(name, model, system))

    @server.tool()
    async def session_message(
        name: Name,
        message: Annotated[str, Field(min_length=1)],
        ctx: Context[Any],
        max_tokens: Annotated[int, Field(ge=1, le=32768)] = 256,
    ) -> dict[str, Any]:
        """Send a message in a session; the model sees the whole conversation so far."""
        info = await plain(store.get(name))
        history = await plain(store.history(name))
        messages = [{"role": "system", "content": info.system}] if info.system else []
        messages += [{"role": m.role, "content": m.content} for m in history]
        messages.append({"role": "user", "content": message})
        answer = await _chat(deps, ctx, info.model, messages, max_tokens, 0.0)
        await plain(store.append(name, ("user", message), ("assistant", answer["text"])))
        return {**answer, "turns": len(history) // 2 + 1}

    @server.tool()
    async def session_history(name: Name, limit: Limit | None = None) -> list[SessionMessage]:
        """The messages of a session, oldest first."""
        return await plain(store.history(name, limit=limit))


def _analyzer_tools(server: MCPServer[Any], deps: McpDeps) -> None:
    @server.tool()
    async def analyze_codebase(
        path: Annotated[str, Field(min_length=1, description="a folder on the gateway's disk")],
        ctx: Context[Any],
        languages: list[str] | None = None,
        explain: Annotated[bool, Field(description="summaries by a model (slower)")] = False,
        model: str | None = None,
        changed_since: str | None = None,
    ) -> dict[str, Any]:
        """The structure of a codebase (Rust, Python, Nix, TypeScript): modules, imports,
        dependency graph with cycles and layers, the largest and most complex units, dead
        files; with `explain`, a model's summaries. Needs an admin key or `tool:analyze`."""
        body = {"path": path, "languages": languages, "llm": explain, "model": model}
        body["changed_since"] = changed_since
        return dict(await _call(deps, ctx, "POST", "/analyze", body))


def _build_tools(server: MCPServer[Any], deps: McpDeps) -> None:
    @server.tool()
    async def build_and_test(
        workspace: Annotated[str, Field(min_length=1)],
        ctx: Context[Any],
        command: str = "test",
        timeout_s: Annotated[float, Field(gt=0)] = 600.0,
    ) -> BuildResult:
        """Run a workspace's configured command (from the gateway's allow-list), bounded in time
        and output; progress is reported while it runs."""

        async def progress(elapsed_s: float, message: str) -> None:
            await ctx.report_progress(elapsed_s, None, message)

        result = await run_command(deps.settings.mcp, workspace, command, timeout_s, progress)
        if result.timed_out:
            raise ToolFailure(
                f"{' '.join(result.command)} timed out after {result.duration_s:.1f}s and was "
                f"killed; output tail:\n{result.output_tail[-2000:]}"
            )
        return result


def _resources(server: MCPServer[Any], deps: McpDeps) -> None:
    @server.resource("mlo://models", mime_type="application/json")
    async def models() -> dict[str, Any]:
        """The models the gateway can serve."""
        return dict(await plain(deps.gateway.call("GET", "/models")))

    @server.resource("mlo://vram", mime_type="application/json")
    async def vram() -> dict[str, Any]:
        """GPU memory: devices and what each loaded model holds."""
        return dict(await plain(deps.gateway.call("GET", "/vram/status")))

    @server.prompt()
    def code_review(code: str, focus: str = "correctness, security and clarity") -> str:
        """Review a piece of code."""
        return (
            f"Review this code for {focus}. Name each problem with its line, why it matters "
            f"and the fix; say what is good too.\n\n```\n{code}\n```"
        )
