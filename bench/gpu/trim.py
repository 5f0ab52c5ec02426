"""Trim a llama.cpp source tree in place to what `llama-server` with CUDA needs (prepare.sh).

Kept: the top-level CMake files, cmake/, scripts/*.cmake, licenses, include/, src/, common/,
vendor/, ggml/ with its base, CPU and CUDA backends only, and tools/ with the server, mtmd (the
server links it) and ui (its assets target; built empty: no npm, no download). tools/CMakeLists.txt
is rewritten to add only those three.

    python bench/gpu/trim.py path/to/llama.cpp
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

KEEP_TOP = {
    "CMakeLists.txt",
    "LICENSE",
    "cmake",
    "common",
    "ggml",
    "include",
    "licenses",
    "scripts",
    "src",
    "tools",
    "vendor",
}
KEEP_BACKENDS = {"ggml-cpu", "ggml-cuda"}
KEEP_TOOLS = {"CMakeLists.txt", "server", "mtmd", "ui"}
UI_KEEP = {"CMakeLists.txt", "sources.cmake", "ui.cpp.in", "ui.h.in"}
TOOLS_CMAKE = """\
# trimmed by ml-offload's bench/gpu/trim.py: the server and what it links
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(ui)
add_subdirectory(mtmd)
add_subdirectory(server)
"""


def trim(root: Path) -> None:
    for child in root.iterdir():
        if child.name not in KEEP_TOP:
            _remove(child)
    for child in (root / "ggml" / "src").iterdir():
        if child.is_dir() and child.name.startswith("ggml-") and child.name not in KEEP_BACKENDS:
            _remove(child)
    for child in (root / "tools").iterdir():
        if child.name not in KEEP_TOOLS:
            _remove(child)
    for child in (root / "tools" / "ui").iterdir():
        if child.name not in UI_KEEP:
            _remove(child)
    for child in (root / "scripts").iterdir():
        if child.suffix != ".cmake":
            _remove(child)
    for folder in ("tools/server/tests", "tools/server/bench", "tools/server/themes"):
        _remove(root / folder)
    (root / "tools" / "CMakeLists.txt").write_text(TOOLS_CMAKE)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


if __name__ == "__main__":
    trim(Path(sys.argv[1]))
