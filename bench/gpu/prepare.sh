#!/usr/bin/env bash
# Run HERE, on a machine with PyPI access, from the repository root or anywhere:
#   bash bench/gpu/prepare.sh
# Makes bench/gpu/carry/ (git-ignored, under 64 MiB), everything run.sh needs on a GPU machine
# without network:
#   carry/llama.cpp.tar.gz  llama.cpp's sources, trimmed to what `llama-server` with CUDA needs,
#                           from the llama.cpp that llama-cpp-python's sdist vendors
#   carry/wheels/           the gateway's Python dependencies that such a machine lacks
#                           (CPython 3.12, manylinux x86-64), at the versions installed here
#   carry/VERSIONS          where each came from
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/carry
py=${PYTHON:-python3}
# the sdist to take llama.cpp from; `latest` asks PyPI for the newest
sdist_version=${LLAMA_CPP_PYTHON_VERSION:-latest}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$out"
mkdir -p "$out/wheels"

spec=llama-cpp-python
[ "$sdist_version" != latest ] && spec="llama-cpp-python==$sdist_version"
# --no-binary for this package only: its build requirements still come as wheels
"$py" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$tmp" "$spec"
sdist=$(ls "$tmp"/llama_cpp_python-*.tar.gz)
tar xzf "$sdist" -C "$tmp"
src=$(ls -d "$tmp"/llama_cpp_python-*/vendor/llama.cpp)
"$py" "$here/trim.py" "$src"
tar czf "$out/llama.cpp.tar.gz" -C "$(dirname "$src")" llama.cpp
echo "llama.cpp from $(basename "$sdist")" >"$out/VERSIONS"

# What the gateway imports that the GPU image (see the device notes) does not hold.
wheels=(
  fastapi starlette uvicorn httptools watchfiles websockets orjson sniffio
  pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
  typing-extensions sqlalchemy greenlet alembic mako aiosqlite gguf limits deprecated
  opentelemetry-api cryptography cffi pycparser
)
for name in "${wheels[@]}"; do
  version=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$out/wheels" "$name==$version"
  echo "$name==$version" >>"$out/VERSIONS"
done
du -sh "$out" "$out"/* | sed 's/^/  /'
total=$(du -sb "$out" | cut -f1)
if [ "$total" -gt $((64 * 1024 * 1024)) ]; then
  echo "carry/ is over 64 MiB ($total bytes): trim more in trim.py" >&2
  exit 1
fi
echo "ready: name bench/gpu/carry in the device call's carry, then run bash bench/gpu/run.sh"
