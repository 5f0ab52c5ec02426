#!/usr/bin/env bash
# The GPU proof in one go, on a machine with an NVIDIA GPU and no network (bench/README.md):
#   bash bench/gpu/run.sh             # build llama-server with CUDA here, then run proof.py
#   bash bench/gpu/run.sh --dry-run   # anywhere: builds nothing, simulated GPU, xllamacpp engine
# Needs bench/gpu/carry/ from prepare.sh (not for --dry-run). Results: $OUT (or $WORK/out).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
carry=$root/bench/gpu/carry
work=${WORK:-/tmp/mlo-gpu}
out=${OUT:-$work/out}
py=${PYTHON:-python3}
mkdir -p "$work" "$out"
export PYTHONUNBUFFERED=1

if [ "${1:-}" = --dry-run ]; then
  shift
  export PYTHONPATH=$root/src:$root${PYTHONPATH:+:$PYTHONPATH}
  exec "$py" "$root/bench/gpu/proof.py" --dry-run --work "$work" --out "$out" "$@"
fi

t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
[ -f "$carry/llama.cpp.tar.gz" ] || { echo "no $carry: run bench/gpu/prepare.sh first" >&2; exit 1; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap --format=csv,noheader

# the gateway's missing Python dependencies, beside the machine's own packages
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$work/site" "$carry"/wheels/*.whl
export PYTHONPATH=$root/src:$root:$work/site

# models are written while llama.cpp builds (disk and CPU in parallel)
"$py" "$root/bench/gpu/proof.py" --write-models --work "$work" >"$out/models.log" 2>&1 &
models_pid=$!

sm=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
rm -rf "$work/llama.cpp" && tar xzf "$carry/llama.cpp.tar.gz" -C "$work"
cuda_args=()
# cuBLAS and the driver library where the toolkit does not hold them (pip's nvidia-* wheels)
libdir=$work/cudalibs
mkdir -p "$libdir"
have() {  # any of these paths exists
  for f in "$@"; do [ -e "$f" ] && return 0; done
  return 1
}
find_lib() {  # the first file matching $1 under the usual roots
  find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /usr/local/nvidia /opt \
    $("$py" -c 'import site; print(" ".join(site.getsitepackages()))') \
    -name "$1" 2>/dev/null | head -1
}
for lib in cublas cublasLt; do
  if ! have /usr/local/cuda/lib64/lib$lib.so /usr/local/cuda/targets/*/lib/lib$lib.so; then
    found=$(find_lib "lib$lib.so*")
    [ -n "$found" ] || { echo "lib$lib not found: install CUDA's cuBLAS" >&2; exit 1; }
    ln -sf "$found" "$libdir/lib$lib.so"
    cuda_args+=("-DCUDA_${lib}_LIBRARY=$libdir/lib$lib.so")
    export LD_LIBRARY_PATH=$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
done
if ! have /usr/local/cuda/include/cublas_v2.h /usr/local/cuda/targets/*/include/cublas_v2.h; then
  header=$(find_lib cublas_v2.h)
  [ -n "$header" ] && cuda_args+=("-DCMAKE_CUDA_FLAGS=-I$(dirname "$header")" "-DCMAKE_CXX_FLAGS=-I$(dirname "$header")")
fi
if ! have /usr/local/cuda/lib64/stubs/libcuda.so; then
  driver=$(find_lib "libcuda.so*")
  [ -n "$driver" ] && ln -sf "$driver" "$libdir/libcuda.so" && cuda_args+=("-DCUDA_cuda_driver_LIBRARY=$libdir/libcuda.so")
fi

stamp "configuring llama.cpp for sm_$sm"
cmake -S "$work/llama.cpp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$sm" -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF "${cuda_args[@]}" >"$out/cmake.log" 2>&1 \
  || { tail -40 "$out/cmake.log"; exit 1; }
stamp "building llama-server with $(nproc) jobs"
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; exit 1; }
server=$work/build/bin/llama-server
"$server" --version 2>&1 | tail -2 || true
stamp "built; waiting for the models"
wait "$models_pid" || { cat "$out/models.log"; exit 1; }
stamp "running the proof"
"$py" "$root/bench/gpu/proof.py" --server-bin "$server" --work "$work" --out "$out"
stamp "done"
