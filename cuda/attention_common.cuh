// Shared by the attention kernels: problem geometry, the tensor-core building blocks (cp.async,
// ldmatrix, mma.sync m16n8k16 bf16 with fp32 accumulation) and the swizzled shared-memory tiles they
// read, plus the entry points of the f32 (CUDA-core) path.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4*row8 + quad:
//   A 16x16 (row major): a0 = (row8, 2quad..+1), a1 = (row8+8, same), a2 = (row8, 2quad+8..+9), a3 = (row8+8, +8)
//   B 16x8  (k x n):     b0 = (k 2quad..+1, n row8), b1 = (k 2quad+8..+9, n row8)
//   C 16x8  (fp32):      c0,c1 = (row8, 2quad..+1), c2,c3 = (row8+8, 2quad..+1)
// Two adjacent C tiles (n = 16 columns) hold exactly an A fragment's elements, which is how the
// probabilities P (a C result) feed the next product P V without a trip through shared memory.
#pragma once
#include <cstdint>

#include "common.cuh"
#include "ultramem/ops/attention.h"

namespace um::cuda::attention {

// Geometry of one call, in the units the kernels index with (all element offsets are int64).
struct Dims {
  int B, T, H, Hkv, D;
  int64_t qkv_row;   // elements per token of qkv / dqkv: (H + 2*Hkv) * D
  int64_t y_row;     // elements per token of y / dy: H * D
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e): the kernels use exp2
  __host__ __device__ int group() const { return H / Hkv; }
};
Dims make_dims(const ops::AttentionShape& s);

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------
// PTX wrappers.

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; when !valid the 16 bytes are zero-filled and nothing is read.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
// 4-byte variant (per-row statistics).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a * b for one 16x8 tile (bf16 inputs, fp32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit (flush-to-zero; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// A C-fragment pair (16 columns of a 16-row fp32 tile) as the A fragment of the next product.
__device__ __forceinline__ void c_pair_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// ---------------------------------------------------------------------------------------------
// Shared-memory tiles: kRows rows of one head (kD bf16 each), 16-byte chunks XOR-swizzled by the
// row's low 3 bits so that the 8 rows one ldmatrix reads (same logical chunk) hit 8 distinct bank
// groups, for kD = 64 (128-byte rows) and 128 (256-byte rows) alike.

template <int kD>
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * kD + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8 + (col & 7);
}

// Starts an asynchronous copy of rows [0, kRows) of a tile whose first row is `src` (rows `stride`
// elements apart); rows >= valid_rows are zero-filled (the sequence's tail), never read.
// Thread i copies chunk i % (kD/8) of rows i / (kD/8) + k * kRowStep: its source and destination are
// computed once and step by constants (kRowStep is a multiple of the swizzle period of 8 rows, so the
// swizzled column of a thread's chunk is the same in every row it copies).
template <int kRows, int kD, int kThreads>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, int64_t stride, int valid_rows) {
  constexpr int kChunksPerRow = kD / 8, kRowStep = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kRowStep % 8 == 0 && kRows % kRowStep == 0,
                "the block copies whole swizzle periods of the tile per pass");
  const int row = threadIdx.x / kChunksPerRow, col = (threadIdx.x % kChunksPerRow) * 8;
  const uint32_t dst = smem_addr(tile + swizzle<kD>(row, col));
  const bf16* from = src + row * stride + col;
#pragma unroll
  for (int i = 0; i < kRows / kRowStep; ++i) {
    const bool valid = row + i * kRowStep < valid_rows;
    cp_async_16(dst + i * kRowStep * kD * int(sizeof(bf16)), valid ? from + i * kRowStep * stride : src, valid);
  }
}

// ldmatrix addresses. For a 16x16 block at (row0, col0) of a swizzled tile, lane l supplies the row
// address of one 8x8 matrix:
//   a_order: matrices (r, c), (r+8, c), (r, c+8), (r+8, c+8) -> an A fragment, or with .trans the two
//            B fragments of two n-tiles when the tile is stored k-major (V, dO, Q, K as "B = X").
//   b_order: matrices (r, c), (r, c+8), (r+8, c), (r+8, c+8) -> the B fragments of two n-tiles when
//            the tile is stored n-major (K in Q K^T: rows are n, columns are k).
template <int kD>
__device__ __forceinline__ uint32_t a_order(const bf16* tile, int row0, int col0, int lane) {
  return smem_addr(tile + swizzle<kD>(row0 + (lane & 7) + ((lane >> 3) & 1) * 8, col0 + (lane >> 4) * 8));
}
template <int kD>
__device__ __forceinline__ uint32_t b_order(const bf16* tile, int row0, int col0, int lane) {
  return smem_addr(tile + swizzle<kD>(row0 + (lane & 7) + (lane >> 4) * 8, col0 + ((lane >> 3) & 1) * 8));
}

// A warp's rows come in kM m-tiles of 16 rows; fragments of the shared operand are loaded once and
// used for every m-tile (fewer shared-memory reads per mma, more independent mmas in flight).

// acc[m][j] (j < kN/8) += A_m * B, where A_m = rows a_row0 + 16 m .. + 15 (kD columns) of tile `a` and
// B = tile `b`^T restricted to rows b_row0 .. b_row0 + kN (b stored n-major: B[k][n] = b[n][k]).
// This is S = Q K^T and its relatives.
template <int kD, int kN, int kM>
__device__ __forceinline__ void mma_a_bt(float (&acc)[kM][kN / 8][4], const bf16* a, int a_row0, const bf16* b,
                                         int b_row0, int lane) {
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t af[kM][4];
#pragma unroll
    for (int m = 0; m < kM; ++m) ldmatrix_x4(af[m], a_order<kD>(a, a_row0 + 16 * m, kk * 16, lane));
#pragma unroll
    for (int jp = 0; jp < kN / 16; ++jp) {
      uint32_t bf[4];
      ldmatrix_x4(bf, b_order<kD>(b, b_row0 + jp * 16, kk * 16, lane));
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        mma_bf16(acc[m][2 * jp], af[m], bf[0], bf[1]);
        mma_bf16(acc[m][2 * jp + 1], af[m], bf[2], bf[3]);
      }
    }
  }
}

// acc[m][j] (j < kD/8) += P_m (16 x kK, fp32 C fragments, rounded to bf16 here) * tile `b` rows 0..kK
// (b stored k-major: B[k][n] = b[k][n]). This is O = P V and its relatives.
template <int kD, int kK, int kM>
__device__ __forceinline__ void mma_p_b(float (&acc)[kM][kD / 8][4], const float (&p)[kM][kK / 8][4], const bf16* b,
                                        int lane) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t af[kM][4];
#pragma unroll
    for (int m = 0; m < kM; ++m) c_pair_to_a(af[m], p[m][2 * kk], p[m][2 * kk + 1]);
#pragma unroll
    for (int dp = 0; dp < kD / 16; ++dp) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, a_order<kD>(b, kk * 16, dp * 16, lane));
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        mma_bf16(acc[m][2 * dp], af[m], bf[0], bf[1]);
        mma_bf16(acc[m][2 * dp + 1], af[m], bf[2], bf[3]);
      }
    }
  }
}

template <int kM, int kN>
__device__ __forceinline__ void zero(float (&acc)[kM][kN][4]) {
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int j = 0; j < kN; ++j) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.f;
}

// ---------------------------------------------------------------------------------------------
// Epilogue: a warp's 16 kM x kD fp32 accumulator rows (times `scale`) staged in shared memory, then
// written as bf16 with 16-byte stores, adding what `dst` holds when `accumulate` (one rounding).
// `stage` holds 16 kM x (kD + 8) floats per warp (the 8 floats of padding keep the 8-byte stores of a
// half-warp on distinct banks).
template <int kD, int kM>
struct StagedRows {
  static constexpr int kRows = 16 * kM;
  static constexpr int kStride = kD + 8;
  static constexpr int kFloatsPerWarp = kRows * kStride;

  __device__ static void store(float* stage, const float (&acc)[kM][kD / 8][4], float scale, int lane) {
    const int r = lane >> 2, c = (lane & 3) * 2;
#pragma unroll
    for (int m = 0; m < kM; ++m)
#pragma unroll
      for (int j = 0; j < kD / 8; ++j) {
        float* at = stage + (16 * m + r) * kStride + j * 8 + c;
        *reinterpret_cast<float2*>(at) = make_float2(acc[m][j][0] * scale, acc[m][j][1] * scale);
        *reinterpret_cast<float2*>(at + 8 * kStride) = make_float2(acc[m][j][2] * scale, acc[m][j][3] * scale);
      }
  }

  // Rows row >= valid_rows are not written; dst points at the warp's first row, rows `stride` apart.
  __device__ static void write(const float* stage, bf16* dst, int64_t stride, int valid_rows, bool accumulate,
                               int lane) {
    constexpr int kChunksPerRow = kD / 8;
#pragma unroll
    for (int c = lane; c < kRows * kChunksPerRow; c += 32) {
      const int row = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      if (row >= valid_rows) continue;
      const float4 lo = *reinterpret_cast<const float4*>(stage + row * kStride + col);
      const float4 hi = *reinterpret_cast<const float4*>(stage + row * kStride + col + 4);
      float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      uint4* out = reinterpret_cast<uint4*>(dst + row * stride + col);
      if (accumulate) {
        const uint4 old = *out;
        const uint32_t w[4] = {old.x, old.y, old.z, old.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const __nv_bfloat162 pair = *reinterpret_cast<const __nv_bfloat162*>(&w[i]);
          v[2 * i] += __low2float(pair);
          v[2 * i + 1] += __high2float(pair);
        }
      }
      *out = make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7]));
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Host side.

// delta[b, h, t] = dy[b, t, h, :] . y[b, t, h, :] (fp32), the softmax backward's row correction.
template <typename T>
void launch_attention_delta(const Dims& d, const T* y, const T* dy, float* delta);

// The f32 path (attention_f32.cu): flash kernels on CUDA cores for any D <= 128.
void attention_forward_f32(const Dims& d, const float* qkv, float* y, float* lse);
// delta: scratch [B, H, T] the backward fills with rowsum(dy * y) first.
void attention_backward_f32(const Dims& d, const float* qkv, const float* y, const float* dy, const float* lse,
                            float* delta, float* dqkv, bool accumulate);

// Raises a kernel's dynamic shared-memory limit when it needs more than the default 48 KiB.
template <typename Kernel>
void set_smem_limit(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) UM_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// Grid size of a kernel with one block per (tile, batch x head), as a checked 1-d grid.
unsigned grid_1d(int64_t blocks);
// Throws unless t's data is 16-byte aligned (the bf16 kernels move 16-byte chunks).
void check_aligned(const Tensor& t, const char* what);

}  // namespace um::cuda::attention

namespace um::cuda {
// Head dims with tensor-core kernels; bf16 attention with any other D runs the f32 CUDA-core path.
bool bf16_head_dim_supported(int D);
}  // namespace um::cuda

