#!/usr/bin/env bash
# Configures and builds kowalski into ./build (g++, Ninja, ccache when present).
# Usage: scripts/build.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir="${KOWALSKI_BUILD_DIR:-build}"
generator=()
if command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi
# ccache hits across clones need paths relative to the source tree.
export CCACHE_BASEDIR="$PWD"
export CCACHE_NOHASHDIR=1

if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_CXX_COMPILER=g++ \
        -DCMAKE_BUILD_TYPE="${KOWALSKI_BUILD_TYPE:-RelWithDebInfo}"
fi
# Arguments name targets to build; none builds everything.
targets=()
if [[ $# -gt 0 ]]; then
  targets=(--target "$@")
fi
cmake --build "$build_dir" -j "$(nproc)" "${targets[@]}"
