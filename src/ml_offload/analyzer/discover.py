"""Which files to analyse: a walk of the root by extension, with the bad cases reported.

Binary files, files over the size bound and symlinks that loop or leave the root are skipped
with a reason; nothing here raises for one bad file. Folders of tools and build outputs
(`.git`, `node_modules`, `target`, virtual environments) are not walked.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ml_offload.analyzer.model import LANGUAGES, Language, Skipped
from ml_offload.errors import AnalysisError

EXTENSIONS: dict[str, Language] = {
    ".py": "python",
    ".rs": "rust",
    ".nix": "nix",
    **dict.fromkeys((".ts", ".tsx", ".mts", ".cts", ".js", ".jsx", ".mjs", ".cjs"), "typescript"),
}
SKIP_DIRS = frozenset(
    {"node_modules", "target", "__pycache__", "venv", "dist", "build", "result", "site-packages"}
)
DEFAULT_MAX_FILE_BYTES = 1 << 20  # 1 MiB: generated or vendored code past this says little
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Found:
    path: str  # relative POSIX path
    language: Language
    data: bytes


def check_root(root: Path) -> Path:
    if not root.exists():
        raise AnalysisError(f"{root}: no such folder; give the folder of a codebase to analyse")
    if not root.is_dir():
        raise AnalysisError(f"{root}: not a folder; give the folder of a codebase to analyse")
    return root.resolve()


def parse_languages(text: str | None) -> list[Language]:
    if not text:
        return list(LANGUAGES)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    aliases = {"py": "python", "rs": "rust", "ts": "typescript", "js": "typescript"}
    wanted = [aliases.get(n, n) for n in names]
    unknown = [n for n in wanted if n not in LANGUAGES]
    if unknown:
        raise AnalysisError(
            f"unknown language {unknown[0]!r}: choose from {', '.join(LANGUAGES)}", param="lang"
        )
    return [lang for lang in LANGUAGES if lang in wanted]


def candidates(
    root: Path, languages: Iterable[Language]
) -> tuple[list[tuple[str, Language]], list[Skipped]]:
    """Files of the wanted languages under `root`, sorted, and what was skipped while walking."""
    wanted = set(languages)
    files: list[tuple[str, Language]] = []
    skipped: list[Skipped] = []
    _walk(root, root, (str(root),), wanted, files, skipped)
    files.sort()
    return files, skipped


def _walk(
    root: Path,
    folder: Path,
    stack: tuple[str, ...],
    wanted: set[Language],
    files: list[tuple[str, Language]],
    skipped: list[Skipped],
) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        skipped.append(Skipped(_rel(root, folder), f"unreadable folder: {exc.strerror}"))
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            target = os.path.realpath(path)
            is_dir = os.path.isdir(target)
            if not is_dir and EXTENSIONS.get(path.suffix) not in wanted:
                continue
            if not _inside(target, str(root)):
                skipped.append(Skipped(_rel(root, path), "symlink out of the analysed folder"))
                continue
            if is_dir:
                if target in stack:
                    skipped.append(Skipped(_rel(root, path), "symlink loop"))
                else:  # its target is walked under its own name
                    skipped.append(Skipped(_rel(root, path), "symlink to a folder inside"))
                continue
        if entry.is_dir(follow_symlinks=False):
            if entry.name.startswith(".") or entry.name in SKIP_DIRS:
                continue
            _walk(root, path, (*stack, os.path.realpath(path)), wanted, files, skipped)
        elif entry.is_file() and not entry.is_symlink():
            language = EXTENSIONS.get(path.suffix)
            if language in wanted:
                files.append((_rel(root, path), language))


def read(root: Path, rel: str, language: Language, max_bytes: int) -> Found | Skipped:
    path = root / rel
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return Skipped(rel, f"too large: {size} bytes (the bound is {max_bytes})")
        data = path.read_bytes()
    except OSError as exc:
        return Skipped(rel, f"unreadable: {exc.strerror}")
    if b"\0" in data[:_SNIFF_BYTES]:
        return Skipped(rel, "binary (a NUL byte in its first 8 KiB)")
    return Found(rel, language, data)


def changed_since(root: Path, rev: str) -> set[str]:
    """Files under `root` changed since git revision `rev` (committed, staged or not)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "diff", "--name-only", "--relative", rev, "--"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise AnalysisError("--changed-since needs git on the PATH") from None
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
        raise AnalysisError(f"--changed-since {rev}: {reason}", param="changed_since")
    return {line for line in proc.stdout.splitlines() if line}


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)
