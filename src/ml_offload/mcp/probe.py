"""`provider_test`: probe one model through the gateway (is it known, does its server answer,
does it take our credentials, one token of completion) and say what failed in plain words."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from ml_offload.mcp.gateway import Answer, GatewayClient

_PING = [{"role": "user", "content": "Reply with one word: ok"}]


class ProbeStep(BaseModel):
    name: str  # `model` (the gateway knows it), `completion` (one token from its server)
    ok: bool
    latency_ms: float
    detail: str


class ProbeResult(BaseModel):
    model: str
    ok: bool
    reachable: bool | None  # its server answered (None: not tried, or not known)
    auth_ok: bool | None  # its server took the gateway's credentials (None: not known)
    latency_ms: float | None  # the one-token completion, end to end through the gateway
    error: str | None  # what failed, and what to do about it
    steps: list[ProbeStep]


async def probe(gateway: GatewayClient, model: str) -> ProbeResult:
    found = await gateway.send("GET", f"/models/{quote(model)}")
    steps = [
        ProbeStep(
            name="model",
            ok=found.status < 400,
            latency_ms=found.latency_ms,
            detail=_found_detail(model, found),
        )
    ]
    if found.status >= 400:
        return ProbeResult(
            model=model,
            ok=False,
            reachable=None,
            auth_ok=None,
            latency_ms=None,
            error=steps[0].detail,
            steps=steps,
        )
    body = {"model": model, "messages": _PING, "max_tokens": 1, "temperature": 0.0}
    done = await gateway.send("POST", "/v1/chat/completions", body)
    reachable, auth_ok, detail = _verdict(done)
    steps.append(
        ProbeStep(
            name="completion", ok=done.status < 400, latency_ms=done.latency_ms, detail=detail
        )
    )
    ok = done.status < 400
    return ProbeResult(
        model=model,
        ok=ok,
        reachable=reachable,
        auth_ok=auth_ok,
        latency_ms=done.latency_ms if ok else None,
        error=None if ok else detail,
        steps=steps,
    )


def _found_detail(model: str, answer: Answer) -> str:
    if answer.status < 400:
        data: dict[str, Any] = answer.data
        where = f" at {data['url']}" if data.get("url") else ""
        return f"known to the gateway as {data.get('id', model)!r}{where}, {data.get('state')}"
    if answer.status == 404:
        return f"the gateway does not know {model!r}: {answer.message}"
    return _refused_by_gateway(answer)


def _verdict(answer: Answer) -> tuple[bool | None, bool | None, str]:
    """(reachable, credentials accepted, what happened) for the one-token completion."""
    if answer.status < 400:
        usage = (answer.data or {}).get("usage") or {}
        tokens = usage.get("completion_tokens")
        return True, True, f"answered in {answer.latency_ms:.0f} ms ({tokens} token)"
    if answer.upstream and answer.status in (401, 403):
        return (
            True,
            False,
            (
                f"the model's server refused the gateway's credentials ({answer.status}: "
                f"{answer.message}); check the model's api_key or api_key_env"
            ),
        )
    if answer.upstream:
        return (
            True,
            True,
            (f"the model's server refused the request ({answer.status}: {answer.message})"),
        )
    if answer.code == "engine_timeout" or answer.status == 504:
        return None, None, f"the model's server did not answer in time: {answer.message}"
    if answer.code == "engine_error" or answer.status == 502:
        reachable = False if "cannot reach" in answer.message else None
        return reachable, None, f"the model's server failed: {answer.message}"
    return None, None, _refused_by_gateway(answer)


def _refused_by_gateway(answer: Answer) -> str:
    if answer.status == 401:
        return f"the gateway refused this caller's key: {answer.message}"
    if answer.status == 403:
        return f"this caller's key may not use the model: {answer.message}"
    if answer.status == 429:
        return f"rate limited by the gateway (see rate_limit_check): {answer.message}"
    return f"the gateway answered {answer.status}: {answer.message}"
