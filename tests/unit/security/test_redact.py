"""Prompt redaction: each secret shape is masked, ordinary text is not, requests keep their shape.

Test secrets are built by concatenation so that secret scanners do not flag this file.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ml_offload.config import RedactionSettings
from ml_offload.security.redact import Redactor

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
PEM_BODY = "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\naGVsbG8gd29ybGQ="
PEM = "-----BEGIN RSA " + "PRIVATE KEY-----\n" + PEM_BODY + "\n-----END RSA " + "PRIVATE KEY-----"
JWT = (
    "eyJ" + "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)

# kind, secret, text around it (the secret is the part that must vanish)
SAMPLES: list[tuple[str, str, str]] = [
    ("openai_key", "sk-" + "abcdefghijKLMNOPQRST0123456789abcdefghij1234", "key: {}"),
    ("openai_key", "sk-" + "proj-" + "Ab3dEf6hIj9kLm_NoPqRs-TuVwXyZ012345", "export K={}"),
    ("anthropic_key", "sk-" + "ant-api03-" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7_-xAA", "use {} now"),
    ("github_token", "gh" + "p_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6", "token {}"),
    ("github_token", "gh" + "s_" + "16C7e42F292c6912E7710c838347Ae178B4a", "({})"),
    ("github_token", "github" + "_pat_" + "11ABCDEFG0" + "abcdefghijkl_" + "x" * 40, "{}"),
    ("gitlab_token", "gl" + "pat-" + "xY3zA1bC2dE3fG4hI5jK", "GL {}"),
    ("slack_token", "xo" + "xb-" + "123456789012-1234567890123-AbCdEfGhIjKl", "slack={}"),
    ("stripe_key", "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "stripe {}"),
    ("stripe_key", "rk" + "_live_" + "51H8abcDEFghiJKLmnoPQRstu", "{}."),
    ("google_api_key", "AI" + "za" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "?key={}&x=1"),
    ("huggingface_token", "hf" + "_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "HF: {}"),
    ("aws_access_key", AWS_KEY, "id={}"),
    ("aws_access_key", "ASIA" + "Y34FZKBOKMUTVV7A", "'{}'"),
    ("aws_secret_key", AWS_SECRET, "aws_secret_access_key = {}"),
    ("aws_secret_key", AWS_SECRET, '"AWS_SECRET_ACCESS_KEY": "{}"'),
    ("private_key", PEM_BODY, "here:\n" + PEM + "\nthanks"),
    ("private_key", "b3BlbnNzaC1rZXktdjEAAAAA", "-----BEGIN OPENSSH " + "PRIVATE KEY-----\n{}"),
    ("jwt", JWT, "Authorization: Bearer {}"),
    ("url_password", "hunter2!", "postgres://admin:{}@db.example.com:5432/app"),
    ("url_password", "p4ss", "redis://:{}@cache:6379/0"),
    ("bearer_token", "abcDEF1234567890ghiJKL", "Authorization: Bearer {}"),
    ("secret", "correct horse battery", 'password = "{}"'),
    ("secret", "s3cr3t-Value", '{{"api_key": "{}"}}'),
    ("secret", "Zx81!pq", "DB_PASSWORD={}"),
    ("secret", "tok_8f7a6b5c", "curl https://x.test/?access_token={}&a=1"),
]


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(RedactionSettings())


@pytest.mark.parametrize(("kind", "secret", "around"), SAMPLES)
def test_each_secret_shape_is_masked(
    redactor: Redactor, kind: str, secret: str, around: str
) -> None:
    text = around.format(secret) if "{}" in around else around.replace(secret, secret)
    assert secret in text
    out, count = redactor.redact_text(text)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    assert count == 1


def test_labels_and_hosts_are_kept(redactor: Redactor) -> None:
    out, _ = redactor.redact_text("postgres://admin:" + "hunter2" + "@db.example.com/app")
    assert out == "postgres://admin:[REDACTED:url_password]@db.example.com/app"
    out, _ = redactor.redact_text("aws_secret_access_key = " + AWS_SECRET)
    assert out == "aws_secret_access_key = [REDACTED:aws_secret_key]"


PROSE = """The scheduler keeps the most recently used models warm and evicts idle ones when
memory runs short. Ask the task-management team (skills: sk-learn style pipelines) before you
change the password policy; a token bucket limits requests per minute. See
https://docs.example.com/guide#tokens or mail the list. Version 1.2.3 was released 2024-01-15.
"""

PYTHON = '''
def login(user: str, password: str, token: str | None = None) -> Session:
    """Open a session; the api_key comes from the environment."""
    api_key = os.environ["API_KEY"]
    session = connect(password=password, token=token, api_key=api_key)
    max_token = 2048
    config = {"password": "<your password>", "token": "${TOKEN}", "pad_token": "[PAD]"}
    hf_hub_download(repo_id="org/model", filename="model.gguf")
    return session
'''

CLEAN = [
    PROSE,
    PYTHON,
    "id 123e4567-e89b-12d3-a456-426614174000",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "blob "
    + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk=",
    "ssh://git@github.com:org/repo.git and http://localhost:8080/v1/models",
    "tokens=512 max_tokens=1024 password=*** token=xxx",
    "eyJhbGciOiJIUzI1NiJ9 alone is just a header",
]


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_prose_and_code_are_untouched(redactor: Redactor, text: str) -> None:
    assert redactor.redact_text(text) == (text, 0)


def test_emails_and_phones_only_when_asked(redactor: Redactor) -> None:
    text = "Write to jane.doe+x@mail.example.org or call +44 20 7946 0958 or (415) 555-0100."
    assert redactor.redact_text(text) == (text, 0)
    both = Redactor(RedactionSettings(emails=True, phones=True))
    out, count = both.redact_text(text)
    assert out == ("Write to [REDACTED:email] or call [REDACTED:phone] or [REDACTED:phone].")
    assert count == 3
    for national in ("030 1234 5678", "555-123-4567", "+14155550100"):
        assert both.redact_text(f"tel {national}.")[0] == "tel [REDACTED:phone]."


def test_nothing_masked_when_all_switched_off() -> None:
    off = Redactor(RedactionSettings(secrets=False))
    assert off.redact_text("id=" + AWS_KEY) == ("id=" + AWS_KEY, 0)


def _chat() -> dict[str, Any]:
    args = json.dumps({"key": PEM, "region": "eu-west-1"})
    return {
        "model": "gpt-x",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "my key is " + AWS_KEY},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "token " + JWT},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }


def test_chat_request_keeps_its_structure(redactor: Redactor) -> None:
    data = _chat()
    before = copy.deepcopy(data)
    out, count = redactor.redact_request(data)
    assert data == before  # the caller's request is not touched
    assert count == 3
    msgs = out["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[0] == before["messages"][0]
    assert msgs[1]["content"][0] == {"type": "text", "text": "my key is [REDACTED:aws_access_key]"}
    assert msgs[1]["content"][1] == before["messages"][1]["content"][1]
    call = msgs[2]["tool_calls"][0]
    assert call["id"] == "call_1" and call["function"]["name"] == "f"
    args = json.loads(call["function"]["arguments"])  # still valid JSON
    assert args == {"key": "[REDACTED:private_key]", "region": "eu-west-1"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_1", "content": "token [REDACTED:jwt]"}
    assert {k: v for k, v in out.items() if k != "messages"} == {
        k: v for k, v in before.items() if k != "messages"
    }


def test_completion_and_embedding_inputs(redactor: Redactor) -> None:
    out, count = redactor.redact_request({"model": "m", "prompt": "id " + AWS_KEY})
    assert (out["prompt"], count) == ("id [REDACTED:aws_access_key]", 1)
    data = {"model": "m", "input": ["a " + AWS_KEY, "plain", "b " + AWS_KEY]}
    out, count = redactor.redact_request(data)
    assert out["input"] == ["a [REDACTED:aws_access_key]", "plain", "b [REDACTED:aws_access_key]"]
    assert count == 2
    assert data["input"][0] == "a " + AWS_KEY
    tokens = {"model": "m", "input": [[1, 2, 3]], "prompt": [4, 5]}
    assert redactor.redact_request(tokens) == (tokens, 0)


def test_odd_shapes_pass_through(redactor: Redactor) -> None:
    data: dict[str, Any] = {
        "messages": [None, 3, {"role": "user", "content": 5}, {"tool_calls": [1, {"x": 1}]}],
        "prompt": None,
    }
    assert redactor.redact_request(data) == (data, 0)


def _body(size: int) -> st.SearchStrategy[str]:
    """A random token body that has a digit and both cases, as real keys do."""
    return st.text(ALNUM, min_size=size, max_size=size).map(lambda s: "a1Z" + s)


GENERATED = st.one_of(
    _body(45).map(lambda b: "sk-" + b),
    _body(40).map(lambda b: "sk-" + "proj-" + b),
    _body(60).map(lambda b: "sk-" + "ant-api03-" + b),
    st.tuples(st.sampled_from("pousr"), _body(33)).map(lambda t: "gh" + t[0] + "_" + t[1]),
    _body(19).map(lambda b: "gl" + "pat-" + b),
    _body(30).map(lambda b: "xo" + "xp-" + b),
    _body(21).map(lambda b: "sk" + "_live_" + b),
    _body(32).map(lambda b: "AI" + "za" + b),
    _body(31).map(lambda b: "hf" + "_" + b),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16).map(
        lambda b: "AK" + "IA" + b
    ),
    st.tuples(_body(20), _body(30), _body(40)).map(lambda t: "eyJ" + ".".join(t)),
    _body(24).map(
        lambda b: "-----BEGIN " + "PRIVATE KEY-----\n" + b + "\n-----END PRIVATE KEY-----"
    ),
)


SEPARATORS = st.sampled_from([" ", "\n", "\t", "(", ")", '"', "'", ",", ";", "<", ">", "`", "="])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.text(max_size=200),
    secret=GENERATED,
    after=st.text(max_size=200),
    left=SEPARATORS,
    right=SEPARATORS,
)
def test_generated_secrets_never_survive(
    before: str, secret: str, after: str, left: str, right: str
) -> None:
    assume(secret not in before and secret not in after)
    text = f"{before}{left}{secret}{right}{after}"
    out, count = Redactor(RedactionSettings(emails=True, phones=True)).redact_text(text)
    assert secret not in out
    assert count >= 1


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=500))
def test_random_text_never_breaks_redaction(text: str) -> None:
    out, count = Redactor(RedactionSettings(emails=True, phones=True)).redact_text(text)
    assert (out == text) == (count == 0)


REQUEST_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "text", "content", "function", "arguments"]), inner
        )
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from(["messages", "prompt", "input", "suffix", "model"]), REQUEST_VALUES
    )
)
def test_any_request_shape_is_handled_without_mutation(data: dict[str, Any]) -> None:
    before = copy.deepcopy(data)
    out, count = Redactor(RedactionSettings()).redact_request(data)
    assert data == before
    assert count >= 0 and set(out) == set(data)
