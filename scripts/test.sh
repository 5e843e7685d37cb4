#!/usr/bin/env bash
# Sets up, builds and runs every test (CTest; each test has a timeout).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh
ctest --test-dir "${KOWALSKI_BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
