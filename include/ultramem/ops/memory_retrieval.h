// Memory retrieval op family: product-key scoring and top-k selection for Memory+, UltraMem v1 and
// UltraMemV2 (math: shared/specs/ultramem.md, docs/memory-layers.md).
//
// Notation: T tokens, H heads, n keys per side, r Tucker rank (1 for Memory+), qr query ranks (1, or r
// when each Tucker rank has its own query: mem_q_for_each_tucker_rank), K key dim, k = knn, h cores.
//
//  1. memory_scores: for each token t, head h, side s (0 = rows, 1 = columns), rank p, key i
//        scores[t, h, s, p, i] = q[t, h, s, qp, :] . keys[h, s, p, i, :]      (qp = p when qr == r, else 0)
//     One strided-batched GEMM (batch = (h, s, p)); f32 output (score logits stay f32).
//  2. memory_topk, on those scores:
//     - pre-selection: row score a[i] = sum_p u[h, p] scores[t,h,0,p,i], column score b[j] likewise with v;
//       the knn best rows and the knn best columns (ties: lower index first);
//     - grid: for each of the knn x knn pairs (i, j)
//         additive (Memory+):  S(i, j) = a[i] + b[j]                       (r = 1, u = v = 1, one "core")
//         tucker (UltraMem):   S_m(i, j) = s1[i]^T C_m s2[j], S = sum_m S_m  (s1[i] = scores[t,h,0,:,i])
//       and the knn best pairs by S (ties: lower pair position a*knn + b first), best first;
//     - outputs, per token: indices[t, h*knn + q] = i*n + j of pick q of head h; scores[t, h*knn+q, m] =
//       S_m of that pick (additive: S, one column).
//     Backward: gradients reach the exact scores of the picked pairs only (selection is piecewise
//     constant; u, v are detached): d scores (dense f32, zero where nothing was picked) and d cores.
//
// Ranking rules, identical on the CPU and the GPU: a candidate ranks by its value (NaN as -inf, -0 as +0),
// equal values by lower position (index i for rows/columns, a*knn + b for the grid). The tucker grid is
// ranked by S = s1^T (C_1 + ... + C_h) s2, summed in the order W[p] = sum_q Csum[p][q] s2[q],
// S = sum_p s1[p] W[p] (each product rounded, no FMA), which is sum_m S_m up to rounding; the reported
// per-core S_m are computed exactly as s1^T C_m s2. In f32 both backends rank bit-identical values.
//
// Dtypes: q and keys f32/bf16 (GPU) or f32/f64 (CPU); scores and everything derived from them f32, or f64
// when the CPU runs in f64 (gradcheck). Cores f32/bf16 on the GPU, scores' dtype on the CPU.
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

struct ScoreShape {
  int64_t heads = 1;    // H
  int64_t n_keys = 0;   // n
  int64_t rank = 1;     // r
  int64_t q_ranks = 1;  // qr: 1 or rank
  int64_t kdim = 0;     // K
};

// q: [T, H*2*qr*K] (activation dtype; the normalised queries, laid out [H, 2, qr, K] per token; any
// leading dims, T = their product), keys: [H*2*r*n, K] (the normalised keys, laid out [H, 2, r, n, K];
// same dtype as q) -> f32 [T, H, 2, r, n] (f64 for f64 inputs on the CPU).
Tensor memory_scores(const Tensor& q, const Tensor& keys, const ScoreShape& s);

enum class GridScore { additive, tucker };

struct TopkArgs {
  int64_t knn = 32;
  GridScore grid = GridScore::additive;
};

struct Retrieval {
  Tensor indices;  // i32 [T, H*knn]: i*n + j, best first within each head
  Tensor scores;   // f32 [T, H*knn, h] (tucker: per-core S_m; additive: [T, H*knn, 1])
  Tensor rows;     // i32 [T, H, 2, knn]: the pre-selected rows (side 0) and columns (side 1), best first
};

// scores: f32 [T, H, 2, r, n] from memory_scores. u, v: f32 [H, r] (tucker; detached, undefined for
// additive). cores: [h, H, r, r], f32 or bf16 on the GPU (tucker; a parameter), undefined for additive.
// 1 <= knn <= min(n, 64), n * n < 2^31; tucker: r <= 4, 1 <= h <= 4; additive: r == 1.
Retrieval memory_topk(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                      const TopkArgs& args);

// Kernel-level entry points.
void memory_scores_forward(const Tensor& q, const Tensor& keys, const ScoreShape& s, const Tensor& scores);
// dq = (acc_q ? dq : 0) + dscores . keys; dkeys = (acc_k ? dkeys : 0) + dscores^T . q. Either may be undefined.
// dq has q's dtype; dkeys is f32 on the GPU (master gradient) or keys' dtype (keys an activation), keys'
// dtype on the CPU (dq may be f32 on the GPU too). Dense GEMMs: zeros of dscores are not skipped on the GPU.
void memory_scores_backward(const Tensor& q, const Tensor& keys, const ScoreShape& s, const Tensor& dscores,
                            const Tensor& dq, bool acc_q, const Tensor& dkeys, bool acc_k);
// Fills out.indices / out.scores / out.rows (allocated by the caller with the shapes above). `pair`
// (i32 [T, H*knn]) receives each pick's grid position a*knn + b, saved for the backward.
void memory_topk_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                         const TopkArgs& args, const Retrieval& out, const Tensor& pair);
// dpick: f32 [T, H*knn, h], the gradient of Retrieval::scores. dscores (f32, scores' shape) =
// (acc_s ? dscores : 0) + the scatter of dpick into the picked rows/columns; dcores (cores' shape, f32
// on the GPU) likewise; either may be undefined (not wanted). `cores` is ignored for additive.
void memory_topk_backward(const Tensor& scores, const Tensor& cores, const TopkArgs& args, const Tensor& rows,
                          const Tensor& pair, const Tensor& dpick, const Tensor& dscores, bool acc_s,
                          const Tensor& dcores, bool acc_c);

}  // namespace um::ops

namespace um::cpu {
void memory_scores_forward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& scores);
void memory_scores_backward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& dscores,
                            const Tensor& dq, bool acc_q, const Tensor& dkeys, bool acc_k);
void memory_topk_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                         const ops::TopkArgs& args, const ops::Retrieval& out, const Tensor& pair);
void memory_topk_backward(const Tensor& scores, const Tensor& cores, const ops::TopkArgs& args, const Tensor& rows,
                          const Tensor& pair, const Tensor& dpick, const Tensor& dscores, bool acc_s,
                          const Tensor& dcores, bool acc_c);
}  // namespace um::cpu

namespace um::cuda {
void memory_scores_forward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& scores);
void memory_scores_backward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& dscores,
                            const Tensor& dq, bool acc_q, const Tensor& dkeys, bool acc_k);
void memory_topk_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                         const ops::TopkArgs& args, const ops::Retrieval& out, const Tensor& pair);
void memory_topk_backward(const Tensor& scores, const Tensor& cores, const ops::TopkArgs& args, const Tensor& rows,
                          const Tensor& pair, const Tensor& dpick, const Tensor& dscores, bool acc_s,
                          const Tensor& dcores, bool acc_c);
}  // namespace um::cuda
