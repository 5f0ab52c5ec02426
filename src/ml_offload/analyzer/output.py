"""A report in one of the three formats, by name or by the suffix of the file it goes to."""

from __future__ import annotations

from typing import Literal

import orjson

from ml_offload.analyzer.html import to_html
from ml_offload.analyzer.model import Analysis
from ml_offload.analyzer.report import to_json, to_markdown

Format = Literal["markdown", "json", "html"]
SUFFIXES: dict[str, Format] = {".md": "markdown", ".json": "json", ".html": "html", ".htm": "html"}
MEDIA_TYPES: dict[Format, str] = {
    "markdown": "text/markdown; charset=utf-8",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
}


def render(a: Analysis, fmt: Format) -> bytes:
    if fmt == "json":
        return orjson.dumps(to_json(a), option=orjson.OPT_INDENT_2)
    if fmt == "html":
        return to_html(a).encode()
    return to_markdown(a).encode()
