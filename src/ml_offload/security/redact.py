"""Masking secrets (and, if asked, e-mail addresses and phone numbers) in prompts before they
leave for a cloud provider.

Each rule is one compiled pattern with the literal substrings that must occur for it to match
at all: text that holds none of a rule's triggers is never scanned by it, so ordinary prompts
cost a handful of substring searches (one alternation of every pattern measured over ten times
slower: Python's regex engine cannot skip ahead to a literal then). A mask names what it hid
(`[REDACTED:aws_access_key]`); for labelled values (`password = "..."`,
`scheme://user:pw@host`) only the value is masked.
Only models whose spec has `redact` on (cloud providers) pass through here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ml_offload.config import RedactionSettings

Check = Callable[[str], bool]


def _has_digit(value: str) -> bool:
    return any(c.isdigit() for c in value)


def _mixed_case(value: str) -> bool:
    return any(c.isupper() for c in value) and any(c.islower() for c in value)


def _random_looking(value: str) -> bool:
    return _has_digit(value) or _mixed_case(value)


_PLACEHOLDER = re.compile(
    r"<[^>]*>|\[[^\]]*\]|\$\w+|\$\{[^}]*\}|\{\{.*\}\}|%s|[*.xX]+|(?i:changeme|your[\w -]*)"
)
_NAME_OR_NUMBER = re.compile(r"[A-Za-z_][A-Za-z_.]*|\d+")


def _quoted_secret(value: str) -> bool:
    """A literal, not a placeholder (`<token>`, `${TOKEN}`, `***`) as in docs and templates."""
    return _PLACEHOLDER.fullmatch(value) is None


def _assigned_secret(value: str) -> bool:
    """Unquoted: also not a variable name or a number (`f(password=password)`, `token=None`,
    `max_token=2048` are code, not secrets)."""
    return _quoted_secret(value) and _NAME_OR_NUMBER.fullmatch(value) is None


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of secret. Patterns start with a literal where they can (the regex engine then
    jumps between its occurrences); word boundaries are lookbehinds placed after it."""

    kind: str
    source: str  # for `fold` rules: literals in lower case, matched against lower-cased text
    triggers: tuple[str, ...]  # one must occur in the text (lower-cased when `fold`); (): any
    fold: bool = False
    check: Check | None = None  # applied to the masked part; False keeps the text
    group: str | None = None  # mask only this named group (keep the label around it)
    pattern: re.Pattern[str] = field(init=False)  # on the text itself
    folded: re.Pattern[str] = field(init=False)  # on the lower-cased text (fold rules)

    def __post_init__(self) -> None:
        flags = re.IGNORECASE if self.fold else 0
        object.__setattr__(self, "pattern", re.compile(self.source, flags))
        object.__setattr__(self, "folded", re.compile(self.source))


def _token(kind: str, prefix: str, body: str, *, gate: str = "", **kw: Any) -> Rule:
    """A provider token: a literal prefix (searched fast: no pattern before it) that does not
    continue a longer word, then its body."""
    boundary = f"(?<![A-Za-z0-9_-]{re.escape(prefix)})"
    tail = r"(?![A-Za-z0-9_-])"
    return Rule(kind, re.escape(prefix) + boundary + body + tail, (gate or prefix,), **kw)


def _after(word: str, *prefixes: str) -> str:
    """`word` preceded by one of `prefixes` (lookbehinds after the literal keep it fast)."""
    return word + "(?:" + "|".join(f"(?<={re.escape(p + word)})" for p in prefixes) + ")"


# Labels of assigned secrets, matched by their (lower-case) ending: DB_PASSWORD, client_secret,
# GITHUB_TOKEN, api_key (a bare `key` is too common in code to count).
_LABEL = (
    "(?:pass(?:word|wd|phrase)|secret|token|"
    + _after("key", "api", "api_", "api-", "secret_", "secret-", "access_", "private_")
    + ")"
)

SECRET_RULES: tuple[Rule, ...] = (
    Rule(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,-]*)",
        ("PRIVATE KEY",),
    ),
    _token("anthropic_key", "sk-ant-", r"[A-Za-z0-9_-]{20,}", check=_has_digit, gate="sk-"),
    _token(
        "openai_key",
        "sk-",
        r"(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        check=_has_digit,
    ),
    Rule(
        "github_token",
        r"gh[pousr]_(?<![A-Za-z0-9_-]gh[pousr]_)[A-Za-z0-9]{30,}(?![A-Za-z0-9_-])",
        ("gh",),
        check=_random_looking,
    ),
    _token("github_token", "github_pat_", r"[A-Za-z0-9_]{22,}", check=_random_looking),
    _token("gitlab_token", "glpat-", r"[A-Za-z0-9_-]{20,}"),
    Rule(
        "slack_token",
        r"xox[abprs]-(?<![A-Za-z0-9_-]xox[abprs]-)[A-Za-z0-9-]{10,}",
        ("xox",),
        check=_has_digit,
    ),
    Rule(
        "stripe_key",
        r"(?<![A-Za-z0-9_-])[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
        ("_live_", "_test_"),
    ),
    _token("google_api_key", "AIza", r"[0-9A-Za-z_-]{35}"),
    _token("huggingface_token", "hf_", r"[A-Za-z0-9]{30,}", check=_mixed_case),
    Rule(
        "aws_access_key",
        r"A(?:KIA|SIA|BIA|CCA)(?<![A-Z0-9]A(?:KIA|SIA|BIA|CCA))[A-Z0-9]{16}(?![A-Z0-9])",
        ("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    Rule(
        "aws_secret_key",
        r"aws_?secret(?:_?access)?_?key[\"']?\s*[:=]\s*[\"']?"
        r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
        ("secret",),
        fold=True,
        group="v",
    ),
    _token("jwt", "eyJ", r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    Rule("url_password", r"://[^\s:/@?#\[\]]*:(?P<v>[^\s@/?#]+)@", ("://",), group="v"),
    Rule(
        "bearer_token",
        r"bearer\s+(?P<v>[A-Za-z0-9._~+/-]{20,}=*)",
        ("bearer",),
        fold=True,
        check=_has_digit,
        group="v",
    ),
    Rule(  # password = "...", "api_key": "..."
        "secret",
        _LABEL + r"[\"']?\s*[:=]\s*(?P<q>[\"'])(?P<v>[^\"'\r\n]{4,200})(?P=q)",
        ("pass", "secret", "key", "token"),
        fold=True,
        check=_quoted_secret,
        group="v",
    ),
    Rule(  # DB_PASSWORD=..., ?access_token=...
        "secret",
        _LABEL + r"=(?P<v>[^\s&\"',;()\[\]{}<>]{4,})",
        ("pass", "secret", "key", "token"),
        fold=True,
        check=_assigned_secret,
        group="v",
    ),
)

EMAIL_RULE = Rule(
    "email",
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    ("@",),
)

PHONE_RULE = Rule(
    "phone",
    r"(?<![\w+.-])(?:"
    r"\+[1-9](?:[ .-]?\d){7,14}"  # E.164, with or without separators
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|0\d{1,4}[ /-]\d{3,4}[ -]?\d{3,5}"  # national: 030 1234 5678, 020-7946-0958
    r")(?![\w-])",
    (),  # digits are everywhere: always scanned (phone masking is opt-in)
)


def _mask(kind: str) -> str:
    return f"[REDACTED:{kind}]"


class Redactor:
    """Masks what `settings` asks for in prompt text and in OpenAI-shaped requests."""

    def __init__(self, settings: RedactionSettings) -> None:
        rules: list[Rule] = list(SECRET_RULES) if settings.secrets else []
        if settings.emails:
            rules.append(EMAIL_RULE)
        if settings.phones:
            rules.append(PHONE_RULE)
        self._rules = tuple(rules)

    def redact_text(self, text: str) -> tuple[str, int]:
        """The text with each match masked, and how many masks were applied."""
        total = 0
        lowered: str | None = None
        present: dict[tuple[bool, str], bool] = {}  # trigger searches, shared between rules
        for rule in self._rules:
            if rule.fold:
                lowered = text.lower() if lowered is None else lowered
                haystack = lowered
            else:
                haystack = text
            if rule.triggers and not any(
                _present(present, rule.fold, t, haystack) for t in rule.triggers
            ):
                continue
            if rule.fold and len(haystack) == len(text):  # same offsets (no 'İ' and the like)
                text, count = _apply(rule, rule.folded, haystack, text)
            else:
                text, count = _apply(rule, rule.pattern, text, text)
            if count:
                total += count
                lowered = None
                present.clear()
        return text, total

    def redact_request(self, data: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """A copy of an OpenAI-shaped request (chat, completion or embeddings) with its text
        masked: message contents and text parts, tool call arguments, tool results, `prompt`,
        `suffix` and `input`. Everything else (roles, images, tools) is kept as it was."""
        if not self._rules:
            return dict(data), 0
        out = dict(data)
        total = 0
        if isinstance(data.get("messages"), list):
            out["messages"], total = self._many(data["messages"], self._message)
        for key in ("prompt", "suffix", "input"):
            value = data.get(key)
            if isinstance(value, str | list):
                out[key], n = self._value(value)
                total += n
        return out, total

    def _many(
        self, items: list[Any], one: Callable[[Any], tuple[Any, int]]
    ) -> tuple[list[Any], int]:
        out, total = [], 0
        for item in items:
            new, n = one(item)
            out.append(new)
            total += n
        return out, total

    def _value(self, value: Any) -> tuple[Any, int]:
        """A string, or a list of strings (token id lists are left alone)."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, list):
            return self._many(value, self._value)
        return value, 0

    def _message(self, message: Any) -> tuple[Any, int]:
        if not isinstance(message, dict):
            return message, 0
        out = dict(message)
        total = 0
        content = message.get("content")
        if isinstance(content, str):
            out["content"], total = self.redact_text(content)
        elif isinstance(content, list):
            out["content"], total = self._many(content, self._part)
        if isinstance(message.get("tool_calls"), list):
            out["tool_calls"], n = self._many(message["tool_calls"], self._call)
            total += n
        if isinstance(message.get("function_call"), dict):
            out["function_call"], n = self._function(message["function_call"])
            total += n
        return out, total

    def _part(self, part: Any) -> tuple[Any, int]:
        if isinstance(part, str):
            return self.redact_text(part)
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            text, n = self.redact_text(part["text"])
            return ({**part, "text": text} if n else part), n
        return part, 0

    def _call(self, call: Any) -> tuple[Any, int]:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            function, n = self._function(call["function"])
            return ({**call, "function": function} if n else call), n
        return call, 0

    def _function(self, function: dict[str, Any]) -> tuple[dict[str, Any], int]:
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            return function, 0
        text, n = self.redact_text(arguments)
        return ({**function, "arguments": text} if n else function), n


def _present(memo: dict[tuple[bool, str], bool], fold: bool, trigger: str, text: str) -> bool:
    key = (fold, trigger)
    found = memo.get(key)
    if found is None:
        found = memo[key] = trigger in text
    return found


def _apply(rule: Rule, pattern: re.Pattern[str], find_in: str, text: str) -> tuple[str, int]:
    """Mask in `text` what `pattern` finds in `find_in` (the text, or it lower-cased)."""
    pieces: list[str] = []
    done = 0
    mask = _mask(rule.kind)
    for m in pattern.finditer(find_in):
        start, end = m.span(rule.group) if rule.group else m.span()
        if rule.check is not None and not rule.check(text[start:end]):
            continue
        pieces += (text[done:start], mask)
        done = end
    if not pieces:
        return text, 0
    pieces.append(text[done:])
    return "".join(pieces), len(pieces) // 2
