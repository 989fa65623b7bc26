#!/usr/bin/env bash
# Builds (if needed) and runs the CPU test suite. GPU tests: `ctest --test-dir build -L gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/build.ninja ] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build
ctest --test-dir build -LE gpu --output-on-failure -j "$(nproc)" --timeout 900
