"""Prompt redaction through a real gateway: a model marked `redact = true` receives masks in
place of secrets, a model without it receives the prompt as sent, and the audit event counts
the masks. The upstreams are `fake_upstream.FakeOpenAI` (OpenAI's chat-completions wire format),
which records every request it is sent.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.fake_upstream import FakeOpenAI, Reply, chunk, fake_openai

pytestmark = pytest.mark.integration

AWS_KEY = "AKIA" + "Z3MHQK7RX5B2WJ4D"  # built in pieces: secret scanners stay quiet
PEM = (
    "-----BEGIN EC " + "PRIVATE KEY-----\n"
    "MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oQ0T4Vt7pLm1oAoGCCqGSM49\n"
    "AwEHoUQDQgAEWb2UZ7kHvJvEb0X9A3cFq1Yk5Xy8PqR0sT2uV4wX6yZ8aB0cD2eF\n"
    "-----END EC " + "PRIVATE KEY-----"
)
PROMPT = f"Why does boto3 reject {AWS_KEY}? The key file:\n{PEM}\nThanks."


def _answer(request: dict[str, Any]) -> Reply:
    if request.get("stream"):
        usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
        return Reply(
            chunks=[
                chunk({"role": "assistant", "content": "ok"}),
                chunk({}, "stop"),
                {**chunk({}), "choices": [], "usage": usage},
            ]
        )
    message = {"role": "assistant", "content": "ok"}
    return Reply(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "x",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        }
    )


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with fake_openai(_answer) as cloud, fake_openai(_answer) as local:
        yield cloud, local


def _texts(request: dict[str, Any]) -> str:
    return json.dumps(request["messages"])


def _audit_events(path: Path, model: str, count: int) -> list[dict[str, Any]]:
    """The first `count` audit events for `model` (the writer flushes in batches, off the hot
    path, so they may take a moment to appear); fewer if they never come."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        records = [json.loads(line) for line in lines]
        events = [r["event"] for r in records if r["event"].get("model") == model]
        if len(events) >= count:
            break
        time.sleep(0.05)
    return events


def test_secrets_are_masked_only_for_models_that_redact(
    gateway_factory: GatewayFactory, upstreams: tuple[FakeOpenAI, FakeOpenAI], tmp_path: Path
) -> None:
    cloud, local = upstreams
    audit = tmp_path / "audit.jsonl"
    gw = gateway_factory(
        demo_model=False,
        security={"audit": {"path": audit, "flush_interval_s": 0.05, "fsync": False}},
        models=[
            {"name": "cloud", "url": cloud.url, "redact": True},
            {"name": "local", "url": local.url},  # loopback: no redaction by default
        ],
    )
    messages: list[Any] = [
        {"role": "system", "content": "You help with AWS."},
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
    ]
    for model in ("cloud", "local"):
        chat = gw.client.chat.completions.create(model=model, messages=messages)
        assert chat.choices[0].message.content == "ok"
    stream = gw.client.chat.completions.create(
        model="cloud", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "ok"

    assert len(cloud.requests) == 2
    for sent in cloud.requests:
        text = _texts(sent)
        assert AWS_KEY not in text and "MHcCAQEEIBkg4LVWM9nuwNSk3" not in text
        assert "[REDACTED:aws_access_key]" in text and "[REDACTED:private_key]" in text
        assert "Why does boto3 reject" in text  # the rest of the prompt is kept
    first = cloud.requests[0]["messages"]
    assert first[0] == {"role": "system", "content": "You help with AWS."}
    assert first[1]["content"][0]["type"] == "text"

    (untouched,) = local.requests
    assert untouched["messages"][1]["content"][0]["text"] == PROMPT

    assert [e["redactions"] for e in _audit_events(audit, "cloud", 2)] == [2, 2]
    assert [e["redactions"] for e in _audit_events(audit, "local", 1)] == [0]


def _non_loopback_address() -> str | None:
    """This machine's own address on its default route (nothing is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        except OSError:
            return None
        host: str = s.getsockname()[0]
    return None if ipaddress.ip_address(host).is_loopback else host


def test_a_remote_llamacpp_url_is_redacted(gateway_factory: GatewayFactory) -> None:
    """`LLAMACPP_URL` on an address that is not loopback: prompts leave the machine, so they are
    masked like any other remote deployment's (issue 12). The fake listens on this machine's
    own non-loopback address, so the request stays here while the URL says it leaves."""
    host = _non_loopback_address()
    if host is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    with fake_openai(_answer, host=host) as remote:
        gw = gateway_factory(demo_model=False, environ={"LLAMACPP_URL": remote.url})
        chat = gw.client.chat.completions.create(
            model="llamacpp", messages=[{"role": "user", "content": PROMPT}]
        )
        assert chat.choices[0].message.content == "ok"
    (sent,) = remote.requests
    text = _texts(sent)
    assert AWS_KEY not in text and "[REDACTED:aws_access_key]" in text
