// Hopper (sm_90a) grouped GEMM for the expert matmuls of a mixture-of-experts layer: every group's
// product in one launch, on the tensor cores' warpgroup MMA (wgmma), bf16 in, fp32 accumulate.
//
// A persistent CTA per SM walks 128 x 256 tiles of C = A . B^T (the n tail narrower, in steps of 64):
// one producer thread streams each k-step's tiles with the tensor memory accelerator into a 4-6 stage
// shared-memory ring, two consumer warpgroups (64 rows each) run wgmma on it; edges (a group's last rows,
// the k tail, the n tail) are exact without padding the tensors. The two kinds of product the layer
// needs:
//   rows:    C[r, n] = sum_k A[r, k] B_g[n, k] for rows r of group g (forward, dx)   A row-major [rows, K]
//            B_g K-major ([N, K]) or MN-major ([K, N]); two with SwiGLU in the epilogue (W1's forward
//            writing h and a = s swiglu(h); W2's dx turning dact into dh, B K-major)
//   weights: C_g[m, n] = sum over the group's rows r of A[r, m] B[r, n] (dW_g = dy_g^T x_g), both MN-major
// Each CTA walks tiles blockIdx.x, + gridDim.x, ...; where that would pin a CTA to one n position the
// positions turn per wave (Args::turn_n).
// Every output element is written exactly once (a register store, or one TMA store or reduce-add of a
// staged chunk), with no split-K: deterministic.
// Requirements (the caller checks them, cuda/grouped_linear.cu `use_sm90`): bf16 operands, widths (K, N
// and the leading dimensions) multiples of 8, 16-byte-aligned pointers, at most kMaxGroups groups, and
// `available()`.
#pragma once
#include <cstdint>

#include "common.cuh"
#include "ultramem/ops/grouped_linear.h"

namespace um::cuda::sm90 {

constexpr int kMaxGroups = 1024;

// True when this build carries sm_90a code and the current device runs it (compute capability 9.0).
bool available();

// rows: C (bf16 [rows, N], ldc = N) = A (bf16 [rows, K]) . B_g^T for each group's rows; B_g at
// b + g * N * K, K-major ([N, K]) or, with b_mn_major, MN-major ([K, N]). Rows outside every group are
// not written. accumulate: C += instead of C =.
void grouped_gemm_rows(const bf16* a, const bf16* b, bool b_mn_major, bf16* c, int64_t N, int64_t K,
                       const ops::RowGroups& groups, bool accumulate);

// rows with SwiGLU's backward in the epilogue, for a = s[r] swiglu(h[r]): dact = dy (bf16 [rows, K]) .
// W_g^T (W [G][N][K], K-major as the forward's: the experts' w2 [G, h, d]) never reaches memory; each
// element goes with h = [gate | up] (bf16 [rows, 2 N]) and s (f32 [rows]) into dh = [dgate | dup] (bf16
// [rows, 2 N], not accumulated) and into ds_partial[n_tile][r] (f32 [swiglu_backward_n_tiles(N)][rows]):
// the sum over the tile's columns of dact silu(gate) up, ds's share from n-tile n_tile. Rows outside every
// group are not written (dh nor ds_partial).
int swiglu_backward_n_tiles(int64_t N);
void grouped_gemm_rows_swiglu_backward(const bf16* dy, const bf16* w, const bf16* h, const float* row_scale,
                                       bf16* dh, float* ds_partial, int64_t rows, int64_t N, int64_t K,
                                       const ops::RowGroups& groups);

// rows with SwiGLU's forward in the epilogue: h = [gate | up] (bf16 [rows, 2 N]) = x (bf16 [rows, K]) .
// W1_g^T (W1 [G][2 N][K]), and a = s[r] swiglu(h[r]) (bf16 [rows, N], s f32 [rows]) from h's bf16 values,
// as swiglu_forward computes it, so that h is never read back. Rows outside every group are not written.
void grouped_gemm_rows_swiglu(const bf16* x, const bf16* w1, const float* row_scale, bf16* h, bf16* a, int64_t N,
                              int64_t K, const ops::RowGroups& groups);


// weights: one product C_g (f32 [M, N] at c + g * M * N) (+)= sum over group g's rows r of A[r, :]^T B[r, :]
// (A bf16 [rows, M], B bf16 [rows, N]; an empty group writes C_g = 0, or leaves it when accumulating).
struct WeightsProduct {
  const bf16* a;
  const bf16* b;
  float* c;
  int64_t M, N;
  bool accumulate;
};
// The weights tiles of one group of an M x N product (the launch's tile: 128 x 256, or 128 x 128 with
// UM_SM90_TILE=narrow).
int64_t weights_tiles_per_group(int64_t M, int64_t N);
// first and, if not null, second over the same groups in one launch, the second's tiles after the first's:
// the two products share one tail wave instead of each leaving the SMs part-idle in its own.
void grouped_gemm_weights(const WeightsProduct& first, const ops::RowGroups& groups,
                          const WeightsProduct* second = nullptr);

}  // namespace um::cuda::sm90
