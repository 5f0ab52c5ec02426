"""Pull GGUF models from Hugging Face into the model folder.

`REPO[:FILE|:QUANT]` or a catalogue alias (`llama-3.1-8b`, `llama-3.1-8b:Q8_0`) names what to
fetch; the repository's file list picks the GGUF file (every shard of a split model) for the
quantization. Downloads go through `huggingface_hub` (retries that resume with HTTP Range
requests, `HF_TOKEN`, `HF_ENDPOINT`) into the model folder, and each file is then checked
against the checksum the Hub publishes (sha256 for LFS files, the git blob hash otherwise).
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_offload.errors import MloError, ModelNotFound

DEFAULT_QUANT = "Q4_K_M"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_QUANT_LIKE = re.compile(r"(?<![a-z0-9])(i?q\d(?:_[a-z0-9]+)*|bf16|f16|f32)(?![a-z0-9])", re.I)
_HASH_CHUNK = 8 * 1024 * 1024


class HubError(MloError):
    """Hugging Face refused or could not be reached; the message says what to do."""

    status = 502
    code = "hub_error"


class ChecksumMismatch(HubError):
    code = "checksum_mismatch"


class NoDiskSpace(MloError):
    status = 507
    code = "no_disk_space"


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    repo: str
    quant: str
    about: str


CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m": CatalogueEntry(
        "bartowski/SmolLM2-135M-Instruct-GGUF", "Q8_0", "SmolLM2 135M Instruct (~145 MB)"
    ),
    "smollm2-1.7b": CatalogueEntry(
        "bartowski/SmolLM2-1.7B-Instruct-GGUF", "Q4_K_M", "SmolLM2 1.7B Instruct (~1.1 GB)"
    ),
    "llama-3.2-3b": CatalogueEntry(
        "bartowski/Llama-3.2-3B-Instruct-GGUF", "Q4_K_M", "Llama 3.2 3B Instruct (~2.0 GB)"
    ),
    "llama-3.1-8b": CatalogueEntry(
        "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", "Q4_K_M", "Llama 3.1 8B Instruct (~4.9 GB)"
    ),
    "qwen2.5-7b": CatalogueEntry(
        "bartowski/Qwen2.5-7B-Instruct-GGUF", "Q4_K_M", "Qwen2.5 7B Instruct (~4.7 GB)"
    ),
    "qwen2.5-coder-7b": CatalogueEntry(
        "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF", "Q4_K_M", "Qwen2.5 Coder 7B (~4.7 GB)"
    ),
    "qwen2.5-coder-32b": CatalogueEntry(
        "bartowski/Qwen2.5-Coder-32B-Instruct-GGUF", "Q4_K_M", "Qwen2.5 Coder 32B (~20 GB)"
    ),
    "mistral-7b": CatalogueEntry(
        "bartowski/Mistral-7B-Instruct-v0.3-GGUF", "Q4_K_M", "Mistral 7B Instruct v0.3 (~4.4 GB)"
    ),
    "gemma-2-9b": CatalogueEntry(
        "bartowski/gemma-2-9b-it-GGUF", "Q4_K_M", "Gemma 2 9B Instruct (~5.8 GB)"
    ),
}


@dataclass(frozen=True, slots=True)
class PullTarget:
    """What to fetch: a repository and a file in it, or a quantization to choose one by."""

    repo: str
    filename: str | None = None
    quant: str | None = None
    alias: str | None = None


@dataclass(slots=True)
class PulledFile:
    path: Path
    size_bytes: int
    checksum: str | None  # the hash it was verified against; None: the Hub gave none
    downloaded: bool  # False: already present and unchanged


@dataclass(slots=True)
class PullResult:
    target: PullTarget
    revision: str
    files: list[PulledFile] = field(default_factory=list)


def parse_ref(ref: str) -> PullTarget:
    """`owner/name`, `owner/name:FILE.gguf`, `owner/name:QUANT`, `alias` or `alias:QUANT`."""
    ref = ref.strip()
    base, _, suffix = ref.partition(":")
    if not base:
        raise ModelNotFound(f"{ref!r} is not a model reference: use REPO[:FILE|:QUANT] or an alias")
    entry = CATALOGUE.get(base.lower())
    if entry is not None:
        if suffix.lower().endswith(".gguf"):
            return PullTarget(entry.repo, filename=suffix, alias=base.lower())
        return PullTarget(entry.repo, quant=suffix or entry.quant, alias=base.lower())
    if base.count("/") != 1 or base.startswith("/") or base.endswith("/"):
        known = ", ".join(sorted(CATALOGUE))
        raise ModelNotFound(
            f"{base!r} is neither a Hugging Face repository (owner/name) nor an alias; "
            f"aliases: {known} (see `mlo pull --list`)"
        )
    if suffix.lower().endswith(".gguf"):
        return PullTarget(base, filename=suffix)
    return PullTarget(base, quant=suffix or None)


def select_files(filenames: list[str], quant: str | None, repo: str = "") -> list[str]:
    """The GGUF file (all shards of it) in a repository for `quant` (default Q4_K_M)."""
    ggufs = [f for f in filenames if f.lower().endswith(".gguf") and not _is_projector(f)]
    if not ggufs:
        raise ModelNotFound(f"no GGUF files in {repo or 'the repository'}")
    if quant is None:
        if len(_models(ggufs)) == 1:
            return sorted(ggufs)
        quant = DEFAULT_QUANT
    wanted = re.compile(rf"(?<![a-z0-9]){re.escape(quant.lower())}(?![a-z0-9_])")
    matching = [f for f in ggufs if wanted.search(f.lower())]
    groups = _models(matching)
    if len(groups) == 1:
        return sorted(next(iter(groups.values())))
    if not groups:
        raise ModelNotFound(
            f"no {quant} GGUF in {repo or 'the repository'}; available: "
            f"{', '.join(available_quants(ggufs)) or ', '.join(ggufs[:10])} "
            "(pull REPO:QUANT or REPO:FILE.gguf)"
        )
    names = ", ".join(sorted(groups)[:10])
    raise ModelNotFound(f"several {quant} files in {repo}: {names}; pull REPO:FILE.gguf")


def available_quants(filenames: list[str]) -> list[str]:
    found = {m.group(1).upper() for f in filenames for m in [_QUANT_LIKE.search(Path(f).name)] if m}
    return sorted(found)


def _is_projector(filename: str) -> bool:
    return Path(filename).name.lower().startswith("mmproj")


def _models(ggufs: list[str]) -> dict[str, list[str]]:
    """Files grouped by model: the shards of a split model share one key."""
    groups: dict[str, list[str]] = {}
    for f in ggufs:
        groups.setdefault(_SHARD.sub("", f), []).append(f)
    return groups


Progress = Callable[[str], None]


class HubClient:
    """Downloads through `huggingface_hub`; every error it raises comes out as one HubError."""

    def __init__(self, *, endpoint: str | None = None, token: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self._token = token

    def pull(
        self, target: PullTarget, models_dir: Path, *, revision: str = "main", say: Progress
    ) -> PullResult:
        with _translated(target.repo, self.endpoint):
            filenames = [target.filename] if target.filename else self._list(target, revision)
            files = select_files(filenames, target.quant, target.repo)
            metas = {f: self._metadata(target.repo, f, revision) for f in files}
            check_space(models_dir, _needed(models_dir, metas))
            result = PullResult(target, revision)
            for filename, meta in metas.items():
                say(f"{target.repo}/{filename} ({_human(meta.size or 0)})")
                result.files.append(self._fetch(target.repo, filename, revision, meta, models_dir))
            return result

    def _list(self, target: PullTarget, revision: str) -> list[str]:
        from huggingface_hub import HfApi

        info = HfApi(endpoint=self.endpoint, token=self._token).model_info(
            target.repo, revision=revision
        )
        return [s.rfilename for s in info.siblings or []]

    def _metadata(self, repo: str, filename: str, revision: str) -> Any:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(repo, filename, revision=revision, endpoint=self.endpoint)
        return get_hf_file_metadata(url, token=self._token, endpoint=self.endpoint)

    def _fetch(
        self, repo: str, filename: str, revision: str, meta: Any, models_dir: Path
    ) -> PulledFile:
        from huggingface_hub import hf_hub_download

        dest = models_dir / filename
        before = _stamp(dest)
        path = Path(
            hf_hub_download(
                repo,
                filename,
                revision=revision,
                local_dir=models_dir,
                endpoint=self.endpoint,
                token=self._token,
            )
        )
        fresh = before is None or _stamp(path) != before
        checksum = meta.etag if fresh else None
        if fresh and meta.etag:
            verify(path, meta.etag, models_dir)
        return PulledFile(path, path.stat().st_size, checksum, fresh)


def verify(path: Path, etag: str, models_dir: Path) -> None:
    """Check a download against the Hub's etag (sha256 for LFS files, git blob sha1 else);
    on a mismatch the file and its download record are removed so a retry downloads again."""
    etag = etag.strip('"').removeprefix("W/").strip('"').lower()
    if _SHA256.match(etag):
        actual = file_sha256(path)
    elif _SHA1.match(etag):
        actual = _git_blob_sha1(path)
    else:
        return  # not a content hash: nothing to compare with
    if actual == etag:
        return
    path.unlink(missing_ok=True)
    rel = path.relative_to(models_dir)
    record = models_dir / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
    record.unlink(missing_ok=True)
    raise ChecksumMismatch(
        f"checksum mismatch for {rel}: expected {etag}, got {actual}; the file was deleted, "
        "run the pull again"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_space(folder: Path, needed_bytes: int) -> None:
    free = free_bytes(folder)
    if needed_bytes > free:
        raise NoDiskSpace(
            f"not enough disk space in {folder}: the download needs {_human(needed_bytes)}, "
            f"{_human(free)} is free; free some (`mlo du`, `mlo clean-cache`) or set TF_MODELS "
            "to a larger disk"
        )


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or its nearest existing parent)."""
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return 0


def _needed(models_dir: Path, metas: dict[str, Any]) -> int:
    return sum(m.size or 0 for f, m in metas.items() if _stamp(models_dir / f) is None)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def _translated(repo: str, endpoint: str | None) -> Iterator[None]:
    """Turns `huggingface_hub`, network and disk errors into one readable line."""
    try:
        yield
    except MloError:
        raise
    except Exception as exc:
        message = _describe(exc, repo, endpoint or "https://huggingface.co")
        if message is None:
            raise
        raise (NoDiskSpace if _is_enospc(exc) else HubError)(message) from exc


def _describe(exc: Exception, repo: str, endpoint: str) -> str | None:
    from huggingface_hub import errors as hf

    offline = (
        f"cannot reach Hugging Face at {endpoint}: are you offline? Check the network "
        "(or HF_ENDPOINT), or copy .gguf files into the model folder by hand"
    )
    if isinstance(exc, hf.GatedRepoError):
        return (
            f"{repo} is gated: accept its terms on its Hugging Face page, then set HF_TOKEN "
            "to a token of that account"
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return (
            f"repository {repo} not found, or it is private and no valid token was sent: "
            "check the name, or set HF_TOKEN to a token that can read it"
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return f"revision not found in {repo}: {_first_line(exc)}"
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it to download models"
    if isinstance(exc, hf.LocalEntryNotFoundError) or _is_network(exc):
        return offline
    if isinstance(exc, hf.EntryNotFoundError):
        return f"file not found in {repo}: {_first_line(exc)}"
    if _is_enospc(exc):
        return f"no disk space left while downloading from {repo}: free some (`mlo clean-cache`)"
    if isinstance(exc, hf.HfHubHTTPError | OSError):
        return f"download from {repo} failed: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return next((line for line in text.splitlines() if line.strip()), type(exc).__name__)


def _is_network(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        names = {cls.__name__ for cls in type(seen).__mro__}
        if names & {"ConnectError", "TimeoutException", "RemoteProtocolError", "NetworkError"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC
