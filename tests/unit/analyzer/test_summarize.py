"""The LLM pass with a fake model: prompts fit the budget and carry the facts, map-reduce ends
in one architecture summary, the cache spares unchanged files, fatal refusals end the pass."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from ml_offload.analyzer import Options, analyze
from ml_offload.analyzer.html import to_html
from ml_offload.analyzer.report import to_json, to_markdown
from ml_offload.analyzer.summarize import SYSTEM, Budget, summarize
from ml_offload.errors import EngineError, PermissionDenied

FIXTURES = Path(__file__).parents[2] / "fixtures" / "analyzer"


class FakeModel:
    """Answers with a fixed sentence per call and records every prompt."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.prompts: list[str] = []
        self.fail = fail or {}

    async def __call__(self, system: str, user: str, max_tokens: int) -> str:
        assert system == SYSTEM
        self.prompts.append(user)
        for needle, exc in self.fail.items():
            if needle in user:
                raise exc
        return f"summary {hashlib.sha256(user.encode()).hexdigest()[:8]}"


def test_map_reduce_fits_a_small_context(tmp_path: Path) -> None:
    a = analyze(FIXTURES / "python")
    model = FakeModel()
    budget = Budget(context_tokens=512, max_files=20)
    s = asyncio.run(summarize(a, model, "m", budget, tmp_path))
    assert set(s.modules) == {f.path for f in a.files}
    assert s.architecture.startswith("summary ")
    limit = budget.prompt_chars(budget.module_answer_tokens)
    assert all(len(p) <= max(limit, budget.prompt_chars(budget.overview_answer_tokens))
               for p in model.prompts)  # fmt: skip
    api = next(p for p in model.prompts if p.startswith("File src/shop/api.py"))
    assert "Imported by 3 files" in api
    assert "serve (function, complexity 5)" in api
    assert "External dependencies: requests." in api
    db = next(p for p in model.prompts if p.startswith("File src/shop/db.py"))
    assert "In an import cycle with: src/shop/models.py." in db
    final = model.prompts[-1]
    assert "Import cycles: src/shop/db.py <-> src/shop/models.py." in final
    assert s.calls == len(model.prompts) > len(a.files)  # at least one reduce round


def test_cache_by_file_hash(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "a.py").write_text("import b\n")
    (root / "b.py").write_text("X = 1\n")
    first = asyncio.run(summarize(analyze(root), FakeModel(), "m", Budget(), tmp_path / "c"))
    assert (first.calls, first.cached) == (3, 0)
    again = asyncio.run(summarize(analyze(root), FakeModel(), "m", Budget(), tmp_path / "c"))
    assert (again.calls, again.cached) == (0, 3)
    assert again.modules == first.modules
    (root / "b.py").write_text("X = 2\n")
    model = FakeModel()
    changed = asyncio.run(summarize(analyze(root), model, "m", Budget(), tmp_path / "c"))
    assert (changed.calls, changed.cached) == (2, 1)  # b.py and the architecture
    assert model.prompts[0].startswith("File b.py")
    other = asyncio.run(summarize(analyze(root), FakeModel(), "other", Budget(), tmp_path / "c"))
    assert other.cached == 0  # another model: its own summaries


def test_failures_cost_one_summary_refusals_end_the_pass(tmp_path: Path) -> None:
    a = analyze(FIXTURES / "rust")
    flaky = FakeModel({"File core/src/orphan.rs": EngineError("engine crashed")})
    s = asyncio.run(summarize(a, flaky, "m", Budget(max_files=20)))
    assert "core/src/orphan.rs" not in s.modules
    assert s.errors == ["core/src/orphan.rs: engine crashed"]
    assert s.architecture
    refused = FakeModel({"File": PermissionDenied("key k may not use model 'm'")})
    with pytest.raises(PermissionDenied):
        asyncio.run(summarize(a, refused, "m", Budget()))


def test_reports_carry_the_summaries(tmp_path: Path) -> None:
    a = analyze(FIXTURES / "nix")
    a.summaries = asyncio.run(summarize(a, FakeModel(), "tiny", Budget(max_files=2)))
    md = to_markdown(a)
    assert "## Architecture" in md and "_Explained by `tiny`._" in md
    assert md.count("\n### `") == 2
    data = to_json(a)
    assert data["summaries"]["model"] == "tiny" and len(data["summaries"]["modules"]) == 2
    page = to_html(a)
    assert "Explained by tiny" in page and page.count("<h3>") == 2
    assert "<script" not in page and "src=" not in page  # self-contained, nothing loaded


def test_changed_since_explains_only_what_changed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "a.py").write_text("import b\n")
    (root / "b.py").write_text("X = 1\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    cache = tmp_path / "cache"
    asyncio.run(summarize(analyze(root), FakeModel(), "m", Budget(), cache))  # all cached now
    (root / "b.py").write_text("X = 2\n")
    a = analyze(root, Options(changed_since="HEAD"))
    assert a.changed == ["b.py"]
    model = FakeModel()
    s = asyncio.run(summarize(a, model, "m", Budget(), cache))
    assert [p.split(" ", 2)[1] for p in model.prompts[:-1]] == ["b.py"]  # then the architecture
    assert set(s.modules) == {"a.py", "b.py"}  # a.py's summary from the cache
    assert (s.calls, s.cached) == (2, 1)
