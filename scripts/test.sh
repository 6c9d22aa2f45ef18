#!/bin/sh
# The whole test suite, as CI runs it:
#   1. plain build (-Werror): unit + end-to-end tests under ctest
#   2. ASan + UBSan build: the same suite
#   3. libFuzzer targets, each for a short bounded time (clang)
# Installs missing Debian packages first. Exit status is non-zero if any step fails.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh

echo "== plain build =="
BUILD_DIR=build ./scripts/build.sh -DCMAKE_BUILD_TYPE=RelWithDebInfo
(cd build && ctest --output-on-failure -j2)

echo "== ASan + UBSan build =="
BUILD_DIR=build-asan ./scripts/build.sh -DCMAKE_BUILD_TYPE=Debug -DCUTOVER_SANITIZE=ON
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure -j2)

echo "== fuzz targets (bounded) =="
BUILD_DIR=build-fuzz CC=clang ./scripts/build.sh -DCMAKE_BUILD_TYPE=Debug -DCUTOVER_FUZZ=ON -DCUTOVER_TESTS=OFF
(cd build-fuzz && ctest --output-on-failure -j2 -R '^fuzz\.')
echo "== all suites passed =="
