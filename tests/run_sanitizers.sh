#!/usr/bin/env bash
# Builds the CPU-only tree with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan and runs
# the unit and end-to-end suites and the CLI tests under them (everything ctest has but the gpu suite).
# Any report fails the run: UBSan does not recover, ASan aborts, LeakSanitizer checks at exit.
#
# Needs the README's build dependencies (g++ brings libasan/libubsan on Debian 12). Installs nothing.
# Usage: tests/run_sanitizers.sh [extra ctest arguments, e.g. -R unit]
set -euo pipefail
cd "$(dirname "$0")/.."
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DULTRAMEM_CUDA=OFF -DULTRAMEM_BENCH=OFF \
      -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build build-asan -j"$(nproc)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
cd build-asan
ctest --output-on-failure -E '^gpu$' "$@"
