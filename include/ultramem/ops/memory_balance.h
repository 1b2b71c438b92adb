// UltraMemV2's key-balance loss (mem_key_balance_reg_coef): for each side (rows, columns),
//   L_side = n x sum_i p_i f_i,  p_i = mean over (token, head) of softmax_i(a),  f_i = share of picks on key i,
// with a the pre-selection scores (UltraMem: a[i] = sum_p u[h,p] scores[t,h,side,p,i]; Memory+: the raw
// scores, r = 1) and the picks the pre-selected rows/columns of memory_topk. f carries no gradient (counts);
// p does: d a[t,h,i] = coef n / (T H) y_i (f_i - sum_j y_j f_j), y = softmax(a), then d scores = u_p d a.
// Deterministic: integer pick counts, softmax rows kept for the backward, column sums in a fixed order.
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// scores: [T, H, 2, r, n] (f32, f64 on the CPU); u, v: f32 [H, r] or undefined (then r must be 1);
// rows: i32 [T, H, 2, knn]. Returns coef x (L_rows + L_cols), [1] in scores' dtype.
Tensor memory_key_balance(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows, double coef);

// Kernel-level entry points. y: [2, T*H, n] softmax rows (scores' dtype, written); f: [2, n] pick shares
// and p: [2, n] mean softmax (written; scores' dtype).
void memory_key_balance_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows,
                                const Tensor& y, const Tensor& f, const Tensor& p);
// dscores = (accumulate ? dscores : 0) + scale x (the gradient of sum_side n sum_i p_i f_i), scale = coef x dloss.
void memory_key_balance_backward(const Tensor& u, const Tensor& v, const Tensor& y, const Tensor& f, double scale,
                                 const Tensor& dscores, bool accumulate);

}  // namespace um::ops

namespace um::cpu {
void memory_key_balance_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows,
                                const Tensor& y, const Tensor& f, const Tensor& p);
void memory_key_balance_backward(const Tensor& u, const Tensor& v, const Tensor& y, const Tensor& f, double scale,
                                 const Tensor& dscores, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void memory_key_balance_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows,
                                const Tensor& y, const Tensor& f, const Tensor& p);
void memory_key_balance_backward(const Tensor& u, const Tensor& v, const Tensor& y, const Tensor& f, double scale,
                                 const Tensor& dscores, bool accumulate);
}  // namespace um::cuda
