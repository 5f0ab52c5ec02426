"""Chat templates: the ones shipped in the package, and how a forced tool call opens.

(The template a model's GGUF file carries is read by `gguf.chat_template`.)
"""

from __future__ import annotations

from pathlib import Path

# chat templates shipped in the package (`models.chat_template_file` may name one)
SHIPPED_TEMPLATES = ("chatml-tools",)
# how a Hermes-style template (ours, Qwen's, Hermes') opens a tool call: llama.cpp parses it
HERMES_CALL_OPEN = "<tool_call>\n"


def chat_template_path(value: Path) -> Path:
    """A configured chat template: the name of one shipped here, else a file path."""
    if str(value) in SHIPPED_TEMPLATES:
        return Path(__file__).parent / "templates" / f"{value}.jinja"
    return value.expanduser()


def forced_call_opening(template: str) -> str | None:
    """What the answer to a forced tool call starts with under `template`, given to the engine
    as the assistant's first words: llama.cpp's grammar for tool_choice "required" still lets
    free text come before a call (chat-auto-parser-generator.cpp), which small models take."""
    return HERMES_CALL_OPEN if HERMES_CALL_OPEN.strip() in template else None
