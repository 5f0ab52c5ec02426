"""Rate limits for one request: whose limits apply, what is charged when, what comes back.

At arrival the caller (its key; the client address when auth is off; nobody for the admin key)
is charged one request per minute (`charge_caller`). Once the model is known, `admit` reserves
tokens (an upper bound of the prompt as the chat template renders it, plus max_tokens) from the
caller's token limit, so that concurrent requests never pass it.
Per-model limits are the deployment's that answers: `admit_deployment` charges one request and
reserves tokens from the limits of each deployment as it is tried (the model asked for, then its
fallbacks), and `give_back` refunds a deployment that failed before another is tried. When the
request ends, `settle` makes the reservations cost what it really used. The windows seen give
the `x-ratelimit-*` headers (`headers`); a refusal is a RateLimited (429) carrying them.

When the storage (Redis) cannot be reached, `security.limits.on_storage_error` decides:
`closed` refuses limited callers with 503 (the default), `open` lets them through unlimited and
logs once per outage. Unlimited callers never touch the storage.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from ml_offload.config import LimitSettings
from ml_offload.domain import ApiKey, Charge, ModelSpec, RequestContext, Window
from ml_offload.errors import MloError, RateLimited, Unavailable
from ml_offload.security.limits import Limiter, reset_text
from ml_offload.wire.native import LimitsView, LimitView

log = logging.getLogger(__name__)

# The prompt's share of a reservation, before the real count is known: an upper bound, so
# that concurrent requests never pass a token limit. Tokenizers split text at letter runs,
# digits, punctuation and whitespace before merging within each piece, so a run of ASCII
# letters is counted at a token per 2 letters (English is ~4 characters a token), every other
# character at a token per UTF-8 byte (digits, punctuation, other scripts: byte-level BPE), a
# single space as part of the word it precedes, longer whitespace at a token per 2. A chat
# template adds its role markers per message and, with no system message, a default one
# (measured with SmolLM2: "hi" is 31 prompt tokens; Llama 3.1's date header is ~25 more).
_LETTERS = re.compile(r"[A-Za-z]+")
_WHITESPACE = re.compile(r"\s{2,}")
_MESSAGE_OVERHEAD_TOKENS = 8
_TEMPLATE_OVERHEAD_TOKENS = 48
_TEXT_KEYS = ("content", "text", "tool_calls", "function", "name", "arguments")


@dataclass(frozen=True, slots=True)
class Subject:
    """What a limit is kept for (a key, a client address, a model), and its limits."""

    scope: str
    who: str
    rpm: int | None
    tpm: int | None

    def counter(self, what: Literal["requests", "tokens"]) -> str:
        """The storage scope of one of its limits: requests and tokens are counted apart (a key
        whose rpm equals its tpm must not share one counter)."""
        return f"{self.scope}/{what}"


class Quota:
    def __init__(self, settings: LimitSettings, limiter: Limiter) -> None:
        self._settings = settings
        self._limiter = limiter
        self._fail_open = settings.on_storage_error == "open"
        self._storage_down = False  # open: an outage is logged once, and its end
        self.per_model = bool(settings.model_rpm or settings.model_tpm)

    async def start(self) -> None:
        await self._limiter.start(must_answer=not self._fail_open)

    async def close(self) -> None:
        await self._limiter.close()

    # -- whose limits ----------------------------------------------------------------------

    def subject(self, ctx: RequestContext) -> Subject | None:
        """Whose per-key limits apply: the key's (its own, else the defaults), the client
        address's when auth is off; none for the admin key."""
        lim = self._settings
        if ctx.key is not None:
            return self.key_subject(ctx.key)
        if ctx.admin or (lim.default_rpm is None and lim.default_tpm is None):
            return None
        host = (ctx.client or "").rpartition(":")[0] or ctx.client or "unknown"
        return Subject(f"client:{host}", f"client {host}", lim.default_rpm, lim.default_tpm)

    def key_subject(self, key: ApiKey) -> Subject:
        lim = self._settings
        rpm, tpm = key.rpm or lim.default_rpm, key.tpm or lim.default_tpm
        return Subject(f"key:{key.id}", f"key {key.id} ({key.name})", rpm, tpm)

    def model_subject(self, name: str) -> Subject:
        lim = self._settings
        return Subject(
            f"model:{name}", f"model {name!r}", lim.model_rpm.get(name), lim.model_tpm.get(name)
        )

    # -- reading ---------------------------------------------------------------------------

    async def report(self, subject: Subject | None) -> LimitsView:
        """What is left of `subject`'s limits and of every per-model limit this minute, read
        from the storage without charging anything."""
        models = set(self._settings.model_rpm) | set(self._settings.model_tpm)
        subjects = [subject] if subject is not None else []
        subjects += [self.model_subject(name) for name in sorted(models)]
        views = [view for s in subjects for view in await self._peek_all(s)]
        return LimitsView(subject=subject.who if subject else None, limits=views)

    async def _peek_all(self, subject: Subject) -> list[LimitView]:
        views = []
        kinds: tuple[tuple[Literal["requests", "tokens"], int | None], ...] = (
            ("requests", subject.rpm),
            ("tokens", subject.tpm),
        )
        for what, limit in kinds:
            if limit is None:
                continue
            w = await self._limiter.peek(subject.counter(what), limit)
            views.append(
                LimitView(
                    subject=subject.who,
                    what=what,
                    limit=w.limit,
                    used=w.used,
                    remaining=w.remaining,
                    reset_s=round(w.reset_s, 3),
                    reset=reset_text(w.reset_s),
                )
            )
        return views

    # -- charging --------------------------------------------------------------------------

    async def charge_caller(self, ctx: RequestContext) -> None:
        """One request against the caller's requests per minute."""
        await self._charge_request(ctx, self.subject(ctx))

    async def admit(self, ctx: RequestContext, kind: str, data: MutableMapping[str, Any]) -> None:
        """Tokens reserved from the caller's token limit."""
        subject = self.subject(ctx)
        if subject is None or subject.tpm is None:
            return
        cap_completion(kind, data, self._settings.default_max_tokens)
        cost = estimate_tokens(kind, data, self._settings.default_max_tokens)
        await self._reserve_tokens(ctx, subject, cost)
        ctx.reserved_tokens = cost

    async def admit_deployment(
        self, ctx: RequestContext, kind: str, data: MutableMapping[str, Any], spec: ModelSpec
    ) -> list[Charge]:
        """`spec`'s own limits, for the deployment about to be tried: one request, then tokens
        reserved (all or none). The charges, for `give_back` when it fails."""
        model = self.model_subject(limited_as(spec))
        taken: list[Charge] = []
        try:
            if model.rpm is not None:
                taken += await self._charge_model_request(ctx, model)
            if model.tpm is not None:
                cap_completion(kind, data, self._settings.default_max_tokens)
                cost = estimate_tokens(kind, data, self._settings.default_max_tokens)
                before = len(ctx.charges)
                await self._reserve_tokens(ctx, model, cost)
                taken += ctx.charges[before:]
                ctx.reserved_tokens = cost
        except MloError:
            await self.give_back(ctx, taken)
            raise
        return taken

    async def give_back(self, ctx: RequestContext, charges: list[Charge]) -> None:
        """Refund what a deployment's limits took: it failed, and another one is tried."""
        ctx.charges = [c for c in ctx.charges if c not in charges]
        try:
            for charge in charges:
                await self._limiter.settle(charge, 0)
        except Unavailable as exc:
            log.warning("limits not refunded: %s", exc.message)

    async def settle(self, ctx: RequestContext) -> None:
        """Make the reservation cost what the request really used."""
        if ctx.charges:
            await self._settle(ctx, actual_tokens(ctx))

    def headers(self, ctx: RequestContext) -> list[tuple[bytes, bytes]]:
        """`x-ratelimit-*` for a response that was let through (empty with no limits)."""
        if not ctx.windows:
            return []
        return [(k.encode(), v.encode()) for k, v in _headers(ctx.windows).items()]

    async def _charge_request(self, ctx: RequestContext, subject: Subject | None) -> None:
        if subject is None or subject.rpm is None:
            return
        taken = await self._charge(subject.counter("requests"), subject.rpm, 1)
        if taken is None:
            return
        window, charge = taken
        ctx.windows["requests"] = window
        if charge is None:
            raise _refusal(ctx, subject.who, window, f"{subject.rpm} requests per minute")

    async def _charge_model_request(self, ctx: RequestContext, model: Subject) -> list[Charge]:
        assert model.rpm is not None
        taken = await self._charge(model.counter("requests"), model.rpm, 1)
        if taken is None:
            return []
        window, charge = taken
        ctx.windows["requests"] = window
        if charge is None:
            raise _refusal(ctx, model.who, window, f"{model.rpm} requests per minute")
        return [charge]

    async def _reserve_tokens(self, ctx: RequestContext, subject: Subject, cost: int) -> None:
        tpm = subject.tpm
        assert tpm is not None
        if cost > tpm:
            raise RateLimited(
                f"this request may use {cost} tokens (prompt and max_tokens), more than "
                f"{subject.who}'s limit of {tpm} tokens per minute; lower max_tokens",
                headers=await self._peek_headers(subject.counter("tokens"), tpm),
            )
        taken = await self._charge(subject.counter("tokens"), tpm, cost)
        if taken is None:
            return
        window, charge = taken
        ctx.windows["tokens"] = window
        if charge is None:
            raise _refusal(ctx, subject.who, window, f"{tpm} tokens per minute")
        ctx.charges.append(charge)

    async def _settle(self, ctx: RequestContext, actual: int) -> None:
        charges, ctx.charges = ctx.charges, []
        try:
            for charge in charges:
                await self._limiter.settle(charge, actual)
        except Unavailable as exc:  # the answer went out; nothing left to refuse
            log.warning("tokens not settled: %s", exc.message)

    # -- the storage -----------------------------------------------------------------------

    async def _charge(
        self, scope: str, limit: int, amount: int
    ) -> tuple[Window, Charge | None] | None:
        """The limiter's charge; None when the storage is down and limits fail open."""
        try:
            taken = await self._limiter.charge(scope, limit, amount)
        except Unavailable as exc:
            self._storage_failed(exc)
            return None
        if self._storage_down:
            self._storage_down = False
            log.warning("rate limit storage answers again; limits are back on")
        return taken

    async def _peek_headers(self, scope: str, limit: int) -> dict[str, str]:
        try:
            return _headers({"tokens": await self._limiter.peek(scope, limit)})
        except Unavailable as exc:
            self._storage_failed(exc)
            return {}

    def _storage_failed(self, exc: Unavailable) -> None:
        """Closed: refuse (503). Open: let the request through, and say so once per outage."""
        if not self._fail_open:
            raise exc
        if not self._storage_down:
            self._storage_down = True
            log.warning(
                "%s; admitting requests without limits until it answers "
                "(security.limits.on_storage_error = open)",
                exc.message,
            )


def _refusal(ctx: RequestContext, who: str, window: Window, limit: str) -> RateLimited:
    return RateLimited(
        f"{who} is over its limit of {limit}; retry after {reset_text(window.reset_s)}",
        retry_after_s=window.reset_s,
        headers=_headers(ctx.windows),
    )


def _headers(windows: Mapping[str, Window]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`."""
    out: dict[str, str] = {}
    for what, w in windows.items():
        out[f"x-ratelimit-limit-{what}"] = str(w.limit)
        out[f"x-ratelimit-remaining-{what}"] = str(w.remaining)
        out[f"x-ratelimit-reset-{what}"] = reset_text(w.reset_s)
    return out


def cap_completion(kind: str, data: MutableMapping[str, Any], default_max_tokens: int) -> None:
    """Under a token limit, a request that names no most it may write is given the most it was
    reserved for: otherwise the engine may write past the reservation, and past the limit."""
    if kind != "embedding" and not data.get("max_completion_tokens") and not data.get("max_tokens"):
        data["max_tokens"] = default_max_tokens


def estimate_tokens(kind: str, data: Mapping[str, Any], default_max_tokens: int) -> int:
    """An upper bound of the prompt's tokens (images not counted) plus the most it may write."""
    prompt = _text_tokens(data.get("input"))
    if kind == "chat":
        messages = data.get("messages")
        count = len(messages) if isinstance(messages, list) else 0
        prompt += _text_tokens(messages) + _TEMPLATE_OVERHEAD_TOKENS
        prompt += count * _MESSAGE_OVERHEAD_TOKENS
        if data.get("tools"):  # rendered into the prompt as JSON
            prompt += _text_tokens(json.dumps(data["tools"]))
    else:
        prompt += _text_tokens(data.get("prompt"))
    if kind == "embedding":
        return max(1, prompt)
    most = data.get("max_completion_tokens") or data.get("max_tokens")
    if not isinstance(most, int) or isinstance(most, bool):
        most = default_max_tokens  # absent, or not a number (the engine will refuse it)
    return prompt + max(1, most)


def _text_tokens(value: Any) -> int:
    if isinstance(value, str):
        return _str_tokens(value)
    if isinstance(value, list):
        return sum(_text_tokens(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "input_audio", "image"):
            return 0
        return sum(_text_tokens(value.get(k)) for k in _TEXT_KEYS)
    return 0


def _str_tokens(text: str) -> int:
    letters = [len(run) for run in _LETTERS.findall(text)]
    gaps = _WHITESPACE.findall(text)  # a single space goes with the word after it
    single_spaces = text.count(" ") - sum(gap.count(" ") for gap in gaps)
    gap_bytes = [len(gap.encode()) for gap in gaps]
    rest = len(text.encode()) - sum(letters) - sum(gap_bytes) - single_spaces
    return sum((n + 1) // 2 for n in (*letters, *gap_bytes)) + rest


def actual_tokens(ctx: RequestContext) -> int:
    """What the request really used; all of the reservation when the engine reported nothing
    for an answer that went out, none for one that failed."""
    used = ctx.prompt_tokens + ctx.completion_tokens
    if used:
        return used
    failed = ctx.status >= 400 and ctx.status != 499
    return 0 if failed else ctx.reserved_tokens


def limited_as(spec: ModelSpec) -> str:
    """The name a deployment's per-model limits are configured under: its own, or, for a
    model on a fleet node (`m@node`), the model's (one limit for `m` on every node)."""
    return spec.upstream_model if spec.on_fleet_node else spec.name
