"""Bad input for the analyzer: reported and skipped, or one line without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_offload.analyzer import Options, analyze
from ml_offload.errors import AnalysisError


def _mlo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", "analyze", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_not_a_folder(tmp_path: Path) -> None:
    file = tmp_path / "a.py"
    file.write_text("x = 1\n")
    with pytest.raises(AnalysisError, match="not a folder"):
        analyze(file)
    with pytest.raises(AnalysisError, match="no such folder"):
        analyze(tmp_path / "missing")


def test_binary_unparsable_and_huge_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("import bad\n")
    (tmp_path / "blob.py").write_bytes(b"\x7fELF\x00\x00\x01binary")
    (tmp_path / "bad.rs").write_text("}}}} fn ((( ]]] <<<>>> ;;; }}}}\n" * 20)
    (tmp_path / "huge.ts").write_text("export const x = 1;\n" * 1000)  # 20 kB
    a = analyze(tmp_path, Options(max_file_bytes=10_000))
    assert [f.path for f in a.files] == ["ok.py"]
    reasons = {s.path: s.reason for s in a.skipped}
    assert set(reasons) == {"blob.py", "bad.rs", "huge.ts"}
    assert reasons["blob.py"].startswith("binary")
    assert reasons["bad.rs"].startswith("unparsable as rust")
    assert reasons["huge.ts"] == "too large: 20000 bytes (the bound is 10000)"


def test_a_file_with_a_few_syntax_errors_is_kept(tmp_path: Path) -> None:
    (tmp_path / "half.py").write_text("import os\n\ndef f(:\n    pass\n\ndef g():\n    return 1\n")
    a = analyze(tmp_path)
    facts = a.files[0]
    assert facts.parse_errors > 0
    assert "g" in {s.name for s in facts.symbols}


def test_symlink_loops_and_escapes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("from . import b\n")
    (root / "pkg" / "b.py").write_text("")
    os.symlink(root, root / "pkg" / "loop")  # pkg/loop -> repo: a loop
    os.symlink(tmp_path, root / "outside")  # out of the analysed folder
    os.symlink(root / "pkg", root / "alias")  # a second name of a folder inside
    a = analyze(root)
    assert [f.path for f in a.files] == ["pkg/a.py", "pkg/b.py"]
    assert {s.path: s.reason for s in a.skipped} == {
        "pkg/loop": "symlink loop",
        "outside": "symlink out of the analysed folder",
        "alias": "symlink to a folder inside",
    }


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    for args in ([str(tmp_path / "missing")], [str(tmp_path), "--lang", "cobol"]):
        proc = _mlo(*args)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ")
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "Traceback" not in proc.stderr


def test_cli_writes_json_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("import json\n")
    proc = _mlo(str(tmp_path), "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert '"schema_version": 1' in (tmp_path / "r.json").read_text()
    proc = _mlo(str(tmp_path))
    assert proc.returncode == 0
    assert proc.stdout.startswith("# Code analysis of")
    assert "```mermaid" in proc.stdout
