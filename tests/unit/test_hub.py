"""Pull references, file selection, checksum verification and the disk space check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ml_offload.errors import ModelNotFound
from ml_offload.hub import (
    CATALOGUE,
    ChecksumMismatch,
    NoDiskSpace,
    PullTarget,
    check_space,
    parse_ref,
    select_files,
    verify,
)

FILES = [
    "README.md",
    "Model-Q4_K_M.gguf",
    "Model-Q4_K_S.gguf",
    "Model-IQ4_XS.gguf",
    "Model-Q8_0.gguf",
    "mmproj-Model-f16.gguf",
    "Model-f16/Model-f16-00001-of-00002.gguf",
    "Model-f16/Model-f16-00002-of-00002.gguf",
]


@pytest.mark.parametrize(
    ("ref", "target"),
    [
        ("acme/Model-GGUF", PullTarget("acme/Model-GGUF")),
        ("acme/Model-GGUF:Q8_0", PullTarget("acme/Model-GGUF", quant="Q8_0")),
        ("acme/Model-GGUF:x.gguf", PullTarget("acme/Model-GGUF", filename="x.gguf")),
        (
            "llama-3.1-8b",
            PullTarget(CATALOGUE["llama-3.1-8b"].repo, quant="Q4_K_M", alias="llama-3.1-8b"),
        ),
        (
            "Qwen2.5-Coder-32B:Q8_0",
            PullTarget(
                CATALOGUE["qwen2.5-coder-32b"].repo, quant="Q8_0", alias="qwen2.5-coder-32b"
            ),
        ),
    ],
)
def test_parse_ref(ref: str, target: PullTarget) -> None:
    assert parse_ref(ref) == target


def test_catalogue_has_the_aliases_the_issue_names() -> None:
    assert {"qwen2.5-coder-32b", "llama-3.1-8b", "smollm2-135m"} <= set(CATALOGUE)


@pytest.mark.parametrize("ref", ["not-a-repo", "a/b/c", ":Q4_K_M"])
def test_parse_ref_rejects_unknown_names(ref: str) -> None:
    with pytest.raises(ModelNotFound, match=r"alias|reference"):
        parse_ref(ref)


def test_select_files_by_quant() -> None:
    assert select_files(FILES, None) == ["Model-Q4_K_M.gguf"]  # the default quant
    assert select_files(FILES, "q8_0") == ["Model-Q8_0.gguf"]
    assert select_files(FILES, "IQ4_XS") == ["Model-IQ4_XS.gguf"]
    assert select_files(FILES, "Q4_K_S") == ["Model-Q4_K_S.gguf"]
    assert select_files(FILES, "F16") == [  # every shard, not the projector
        "Model-f16/Model-f16-00001-of-00002.gguf",
        "Model-f16/Model-f16-00002-of-00002.gguf",
    ]


def test_select_files_single_gguf_needs_no_quant() -> None:
    assert select_files(["a.gguf", "mmproj-a.gguf", "README.md"], None) == ["a.gguf"]


def test_select_files_missing_quant_lists_what_there_is() -> None:
    with pytest.raises(ModelNotFound, match=r"no Q2_K GGUF in acme/m; available: .*Q8_0"):
        select_files(FILES, "Q2_K", "acme/m")
    with pytest.raises(ModelNotFound, match="no GGUF files"):
        select_files(["README.md"], None)


def test_verify_accepts_the_right_sha256_and_deletes_a_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"model bytes")
    record = tmp_path / ".cache/huggingface/download/m.gguf.metadata"
    record.parent.mkdir(parents=True)
    record.write_text("x")
    verify(path, f'"{hashlib.sha256(b"model bytes").hexdigest()}"', tmp_path)
    assert path.exists()
    with pytest.raises(ChecksumMismatch, match=r"checksum mismatch for m\.gguf"):
        verify(path, hashlib.sha256(b"other").hexdigest(), tmp_path)
    assert not path.exists() and not record.exists()


def test_verify_git_blob_hash_for_small_files(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_bytes(b"hello\n")
    verify(path, "ce013625030ba8dba906f756967f9e9ca394464a", tmp_path)  # `git hash-object`
    with pytest.raises(ChecksumMismatch):
        verify(path, "0" * 40, tmp_path)


def test_check_space(tmp_path: Path) -> None:
    check_space(tmp_path, 1)
    with pytest.raises(NoDiskSpace, match=r"not enough disk space .* needs 909\.5 TiB"):
        check_space(tmp_path / "not" / "yet", 10**15)
