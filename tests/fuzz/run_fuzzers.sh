#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.cpp) with clang under AddressSanitizer and
# UndefinedBehaviorSanitizer into build-fuzz (CPU only), then runs each for a bounded time from its
# seed corpus tests/fuzz/corpus/<target>/. Fails when any target finds a crash, a sanitizer report,
# a leak, a timeout, or an exception other than um::Error (artifacts in build-fuzz/artifacts/).
#
# Installs nothing. Needs, on Debian 12, besides the README's build dependencies:
#   apt-get install -y clang libclang-rt-14-dev
#
# Usage: tests/fuzz/run_fuzzers.sh [seconds per target, default 30] [target ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config_json shard_header npy_header safetensors_header checkpoint_manifest)

command -v clang++ >/dev/null || { echo "run_fuzzers.sh: clang++ not found (apt-get install -y clang libclang-rt-14-dev)"; exit 2; }
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DULTRAMEM_CUDA=OFF -DULTRAMEM_FUZZ=ON -DULTRAMEM_TESTS=OFF -DULTRAMEM_BENCH=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target $(printf 'fuzz_%s ' "${targets[@]}")

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OMP_NUM_THREADS=1
mkdir -p build-fuzz/artifacts
status=0
for t in "${targets[@]}"; do
  corpus="build-fuzz/corpus/$t"  # inputs the run finds go here; the seeds in the source tree stay as they are
  mkdir -p "$corpus"
  echo "== fuzz_$t: ${seconds}s"
  if ! "build-fuzz/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="build-fuzz/artifacts/$t-" -print_final_stats=1 "$corpus" "tests/fuzz/corpus/$t" \
        > "build-fuzz/artifacts/$t.log" 2>&1; then
    echo "fuzz_$t FAILED: see build-fuzz/artifacts/$t.log"; tail -40 "build-fuzz/artifacts/$t.log"; status=1
  else
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "build-fuzz/artifacts/$t.log" | tr '\n' ' '; echo
    grep -E "cov: [0-9]+" "build-fuzz/artifacts/$t.log" | tail -1
  fi
done
exit $status
