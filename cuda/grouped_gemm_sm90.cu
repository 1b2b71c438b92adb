// Hopper grouped GEMM (see grouped_gemm_sm90.cuh).
//
// Shared memory per stage: the A tile (128 rows x 64 k, bf16) and the B tile (BN rows x 64 k). A K-major
// tile stores row r's 64 k-values as 8 chunks of 16 bytes at r * 128 + ((chunk ^ (r % 8)) * 16) (the
// 128-byte swizzle the tensor cores read without bank conflicts); an MN-major tile stores 64-wide panels
// of [64 k rows][64 mn], 8 KiB apart, each row swizzled the same way. wgmma reads both through matrix
// descriptors (start address, leading and stride byte offsets, swizzle mode), advancing 32 bytes
// (K-major) or 16 rows (MN-major) per k16 step.
//
// Two tile shapes (Tile below), both two consumer warpgroups of 64 rows:
//   wide   128 x 256, 4 stages (192 KiB), one CTA per SM; copies run 3 stages ahead. After issuing
//          batch kt each warpgroup waits for batch kt - 1 only (wait_group 1) and a second barrier
//          frees its slot for the next copies, so batch kt stays queued on the tensor cores meanwhile.
//   narrow 128 x 128, 3 stages (96 KiB), two CTAs per SM; copies run 2 stages ahead and each batch is
//          waited for (wait_group 0); the other CTA on the SM fills the gaps and overlaps this one's
//          prologue and epilogue.
// The widest tile whose n-padding is no worse is used (256 for 768 columns, 128 for 1632).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "grouped_gemm_sm90.cuh"

// The portable PTX pass sees the tile constants but compiles empty kernels: no unused-member warnings.
#pragma nv_diag_suppress 177

namespace um::cuda::sm90 {
namespace {

constexpr int kBM = 128, kBK = 64, kThreads = 256;

template <int BN, int STAGES, bool OVERLAP>
struct Tile {
  static constexpr int kBN = BN, kStages = STAGES;
  static constexpr bool kOverlap = OVERLAP;
  static constexpr int kPrefetch = STAGES - 1;  // stages in flight ahead
  static constexpr int kMinBlocks = OVERLAP ? 1 : 2;
  static constexpr int kAcc = BN / 2;  // fp32 accumulators per thread (64 rows x BN per warpgroup)
  static constexpr int kABytes = kBM * kBK * 2, kStageBytes = (kBM + BN) * kBK * 2;
  static constexpr int kSmemBytes = STAGES * kStageBytes + 1024;  // + room to align the base to 1024
};
using Wide = Tile<256, 4, true>;
using Narrow = Tile<128, 3, false>;

// Group table as a kernel parameter (12 KiB: parameters may be up to 32 KiB since CUDA 12.1): no upload,
// no synchronisation. tile_start[g]: the first m-tile of group g in the "rows" grid.
struct Groups {
  int count;
  int start[kMaxGroups];
  int size[kMaxGroups];
  int tile_start[kMaxGroups + 1];
};

struct Args {
  const bf16* a;
  const bf16* b;
  void* c;
  int64_t lda, ldb, ldc;
  int64_t b_group_stride, c_group_stride;  // elements between consecutive groups' B (rows) / C (weights)
  int M, N, K;                             // rows: N, K; weights: M, N (K is the group's size)
  int accumulate;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define UM_SM90_DEVICE 1
#endif

// The device code proper: compiled for sm_90a (and seen by the host pass); the portable PTX pass gets
// empty kernels, which `available` never lets run.
#if defined(UM_SM90_DEVICE) || !defined(__CUDA_ARCH__)

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// 16-byte copy global -> shared; ok == false writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Matrix descriptor: start address, leading / stride byte offsets (all >> 4), 128-byte swizzle.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(lbo >> 4) << 16) | (uint64_t(sbo >> 4) << 32) | (1ull << 62);
}

// K-major: 8-row core groups 1024 bytes apart, the leading offset unused with a swizzle (1 by convention).
// MN-major: 64-wide mn panels 8192 bytes apart (leading), 8-k-row groups 1024 bytes apart (stride).
template <bool kMN>
__device__ __forceinline__ uint64_t operand_desc(uint32_t tile, int kk) {
  if constexpr (kMN) return make_desc(tile + uint32_t(kk) * 2048u, 8192u, 1024u);
  else return make_desc(tile + uint32_t(kk) * 32u, 16u, 1024u);
}

// wgmma m64 x n x k16, f32 += bf16 . bf16; n = 2 x the accumulator count (128 or 256).
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[64], uint64_t da, uint64_t db) {
#ifdef UM_SM90_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(1), "n"(kTransA), "n"(kTransB));
#endif
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[128], uint64_t da, uint64_t db) {
#ifdef UM_SM90_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(da), "l"(db), "r"(1), "n"(kTransA), "n"(kTransB));
#endif
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator accesses across the asynchronous MMAs.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Copies one operand's ROWS x 64 tiles, k-step after k-step. K-major: element (mn, k) at src[mn * ld + k];
// MN-major: src[k * ld + mn]. Elements with mn >= mn_end or k >= k_end are zeros (both multiples of 8).
// Everything that does not change with the k-step (this thread's first source element, shared-memory
// offset and which of its copies lie inside mn_end) is computed once, so a k-step costs a few
// instructions per 16-byte copy: with two warps per scheduler, issue slots are what the loop runs on.
template <bool kMN, int ROWS>
struct TileLoader {
  static constexpr int kChunks = ROWS * kBK / 8 / kThreads;  // 16-byte copies per thread per k-step
  static constexpr int kPerK = ROWS / 8;                      // MN-major: copies per k row
  // Between this thread's consecutive copies: K-major 32 rows, MN-major kThreads / kPerK k rows, and
  // (the swizzle phase being the same) a fixed number of shared-memory bytes.
  static constexpr int kLineStep = kMN ? kThreads / kPerK : kThreads / 8;
  static constexpr uint32_t kDstStep = uint32_t(kLineStep) * 128u;
  const bf16* base;  // the tensor (a safe address for zero-filling copies)
  const bf16* src;   // this thread's first copy at k-step 0
  int64_t line;      // elements between consecutive copies (kLineStep rows or k rows)
  int64_t step;      // elements per k-step
  uint32_t dst;      // offset of this thread's first copy in the tile
  uint32_t valid;    // bit i: copy i's mn coordinate is below mn_end
  int k_first, k_end;

  __device__ __forceinline__ TileLoader(const bf16* t, int64_t ld, int mn0, int mn_end, int k_len, int tid)
      : base(t), line(int64_t(kLineStep) * ld), k_end(k_len) {
    valid = 0;
    if constexpr (!kMN) {
      const int r = tid >> 3, j = tid & 7;
      src = t + int64_t(mn0 + r) * ld + j * 8;
      step = kBK;
      dst = uint32_t(r * 128 + ((j ^ (r & 7)) << 4));
      k_first = j * 8;
#pragma unroll
      for (int i = 0; i < kChunks; ++i) valid |= uint32_t(mn0 + r + i * kLineStep < mn_end) << i;
    } else {
      const int kr = tid / kPerK, q = tid % kPerK;
      src = t + int64_t(kr) * ld + mn0 + q * 8;
      step = int64_t(kBK) * ld;
      dst = uint32_t((q >> 3) * 8192 + kr * 128 + (((q & 7) ^ (kr & 7)) << 4));
      k_first = kr;
      if (mn0 + q * 8 < mn_end) valid = (1u << kChunks) - 1;
    }
  }

  __device__ __forceinline__ void load(uint32_t tile, int kt) const {
    const bf16* p = src + kt * step;
    const int k = kt * kBK + k_first;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const bool ok = ((valid >> i) & 1u) && (kMN ? k + i * kLineStep : k) < k_end;
      cp_async16(tile + dst + uint32_t(i) * kDstStep, ok ? p + i * line : base, ok);
    }
  }
};

// acc = A[m0.., k] . B[n0.., k]^T over k in [0, k_len) for this CTA's 128 x BN tile.
template <class T, bool kAmn, bool kBmn>
__device__ __forceinline__ void mainloop(float (&acc)[T::kAcc], uint8_t* smem, const bf16* a, int64_t lda, int m0,
                                         int m_end, const bf16* b, int64_t ldb, int n0, int n_end, int k_len) {
  const int tid = threadIdx.x, wg = tid >> 7;
  const uint32_t base = (smem_addr(smem) + 1023u) & ~1023u;
  auto a_slot = [&](int s) { return base + uint32_t(s * T::kStageBytes); };
  auto b_slot = [&](int s) { return base + uint32_t(s * T::kStageBytes + T::kABytes); };
  const TileLoader<kAmn, kBM> la(a, lda, m0, m_end, k_len, tid);
  const TileLoader<kBmn, T::kBN> lb(b, ldb, n0, n_end, k_len, tid);
  auto load = [&](int s, int kt) {
    la.load(a_slot(s), kt);
    lb.load(b_slot(s), kt);
  };
  // Descriptors of k16 step 0 in stage 0; a stage and a k16 step only add to the address field.
  // This warpgroup's 64 rows: K-major rows 64 wg.. (8 KiB in), MN-major panel wg (also 8 KiB in).
  const uint64_t da0 = operand_desc<kAmn>(a_slot(0) + uint32_t(wg) * 8192u, 0), db0 = operand_desc<kBmn>(b_slot(0), 0);
  constexpr uint64_t kStageField = T::kStageBytes >> 4;
  constexpr uint64_t kKkA = (kAmn ? 2048 : 32) >> 4, kKkB = (kBmn ? 2048 : 32) >> 4;
  const int kt_count = (k_len + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < T::kPrefetch; ++s) {
    if (s < kt_count) load(s, s);
    cp_async_commit();
  }
#pragma unroll
  for (int i = 0; i < T::kAcc; ++i) acc[i] = 0.f;
  for (int kt = 0; kt < kt_count; ++kt) {
    cp_async_wait<T::kPrefetch - 1>();
    fence_proxy_async();  // the copies (generic proxy) before the tensor cores' reads (async proxy)
    __syncthreads();
    const uint64_t stage = uint64_t(kt % T::kStages) * kStageField;
    fence_regs(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)
      wgmma_m64k16<kAmn ? 1 : 0, kBmn ? 1 : 0>(acc, da0 + stage + kk * kKkA, db0 + stage + kk * kKkB);
    wgmma_commit();
    // The copies below overwrite the slot batch kt - 1 read: every warpgroup must be done with it.
    // overlap: batch kt stays queued behind it on the tensor cores while the barrier and copies run.
    if constexpr (T::kOverlap) {
      wgmma_wait<1>();
      __syncthreads();
    } else {
      wgmma_wait<0>();
    }
    fence_regs(acc);
    const int next = kt + T::kPrefetch;
    if (next < kt_count) load(next % T::kStages, next);
    cp_async_commit();
  }
  wgmma_wait<0>();
  fence_regs(acc);
}

__device__ __forceinline__ void store_pair(bf16* p, float v0, float v1, bool accumulate) {
  if (accumulate) {
    const __nv_bfloat162 o = *reinterpret_cast<const __nv_bfloat162*>(p);
    v0 += __bfloat162float(o.x), v1 += __bfloat162float(o.y);
  }
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1);
}
__device__ __forceinline__ void store_pair(float* p, float v0, float v1, bool accumulate) {
  float2 v = make_float2(v0, v1);
  if (accumulate) {
    const float2 o = *reinterpret_cast<const float2*>(p);
    v.x += o.x, v.y += o.y;
  }
  *reinterpret_cast<float2*>(p) = v;
}

// The wgmma accumulator layout: thread (warp w of its warpgroup, lane l) holds rows 16 w + l / 4 (+ 8)
// and, per 8-column block j, columns 8 j + 2 (l % 4) (+ 1): d[4 j + 2 i + c].
template <class T, typename OutT>
__device__ __forceinline__ void store_tile(const float (&acc)[T::kAcc], OutT* c, int64_t ldc, int m0, int m_end,
                                           int n0, int n_end, bool accumulate) {
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int row0 = m0 + wg * 64 + warp * 16 + (lane >> 2);
#pragma unroll
  for (int j = 0; j < T::kBN / 8; ++j) {
    const int col = n0 + j * 8 + (lane & 3) * 2;
    if (col >= n_end) continue;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = row0 + i * 8;
      if (row < m_end) store_pair(c + int64_t(row) * ldc + col, acc[j * 4 + i * 2], acc[j * 4 + i * 2 + 1], accumulate);
    }
  }
}

#endif  // the device code proper

// "rows": blockIdx.x = n-tile, blockIdx.y = m-tile over all groups (tile_start maps it to its group).
template <class T, bool kBmn>
__global__ void __launch_bounds__(kThreads, T::kMinBlocks)
    rows_kernel(const __grid_constant__ Groups groups, const Args args) {
#ifdef UM_SM90_DEVICE
  extern __shared__ uint8_t smem[];
  const int tile = int(blockIdx.y);
  int lo = 0, hi = groups.count - 1;  // the last group whose tile_start <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (groups.tile_start[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  const int g = lo;
  const int m0 = groups.start[g] + (tile - groups.tile_start[g]) * kBM, m_end = groups.start[g] + groups.size[g];
  const int n0 = int(blockIdx.x) * T::kBN;
  float acc[T::kAcc];
  mainloop<T, false, kBmn>(acc, smem, args.a, args.lda, m0, m_end, args.b + int64_t(g) * args.b_group_stride,
                           args.ldb, n0, args.N, args.K);
  store_tile<T>(acc, static_cast<bf16*>(args.c), args.ldc, m0, m_end, n0, args.N, args.accumulate != 0);
#endif
}

// "weights": blockIdx.x = n-tile, blockIdx.y = m-tile, blockIdx.z = group; k runs over the group's rows.
template <class T>
__global__ void __launch_bounds__(kThreads, T::kMinBlocks)
    weights_kernel(const __grid_constant__ Groups groups, const Args args) {
#ifdef UM_SM90_DEVICE
  extern __shared__ uint8_t smem[];
  const int g = int(blockIdx.z), m0 = int(blockIdx.y) * kBM, n0 = int(blockIdx.x) * T::kBN;
  const int64_t s = groups.start[g];
  float acc[T::kAcc];
  mainloop<T, true, true>(acc, smem, args.a + s * args.lda, args.lda, m0, args.M, args.b + s * args.ldb, args.ldb, n0,
                          args.N, groups.size[g]);
  store_tile<T>(acc, static_cast<float*>(args.c) + int64_t(g) * args.c_group_stride, args.ldc, m0, args.M, n0,
                args.N, args.accumulate != 0);
#endif
}

__global__ void probe_kernel(int* out) {
#ifdef UM_SM90_DEVICE
  *out = 1;
#else
  *out = 0;
#endif
}

// One launch of kernel K (a template argument, so each kernel raises its shared-memory limit once).
template <auto K>
void launch(int smem_bytes, const dim3& grid, const Groups& g, const Args& args) {
  static const cudaError_t raised = cudaFuncSetAttribute(K, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  UM_CUDA(raised);
  K<<<grid, kThreads, smem_bytes, stream()>>>(g, args);
  UM_CUDA_LAUNCHED();
}

// UM_SM90_TILE=narrow forces the 128 x 128 tile (benchmarks compare the two); default: the widest tile
// whose padding of n is no worse.
bool wide_for(int64_t n) {
  static const bool narrow_only = [] {
    const char* e = std::getenv("UM_SM90_TILE");
    return e && std::string(e) == "narrow";
  }();
  if (narrow_only) return false;
  auto padded = [n](int64_t bn) { return (n + bn - 1) / bn * bn; };
  return padded(Wide::kBN) <= padded(Narrow::kBN);
}

void fill_groups(Groups& g, const HostGroups& h) {
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
void rows(const Groups& g, const Args& args, bool b_mn_major) {
  const dim3 grid(ceil_div(args.N, T::kBN), unsigned(g.tile_start[g.count]));
  if (b_mn_major) launch<rows_kernel<T, true>>(T::kSmemBytes, grid, g, args);
  else launch<rows_kernel<T, false>>(T::kSmemBytes, grid, g, args);
}

template <class T>
void weights(const Groups& g, const Args& args) {
  const dim3 grid(ceil_div(args.N, T::kBN), ceil_div(args.M, kBM), unsigned(g.count));
  launch<weights_kernel<T>>(T::kSmemBytes, grid, g, args);
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
                       const HostGroups& groups, bool accumulate) {
  thread_local Groups g;  // 12 KiB: built on the host per call, copied into the launch's parameters
  fill_groups(g, groups);
  if (g.tile_start[g.count] == 0) return;
  const Args args{a, b, c, K, b_mn_major ? N : K, N, N * K, 0, 0, int(N), int(K), accumulate ? 1 : 0};
  if (wide_for(N)) rows<Wide>(g, args, b_mn_major);
  else rows<Narrow>(g, args, b_mn_major);
}

void grouped_gemm_weights(const bf16* a, const bf16* b, float* c, int64_t M, int64_t N, const HostGroups& groups,
                          bool accumulate) {
  thread_local Groups g;
  fill_groups(g, groups);
  const Args args{a, b, c, M, N, N, 0, M * N, int(M), int(N), 0, accumulate ? 1 : 0};
  if (wide_for(N)) weights<Wide>(g, args);
  else weights<Narrow>(g, args);
}

}  // namespace um::cuda::sm90
