#!/usr/bin/env bash
# One call on the GPU machine: build, run every test ([gpu] included), the kernel benchmarks and the
# end-to-end throughput against the PyTorch reference. Logs and tables go to $OUT (or ./gpu-out).
# Host-only header packages (nlohmann-json, catch2) come unpacked in .deps/ (see docs/gpu-results.md).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
STEPS=${STEPS:-build,test,bench,e2e}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ $STEPS == *build* ]]; then
  log "build"
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DULTRAMEM_CUDA=ON \
    -DCMAKE_PREFIX_PATH="$PWD/.deps/usr" -DUTF8PROC_INCLUDE_DIR="$PWD/.deps/usr/include" -DUTF8PROC_LIBRARY="$PWD/.deps/usr/lib/x86_64-linux-gnu/libutf8proc.a" -DCMAKE_CXX_FLAGS="-isystem $PWD/.deps/usr/include" \
    -DCMAKE_CUDA_FLAGS="-isystem $PWD/.deps/usr/include" > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  /usr/bin/time -f "build %e s" cmake --build build-gpu -j16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  tail -1 "$OUT/build.log"
fi
if [[ $STEPS == *test* ]]; then
  log "tests"
  # The CPU suites in parallel (they need no GPU), then the [gpu] cases once, one line per failure.
  (cd build-gpu && ctest --output-on-failure -j8 -E '^gpu$') > "$OUT/ctest.log" 2>&1; tail -6 "$OUT/ctest.log"
  ./build-gpu/tests/ultramem-tests "[gpu]" -r compact > "$OUT/gpu-tests.log" 2>&1
  ./build-gpu/tests/ultramem-tests "[gpu]" --list-tests > "$OUT/gpu-test-list.txt" 2>&1
  # The MoE [gpu] cases on the cuBLAS paths, and the sm90 kernel with the 128 x 128 tile on every shape.
  for m in grouped loop; do
    UM_GROUPED_GEMM=$m ./build-gpu/tests/ultramem-tests "[moe][gpu]" -r compact 2>&1 | grep -E "Passed|failed" | sed "s/^/cuBLAS $m, all MoE cases: /"
  done
  UM_SM90_TILE=narrow ./build-gpu/tests/ultramem-tests "[moe][gpu]" -r compact 2>&1 | grep -E "Passed|failed" | sed 's/^/sm90 128x128 tile: /'
  /usr/local/cuda/bin/cuobjdump -sass build-gpu/CMakeFiles/ultramem.dir/cuda/grouped_gemm_sm90.cu.o 2>/dev/null \
    | grep -c HGMMA | sed 's/^/HGMMA instructions in grouped_gemm_sm90: /' 
  grep -E "passed|failed|FAILED" "$OUT/gpu-tests.log" | tail -40
fi
if [[ $STEPS == *bench* ]]; then
  log "kernel benchmarks"
  ./build-gpu/bench/bench-matmul 2>&1 | tee "$OUT/bench-matmul.txt" | tail -20
  ./build-gpu/bench/bench-attention 2>&1 | tee "$OUT/bench-attention.txt" | tail -12
  ./build-gpu/bench/bench-tokenizer 2>&1 | tee "$OUT/bench-tokenizer.txt" | tail -8
  log "MoE layer (ours vs dense, then PyTorch eager)"
  ./build-gpu/bench/bench-moe 2>&1 | tee "$OUT/bench-moe.txt" | tail -12
  PYTHONUNBUFFERED=1 python3 bench/torch_moe.py 2>&1 | tee "$OUT/torch-moe.txt" | tail -10
fi
if [[ $STEPS == *profile* ]]; then
  log "MoE layer kernel breakdown (profiled reps only; nsys if installed, else ncu)"
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  prof() {  # label, --case, --mode, dense|moe
    local args=(--case "$2" --mode "$3" --profile "$4" --layer-only --reps 5 --warmup 2)
    if [[ -n $NSYS ]]; then
      "$NSYS" profile --capture-range=cudaProfilerApi -f true -o "/tmp/prof-$1" ./build-gpu/bench/bench-moe "${args[@]}" \
        > "/tmp/prof-$1.log" 2>&1
      "$NSYS" stats -r cuda_gpu_kern_sum -f csv -o "/tmp/prof-$1" "/tmp/prof-$1.nsys-rep" > /dev/null 2>&1
      python3 bench/kernel_breakdown.py "/tmp/prof-$1_cuda_gpu_kern_sum.csv" 5 "$1" | tee -a "$OUT/breakdown.md"
    else
      /usr/local/cuda/bin/ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
        ./build-gpu/bench/bench-moe "${args[@]}" > "/tmp/prof-$1.csv" 2> "/tmp/prof-$1.log"
      python3 bench/kernel_breakdown.py "/tmp/prof-$1.csv" 5 "$1" | tee -a "$OUT/breakdown.md"
    fi
  }
  prof dense-3264 "top-8 of 64" auto dense
  prof top8of64-sm90 "top-8 of 64" auto moe
  prof top2of8-h1632-sm90 "h 1632" auto moe
  # Where the sm90 GEMMs of the 64-expert layer stand: tensor pipe busy, DRAM and L2 throughput, clock.
  /usr/local/cuda/bin/ncu --profile-from-start off --clock-control none -k regex:gemm_kernel --csv --metrics \
    gpu__time_duration.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,sm__cycles_elapsed.avg.per_second \
    ./build-gpu/bench/bench-moe --case "top-8 of 64" --mode auto --profile moe --layer-only --reps 1 --warmup 1 \
    > /tmp/prof-sm90-metrics.csv 2> /tmp/prof-sm90-metrics.log
  python3 bench/ncu_metrics.py /tmp/prof-sm90-metrics.csv | tee -a "$OUT/breakdown.md"
  # Why their warps wait (ncu's warp-state section per launch: the consumers' epilogues against their k-steps).
  /usr/local/cuda/bin/ncu --profile-from-start off --clock-control none -k regex:gemm_kernel --section WarpStateStats \
    --print-details all ./build-gpu/bench/bench-moe --case "top-8 of 64" --mode auto --profile moe --layer-only --reps 1 \
    --warmup 1 > "$OUT/sm90-warp-states.txt" 2>&1
  grep -E "gemm_kernel|Stall|Warp Cycles" "$OUT/sm90-warp-states.txt" | head -120 | tee -a "$OUT/breakdown.md"
  tar czf "$OUT/profiles.tgz" -C /tmp $(cd /tmp && ls prof-*.csv prof-*.log 2>/dev/null)
fi
if [[ $STEPS == *timeline* ]]; then
  log "MoE layer timeline (CUPTI activity records: the idle gaps between kernels, which ncu cannot see)"
  g++ -O2 -shared -fPIC -I/usr/local/cuda/include bench/kernel_timeline.cpp -o /tmp/libtimeline.so \
    -L/usr/local/cuda/lib64 -lcupti || exit 1
  CUDA_INJECTION64_PATH=/tmp/libtimeline.so TIMELINE_OUT="$OUT/timeline-moe.csv" ./build-gpu/bench/bench-moe \
    --case "top-8 of 64" --mode auto --layer-only --reps 5 --warmup 2 2>&1 | grep -E "^\| top"
  python3 bench/kernel_gaps.py "$OUT/timeline-moe.csv" router_topk 2 | tee "$OUT/timeline-moe.md" | grep -E "^period"
fi
if [[ $STEPS == *e2e* ]]; then
  log "end-to-end gpt2-124m"
  ./build-gpu/bench/bench-train configs/gpt2-124m.json --batch 32 --seq 1024 --steps 20 2>&1 | tee "$OUT/bench-train.txt" | tail -6
  PYTHONUNBUFFERED=1 python3 bench/torch_reference.py configs/gpt2-124m.json --batch 32 --seq 1024 --steps 20 2>&1 \
    | tee "$OUT/torch-reference.txt" | tail -3
  log "end-to-end MoE top-2 of 8, expert hidden 4992, 8 x 2048 (DESIGN.md's PyTorch eager MoE figure)"
  ./build-gpu/bench/bench-train configs/moe-top2-of-8.json --batch 8 --seq 2048 --steps 10 --set model.moe_hidden=4992 \
    2>&1 | tee "$OUT/bench-train-moe.txt" | tail -3
  PYTHONUNBUFFERED=1 python3 bench/torch_reference.py configs/moe-top2-of-8.json --batch 8 --seq 2048 --steps 10 \
    --no-compile --set moe_hidden=4992 2>&1 | tee "$OUT/torch-reference-moe.txt" | tail -3
  log "tiny-cpu config trained on the GPU"
  ./build-gpu/ultramem-train configs/tiny-cpu.json --set train.out_dir=/tmp/tiny-gpu 2>&1 | tail -8 | tee "$OUT/tiny-gpu.txt"
fi
if [[ $STEPS == *mem* ]]; then
  log "memory layers: gather bandwidth, layer fwd+bwd vs PyTorch, UltraMemV2 vs its dense backbone"
  ./build-gpu/bench/bench-memory-lookup 2>&1 | tee "$OUT/bench-memory-lookup.txt" | tail -8
  ./build-gpu/bench/bench-memory-layer 2>&1 | tee "$OUT/bench-memory-layer.txt" | tail -4
  PYTHONUNBUFFERED=1 python3 bench/torch_memory_layer.py configs/ultramemv2-227m-1.2b.json 2>&1 \
    | tee "$OUT/torch-memory-layer.txt" | tail -5
  ./build-gpu/bench/bench-train configs/ultramemv2-227m-1.2b.json --batch 8 --seq 2048 --steps 10 2>&1 \
    | tee "$OUT/bench-train-ultramemv2.txt" | tail -3
  ./build-gpu/bench/bench-train configs/ultramemv2-227m-1.2b.json --batch 8 --seq 2048 --steps 10 --set model.mem_type=none 2>&1 \
    | tee "$OUT/bench-train-backbone.txt" | tail -3
fi
if [[ $STEPS == *compare* ]]; then
  log "UltraMemV2-small vs dense of equal active compute on the shared corpus (.device/corpus)"
  for run in ultramemv2-small dense-small; do
    ./build-gpu/ultramem-train configs/$run.json --set train.out_dir=/tmp/runs/$run \
      --set "data.train=.device/corpus/corpus-train-*.bin" --set "data.val=.device/corpus/heldout-train-*.bin" \
      > "/tmp/train-$run.log" 2>&1; tail -3 "/tmp/train-$run.log"
    cp /tmp/runs/$run/metrics.jsonl "$OUT/metrics-$run.jsonl"
  done
  python3 bench/plot_val_loss.py "$OUT/val-loss.svg" UltraMemV2-small=/tmp/runs/ultramemv2-small dense-small=/tmp/runs/dense-small \
    | tee "$OUT/compare.txt"
fi
