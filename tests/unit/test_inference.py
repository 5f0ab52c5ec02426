"""Forced tool calls on our engine (`inference.honour_tool_choice`) and the per-model chat
template option (`chat_template_file`): pure translation, no engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ml_offload.backends.llamacpp import server_argv
from ml_offload.chat_templates import chat_template_path, forced_call_opening
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.errors import InvalidRequest
from ml_offload.inference import honour_tool_choice
from ml_offload.registry import unavailable_reason

SHIPPED = chat_template_path(Path("chatml-tools"))


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def _spec(tmp_path: Path, **kw: Any) -> ModelSpec:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    return ModelSpec(name="m", path=model, chat_template_file=SHIPPED, **kw)


ASK = [{"role": "user", "content": "weather?"}]


def test_shipped_template_is_found_and_opens_hermes_calls() -> None:
    assert SHIPPED.is_file() and "tools" in SHIPPED.read_text()
    assert forced_call_opening(SHIPPED.read_text()) == "<tool_call>\n"
    assert chat_template_path(Path("~/t.jinja")) == Path.home() / "t.jinja"


def test_required_opens_the_answer_with_the_call_tag(tmp_path: Path) -> None:
    data = {"messages": ASK, "tools": [_tool("a")], "tool_choice": "required"}
    out = honour_tool_choice(_spec(tmp_path), data)
    assert out["messages"] == [*ASK, {"role": "assistant", "content": "<tool_call>\n"}]
    assert out["tool_choice"] == "required" and data["messages"] == ASK


def test_named_function_keeps_that_tool_alone(tmp_path: Path) -> None:
    choice = {"type": "function", "function": {"name": "b"}}
    data = {"messages": ASK, "tools": [_tool("a"), _tool("b")], "tool_choice": choice}
    out = honour_tool_choice(_spec(tmp_path), data)
    assert out["tools"] == [_tool("b")] and out["tool_choice"] == "required"


def test_named_function_not_in_tools_is_400(tmp_path: Path) -> None:
    choice = {"type": "function", "function": {"name": "zzz"}}
    data = {"messages": ASK, "tools": [_tool("a")], "tool_choice": choice}
    with pytest.raises(InvalidRequest, match="zzz"):
        honour_tool_choice(_spec(tmp_path), data)


def test_callers_own_assistant_prefix_is_left_alone(tmp_path: Path) -> None:
    messages = [*ASK, {"role": "assistant", "content": "Sure"}]
    data = {"messages": messages, "tools": [_tool("a")], "tool_choice": "required"}
    assert honour_tool_choice(_spec(tmp_path), data)["messages"] == messages


@pytest.mark.parametrize("choice", ["auto", "none", None])
def test_unforced_choices_pass_unchanged(tmp_path: Path, choice: Any) -> None:
    data = {"messages": ASK, "tools": [_tool("a")], "tool_choice": choice}
    assert honour_tool_choice(_spec(tmp_path), data) is data


def test_other_servers_get_the_request_as_sent(tmp_path: Path) -> None:
    spec = ModelSpec(name="r", kind=DeploymentKind.REMOTE, url="http://127.0.0.1:1")
    data = {"messages": ASK, "tools": [_tool("a")], "tool_choice": {"function": {"name": "a"}}}
    assert honour_tool_choice(spec, data) is data


def test_llama_server_gets_the_template_file_with_jinja() -> None:
    cfg = {
        "path": "/m.gguf",
        "ctx_size": 512,
        "parallel": 1,
        "gpu_layers": 0,
        "ubatch": 512,
        "name": "m",
        "threads": 0,
        "tensor_split": [],
        "embeddings": False,
        "flash_attn": "auto",
        "chat_template_file": str(SHIPPED),
        "slot_save_path": None,
    }
    argv = server_argv("llama-server", cfg, 1234)
    assert argv[argv.index("--chat-template-file") + 1] == str(SHIPPED) and "--jinja" in argv
    assert "--chat-template-file" not in server_argv(
        "llama-server", {**cfg, "chat_template_file": None}, 1234
    )


def test_missing_template_file_makes_the_model_unavailable(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert unavailable_reason(spec) is None
    gone = replace(spec, chat_template_file=tmp_path / "gone.jinja")
    assert "chat template" in (unavailable_reason(gone) or "")
