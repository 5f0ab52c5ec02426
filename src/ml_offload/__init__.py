"""ml-offload: a self-hosted LLM gateway and GPU-aware model orchestrator."""

__version__ = "0.1.0"
