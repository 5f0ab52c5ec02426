"""What a resolver answers for one import, and the check that a path names an analysed file."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Protocol

from ml_offload.analyzer.model import Import


@dataclass
class Resolved:
    files: list[str] = field(default_factory=list)
    external: str | None = None
    unresolved: str | None = None


class Resolver(Protocol):
    def module_of(self, path: str) -> str: ...

    def resolve(self, path: str, imp: Import) -> Resolved: ...


def inside(path: str, paths: frozenset[str]) -> str | None:
    """`path` normalised, if it names one of `paths`."""
    norm = posixpath.normpath(path)
    return norm if norm in paths else None
