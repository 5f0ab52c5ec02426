"""TypeScript and JavaScript: relative specifiers to files (extension and `index` probing, `.js`
written for a `.ts` file), `tsconfig.json` `paths` aliases and `baseUrl`, and bare specifiers
as external packages (`@scope/name` or `name`)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_offload.analyzer.model import Import
from ml_offload.analyzer.resolve_base import Resolved, inside

EXTENSIONS = (".ts", ".tsx", ".d.ts", ".mts", ".cts", ".js", ".jsx", ".mjs", ".cjs")
_JS_TO_TS = {".js": (".ts", ".tsx"), ".mjs": (".mts",), ".cjs": (".cts",), ".jsx": (".tsx",)}


@dataclass
class TsConfig:
    base: str | None = None  # baseUrl, relative to the analysed root
    paths: list[tuple[str, list[str]]] = field(default_factory=list)  # pattern -> targets


class TypeScriptResolver:
    def __init__(self, root: Path, paths: frozenset[str]) -> None:
        self._paths = paths
        self._config = read_tsconfig(root)

    def module_of(self, path: str) -> str:
        stem = path
        for ext in EXTENSIONS:
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
                break
        return stem[: -len("/index")] if stem.endswith("/index") else stem

    def resolve(self, path: str, imp: Import) -> Resolved:
        spec = imp.target
        if not spec:
            return Resolved()
        if spec.startswith("."):
            found = self._probe(posixpath.join(posixpath.dirname(path), spec))
            return Resolved(files=[found]) if found else Resolved(unresolved=spec)
        for candidate in self._aliased(spec):
            found = self._probe(candidate)
            if found:
                return Resolved(files=[found])
        if spec.startswith("node:"):
            return Resolved()
        parts = spec.split("/")
        return Resolved(external="/".join(parts[:2]) if spec.startswith("@") else parts[0])

    def _aliased(self, spec: str) -> list[str]:
        cfg = self._config
        base = cfg.base or ""
        out = []
        for pattern, targets in cfg.paths:
            prefix, star, suffix = pattern.partition("*")
            if star and spec.startswith(prefix) and spec.endswith(suffix):
                middle = spec[len(prefix) : len(spec) - len(suffix)]
                out += [posixpath.join(base, t.replace("*", middle, 1)) for t in targets]
            elif not star and spec == pattern:
                out += [posixpath.join(base, t) for t in targets]
        if cfg.base is not None:
            out.append(posixpath.join(base, spec))
        return out

    def _probe(self, base: str) -> str | None:
        base = posixpath.normpath(base)
        stem, ext = posixpath.splitext(base)
        tries = [base] if ext in EXTENSIONS else []
        tries += [stem + alt for alt in _JS_TO_TS.get(ext, ())]
        tries += [base + e for e in EXTENSIONS] + [f"{base}/index{e}" for e in EXTENSIONS]
        return next((hit for t in tries if (hit := inside(t, self._paths))), None)


def read_tsconfig(root: Path) -> TsConfig:
    """`compilerOptions.baseUrl` and `paths` of the root's `tsconfig.json` (comments and
    trailing commas allowed, as tsc allows them); an unreadable one is ignored."""
    data = _load_jsonc(root / "tsconfig.json")
    options = data.get("compilerOptions") if isinstance(data, dict) else None
    if not isinstance(options, dict):
        return TsConfig()
    base_url = options.get("baseUrl")
    base = posixpath.normpath(base_url) if isinstance(base_url, str) else None
    raw = options.get("paths")
    paths = [
        (k, [t for t in v if isinstance(t, str)])
        for k, v in (raw.items() if isinstance(raw, dict) else [])
        if isinstance(v, list)
    ]
    if paths and base is None:
        base = "."
    return TsConfig(base=None if base is None else ("" if base == "." else base), paths=paths)


def _load_jsonc(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        pass
    from tree_sitter_language_pack import get_parser

    root = get_parser("json").parse(raw).root_node
    value = next((c for c in root.named_children if c.type != "comment"), None)
    return _json_value(value) if value is not None else None


def _json_value(node: Any) -> Any:
    """A value from tree-sitter-json's tree, skipping comments (JSON with comments)."""
    kind = node.type
    named = [c for c in node.named_children if c.type != "comment"]
    if kind == "object":
        pairs = [c for c in named if c.type == "pair"]
        return {
            _json_value(p.child_by_field_name("key")): _json_value(p.child_by_field_name("value"))
            for p in pairs
        }
    if kind == "array":
        return [_json_value(c) for c in named]
    if kind == "string":
        return "".join(c.text.decode() for c in named if c.type == "string_content")
    if kind == "number":
        return float(node.text.decode())
    return {"true": True, "false": False}.get(kind)
