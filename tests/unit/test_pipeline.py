"""Result files: each export format parsed back, prompt files, percentiles."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from ml_offload.errors import InvalidRequest
from ml_offload.pipeline import (
    PromptResult,
    format_for,
    load_results,
    percentile,
    read_prompts,
    render,
    write_results,
)

RESULTS = [
    PromptResult(0, "Say hi", "Hi | there\nfriend", "m", 5, 3, 12.5, 40.0, 107.0, "length"),
    PromptResult(1, 'Quote "this", please', "", "m", error="HTTP 502: engine failed"),
]


def test_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_results(RESULTS, path, "json")
    assert json.loads(path.read_text())["count"] == 2
    assert load_results(path) == RESULTS


def test_jsonl_line_by_line(tmp_path: Path) -> None:
    lines = render(RESULTS, "jsonl").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in rows] == ["Say hi", 'Quote "this", please']
    assert rows[0]["answer"] == "Hi | there\nfriend" and rows[1]["error"]
    path = tmp_path / "r.jsonl"
    write_results(RESULTS, path, "jsonl")
    assert load_results(path) == RESULTS


def test_csv_parses_with_the_csv_module() -> None:
    rows = list(csv.DictReader(io.StringIO(render(RESULTS, "csv"))))
    assert len(rows) == 2
    assert rows[0]["answer"] == "Hi | there\nfriend"
    assert rows[1]["prompt"] == 'Quote "this", please'
    assert rows[0]["completion_tokens"] == "3" and rows[1]["completion_tokens"] == ""


def test_markdown_is_a_table() -> None:
    lines = render(RESULTS, "md").splitlines()
    assert len(lines) == 2 + len(RESULTS)
    header = lines[0]
    assert header.startswith("| # | prompt | answer |")
    assert set(lines[1]) <= {"|", "-"}
    columns = header.count("|")
    for line in lines[2:]:
        assert line.startswith("| ") and line.endswith(" |")
        assert line.replace("\\|", "").count("|") == columns  # escaped pipes stay in the cell
    assert "Hi \\| there<br>friend" in lines[2]
    assert "error: HTTP 502" in lines[3]


def test_text_has_a_block_per_prompt() -> None:
    text = render(RESULTS, "txt")
    assert text.count("[1] Say hi") == 1 and "[2] Quote" in text
    assert "error: HTTP 502" in text


@pytest.mark.parametrize(
    ("content", "prompts"),
    [
        ("one\n\n# comment\ntwo\n", ["one", "two"]),
        ('{"prompt": "a"}\n{"prompt": "b"}\n', ["a", "b"]),
        ('["x", {"prompt": "y"}]', ["x", "y"]),
    ],
)
def test_read_prompts(tmp_path: Path, content: str, prompts: list[str]) -> None:
    path = tmp_path / "p"
    path.write_text(content)
    assert read_prompts(path) == prompts


def test_read_prompts_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read prompts file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(InvalidRequest, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_load_results_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"not": "results"}')
    with pytest.raises(InvalidRequest, match="not a results file"):
        load_results(path)


def test_format_for() -> None:
    assert format_for(Path("out.CSV"), None) == "csv"
    assert format_for(Path("out.csv"), "md") == "md"
    assert format_for(None, None) == "txt"
    assert format_for(None, "markdown") == "md"
    with pytest.raises(InvalidRequest, match="unknown format 'xml'"):
        format_for(Path("out.xml"), None)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert percentile([5.0], 95) == 5.0
