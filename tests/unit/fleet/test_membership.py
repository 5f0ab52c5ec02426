"""What a node offers the fleet in its heartbeat."""

from __future__ import annotations

from pathlib import Path

from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.fleet.membership import served_here


def test_a_node_offers_what_it_runs_itself_and_forwards_nothing() -> None:
    specs = [
        ModelSpec("gguf", kind=DeploymentKind.LLAMACPP, path=Path("/m/a.gguf")),
        ModelSpec("vllm", kind=DeploymentKind.MANAGED, command=("vllm", "serve", "x")),
        ModelSpec("ollama", kind=DeploymentKind.OLLAMA, url="http://127.0.0.1:11434"),
        ModelSpec("its-vllm", kind=DeploymentKind.REMOTE, url="http://127.0.0.1:8000"),
        ModelSpec("elsewhere", kind=DeploymentKind.REMOTE, url="http://other:8000"),
        ModelSpec("claude", kind=DeploymentKind.CLOUD, backend="anthropic"),
    ]
    assert [s.name for s in served_here(specs)] == ["gguf", "vllm", "ollama", "its-vllm"]
