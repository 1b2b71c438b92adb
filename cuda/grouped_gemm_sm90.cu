// Hopper grouped GEMM (see grouped_gemm_sm90.cuh).
//
// Warp-specialised: one producer warpgroup (a single thread issues the copies) and two consumer
// warpgroups (64 rows of the 128 x BN tile each). The producer moves each k-step's tiles with the tensor
// memory accelerator (cp.async.bulk.tensor, from tensor maps passed as kernel parameters) into one of
// STAGES shared-memory slots and the copy engine signals the slot's "full" mbarrier with the bytes; the
// consumers wait on it, issue the k-step's four wgmmas, and once the previous k-step's batch has finished
// (wgmma.wait_group 1) each consumer warp frees that slot through its "empty" mbarrier. So copies run
// STAGES - 1 k-steps ahead, the tensor cores always have the next batch queued, and no thread spends
// issue slots on copies. The epilogue is staged too: each consumer warpgroup writes its 64 x BN slab to
// shared memory in 128-byte-wide chunks, and TMA stores (a reduce-add for an accumulated dW) carry them to
// global memory while the warpgroup moves on to its next tile's k-steps. Full-line bulk writes replace
// the half-sector register stores that made ~30% of the L2 traffic, and dW's read-modify-write of the
// f32 gradient happens in L2 instead of stalling the consumers.
//
// Shared-memory tiles use the 128-byte swizzle on both sides (the copy engine writes it, wgmma reads it
// through matrix descriptors): a K-major tile is ROWS x 128 bytes (64 k-values per row); an MN-major tile
// is 64-wide panels of [64 k rows][64 mn], 8 KiB apart.
// Edges: a tile's width is N's tail rounded up to 64 (a 64-, 128- or 192-wide wgmma), so n pads at most
// 63 columns, and a consumer whose 64 rows lie wholly past the group's end (or M) issues no wgmma. What
// is still computed past an edge comes from whatever the copy brought and is never stored: rows past a
// group's end, columns past N; a k tail past the tensor is zero-filled by the copy engine; in the weights
// kernel, whose k runs over a group's rows, the consumers zero the rows past the group's end before the
// last k-step.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <string>
#include <type_traits>

// The portable PTX pass sees the tile constants but compiles empty kernels: no unused-member warnings.
#pragma nv_diag_suppress 177

#include "grouped_gemm_sm90.cuh"
#include "grouped_gemm_sm90_epilogue.cuh"
#include "grouped_gemm_sm90_tile.cuh"
#include "tma_sm90.cuh"
#include "wgmma_sm90.cuh"

namespace um::cuda::sm90 {
namespace {

// Where tile t of the grid lies. rows modes: n-tile fastest, then the m-tiles of all groups in order
// (tile_start maps one to its group); weights: n-tile, m-tile, then group, the first product's tiles
// before the second's (Args::pair_tiles). kRowsSwiGLU's n-tiles are kBN / 2 [gate, up] pairs (n0 the
// first pair), so width = 2 x the tile's pairs (rounded up to 32).
struct TileCoords {
  int g, m0, m_end, n0, width, k_len, row_base;  // width: the tile's columns (a multiple of 64)
  int n_end;                                     // the product's N
  bool second;                                   // weights: the tile belongs to the second product
};
template <class T, int kMode>
__device__ __forceinline__ TileCoords tile_coords(int t, const Groups& groups, const Args& args) {
  TileCoords c;
  int M = args.M, N = args.N;
  c.second = false;
  if constexpr (kMode == kWeights) {
    if (args.pair_tiles > 0 && t >= args.pair_tiles) t -= args.pair_tiles, M = args.M2, N = args.N2, c.second = true;
  }
  c.n_end = N;
  // kRowsSwiGLU: kBN / 2 pairs per n-tile, the tail's rounded up to 32 (width 2 x that); else kBN columns,
  // the tail's rounded up to 64.
  constexpr int kStep = kMode == kRowsSwiGLU ? T::kBN / 2 : T::kBN, kRound = kMode == kRowsSwiGLU ? 32 : 64;
  const int n_tiles = (N + kStep - 1) / kStep, block = t / n_tiles;
  // With turn_n the n-tiles of a block turn by one position per wave of the persistent grid (see Args).
  const int turn = args.turn_n ? int(int64_t(block) * n_tiles / int(gridDim.x)) : 0;
  c.n0 = ((t % n_tiles + turn) % n_tiles) * kStep;
  const int rest = (N - c.n0 + kRound - 1) / kRound * kRound;
  c.width = (rest < kStep ? rest : kStep) * (kMode == kRowsSwiGLU ? 2 : 1);
  t = block;
  if constexpr (kMode == kWeights) {
    const int m_tiles = (M + kBM - 1) / kBM;
    c.g = t / m_tiles, c.m0 = (t % m_tiles) * kBM, c.m_end = M;
    c.row_base = groups.start[c.g], c.k_len = groups.size[c.g];
  } else {
    int lo = 0, hi = groups.count - 1;  // the last group whose tile_start <= t
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (groups.tile_start[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    c.g = lo;
    c.m0 = groups.start[lo] + (t - groups.tile_start[lo]) * kBM, c.m_end = groups.start[lo] + groups.size[lo];
    c.row_base = 0, c.k_len = args.K;
  }
  return c;
}

// A persistent CTA per SM walks tiles blockIdx.x, + gridDim.x, ... ; producer and consumers walk the same
// k-steps in the same order with one running k-step count `it` (slot it % STAGES, phase it / STAGES), so
// the producer fills the next tile's first slots while the consumers finish and store the current one.
template <class T, int kMode>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                const __grid_constant__ CUtensorMap map_c, const __grid_constant__ CUtensorMap map_h,
                const __grid_constant__ CUtensorMap map_du, const __grid_constant__ CUtensorMap map_b2,
                const __grid_constant__ Groups groups, const Args args, int tiles) {
#ifdef UM_SM90_DEVICE
  constexpr bool kAmn = kMode == kWeights, kBmn = kMode == kRowsMNB || kMode == kWeights;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  // The mbarriers after the staging, where no epilogue chunk overwrites them.
  const uint32_t full0 = base + uint32_t(T::kBarrierOffset), empty0 = full0 + 8u * T::kStages;
  const int wg = int(threadIdx.x) >> 7;
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; ++s) mbar_init(full0 + 8u * s, 1), mbar_init(empty0 + 8u * s, kConsumerWarps);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x != 0) return;
    int it = 0;
    for (int t = int(blockIdx.x); t < tiles; t += int(gridDim.x)) {
      const TileCoords c = tile_coords<T, kMode>(t, groups, args);
      const int kt_count = (c.k_len + kBK - 1) / kBK;
      for (int kt = 0; kt < kt_count; ++kt, ++it) {
        const int s = it % T::kStages;
        if (it >= T::kStages) mbar_wait(empty0 + 8u * s, uint32_t(((it / T::kStages) & 1) ^ 1));
        const uint32_t full = full0 + 8u * s, a = base + uint32_t(s * T::kStageBytes), b = a + T::kABytes;
        const int k0 = kt * kBK;
        // B in 64-column units (64 K-major rows or one MN-major panel, 8 KiB each), only the tile's width.
        const int b_units = c.width / 64;
        if constexpr (kMode == kWeights) {  // both MN-major over the group's rows: 64 x 64 panels
          // A's second panel only where the second consumer's 64 rows lie inside M. The second product's
          // operands come in map_h / map_du.
          const int a_units = c.m0 + 64 < c.m_end ? 2 : 1;
          const CUtensorMap& ma = c.second ? map_h : map_a;
          const CUtensorMap& mb = c.second ? map_du : map_b;
          mbar_expect_tx(full, (a_units + b_units) * kBoxBytes);
          for (int p = 0; p < a_units; ++p)
            tma_2d(a + uint32_t(kBoxBytes * p), ma, c.m0 + 64 * p, c.row_base + k0, full);
          for (int p = 0; p < b_units; ++p)
            tma_2d(b + uint32_t(kBoxBytes * p), mb, c.n0 + 64 * p, c.row_base + k0, full);
        } else {
          mbar_expect_tx(full, T::kABytes + b_units * kBoxBytes);
          tma_2d(a, map_a, k0, c.m0, full);  // the rows' 128 x 64 K-major tile
          if constexpr (kMode == kRowsSwiGLU) {
            // W1 [G 2 N, K]: the pairs' gate rows fill B's first P rows, their up rows the next P (P a
            // multiple of 32: 64-row boxes, then a 32-row one from map_b2), so one wgmma W wide covers both.
            const int P = c.width / 2;
            for (int half = 0; half < 2; ++half)
              for (int r = 0; r < P; r += 64) {
                const uint32_t dst = b + uint32_t((half * P + r) * 128);
                const int row = (2 * c.g + half) * args.N + c.n0 + r;
                if (P - r >= 64) tma_2d(dst, map_b, k0, row, full);
                else tma_2d(dst, map_b2, k0, row, full);
              }
          } else {
            for (int p = 0; p < b_units; ++p) {
              if constexpr (!kBmn)  // W [G N, K]
                tma_2d(b + uint32_t(kBoxBytes * p), map_b, k0, c.g * args.N + c.n0 + 64 * p, full);
              else  // W [G][K][N]
                tma_3d(b + uint32_t(kBoxBytes * p), map_b, c.n0 + 64 * p, k0, c.g, full);
            }
          }
        }
      }
      if constexpr (kMode == kRowsDSwiGLU) {  // the epilogue's gate and up, a slot per 64-column chunk
        for (int q = 0; q < c.width / 64; ++q, ++it) {
          const int s = it % T::kStages;
          if (it >= T::kStages) mbar_wait(empty0 + 8u * s, uint32_t(((it / T::kStages) & 1) ^ 1));
          const uint32_t full = full0 + 8u * s, slot = base + uint32_t(s * T::kStageBytes);
          mbar_expect_tx(full, 4 * kBoxBytes);
          for (int p = 0; p < 4; ++p)  // h = [gate | up], [rows, 2 N]: gate rows m0, m0 + 64, then up's
            tma_2d(slot + uint32_t(kBoxBytes * p), map_h, (p >= 2 ? args.N : 0) + c.n0 + q * 64, c.m0 + 64 * (p & 1),
                   full);
        }
      }
    }
    return;
  }

  // consumers
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int cw = wg - 1;
  constexpr uint64_t kStageField = T::kStageBytes >> 4;
  constexpr uint64_t kKkA = (kAmn ? 2048 : 32) >> 4, kKkB = (kBmn ? 2048 : 32) >> 4;
  // This warpgroup's 64 rows: K-major rows 64 cw.. (8 KiB in), MN-major panel cw (also 8 KiB in).
  const uint64_t da0 = operand_desc<kAmn>(base + uint32_t(cw * kBoxBytes)), db0 = operand_desc<kBmn>(base + T::kABytes);
  // A slot is free when every consumer warp has waited for the batch that read it: one arrival per warp
  // (lane 0, after the warp's own wgmma.wait_group).
  const bool releaser = (threadIdx.x & 31) == 0;
  const uint32_t staging = base + uint32_t(T::kStagingOffset);
  int it = 0, ep = 0;
  for (int t = int(blockIdx.x); t < tiles; t += int(gridDim.x)) {
    const TileCoords c = tile_coords<T, kMode>(t, groups, args);
    const int kt_count = (c.k_len + kBK - 1) / kBK;
    // A warpgroup whose 64 rows all lie past the group's end (or M) only keeps the slots' rhythm.
    const int slab0 = c.m0 + cw * 64;
    const bool active = slab0 < c.m_end;
    // The SwiGLU epilogues' row scales (this thread's two rows), loaded before the k-steps so that their
    // latency hides behind them instead of stalling the epilogue.
    float scale[2] = {0.f, 0.f};
    if constexpr (kMode == kRowsSwiGLU || kMode == kRowsDSwiGLU) {
      const int row0 = slab0 + ((int(threadIdx.x) >> 5) & 3) * 16 + (int(threadIdx.x) & 31) / 4;
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (active && row0 + 8 * i < c.m_end) scale[i] = args.row_scale[row0 + 8 * i];
    }
    float acc[T::kAcc];
#pragma unroll
    for (int i = 0; i < T::kAcc; ++i) acc[i] = 0.f;
    // The tile's k-steps with wgmmas W columns wide.
    auto k_loop = [&](auto width) {
      constexpr int W = decltype(width)::value;
      for (int kt = 0; kt < kt_count; ++kt, ++it) {
        const int s = it % T::kStages;
        mbar_wait(full0 + 8u * s, uint32_t((it / T::kStages) & 1));
        if constexpr (kMode == kWeights) {
          const int valid = c.k_len - kt * kBK;  // rows of this k-step inside the group
          if (valid < kBK) {  // the last k-step: zero the next group's rows in every panel
            constexpr int kPanels = (kBM + T::kBN) / 64, kChunks = kPanels * kBK * 8;
            const uint32_t tile = base + uint32_t(s * T::kStageBytes);
            for (int q = int(threadIdx.x) - 128; q < kChunks; q += 256) {
              const int panel = q / (kBK * 8), row = (q / 8) % kBK;
              if (row >= valid)
                asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(tile + uint32_t(panel * kBoxBytes + row * 128 + (q % 8) * 16)),
                             "r"(0)
                             : "memory");
            }
            fence_proxy_async();  // ordinary stores before the tensor cores read them
            asm volatile("bar.sync 1, 256;\n" ::: "memory");
          }
        }
        const uint64_t stage = uint64_t(s) * kStageField;
        fence_regs(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)
          mma_k16<W, kAmn ? 1 : 0, kBmn ? 1 : 0>(acc, da0 + stage + kk * kKkA, db0 + stage + kk * kKkB);
        wgmma_commit();
        wgmma_wait<1>();  // the previous k-step's batch has finished: its slot is free
        fence_regs(acc);
        if (kt > 0 && releaser) mbar_arrive(empty0 + 8u * ((it - 1) % T::kStages));
      }
      wgmma_wait<0>();
      fence_regs(acc);
    };
    // The k-steps, the last slot's release, and kRowsSwiGLU's epilogue, which needs the width at compile
    // time (where the gate and up columns meet).
    auto tile = [&](auto width) {
      k_loop(width);
      if (kt_count > 0 && releaser) mbar_arrive(empty0 + 8u * ((it - 1) % T::kStages));
      if constexpr (kMode == kRowsSwiGLU && decltype(width)::value > 0)
        swiglu_forward_chunks<T, decltype(width)::value>(acc, scale, cw, staging, map_c, map_du, map_h, args, c.n0,
                                                         slab0, c.m_end, ep);
    };
    using std::integral_constant;
    if (!active) tile(integral_constant<int, 0>{});
    else if (c.width == T::kBN) tile(integral_constant<int, T::kBN>{});
    else if (c.width == 64) tile(integral_constant<int, 64>{});
    else if constexpr (T::kBN == 256) {
      if (c.width == 128) tile(integral_constant<int, 128>{});
      else tile(integral_constant<int, 192>{});
    }
    // TMA stores wherever the box's bounds are the tensor's: every weights slab (C_g is its own [M, N]
    // box of the 3-d map; accumulate = reduce-add) and rows slabs wholly inside the group without
    // accumulate. A slab crossing the group's end (the next group's rows) or accumulating into bf16 takes
    // direct stores. (kRowsSwiGLU stored its slab in tile() above.)
    if constexpr (kMode == kWeights) {
      if (active)
        store_slab_tma<T, float>(acc, cw, staging, c.second ? map_b2 : map_c, c.n0, c.n_end, slab0, c.g,
                                 (c.second ? args.accumulate2 : args.accumulate) != 0, ep);
    } else if constexpr (kMode == kRowsDSwiGLU) {
      swiglu_backward_chunks<T>(acc, scale, cw, base, staging, full0, empty0, it, map_c, map_du, args, c.n0, c.width,
                                slab0, c.m_end);
    } else if constexpr (kMode != kRowsSwiGLU) {
      if (slab0 + 64 <= c.m_end && !args.accumulate)
        store_slab_tma<T, bf16>(acc, cw, staging, map_c, c.n0, args.N, slab0, 0, false, ep);
      else if (slab0 < c.m_end)
        store_tile<T>(acc, cw, static_cast<bf16*>(args.c), args.ldc, c.m0, c.m_end, c.n0, args.N,
                      args.accumulate != 0);
    }
  }
  if ((threadIdx.x & 127) == 0) bulk_wait_all();  // the last stores have read shared memory and landed
#endif
}

__global__ void probe_kernel(int* out) {
#ifdef UM_SM90_DEVICE
  *out = 1;
#else
  *out = 0;
#endif
}

// cuTensorMapEncodeTiled from the driver (through the runtime: no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    UM_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    UM_CHECK(q == cudaDriverEntryPointSuccess && p, "the driver's cuTensorMapEncodeTiled", int(q));
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A bf16 (or f32) tensor map with the 128-byte swizzle; dims and boxes innermost first, strides in elements.
template <int R>
CUtensorMap tensor_map(const void* ptr, const uint64_t (&dims)[R], const uint64_t (&strides)[R - 1],
                       const uint32_t (&box)[R], bool f32 = false) {
  CUtensorMap map;
  cuuint64_t d[R], st[R > 1 ? R - 1 : 1];
  cuuint32_t b[R], e[R];
  for (int i = 0; i < R; ++i) d[i] = dims[i], b[i] = box[i], e[i] = 1;
  for (int i = 0; i + 1 < R; ++i) st[i] = strides[i] * (f32 ? 4 : 2);
  const CUresult r = encoder()(&map, f32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, R, const_cast<void*>(ptr), d, st, b, e,
                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  UM_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled to accept the sm90 grouped GEMM's operand", int(r));
  return map;
}

// Half `half` (0: gate, 1: up) of a [rows, 2 N] bf16 tensor as a [rows, N] tensor of row stride 2 N, in
// 64 x 64 chunks: the SwiGLU epilogues' stores, which clip at N.
CUtensorMap half_map(bf16* p, int half, uint64_t N, uint64_t R) {
  return tensor_map<2>(p + half * N, {N, R}, {2 * N}, {64u, 64u});
}

// One launch of kernel K (a template argument, so each kernel raises its shared-memory limit once).
// Persistent: one CTA per SM (or fewer when there are fewer tiles).
// h, du and b2: the modes' extra maps (c stands in where a mode has none): kRowsDSwiGLU's gate / up
// source (h) and dup destination (du); kRowsSwiGLU's a destination (h), up destination (du; c is gate's)
// and W1 in 32-row boxes (b2); the weights pair's second A (h), B (du) and C (b2).
// n_tiles: the tiles along n per m-tile (per (m-tile, group) for weights; the first product's for a
// pair, whose second product's rotation then only balances less well), for Args::turn_n.
template <auto K>
void launch(int smem_bytes, int64_t tiles, int64_t n_tiles, const CUtensorMap& a, const CUtensorMap& b,
            const CUtensorMap& c, const Groups& g, Args args, const CUtensorMap* h = nullptr,
            const CUtensorMap* du = nullptr, const CUtensorMap* b2 = nullptr) {
  static const cudaError_t raised = cudaFuncSetAttribute(K, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  UM_CUDA(raised);
  UM_CHECK(tiles < int64_t(INT32_MAX), "sm90 grouped GEMM: fewer than 2^31 tiles", tiles);
  if (tiles == 0) return;
  const unsigned ctas = unsigned(std::min<int64_t>(tiles, sm_count()));
  args.turn_n = std::gcd(int64_t(ctas), n_tiles) > 1 ? 1 : 0;
  K<<<ctas, kThreads, smem_bytes, stream()>>>(a, b, c, h ? *h : c, du ? *du : c, b2 ? *b2 : c, g, args, int(tiles));
  UM_CUDA_LAUNCHED();
}

// UM_SM90_TILE=narrow forces the 128 x 128 tile (tests and benchmarks compare the two). Otherwise the
// 256-wide one: with its n tail cut to a multiple of 64 it pads no more than the narrow tile and loads A
// half as often per column.
bool wide_tile() {
  static const bool narrow_only = [] {
    const char* e = std::getenv("UM_SM90_TILE");
    return e && std::string(e) == "narrow";
  }();
  return !narrow_only;
}

void fill_groups(Groups& g, const ops::RowGroups& h) {
  UM_CHECK(h.start.size() == h.size.size() && h.size.size() <= size_t(kMaxGroups) && !h.size.empty(),
           "sm90 grouped GEMM: 1 to 1024 groups", h.size.size());
  g.count = int(h.size.size());
  int tiles = 0;
  for (int i = 0; i < g.count; ++i) {
    g.start[i] = int(h.start[size_t(i)]);
    g.size[i] = int(h.size[size_t(i)]);
    g.tile_start[i] = tiles;
    tiles += (g.size[i] + kBM - 1) / kBM;
  }
  g.tile_start[g.count] = tiles;
}

template <class T>
void rows(const Groups& g, const Args& args, const bf16* a, const bf16* b, bool b_mn_major, int64_t rows_total) {
  const uint64_t N = uint64_t(args.N), K = uint64_t(args.K), G = uint64_t(g.count), R = uint64_t(rows_total);
  const CUtensorMap ma = tensor_map<2>(a, {K, R}, {K}, {uint32_t(kBK), uint32_t(kBM)});
  const CUtensorMap mc = tensor_map<2>(args.c, {N, R}, {uint64_t(args.ldc)}, {64u, 64u});  // 64 x 64 bf16 chunks
  const int64_t n_tiles = ceil_div(args.N, T::kBN), tiles = n_tiles * g.tile_start[g.count];
  if (b_mn_major) {  // W [G][K][N]: 64 x 64 panels
    const CUtensorMap mb = tensor_map<3>(b, {N, K, G}, {N, K * N}, {64u, uint32_t(kBK), 1u});
    launch<gemm_kernel<T, kRowsMNB>>(T::kSmemBytes, tiles, n_tiles, ma, mb, mc, g, args);
  } else {  // W [G N, K]: 64 x 64 boxes (the tile's width of them)
    const CUtensorMap mb = tensor_map<2>(b, {K, G * N}, {K}, {uint32_t(kBK), 64u});
    launch<gemm_kernel<T, kRowsKB>>(T::kSmemBytes, tiles, n_tiles, ma, mb, mc, g, args);
  }
}

// dh = [dgate | dup] (bf16 [rows, 2 N]) from dact = dy . W_g^T (dy [rows, K], W [G][N][K]) and h = [gate | up].
template <class T>
void rows_swiglu_backward(const Groups& g, const Args& args, const bf16* dy, const bf16* w, const bf16* h, bf16* dh,
                          int64_t rows_total) {
  const uint64_t N = uint64_t(args.N), K = uint64_t(args.K), G = uint64_t(g.count), R = uint64_t(rows_total);
  const CUtensorMap ma = tensor_map<2>(dy, {K, R}, {K}, {uint32_t(kBK), uint32_t(kBM)});
  const CUtensorMap mb = tensor_map<2>(w, {K, G * N}, {K}, {uint32_t(kBK), 64u});  // K-major, as the forward's
  const CUtensorMap mh = tensor_map<2>(h, {2 * N, R}, {2 * N}, {64u, 64u});
  const CUtensorMap mdg = half_map(dh, 0, N, R), mdu = half_map(dh, 1, N, R);
  const int64_t n_tiles = ceil_div(args.N, T::kBN), tiles = n_tiles * g.tile_start[g.count];
  launch<gemm_kernel<T, kRowsDSwiGLU>>(T::kSmemBytes, tiles, n_tiles, ma, mb, mdg, g, args, &mh, &mdu);
}

// h = [gate | up] (bf16 [rows, 2 N]) = x (bf16 [rows, K]) . W1_g^T (W1 [G][2 N][K]) and a = s swiglu(h)
// (bf16 [rows, N]); N counts the pairs.
template <class T>
void rows_swiglu(const Groups& g, const Args& args, const bf16* x, const bf16* w1, bf16* h, bf16* a,
                 int64_t rows_total) {
  const uint64_t N = uint64_t(args.N), K = uint64_t(args.K), G = uint64_t(g.count), R = uint64_t(rows_total);
  const CUtensorMap mx = tensor_map<2>(x, {K, R}, {K}, {uint32_t(kBK), uint32_t(kBM)});
  const CUtensorMap mw = tensor_map<2>(w1, {K, 2 * G * N}, {K}, {uint32_t(kBK), 64u});
  const CUtensorMap mw32 = tensor_map<2>(w1, {K, 2 * G * N}, {K}, {uint32_t(kBK), 32u});
  const CUtensorMap mg = half_map(h, 0, N, R), mu = half_map(h, 1, N, R);
  const CUtensorMap ma = tensor_map<2>(a, {N, R}, {N}, {64u, 64u});  // stores clip at N
  const int64_t n_tiles = ceil_div(args.N, T::kBN / 2), tiles = n_tiles * g.tile_start[g.count];
  launch<gemm_kernel<T, kRowsSwiGLU>>(T::kSmemBytes, tiles, n_tiles, mx, mw, mg, g, args, &ma, &mu, &mw32);
}

// One launch for one or two weights products (q: the second, over the same groups; its tiles follow p's).
template <class T>
void weights(const Groups& g, const WeightsProduct& p, const WeightsProduct* q, int64_t rows_total) {
  const uint64_t R = uint64_t(std::max<int64_t>(rows_total, 1)), G = uint64_t(g.count);
  struct Maps {
    CUtensorMap a, b, c;
  };
  auto maps = [&](const WeightsProduct& w) {
    const uint64_t M = uint64_t(w.M), N = uint64_t(w.N);
    // C [G][M][N] f32 in 64-row x 32-column chunks (128 bytes wide, as the swizzle wants).
    return Maps{tensor_map<2>(w.a, {M, R}, {M}, {64u, uint32_t(kBK)}),
                tensor_map<2>(w.b, {N, R}, {N}, {64u, uint32_t(kBK)}),
                tensor_map<3>(w.c, {N, M, G}, {N, M * N}, {32u, 64u, 1u}, true)};
  };
  auto tiles_of = [&](const WeightsProduct& w) {
    UM_CHECK(w.M > 0 && w.N > 0, "sm90 grouped GEMM weights: M and N of at least 1 (a product without tiles would "
             "shift the pair's second product)", detail::concat(w.M, " x ", w.N));
    return int64_t(ceil_div(w.N, T::kBN)) * ceil_div(w.M, kBM) * g.count;
  };
  Args args{p.c, p.N, p.M * p.N, int(p.M), int(p.N), 0, p.accumulate ? 1 : 0, nullptr, nullptr, 0};
  const Maps mp = maps(p);
  int64_t tiles = tiles_of(p);
  if (!q) {
    launch<gemm_kernel<T, kWeights>>(T::kSmemBytes, tiles, ceil_div(p.N, T::kBN), mp.a, mp.b, mp.c, g, args);
    return;
  }
  const Maps mq = maps(*q);
  args.pair_tiles = int(tiles), args.M2 = int(q->M), args.N2 = int(q->N), args.accumulate2 = q->accumulate ? 1 : 0;
  tiles += tiles_of(*q);
  launch<gemm_kernel<T, kWeights>>(T::kSmemBytes, tiles, ceil_div(p.N, T::kBN), mp.a, mp.b, mp.c, g, args, &mq.a, &mq.b,
                                   &mq.c);
}

int64_t rows_end(const ops::RowGroups& h) {
  int64_t end = 0;
  for (size_t i = 0; i < h.size.size(); ++i) end = std::max(end, h.start[i] + h.size[i]);
  return end;
}

}  // namespace

bool available() {
  static const bool ok = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0) return false;
    // The kernels run only from the sm_90a cubin (a compute_90 PTX build has empty bodies): ask the code
    // that would run.
    int* flag = nullptr;
    int host = 0;
    if (cudaMalloc(&flag, sizeof(int)) != cudaSuccess) return false;
    probe_kernel<<<1, 1>>>(flag);
    const bool ran = cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
    cudaFree(flag);
    return ran && host == 1;
  }();
  return ok;
}

void grouped_gemm_rows(const bf16* a, const bf16* b, bool b_mn_major, bf16* c, int64_t N, int64_t K,
                       const ops::RowGroups& groups, bool accumulate) {
  thread_local Groups g;  // 12 KiB: built on the host per call, copied into the launch's parameters
  fill_groups(g, groups);
  if (g.tile_start[g.count] == 0) return;
  const Args args{c, N, 0, 0, int(N), int(K), accumulate ? 1 : 0, nullptr, nullptr, 0};
  const int64_t R = rows_end(groups);
  if (wide_tile()) rows<Wide>(g, args, a, b, b_mn_major, R);
  else rows<Narrow>(g, args, a, b, b_mn_major, R);
}

int64_t weights_tiles_per_group(int64_t M, int64_t N) {
  return int64_t(ceil_div(M, kBM)) * ceil_div(N, wide_tile() ? Wide::kBN : Narrow::kBN);
}

int swiglu_backward_n_tiles(int64_t N) { return int(ceil_div(N, wide_tile() ? Wide::kBN : Narrow::kBN)); }

void grouped_gemm_rows_swiglu_backward(const bf16* dy, const bf16* w, const bf16* h, const float* row_scale,
                                       bf16* dh, float* ds_partial, int64_t rows, int64_t N, int64_t K,
                                       const ops::RowGroups& groups) {
  thread_local Groups g;
  fill_groups(g, groups);
  if (g.tile_start[g.count] == 0) return;
  const Args args{dh, 2 * N, 0, 0, int(N), int(K), 0, row_scale, ds_partial, rows};
  const int64_t R = rows_end(groups);
  if (wide_tile()) rows_swiglu_backward<Wide>(g, args, dy, w, h, dh, R);
  else rows_swiglu_backward<Narrow>(g, args, dy, w, h, dh, R);
}

void grouped_gemm_rows_swiglu(const bf16* x, const bf16* w1, const float* row_scale, bf16* h, bf16* a, int64_t N,
                              int64_t K, const ops::RowGroups& groups) {
  thread_local Groups g;
  fill_groups(g, groups);
  if (g.tile_start[g.count] == 0) return;
  const Args args{h, 2 * N, 0, 0, int(N), int(K), 0, row_scale, nullptr, 0, a};
  const int64_t R = rows_end(groups);
  if (wide_tile()) rows_swiglu<Wide>(g, args, x, w1, h, a, R);
  else rows_swiglu<Narrow>(g, args, x, w1, h, a, R);
}

void grouped_gemm_weights(const WeightsProduct& first, const ops::RowGroups& groups, const WeightsProduct* second) {
  thread_local Groups g;
  fill_groups(g, groups);
  const int64_t R = rows_end(groups);
  if (wide_tile()) weights<Wide>(g, first, second, R);
  else weights<Narrow>(g, first, second, R);
}

}  // namespace um::cuda::sm90
