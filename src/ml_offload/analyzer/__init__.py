"""The code analyzer (`mlo analyze`, `POST /analyze`): the structure of Rust, Python, Nix and
TypeScript codebases from tree-sitter, and, optionally, the platform's models explaining it."""

from ml_offload.analyzer.model import Analysis, FileFacts, Graph, Skipped, Summaries
from ml_offload.analyzer.run import Options, analyze

__all__ = ["Analysis", "FileFacts", "Graph", "Options", "Skipped", "Summaries", "analyze"]
