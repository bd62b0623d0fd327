#!/usr/bin/env bash
# Build and install llama-cpp-python (PyPI ships it as an sdist only) for THIS CPU, without AMX.
#
# Why not plain `pip install llama-cpp-python`:
# - pip builds llama.cpp with -march=native and caches the wheel keyed by the sdist alone, so a
#   wheel built on one CPU is reused on another; where the ISA differs it dies with SIGILL.
# - On Sapphire Rapids virtual machines the CPU advertises AMX (amx_tile) while the kernel or
#   hypervisor does not grant the tile state: llama.cpp's AMX matmul (`tilezero`) then dies
#   with SIGILL on the first forward pass (measured 2026-12-05 on this project's CI machine).
#   `-mno-amx-*` keeps every other native instruction (AVX-512, VNNI, BF16) and drops AMX; GCC
#   honours an explicit -mno-X whatever -march comes later.
# So the wheel is built once per (version, flags, CPU feature set) into our own cache and
# installed from there. Usage: install_llama_cpp.sh PIP [VERSION]
set -euo pipefail
PIP=${1:?usage: install_llama_cpp.sh PIP [VERSION]}
VERSION=${2:-0.3.36}
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CMAKE_ARGS="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
CPU_FLAGS=$(grep -m1 '^flags' /proc/cpuinfo || echo unknown)
KEY=$(printf '%s\n%s\n%s\n' "$VERSION" "$CMAKE_ARGS" "$CPU_FLAGS" | sha256sum | cut -c1-16)
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/backtrack/wheels/llama-cpp-python-$VERSION-$KEY"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "install_llama_cpp: building llama-cpp-python $VERSION for this CPU (5-15 min on 2 cores)"
    mkdir -p "$WHEELS"
    "$PIP" wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$WHEELS" \
        "llama-cpp-python==$VERSION"
fi
# Replace whatever build is installed (pip would keep a same-version one), then let pip read
# the wheel's own metadata for its runtime dependencies.
"$PIP" install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
"$PIP" install -q "$WHEELS"/llama_cpp_python-*.whl
echo "install_llama_cpp: llama-cpp-python $VERSION from $WHEELS"
