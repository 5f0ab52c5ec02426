"""Rate limits on both storages the `limits` package gives us: memory, and a real throw-away
Redis (skipped when `redis-server` is not installed). Charges are atomic against the limit,
refused charges take nothing, and settling refunds the unused part in the same window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml_offload.config import SecuritySettings
from ml_offload.domain import FLEET_SOURCE, DeploymentKind, ModelSpec, RequestContext
from ml_offload.errors import ConfigError, RateLimited, Unavailable
from ml_offload.security.guard import Guard
from ml_offload.security.limits import Charge, Limiter, reset_text
from ml_offload.security.quota import estimate_tokens
from ml_offload.services import build_guard
from tests.integration.conftest import redis_server

SPEC = ModelSpec(name="m", kind=DeploymentKind.REMOTE, url="http://127.0.0.1:1")


@pytest.fixture(scope="module")
def redis() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def storage_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis")
    return url


@pytest.fixture
async def limiter(storage_url: str) -> AsyncIterator[Limiter]:
    lim = Limiter(storage_url)
    await lim.start()
    yield lim
    await lim.close()


def scope(request: pytest.FixtureRequest) -> str:
    """A scope of its own per test (the Redis is shared by the module's tests)."""
    return request.node.name


async def test_charge_refuses_past_the_limit_and_takes_nothing(
    limiter: Limiter, request: pytest.FixtureRequest
) -> None:
    s = scope(request)
    window, charge = await limiter.charge(s, 10, 6)
    assert charge is not None and (window.used, window.remaining) == (6, 4)
    window, refused = await limiter.charge(s, 10, 5)
    assert refused is None and window.used == 6  # the refused 5 were given back
    window, charge = await limiter.charge(s, 10, 4)
    assert charge is not None and window.remaining == 0
    assert 0 < window.reset_s <= 60


async def test_settle_refunds_the_unused_part(
    limiter: Limiter, request: pytest.FixtureRequest
) -> None:
    s = scope(request)
    _, charge = await limiter.charge(s, 100, 80)
    assert charge is not None
    await limiter.settle(charge, 30)
    assert (await limiter.peek(s, 100)).used == 30
    _, again = await limiter.charge(s, 100, 70)  # fits only because 50 came back
    assert again is not None
    await limiter.settle(again, 90)  # used more than reserved: the rest is charged
    assert (await limiter.peek(s, 100)).used == 120


async def test_settle_after_the_window_changes_nothing(
    limiter: Limiter, request: pytest.FixtureRequest
) -> None:
    s = scope(request)
    _, charge = await limiter.charge(s, 100, 50)
    assert charge is not None
    stale = Charge(charge.key, charge.window - 1, charge.amount)  # as if made a minute ago
    await limiter.settle(stale, 0)
    assert (await limiter.peek(s, 100)).used == 50


async def test_concurrent_charges_never_pass_the_limit(
    limiter: Limiter, request: pytest.FixtureRequest
) -> None:
    s = scope(request)
    results = await asyncio.gather(*(limiter.charge(s, 1000, 70) for _ in range(40)))
    admitted = sum(charge is not None for _, charge in results)
    assert admitted == 1000 // 70
    assert (await limiter.peek(s, 1000)).used == admitted * 70


async def test_an_unreachable_redis_fails_at_start() -> None:
    from ml_offload.errors import ConfigError

    with pytest.raises(ConfigError, match="does not answer"):
        await Limiter("redis://127.0.0.1:1").start()


def test_reset_text() -> None:
    assert [reset_text(s) for s in (0.2, 1.0, 59.5, 60, 361)] == [
        "1s",
        "1s",
        "1m0s",
        "1m0s",
        "6m1s",
    ]


# -- through the guard ----------------------------------------------------------------------


async def guard_with(tmp_path: Path, storage_url: str, **limits: Any) -> Guard:
    settings = SecuritySettings.model_validate(
        {"audit": {"enabled": False}, "limits": {"storage_url": storage_url, **limits}}
    )
    guard = build_guard(settings, lambda name: SPEC, None)
    await guard.start()
    return guard


def ctx_for(client: str) -> RequestContext:
    return RequestContext(request_id="r", method="POST", path="/v1/chat/completions", client=client)


async def test_tokens_are_reserved_then_settled_from_usage(
    tmp_path: Path, storage_url: str, request: pytest.FixtureRequest
) -> None:
    guard = await guard_with(tmp_path, storage_url, default_tpm=2000)
    client = f"{scope(request)}:1"
    ctx = await guard.authenticate({}, method="POST", path="/x", client=client, cert_subject=None)
    await guard.admit(ctx, "chat", {"model": "m", "messages": [{"content": "x" * 40}]})
    # 40 ASCII characters (at most 20 tokens), the chat template's overhead (48, 8 a message)
    # and default_max_tokens
    assert ctx.reserved_tokens == 20 + 48 + 8 + 1024
    second = ctx_for(client)
    with pytest.raises(RateLimited) as refused:  # 1100 + 48 + 995 > 2000
        await guard.admit(second, "chat", {"model": "m", "max_tokens": 995, "messages": []})
    assert refused.value.headers["x-ratelimit-limit-tokens"] == "2000"
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "900"
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s <= 60
    ctx.prompt_tokens, ctx.completion_tokens, ctx.status = 12, 8, 200
    await guard.finish(ctx)
    third = ctx_for(client)
    await guard.admit(third, "chat", {"model": "m", "max_tokens": 1900, "messages": []})
    assert third.reserved_tokens == 48 + 1900  # fits now that 1080 unused tokens came back
    await guard.close()


async def test_a_request_larger_than_the_limit_says_so(tmp_path: Path) -> None:
    guard = await guard_with(tmp_path, "memory://", default_tpm=100)
    with pytest.raises(RateLimited, match="lower max_tokens"):
        await guard.admit(ctx_for("c:1"), "chat", {"model": "m", "max_tokens": 500})
    await guard.close()


async def test_concurrent_admits_never_exceed_the_token_limit(
    tmp_path: Path, storage_url: str, request: pytest.FixtureRequest
) -> None:
    guard = await guard_with(tmp_path, storage_url, default_tpm=1000)
    client = f"{scope(request)}:1"

    async def one() -> bool:
        try:
            await guard.admit(ctx_for(client), "chat", {"model": "m", "max_tokens": 64})
        except RateLimited:
            return False
        return True

    admitted = sum(await asyncio.gather(*(one() for _ in range(50))))
    assert admitted == 1000 // (48 + 64)  # the template's overhead and max_tokens each
    await guard.close()


async def test_failed_requests_give_all_their_tokens_back(tmp_path: Path) -> None:
    guard = await guard_with(tmp_path, "memory://", default_tpm=100)
    for _ in range(3):  # 3 × (48 + 40) > 100: only possible when each failure refunds
        ctx = ctx_for("c:1")
        await guard.admit(ctx, "chat", {"model": "m", "max_tokens": 40})
        ctx.status = 502
        await guard.finish(ctx)
    admitted = ctx_for("c:1")
    await guard.admit(admitted, "chat", {"model": "m", "max_tokens": 40})  # still room
    assert admitted.reserved_tokens == 48 + 40
    await guard.close()


async def test_model_limits_apply_to_every_caller(tmp_path: Path) -> None:
    guard = await guard_with(tmp_path, "memory://", model_rpm={"m": 2})
    for client in ("a:1", "b:1"):
        await guard.enter(ctx_for(client), SPEC, "chat", {"model": "m"})
    with pytest.raises(RateLimited, match="model 'm'") as refused:
        await guard.enter(ctx_for("c:1"), SPEC, "chat", {"model": "m"})
    assert refused.value.headers["x-ratelimit-limit-requests"] == "2"
    await guard.close()


async def test_a_models_limit_holds_across_the_fleet_nodes_that_serve_it(
    tmp_path: Path,
) -> None:
    """On a fleet gateway `m` is answered by `m@a` or `m@b`: the limit configured for `m`
    counts both."""
    guard = await guard_with(tmp_path, "memory://", model_rpm={"m": 2})
    on = [
        ModelSpec(
            f"m@{node}",
            kind=DeploymentKind.REMOTE,
            url=f"http://{node}:9000",
            remote_model="m",
            source=FLEET_SOURCE,
        )
        for node in ("a", "b")
    ]
    await guard.enter(ctx_for("x:1"), on[0], "chat", {"model": "m"})
    await guard.enter(ctx_for("x:2"), on[1], "chat", {"model": "m"})
    with pytest.raises(RateLimited, match="model 'm'"):
        await guard.enter(ctx_for("x:3"), on[0], "chat", {"model": "m"})
    await guard.close()


async def test_a_deployment_that_failed_gives_its_model_limits_back(tmp_path: Path) -> None:
    guard = await guard_with(tmp_path, "memory://", model_rpm={"m": 1}, model_tpm={"m": 100})
    ctx = ctx_for("a:1")
    charges = await guard.enter(ctx, SPEC, "chat", {"model": "m", "max_tokens": 40})
    assert len(charges) == 2 and len(ctx.charges) == 1  # a request, and tokens to settle
    with pytest.raises(RateLimited, match="model 'm'"):  # one request a minute: spent
        await guard.enter(ctx_for("b:1"), SPEC, "chat", {"model": "m", "max_tokens": 40})
    await guard.give_back(ctx, charges)  # `m` failed; the next deployment is tried
    assert ctx.charges == []
    again = ctx_for("b:1")
    assert len(await guard.enter(again, SPEC, "chat", {"model": "m", "max_tokens": 40})) == 2
    await guard.close()


async def test_websocket_messages_each_count_a_request(tmp_path: Path) -> None:
    guard = await guard_with(tmp_path, "memory://", default_rpm=3)
    conn = await guard.authenticate(
        {}, method="WEBSOCKET", path="/ws/inference", client="ws:1", cert_subject=None
    )
    await guard.admit(guard.derive(conn), "chat", {"model": "m"})
    await guard.admit(guard.derive(conn), "chat", {"model": "m"})
    with pytest.raises(RateLimited, match="3 requests per minute"):
        await guard.admit(guard.derive(conn), "chat", {"model": "m"})
    await guard.close()


# -- the storage is down ---------------------------------------------------------------------

DEAD_REDIS = "redis://:hunter2@127.0.0.1:1"  # nothing listens on port 1


async def test_an_unreachable_redis_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as failed:
        await Limiter(DEAD_REDIS).start()
    assert "redis://***@127.0.0.1:1" in failed.value.message
    assert "hunter2" not in failed.value.message


async def test_limits_fail_closed_with_a_503_that_shows_no_password() -> None:
    with redis_server(password="hunter2") as url:
        settings = SecuritySettings.model_validate(
            {"audit": {"enabled": False}, "limits": {"storage_url": url, "default_rpm": 5}}
        )
        guard = build_guard(settings, lambda name: SPEC, None)
        await guard.start()
        await arrive(guard)
    with pytest.raises(Unavailable) as refused:  # the Redis is gone
        await arrive(guard)
    assert refused.value.status == 503 and "hunter2" not in refused.value.message
    assert "rate limit storage redis://***@127.0.0.1:" in refused.value.message
    await guard.close()


async def test_limits_fail_open_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    settings = SecuritySettings.model_validate(
        {
            "audit": {"enabled": False},
            "limits": {"storage_url": DEAD_REDIS, "on_storage_error": "open", "default_rpm": 1},
        }
    )
    guard = build_guard(settings, lambda name: SPEC, None)
    await guard.start()  # open: starts without its storage
    for _ in range(3):  # past the limit of 1: nothing is counted while it is down
        ctx = await arrive(guard)
        await guard.admit(ctx, "chat", {"model": "m"})
        assert guard.response_headers(ctx) == []
        await guard.finish(ctx)
    warned = [r.getMessage() for r in caplog.records if "without limits" in r.getMessage()]
    assert len(warned) == 1 and "hunter2" not in warned[0]
    await guard.close()


async def arrive(guard: Guard) -> RequestContext:
    return await guard.authenticate({}, method="POST", path="/x", client="c:1", cert_subject=None)


async def test_limits_report_reads_the_windows_without_charging(tmp_path: Path) -> None:
    limits: dict[str, Any] = {"default_rpm": 5, "default_tpm": 1000, "model_rpm": {"m": 9}}
    guard = await guard_with(tmp_path, "memory://", **limits)
    if time.time() % 60 > 58:  # windows are clock minutes: stay inside one
        await asyncio.sleep(60 - time.time() % 60)
    ctx = ctx_for("127.0.0.1:5000")
    data = {"model": "m", "messages": [], "max_tokens": 100}
    await guard.admit(ctx, "chat", data)
    await guard.enter(ctx, SPEC, "chat", data)  # the deployment that answers: its model limit
    report = await guard.limits(ctx)
    assert report.subject == "client 127.0.0.1"
    seen = {(v.subject, v.what): (v.limit, v.used, v.remaining) for v in report.limits}
    assert seen == {
        ("client 127.0.0.1", "requests"): (5, 0, 5),  # charged at arrival, not here
        ("client 127.0.0.1", "tokens"): (1000, 148, 852),  # the template's 48 and max_tokens
        ("model 'm'", "requests"): (9, 1, 8),
    }
    again = await guard.limits(ctx)  # reading takes nothing
    assert [v.used for v in again.limits] == [v.used for v in report.limits]
    assert all(0 < v.reset_s <= 60 and v.reset.endswith("s") for v in report.limits)
    admin = RequestContext(request_id="r", method="GET", path="/limits", admin=True)
    assert (await guard.limits(admin)).subject is None  # the admin key has no limits of its own
    await guard.close()


async def test_requests_and_tokens_are_counted_apart_when_equal(tmp_path: Path) -> None:
    """rpm == tpm must not share one counter: 100 tokens reserved are not 100 requests made."""
    guard = await guard_with(tmp_path, "memory://", default_rpm=200, default_tpm=200)
    first = ctx_for("a:1")
    await guard.admit(first, "chat", {"model": "m", "max_tokens": 3})
    second = ctx_for("a:1")
    await guard.admit(second, "chat", {"model": "m", "max_tokens": 1})
    report = {v.what: v.used for v in (await guard.limits(ctx_for("a:1"))).limits}
    assert report == {"tokens": 48 + 3 + 48 + 1, "requests": 0}  # admit() charges no request
    await guard.close()


def test_the_prompt_is_reserved_with_an_upper_bound_of_its_tokens() -> None:
    """A token per 2 ASCII letters of a word (a single space goes with it) or of longer
    whitespace, a token per UTF-8 byte of anything else, the chat template's overhead, tools
    rendered as JSON; images are not text."""

    def chat(messages: list[dict[str, Any]], **kw: Any) -> int:
        return estimate_tokens("chat", {"messages": messages, "max_tokens": 1, **kw}, 1024)

    base = chat([])
    assert base == 48 + 1
    assert chat([{"role": "user", "content": "abcd"}]) == base + 8 + 2
    assert chat([{"role": "user", "content": "日本"}]) == base + 8 + 6  # 3 bytes each
    assert chat([{"role": "user", "content": "ab日"}]) == base + 8 + 1 + 3
    # a letter between punctuation is a token of its own (SmolLM2: 64 tokens for these 68)
    assert chat([{"role": "user", "content": "x.y,z;a:b|c&d^e~f" * 4}]) == base + 8 + 65
    sky = chat([{"role": "user", "content": "the sky  is\n\nblue"}])
    assert sky == base + 8 + 2 + 2 + 1 + 1 + 1 + 2  # the, sky, "  ", is, "\n\n", blue
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 999}}
    text = {"type": "text", "text": "ab"}
    assert chat([{"role": "user", "content": [text, image]}]) == base + 8 + 1
    calls = [{"function": {"name": "f" * 10, "arguments": "x" * 20}}]
    assert chat([{"role": "assistant", "tool_calls": calls}]) == base + 8 + 5 + 10
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert chat([], tools=tools) > base
    assert estimate_tokens("completion", {"prompt": "abcd"}, 7) == 2 + 7  # no template
    assert estimate_tokens("embedding", {"input": ["abcd", "ef"]}, 7) == 3


async def test_a_limited_request_without_max_tokens_is_capped_at_its_reservation(
    tmp_path: Path,
) -> None:
    """Otherwise the engine may write past what was reserved, and past the limit."""
    guard = await guard_with(tmp_path, "memory://", default_tpm=5000, default_max_tokens=300)
    data: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    await guard.admit(ctx_for("cap:1"), "chat", data)
    assert data["max_tokens"] == 300
    asked: dict[str, Any] = {"model": "m", "messages": [], "max_tokens": 7}
    await guard.admit(ctx_for("cap:2"), "chat", asked)
    assert asked["max_tokens"] == 7
    await guard.close()
    unlimited = await guard_with(tmp_path, "memory://")
    free: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    await unlimited.admit(ctx_for("cap:3"), "chat", free)
    assert "max_tokens" not in free
    await unlimited.close()
