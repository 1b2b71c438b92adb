// The sm90 grouped GEMM's shapes and parameters (cuda/grouped_gemm_sm90.cu): the CTA tile and its
// shared-memory layout, the group table and the arguments every kernel mode reads.
#pragma once
#include <cstdint>

#include "grouped_gemm_sm90.cuh"

namespace um::cuda::sm90 {

constexpr int kBM = 128, kBK = 64, kThreads = 384;  // producer + two consumer warpgroups
constexpr int kConsumerWarps = 8;
// One 64-row x 128-byte block in the 128-byte swizzle: 64 rows of a K-major tile (64 k-values each), one
// MN-major panel (64 k rows of 64 mn), one epilogue chunk; operands move in these units.
constexpr int kBoxBytes = 64 * 128;
// Epilogue staging: per consumer warpgroup two 8 KiB buffers, each one 64-row x 128-byte chunk of its
// 64 x BN output (64 bf16 or 32 f32 columns) that a TMA store (or reduce-add) then writes out.
constexpr int kChunkBytes = kBoxBytes, kStagingBytes = 2 * 2 * kChunkBytes;

template <int BN, int STAGES>
struct Tile {
  static constexpr int kBN = BN, kStages = STAGES;
  static constexpr int kAcc = BN / 2;  // fp32 accumulators per thread (64 rows x BN per warpgroup)
  static constexpr int kABytes = kBM * kBK * 2, kBBytes = BN * kBK * 2, kStageBytes = kABytes + kBBytes;
  static constexpr int kStagingOffset = STAGES * kStageBytes;  // the epilogue's staging, after the stages
  static constexpr int kBarrierOffset = kStagingOffset + kStagingBytes;  // the 2 x STAGES mbarriers
  // + room to align the base to 1024 (the swizzle's period)
  static constexpr int kSmemBytes = kBarrierOffset + 2 * STAGES * 8 + 1024;
  static_assert(kSmemBytes <= 232448, "Hopper's 227 KiB of shared memory per block");
};
using Wide = Tile<256, 4>;    // 192 KiB of stages
using Narrow = Tile<128, 6>;  // 192 KiB of stages; only with UM_SM90_TILE=narrow (tests, benchmarks)

// Group table as a kernel parameter (12 KiB: parameters may be up to 32 KiB since CUDA 12.1): no upload,
// no synchronisation. tile_start[g]: the first m-tile of group g in the "rows" grid.
struct Groups {
  int count;
  int start[kMaxGroups];
  int size[kMaxGroups];
  int tile_start[kMaxGroups + 1];
};

struct Args {
  void* c;
  int64_t ldc, c_group_stride;  // weights: elements between consecutive groups' C
  int M, N, K;                  // rows: N, K (M from the groups); weights: M, N (K is the group's size)
  int accumulate;
  // kRowsDSwiGLU and kRowsSwiGLU: the rows' scales s (f32 [rows]); kRowsDSwiGLU: the partial sums of ds,
  // [n-tiles][rows_total].
  const float* row_scale;
  float* ds_partial;
  int64_t rows_total;
  void* c2 = nullptr;  // kRowsSwiGLU: a = s swiglu(h) (bf16 [rows, N]); c is h = [gate | up]
  // Set by the launch where the grid and the n-tiles per block have a common factor: CTA c's n position
  // (c + step x grid) % n_tiles would then repeat within fewer than n_tiles steps (with 4 n-tiles of w1 on
  // 132 SMs a CTA keeps one for good), so the CTAs on a narrow tail tile run ahead of the others sharing
  // their m-tile's rows, which L2 then no longer holds: on the 64-expert layer the w1 forward and the
  // fused w2 dx read 525 and 780 MB from DRAM instead of 287 and 490 (ncu). Turning the positions per
  // wave keeps the tiles of a block on adjacent CTAs of one wave; where the factors are coprime the
  // positions rotate by themselves and the plain order measured as fast or faster.
  int turn_n = 0;
  // weights: a second product over the same groups in the same launch (its tiles after the first's
  // pair_tiles; 0: none), so the two share one tail wave. Its A, B and C come in map_h, map_du, map_b2.
  int pair_tiles = 0, M2 = 0, N2 = 0, accumulate2 = 0;
};

// The products: rows with a K-major B (w1's forward), rows with an MN-major B (w1's dx, w2's forward),
// weights (dW), w2's dx product (K-major B) whose epilogue applies SwiGLU's backward (kRowsDSwiGLU:
// C = dact never reaches memory), and the SwiGLU forward product whose epilogue writes both h = [gate |
// up] and a = s swiglu(h) (kRowsSwiGLU: its tiles pair gate and up columns; N counts the pairs).
enum Mode { kRowsKB = 0, kRowsMNB = 1, kWeights = 2, kRowsDSwiGLU = 3, kRowsSwiGLU = 4 };

}  // namespace um::cuda::sm90
