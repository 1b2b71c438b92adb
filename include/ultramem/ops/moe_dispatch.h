// MoE dispatch op family: the permutation of token copies into expert-contiguous order, the routing
// weights in that order, and the combine that undoes the permutation.
//
// A token t routed to experts[t, 0..k) makes k assignments a = t k + j. The plan sorts them by expert,
// stably (ties keep assignment order, so within an expert tokens stay ascending): row r of the
// permuted order holds assignment sorted_assignment[r]; row_of[a] is the inverse. Expert e owns rows
// [group_start[e], group_start[e] + counts[e]); with a capacity C > 0 only the first C of them are
// computed (group size min(counts[e], C)) and the rest are dropped: row_of = -1, they contribute
// nothing (dropless when C = 0, the default).
//
//   moe_permute      xs[r] = x[sorted_assignment[r] / k]  (0 for dropped rows)           [N k, d]
//   moe_row_weights  w[r]  = weights[sorted_assignment[r]]  (0 for dropped rows)          [N k]
//   moe_combine      y[t]  = sum_j ys[row_of[t k + j]]  (j order, fp32)                   [N, d]
// The combine is the permute's transpose: the routing weights scale the expert's hidden activation
// instead (the layer's a = w[r] act(h[r]), ops/grouped_linear.h), which is the same product
// w (act . W2) but lets the weights' gradient come from the activation's backward, where the sm90
// path has dact and act in registers, instead of a dot product with every ys row.
// Backward:
//   permute      dx[t] = sum_j dxs[row_of[t k + j]]          (a gather-sum in j order: no scatter, no atomics)
//   row weights  dweights[a] = dw[row_of[a]]                 (0 for dropped assignments)
//   combine      dys[r] = dy[sorted_assignment[r] / k]       (the permute; dropped rows 0)
// Building the plan ends with one small device-to-host copy of the group offsets (E + 1 integers): the
// grouped GEMMs need the group sizes on the host. That is the layer's one synchronisation per forward;
// the backward reuses the sizes. moe_plan_start / moe_plan_finish split it so the copy's wait overlaps
// device work: start enqueues the sort and the copy (into pinned memory), the permute (which needs only
// the device arrays) is queued behind it, and finish waits for the copy while the GPU runs the permute.
// On the GPU the sort is a three-pass counting sort over 256-assignment warp chunks (count, prefix,
// ranked scatter; cuda/moe_dispatch.cu), stable, for at most ops::kMoeMaxExperts experts (the router's
// bound). Everything is deterministic.
#pragma once
#include <vector>

#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"
#include "ultramem/ops/grouped_linear.h"

namespace um::ops {

struct MoePlan {
  int64_t tokens = 0, top_k = 0, num_experts = 0, capacity = 0;  // capacity 0 = dropless
  Tensor sorted_assignment;  // i32 [N k]
  Tensor row_of;             // i32 [N k]; -1 = dropped
  std::vector<int64_t> counts;  // [E] assignments routed to each expert (before the capacity)
  RowGroups groups;             // [E] rows computed per expert: start = first row, size = min(count, C)
  uint64_t host_ticket = 0;     // nonzero: counts and groups still in flight (moe_plan_finish fills them)
  Tensor experts_for_errors;    // while in flight on the GPU: the ids, to name a bad one in finish's Error
  int64_t rows() const { return tokens * top_k; }
  int64_t dropped() const;
};

// experts: i32 [N, k] with ids in [0, num_experts) (an id outside is an Error naming its position).
MoePlan moe_plan(const Tensor& experts, int64_t num_experts, int64_t capacity = 0);
// The same in two steps: between them only sorted_assignment and row_of may be used (by moe_permute);
// finish raises the bad-id Error. A thread has one plan in flight: starting another abandons it.
MoePlan moe_plan_start(const Tensor& experts, int64_t num_experts, int64_t capacity = 0);
void moe_plan_finish(MoePlan& plan);
// x [N, d] -> xs [N k, d].
Tensor moe_permute(const Tensor& x, const MoePlan& plan);
// weights [N, k] (f32 on the GPU: the router's dtype; any float dtype on the CPU) -> [N k] in weights'
// dtype. Differentiable.
Tensor moe_row_weights(const Tensor& weights, const MoePlan& plan);
// ys [N k, d] -> y [N, d] in ys's dtype. Differentiable.
Tensor moe_combine(const Tensor& ys, const MoePlan& plan);

// Kernel-level entry points. moe_plan_build fills plan.sorted_assignment, plan.row_of (allocated by the
// caller), plan.counts and plan.groups from experts; on the GPU counts and groups arrive with
// moe_plan_build_finish (a no-op on the CPU, where build does everything).
void moe_plan_build(const Tensor& experts, MoePlan& plan);
void moe_plan_build_finish(MoePlan& plan);
void moe_permute_forward(const Tensor& x, const MoePlan& plan, const Tensor& xs);
void moe_permute_backward(const Tensor& dxs, const MoePlan& plan, const GradSlot& dx);
void moe_row_weights_forward(const Tensor& weights, const MoePlan& plan, const Tensor& w);
void moe_row_weights_backward(const Tensor& dw, const MoePlan& plan, const GradSlot& dweights);

}  // namespace um::ops

namespace um::cpu {
void moe_plan_build(const Tensor& experts, ops::MoePlan& plan);
void moe_plan_build_finish(ops::MoePlan& plan);
void moe_permute_forward(const Tensor& x, const ops::MoePlan& plan, const Tensor& xs);
void moe_permute_backward(const Tensor& dxs, const ops::MoePlan& plan, const GradSlot& dx);
void moe_row_weights_forward(const Tensor& weights, const ops::MoePlan& plan, const Tensor& w);
void moe_row_weights_backward(const Tensor& dw, const ops::MoePlan& plan, const GradSlot& dweights);
}  // namespace um::cpu

namespace um::cuda {
void moe_plan_build(const Tensor& experts, ops::MoePlan& plan);
void moe_plan_build_finish(ops::MoePlan& plan);
void moe_permute_forward(const Tensor& x, const ops::MoePlan& plan, const Tensor& xs);
void moe_permute_backward(const Tensor& dxs, const ops::MoePlan& plan, const GradSlot& dx);
void moe_row_weights_forward(const Tensor& weights, const ops::MoePlan& plan, const Tensor& w);
void moe_row_weights_backward(const Tensor& dw, const ops::MoePlan& plan, const GradSlot& dweights);
}  // namespace um::cuda
