"""`provider_config_validate`'s checker: snippets in TOML or JSON against the settings models,
each error with its field path and the fix; the environment does not leak in."""

from __future__ import annotations

import json

import pytest

from ml_offload.mcp.config_check import validate_snippet


def paths(check: object) -> dict[str, str]:
    return {e.path: e.fix for e in check.errors}  # type: ignore[attr-defined]


def test_one_model_table_in_toml() -> None:
    check = validate_snippet('name = "m"\nurl = "http://x"\nbackend = "olama"\nttl = 3')
    assert not check.valid and check.format == "toml" and check.models == ["m"]
    fixes = paths(check)
    assert fixes["backend"].startswith("use one of 'openai'")
    assert "did you mean 'ttl_s'" in fixes["ttl"]


def test_model_rule_and_missing_fields_in_json() -> None:
    check = validate_snippet(json.dumps({"name": "a", "path": "/x.gguf", "url": "http://y"}))
    assert check.format == "json" and "exactly one of 'path'" in paths(check)["(model)"]
    listed = validate_snippet(json.dumps([{"url": 5}]))
    assert set(paths(listed)) == {"models[0].name", "models[0].url"}
    assert paths(listed)["models[0].name"] == "add 'name'"


def test_config_sections_and_nested_unknown_keys() -> None:
    snippet = (
        '[[models]]\nname = "a"\nurl = "http://a"\n[security.limits]\ndefault_rpm = 0\n'
        '[mcp.workspaces.x]\npath = "/"\ncommands = { t = ["a"] }\nbogus = 1\n'
    )
    fixes = paths(validate_snippet(snippet))
    assert "greater than or equal to 1" in fixes["security.limits.default_rpm"]
    assert fixes["mcp.workspaces.x.bogus"] == "remove 'bogus'; the keys here are: commands, path"


def test_valid_snippet_warns_of_an_inline_key() -> None:
    check = validate_snippet('[[models]]\nname = "a"\nurl = "http://a"\napi_key = "sk-1"\n')
    assert check.valid and check.models == ["a"] and not check.errors
    assert [w.path for w in check.warnings] == ["models[0].api_key"]


def test_syntax_errors_say_where() -> None:
    toml = validate_snippet("name = ")
    assert toml.errors[0].path == "(snippet)" and toml.errors[0].message.startswith("TOML")
    bad_json = validate_snippet('{"name": ')
    assert "line 1 column 10" in bad_json.errors[0].message


def test_the_environment_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLO_SERVER__PORT", "not-a-port")
    assert validate_snippet('[server]\nhost = "127.0.0.1"').valid
