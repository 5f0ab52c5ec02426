"""`provider_config_validate`: a config snippet (TOML or JSON) checked against the gateway's own
settings models (config.py), each problem with its field path and the fix.

A snippet may be one model's table (`name = ..., url = ...`), a list of them, `[[models]]`
entries, or any sections of the config file (`[security.limits]`...)."""

from __future__ import annotations

import difflib
import json
import tomllib
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ml_offload.config import ModelConfig, Settings

Format = Literal["auto", "toml", "json"]


class Problem(BaseModel):
    path: str  # `models[0].url`, `security.limits.default_rpm`; `(snippet)` for syntax
    message: str
    fix: str


class ConfigCheck(BaseModel):
    valid: bool
    format: Literal["toml", "json"]
    models: list[str]  # the model names it declares
    errors: list[Problem]
    warnings: list[Problem]


def validate_snippet(text: str, fmt: Format = "auto") -> ConfigCheck:
    try:
        chosen, data = _parse(text, fmt)
    except SnippetSyntax as exc:
        problem = Problem(path="(snippet)", message=str(exc), fix=_syntax_fix(exc.fmt))
        return ConfigCheck(valid=False, format=exc.fmt, models=[], errors=[problem], warnings=[])
    single = _is_one_model(data)
    doc = _as_settings(data)
    try:
        settings = _SnippetOnly.model_validate(doc)
    except ValidationError as exc:
        errors = [_problem(err, single) for err in exc.errors()]
        return ConfigCheck(
            valid=False, format=chosen, models=_names(doc), errors=errors, warnings=[]
        )
    return ConfigCheck(
        valid=True,
        format=chosen,
        models=[m.name for m in settings.models],
        errors=[],
        warnings=_warnings(settings.models, single),
    )


class _SnippetOnly(Settings):
    """The settings models with no other source: no environment, no config file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class SnippetSyntax(ValueError):
    def __init__(self, message: str, fmt: Literal["toml", "json"]) -> None:
        super().__init__(message)
        self.fmt = fmt


def _names(doc: dict[str, Any]) -> list[str]:
    models = doc.get("models")
    listed = models if isinstance(models, list) else []
    return [str(m["name"]) for m in listed if isinstance(m, dict) and m.get("name")]


def _parse(text: str, fmt: Format) -> tuple[Literal["toml", "json"], Any]:
    """The snippet's data; `auto` tries JSON, then TOML (`[[models]]` is TOML)."""
    if fmt in ("json", "auto"):
        try:
            return "json", json.loads(text)
        except json.JSONDecodeError as exc:
            if fmt == "json" or text.lstrip()[:1] == "{":
                where = f"line {exc.lineno} column {exc.colno}"
                raise SnippetSyntax(f"JSON syntax: {exc.msg} at {where}", "json") from None
    try:
        return "toml", tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SnippetSyntax(f"TOML syntax: {exc}", "toml") from None


def _syntax_fix(fmt: str) -> str:
    if fmt == "json":
        return 'send one JSON object (a model: {"name": ..., "url": ...}) or a list of them'
    return 'write TOML key = value lines, strings in quotes (name = "m", url = "http://...")'


def _is_one_model(data: Any) -> bool:
    return isinstance(data, dict) and not set(data) & set(Settings.model_fields)


def _as_settings(data: Any) -> dict[str, Any]:
    """The snippet as a config document: a model or a list of models go under `models`."""
    if isinstance(data, list):
        return {"models": data}
    if _is_one_model(data):
        return {"models": [data]}
    return data if isinstance(data, dict) else {"models": data}


def _problem(err: ErrorDetails, single: bool) -> Problem:
    loc = tuple(err["loc"])
    shown = loc[2:] if single and loc[:2] == ("models", 0) else loc
    path = _path(shown) if shown or not single else "(model)"
    return Problem(path=path, message=_message(err), fix=_fix(err, loc))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _message(err: ErrorDetails) -> str:
    return err["msg"].removeprefix("Value error, ")


def _fix(err: ErrorDetails, loc: tuple[int | str, ...]) -> str:
    kind, name = err["type"], loc[-1] if loc else ""
    if kind == "extra_forbidden":
        known = sorted(_model_at(loc[:-1]).model_fields)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"remove {name!r}; {hint}the keys here are: {', '.join(known)}"
    if kind == "missing":
        return f"add {name!r}{_described(loc)}"
    if kind == "literal_error":
        return f"use one of {err.get('ctx', {}).get('expected', 'the values named')}"
    if kind == "value_error":
        return _message(err)
    wanted = err["msg"].removeprefix("Input should be ")
    return f"make {name!r} {wanted}{_described(loc)}" if name else _message(err)


def _described(loc: tuple[int | str, ...]) -> str:
    field = _model_at(loc[:-1]).model_fields.get(str(loc[-1]))
    return f" ({field.description})" if field is not None and field.description else ""


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The settings model that holds the field at `loc` (list indexes and dict keys skipped)."""
    cls: type[BaseModel] = Settings
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        inner = _inner_model(field.annotation) if field is not None else None
        if inner is not None:
            cls = inner
    return cls


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, dict, Union, types.UnionType):
        for arg in get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _warnings(models: list[ModelConfig], single: bool) -> list[Problem]:
    found = []
    for i, m in enumerate(models):
        if m.api_key is not None:
            where = "api_key" if single else f"models[{i}].api_key"
            found.append(
                Problem(
                    path=where,
                    message="the provider's key is written in the config file",
                    fix="keep it in an environment variable and name it with api_key_env",
                )
            )
    return found
