"""Models and files on disk: what is there (`mlo ls`), how much room it takes (`mlo du`),
what can go (`mlo clean-cache`), and whether the disk is running low (`/health`)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ml_offload.errors import InvalidModelFile
from ml_offload.gguf import read_gguf_info, split_shard

_QUANT_IN_NAME = re.compile(r"(?<![a-z0-9])(i?q\d(?:_[a-z0-9]+)*|bf16|f16|f32)(?![a-z0-9])", re.I)
_HF_DOWNLOADS = Path(".cache") / "huggingface" / "download"


@dataclass(frozen=True, slots=True)
class DiskModel:
    name: str
    path: Path
    size_bytes: int  # every shard together
    shards: int
    quantization: str | None


@dataclass(frozen=True, slots=True)
class DiskSpace:
    path: Path
    free_bytes: int
    total_bytes: int
    low: bool


@dataclass(frozen=True, slots=True)
class Garbage:
    path: Path
    size_bytes: int
    reason: str


def list_models(folder: Path) -> list[DiskModel]:
    """The GGUF models under `folder`, as the registry names them (split models as one)."""
    if not folder.is_dir():
        return []
    root = folder.absolute()
    files = [p for p in sorted(root.rglob("*.gguf")) if not _hidden(p, root)]
    groups: dict[Path, list[Path]] = {}  # "folder/stem" without "-00001-of-00003": shards
    for path in files:
        stem = path.stem[: -len("-00001-of-00001")] if split_shard(path) else path.stem
        groups.setdefault(path.with_name(stem), []).append(path)
    models = []
    for key, paths in groups.items():
        if key.name.lower().startswith("mmproj"):
            continue  # a vision projector, not a model
        size = sum(_size(p) for p in paths)
        models.append(
            DiskModel(key.name.lower(), paths[0], size, len(paths), _quantization(paths[0]))
        )
    return models


def _quantization(path: Path) -> str | None:
    try:
        quant = read_gguf_info(path).quantization
    except InvalidModelFile:
        quant = None
    if quant:
        return quant
    m = _QUANT_IN_NAME.search(path.name)
    return m.group(1).upper() if m else None


def tree_size(path: Path) -> int:
    """Bytes used on disk by a file or a folder tree (symlinks not followed)."""
    if path.is_symlink() or path.is_file():
        return _used(path)
    total = 0
    for dirpath, _, filenames in os.walk(path):
        total += sum(_used(Path(dirpath) / f) for f in filenames)
    return total


def disk_space(path: Path, low_bytes: int) -> DiskSpace:
    """Free and total space of the disk holding `path`; `low` when free < `low_bytes`."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(existing)
    return DiskSpace(path, usage.free, usage.total, low_bytes > 0 and usage.free < low_bytes)


def find_garbage(
    models_dir: Path, log_dirs: Iterable[Path], *, max_log_age_s: float, keep: Iterable[Path] = ()
) -> list[Garbage]:
    """Partial downloads, download records of files that are gone, and old logs."""
    kept = {p.absolute() for p in keep}
    found: list[Garbage] = []
    if models_dir.is_dir():
        for path in models_dir.rglob("*.incomplete"):
            found.append(Garbage(path, _used(path), "partial download"))
        found += _orphan_records(models_dir)
    cutoff = time.time() - max_log_age_s
    for folder in log_dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.log*")):
            if path.is_file() and path.absolute() not in kept and _mtime(path) < cutoff:
                found.append(Garbage(path, _used(path), "stale log"))
    return sorted(found, key=lambda g: str(g.path))


def _orphan_records(models_dir: Path) -> list[Garbage]:
    """`huggingface_hub` keeps `.metadata` and `.lock` files per download under
    `.cache/huggingface/download`; those of files no longer in the folder are orphans."""
    records = models_dir / _HF_DOWNLOADS
    if not records.is_dir():
        return []
    found = []
    for path in records.rglob("*"):
        if path.suffix not in (".metadata", ".lock") or not path.is_file():
            continue
        model_file = models_dir / path.relative_to(records).with_suffix("")
        if not model_file.exists():
            found.append(Garbage(path, _used(path), "orphaned download record"))
    return found


def remove(items: Iterable[Garbage]) -> int:
    """Delete the files; the bytes given back."""
    freed = 0
    for item in items:
        try:
            item.path.unlink()
        except FileNotFoundError:
            continue
        freed += item.size_bytes
    return freed


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _used(path: Path) -> int:
    try:
        st = path.lstat()
    except OSError:
        return 0
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
