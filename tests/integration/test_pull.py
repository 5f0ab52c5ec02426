"""`mlo pull` against a loopback Hugging Face (HF_ENDPOINT): full, resumed, corrupt, private,
offline and too-big downloads. Nothing here touches the real network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_offload.hub import HubClient, HubError, parse_ref
from tests.integration.conftest import _free_port
from tests.integration.fake_hub import FakeHub, Repo, serve
from tests.unit.test_gguf import write_gguf

MiB = 2**20


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", vocab_size=20)
    return path.read_bytes()


@pytest.fixture
def hub(tiny_gguf: bytes) -> Iterator[FakeHub]:
    repos = {
        "acme/Tiny-GGUF": Repo(
            {
                "README.md": b"# Tiny\n",
                "Tiny-Q4_K_M.gguf": tiny_gguf,
                "Tiny-Q8_0.gguf": tiny_gguf + b"\0" * 64,
                "mmproj-Tiny-f16.gguf": b"projector",
            }
        ),
        "acme/Private-GGUF": Repo({"Private-Q4_K_M.gguf": tiny_gguf}, token="hf_secret"),
        "acme/Corrupt-GGUF": Repo({"Bad-Q4_K_M.gguf": tiny_gguf}, corrupt={"Bad-Q4_K_M.gguf"}),
        "acme/Huge-GGUF": Repo(
            {"Huge-Q4_K_M.gguf": tiny_gguf}, advertised_size={"Huge-Q4_K_M.gguf": 10**16}
        ),
    }
    with serve(FakeHub(repos)) as running:
        yield running


def mlo(tmp_path: Path, endpoint: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLO_", "HF_", "XDG_")) and k not in ("LLAMACPP_URL", "TF_MODELS")
    }
    clean |= {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "MLO_DEMO_MODEL": "false",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )


def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ml-offload" / "models"


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return errors[0]


def test_pull_downloads_verifies_and_registers(
    tmp_path: Path, hub: FakeHub, tiny_gguf: bytes
) -> None:
    done = mlo(tmp_path, hub.url, "pull", "acme/Tiny-GGUF")
    assert done.returncode == 0, done.stderr
    path = models_dir(tmp_path) / "Tiny-Q4_K_M.gguf"
    assert path.read_bytes() == tiny_gguf
    assert "sha256 verified" in done.stdout
    assert "registered as tiny-q4_k_m" in done.stdout
    assert not hub.gets("Tiny-Q8_0.gguf") and not hub.gets("mmproj-Tiny-f16.gguf")

    listed = json.loads(mlo(tmp_path, hub.url, "ls", "--json").stdout)
    assert [(m["name"], m["registered"]) for m in listed["models"]] == [("tiny-q4_k_m", True)]

    again = mlo(tmp_path, hub.url, "pull", "acme/Tiny-GGUF:Q4_K_M")
    assert again.returncode == 0 and "already present" in again.stdout
    assert len(hub.gets("Tiny-Q4_K_M.gguf")) == 1  # not downloaded twice


def test_interrupted_download_resumes_with_a_range_request(tmp_path: Path) -> None:
    data = os.urandom(11 * MiB)  # more than huggingface_hub's 10 MiB write chunk
    repo = Repo({"Big-Q4_K_M.gguf": data})
    with serve(
        FakeHub({"acme/Big-GGUF": repo}, cut_after={"Big-Q4_K_M.gguf": 10 * MiB + 12345})
    ) as h:
        result = HubClient(endpoint=h.url).pull(
            parse_ref("acme/Big-GGUF"), tmp_path, say=lambda _: None
        )
    gets = h.gets("Big-Q4_K_M.gguf")
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == f"bytes={10 * MiB}-"  # from the last chunk written
    assert (tmp_path / "Big-Q4_K_M.gguf").read_bytes() == data
    assert result.files[0].downloaded and result.files[0].checksum


def test_corrupt_download_is_rejected_and_removed(tmp_path: Path, hub: FakeHub) -> None:
    line = one_error_line(mlo(tmp_path, hub.url, "pull", "acme/Corrupt-GGUF"))
    assert "checksum mismatch for Bad-Q4_K_M.gguf" in line
    assert not (models_dir(tmp_path) / "Bad-Q4_K_M.gguf").exists()


def test_private_repository_needs_a_token(tmp_path: Path, hub: FakeHub) -> None:
    line = one_error_line(mlo(tmp_path, hub.url, "pull", "acme/Private-GGUF"))
    assert "acme/Private-GGUF not found, or it is private" in line and "HF_TOKEN" in line
    done = mlo(tmp_path, hub.url, "pull", "acme/Private-GGUF", HF_TOKEN="hf_secret")
    assert done.returncode == 0, done.stderr
    assert hub.seen[-1].headers.get("authorization") == "Bearer hf_secret"


def test_offline_is_one_clear_line(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    line = one_error_line(mlo(tmp_path, closed, "pull", "acme/Tiny-GGUF:Tiny-Q4_K_M.gguf"))
    assert f"cannot reach Hugging Face at {closed}: are you offline?" in line


def test_no_disk_space_is_one_line(tmp_path: Path, hub: FakeHub) -> None:
    line = one_error_line(mlo(tmp_path, hub.url, "pull", "acme/Huge-GGUF"))
    assert "not enough disk space" in line and "mlo clean-cache" in line
    assert not hub.gets("Huge-Q4_K_M.gguf")  # refused before downloading


def test_unknown_quant_and_alias(tmp_path: Path, hub: FakeHub) -> None:
    line = one_error_line(mlo(tmp_path, hub.url, "pull", "acme/Tiny-GGUF:Q2_K"))
    assert "no Q2_K GGUF in acme/Tiny-GGUF; available: Q4_K_M, Q8_0" in line
    line = one_error_line(mlo(tmp_path, hub.url, "pull", "no-such-alias"))
    assert "neither a Hugging Face repository" in line


def test_missing_repository_through_the_library(tmp_path: Path, hub: FakeHub) -> None:
    with pytest.raises(HubError, match="repository acme/Nope not found"):
        HubClient(endpoint=hub.url).pull(parse_ref("acme/Nope"), tmp_path, say=lambda _: None)
