// Grouped linear op family: one weight matrix per group of consecutive rows, the expert matmuls of a
// mixture-of-experts layer over its expert-contiguous (permuted) tokens.
//
//   y[r] = x[r] . W[g]^T   for rows r in [start[g], start[g] + size[g]),   W [G, out, in]
// or, with GroupedWeight::in_out, y[r] = x[r] . W[g] for W [G, in, out] (OLMo-core's layout of the
// experts' down projection w2: its rows are d wide, so they start on 128-byte lines whatever the expert
// width h; in [G, d, h] with h 408 the 816-byte rows straddle 32-byte sectors, and on an H200 the
// 64-expert layer's w2 forward took 225 instead of 171 us, the whole layer 2.09 instead of 1.98 ms).
// Groups are host-side (their sizes come from the MoE plan, copied to the host once per layer), in
// increasing, non-overlapping row ranges; rows outside every group (tokens dropped by a capacity)
// get y = 0 and dx = 0 (accumulate: unchanged).
//
// Backward: dx[r] = dy[r] . W[g] (in_out: W[g]^T) (activation dtype), dW[g] = dy_g^T . x_g (in_out:
// x_g^T . dy_g) (f32 on the GPU: the master gradient; W's dtype on the CPU), each with beta =
// slot.accumulate; a group with no rows gets dW[g] = 0 (accumulate: unchanged).
//
// GPU, bf16 with widths that are multiples of 8 on a Hopper device (compute capability 9.0): our own
// TMA + wgmma grouped GEMM, one launch per product for all groups (cuda/grouped_gemm_sm90.cu).
// Otherwise cuBLAS, bf16 (or f32) in, fp32 accumulate. With more than 16
// non-empty groups one cublasGemmGroupedBatchedEx call per product (forward, dx, dW) covers them all; with fewer, when cuBLAS
// declines a type combination, or with UM_GROUPED_GEMM=loop, it runs one cublasGemmEx per group on the
// same stream (faster for a few large experts, measured in bench-moe). Both are deterministic (no
// split-K reductions with atomics).
#pragma once
#include <string>
#include <vector>

#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

struct RowGroups {
  std::vector<int64_t> start, size;  // [G] each
  int64_t count() const { return int64_t(start.size()); }
  // True when the groups tile rows [0, rows) with no gaps.
  bool covers(int64_t rows) const;
};

// How each group's weight matrix is stored.
enum class GroupedWeight {
  out_in,  // W [G, out, in]: y = x . W_g^T, a linear's weight per group (the experts' w1)
  in_out,  // W [G, in, out]: y = x . W_g (the experts' w2)
};

// W's input and output widths in `layout`.
inline int64_t grouped_in(const Tensor& W, GroupedWeight layout) {
  return W.dim(layout == GroupedWeight::out_in ? 2 : 1);
}
inline int64_t grouped_out(const Tensor& W, GroupedWeight layout) {
  return W.dim(layout == GroupedWeight::out_in ? 1 : 2);
}

// x [rows, in], W [G, out, in] or [G, in, out] (same dtype and device) -> y [rows, out].
Tensor grouped_linear(const Tensor& x, const Tensor& W, const RowGroups& groups,
                      GroupedWeight layout = GroupedWeight::out_in);

// The SwiGLU expert MLP of a MoE layer, with a per-row scale on the activation:
//   h = grouped_linear(x, W1) = [gate | up],  a = s[r] swiglu(h[r]),  y = grouped_linear(a, W2, in_out)
// x [rows, d], W1 [G, 2 h, d], W2 [G, h, d'], s [rows] (ops/activation.h; s is the routing weight of each
// row, in x's dtype, f32 on the GPU). One op so that both halves fuse on the sm90 path
// (cuda/grouped_gemm_sm90.cu): SwiGLU's forward runs in the epilogue of W1's product (h is not read back),
// and SwiGLU's backward and ds in the epilogue of W2's dx product (dact = dy . W2_g^T never reaches memory);
// elsewhere it is the ops' forwards and backwards in turn. Rows outside every group get y = 0, dx = 0 and
// ds = 0 (accumulate: unchanged).
Tensor swiglu_expert_mlp(const Tensor& x, const Tensor& W1, const Tensor& s, const Tensor& W2, const RowGroups& groups);

// Kernel-level entry points. grouped_linear_swiglu_forward writes both h = grouped_linear(x, W1) and
// a = s swiglu(h) (h [rows, 2 h], a [rows, h]); swiglu_grouped_linear_backward is the backward of
// y = grouped_linear(a, W, in_out) (W [G, h, d']) into h, s and W, given h, s and the forward's a (dW's
// operand).
void grouped_linear_forward(const Tensor& x, const Tensor& W, const RowGroups& groups, const Tensor& y,
                            GroupedWeight layout = GroupedWeight::out_in);
void grouped_linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const RowGroups& groups,
                             const GradSlot& dx, const GradSlot& dW, GroupedWeight layout = GroupedWeight::out_in);
void grouped_linear_swiglu_forward(const Tensor& x, const Tensor& W1, const Tensor& s, const RowGroups& groups,
                                   const Tensor& h, const Tensor& a);
void swiglu_grouped_linear_backward(const Tensor& h, const Tensor& s, const Tensor& a, const Tensor& W,
                                    const Tensor& dy, const RowGroups& groups, const GradSlot& dh, const GradSlot& ds,
                                    const GradSlot& dW);
// The weight gradient of y = grouped_linear(x, W, layout), given dy (an empty dW: nothing to compute).
struct GroupedWeightGrad {
  Tensor x, W, dy;
  GroupedWeight layout;
  GradSlot dW;
};
// Two such gradients over the same groups, as grouped_linear_backward's dW each: on the sm90 path in one
// launch (one tail wave for both: the expert MLP's dW1 and dW2).
void grouped_linear_backward_weights(const GroupedWeightGrad& first, const GroupedWeightGrad& second,
                                     const RowGroups& groups);

}  // namespace um::ops

namespace um::cpu {
void grouped_linear_forward(const Tensor& x, const Tensor& W, const ops::RowGroups& groups, const Tensor& y,
                            ops::GroupedWeight layout);
void grouped_linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const ops::RowGroups& groups,
                             const GradSlot& dx, const GradSlot& dW, ops::GroupedWeight layout);
}  // namespace um::cpu

namespace um::cuda {
void grouped_linear_forward(const Tensor& x, const Tensor& W, const ops::RowGroups& groups, const Tensor& y,
                            ops::GroupedWeight layout);
void grouped_linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const ops::RowGroups& groups,
                             const GradSlot& dx, const GradSlot& dW, ops::GroupedWeight layout);
// grouped_linear_swiglu_forward in one sm90 kernel where it applies; false (nothing done) elsewhere, and
// the op composes grouped_linear_forward and swiglu_forward.
bool grouped_linear_swiglu_forward_fused(const Tensor& x, const Tensor& W1, const Tensor& s,
                                         const ops::RowGroups& groups, const Tensor& h, const Tensor& a);
// swiglu_grouped_linear_backward in one sm90 kernel (plus dW) where it applies; false (nothing done)
// elsewhere, and the op composes the unfused kernels.
bool swiglu_grouped_linear_backward_fused(const Tensor& h, const Tensor& s, const Tensor& a, const Tensor& W,
                                          const Tensor& dy, const ops::RowGroups& groups, const GradSlot& dh,
                                          const GradSlot& ds, const GradSlot& dW);
// grouped_linear_backward_weights in one sm90 launch where it applies to both; false (nothing done)
// elsewhere, and the op computes them one after the other.
bool grouped_linear_backward_weights_paired(const ops::GroupedWeightGrad& first, const ops::GroupedWeightGrad& second,
                                            const ops::RowGroups& groups);
// "auto" (the default: the sm90 kernel where it applies, else the grouped call above 16 groups and the
// loop for 16 or fewer), "grouped" (cublasGemmGroupedBatchedEx where
// cuBLAS supports the types) or "loop" (cublasGemmEx per group): from the environment variable
// UM_GROUPED_GEMM, or set here (benchmarks compare them).
void set_grouped_gemm_mode(const std::string& mode);
std::string grouped_gemm_mode();
// True on a compute capability 9.0 device running this build's sm_90a code.
bool grouped_gemm_sm90_available();
}  // namespace um::cuda
