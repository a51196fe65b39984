#!/usr/bin/env bash
# Build llama.cpp's Python bindings (llama-cpp-python, from source: PyPI ships no wheel) into a cache
# outside the repository, for the check that llama.cpp steers with our exported control vectors
# (`python -m steering.llama_cpp_check`, tests/test_llama_cpp.py, slow). Idempotent: a second call
# reuses the cached install. About 10 minutes on 2 CPU cores.
#   WELFARE_AXIS_LLAMA_CPP_DIR   where to install (default ~/.cache/welfare-axis/llama-cpp-<version>)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(.venv/bin/python -c "from steering.llama_cpp_check import LLAMA_CPP_PYTHON_VERSION as v; print(v)")
target=${WELFARE_AXIS_LLAMA_CPP_DIR:-$HOME/.cache/welfare-axis/llama-cpp-$version}
if [ -f "$target/.complete" ]; then echo "llama-cpp-python $version already built in $target"; exit 0; fi
rm -rf "$target.partial"
mkdir -p "$target.partial"
echo "building llama-cpp-python $version into $target (CPU, about 10 min on 2 cores)"
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  .venv/bin/python -m pip install -q --no-cache-dir --target "$target.partial" --no-deps \
    "llama-cpp-python==$version" "diskcache==5.6.3"
touch "$target.partial/.complete"
rm -rf "$target"
mv "$target.partial" "$target"
echo "built: $target"
