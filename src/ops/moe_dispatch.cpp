#include "ultramem/ops/moe_dispatch.h"

#include "src/ops/dispatch.h"
#include "ultramem/core/arena.h"
#include "ultramem/ops/elementwise.h"

namespace um::ops {

int64_t MoePlan::dropped() const {
  UM_CHECK(host_ticket == 0, "MoePlan::dropped: a finished plan (moe_plan_finish)", "group sizes still in flight");
  int64_t kept = 0;
  for (int64_t s : groups.size) kept += s;
  return rows() - kept;
}

static void check_plan(const MoePlan& plan, const char* op) {
  UM_CHECK(plan.sorted_assignment.defined() && plan.row_of.defined(), detail::concat(op, ": a built MoE plan"),
           "an empty plan");
}

static void check_rows(const Tensor& t, int64_t rows, const char* what) {
  if (!t.defined() || t.ndim() != 2 || t.dim(0) != rows || t.dim(1) < 1)
    throw Error(what, detail::concat("a 2-d tensor [", rows, ", d]"), t.defined() ? t.desc() : "undefined");
}

MoePlan moe_plan(const Tensor& experts, int64_t num_experts, int64_t capacity) {
  MoePlan plan = moe_plan_start(experts, num_experts, capacity);
  moe_plan_finish(plan);
  return plan;
}

void moe_plan_finish(MoePlan& plan) {
  if (plan.host_ticket == 0) return;
  UM_DISPATCH_DEVICE(plan.row_of, moe_plan_build_finish, plan);
}

MoePlan moe_plan_start(const Tensor& experts, int64_t num_experts, int64_t capacity) {
  if (!experts.defined() || experts.ndim() != 2)
    throw Error("moe_plan: experts", "i32 [tokens, top_k]", experts.defined() ? experts.desc() : "undefined");
  check_dtype(experts, DType::i32, "moe_plan: experts");
  UM_CHECK(num_experts >= 1 && num_experts <= (int64_t(1) << 20), "moe_plan: 1 to 2^20 experts", num_experts);
  UM_CHECK(capacity >= 0, "moe_plan: a capacity >= 0 (0 = dropless)", capacity);
  UM_CHECK(experts.numel() < int64_t(INT32_MAX), "moe_plan: fewer than 2^31 assignments", experts.desc());
  MoePlan plan;
  plan.tokens = experts.dim(0);
  plan.top_k = experts.dim(1);
  plan.num_experts = num_experts;
  plan.capacity = capacity;
  plan.sorted_assignment = alloc_activation(Shape{plan.rows()}, DType::i32, experts.device());
  plan.row_of = alloc_activation(Shape{plan.rows()}, DType::i32, experts.device());
  moe_plan_build(experts, plan);
  return plan;
}

void moe_plan_build(const Tensor& experts, MoePlan& plan) {
  check_shape(plan.sorted_assignment, Shape{plan.rows()}, "moe_plan: sorted_assignment");
  check_shape(plan.row_of, Shape{plan.rows()}, "moe_plan: row_of");
  check_same_device(experts, plan.sorted_assignment, "moe_plan: sorted_assignment");
  check_same_device(experts, plan.row_of, "moe_plan: row_of");
  UM_DISPATCH_DEVICE(experts, moe_plan_build, experts, plan);
}

void moe_permute_forward(const Tensor& x, const MoePlan& plan, const Tensor& xs) {
  check_plan(plan, "moe_permute");
  check_rows(x, plan.tokens, "moe_permute: x");
  check_tensor(xs, Shape{plan.rows(), x.dim(1)}, x.dtype(), x, "moe_permute: xs");
  check_same_device(x, plan.row_of, "moe_permute: plan");
  UM_DISPATCH_DEVICE(x, moe_permute_forward, x, plan, xs);
}

void moe_permute_backward(const Tensor& dxs, const MoePlan& plan, const GradSlot& dx) {
  check_plan(plan, "moe_permute backward");  // row_of only: the permute's tape node holds the in-flight plan
  check_rows(dxs, plan.rows(), "moe_permute backward: dxs");
  if (!dx) return;
  check_tensor(dx.grad, Shape{plan.tokens, dxs.dim(1)}, dxs.dtype(), dxs, "moe_permute backward: dx");
  UM_DISPATCH_DEVICE(dxs, moe_permute_backward, dxs, plan, dx);
}

void moe_row_weights_forward(const Tensor& weights, const MoePlan& plan, const Tensor& w) {
  check_plan(plan, "moe_row_weights");
  check_shape(weights, Shape{plan.tokens, plan.top_k}, "moe_row_weights: weights");
  check_tensor(w, Shape{plan.rows()}, weights.dtype(), weights, "moe_row_weights: w");
  check_same_device(weights, plan.row_of, "moe_row_weights: plan");
  UM_DISPATCH_DEVICE(weights, moe_row_weights_forward, weights, plan, w);
}

void moe_row_weights_backward(const Tensor& dw, const MoePlan& plan, const GradSlot& dweights) {
  check_plan(plan, "moe_row_weights backward");
  check_shape(dw, Shape{plan.rows()}, "moe_row_weights backward: dw");
  if (!dweights) return;
  check_tensor(dweights.grad, Shape{plan.tokens, plan.top_k}, dw.dtype(), dw, "moe_row_weights backward: dweights");
  UM_DISPATCH_DEVICE(dw, moe_row_weights_backward, dw, plan, dweights);
}

Tensor moe_permute(const Tensor& x, const MoePlan& plan) {
  check_rows(x, plan.tokens, "moe_permute: x");
  Tensor xs = alloc_activation(Shape{plan.rows(), x.dim(1)}, x.dtype(), x.device());
  moe_permute_forward(x, plan, xs);
  if (needs_grad({&x})) {
    xs.set_requires_grad(true);
    current_tape()->record([x, plan, xs] {
      Tensor g = grad_of(xs);
      if (!g) return;
      moe_permute_backward(g, plan, grad_slot(x));
    });
  }
  return xs;
}

Tensor moe_row_weights(const Tensor& weights, const MoePlan& plan) {
  check_shape(weights, Shape{plan.tokens, plan.top_k}, "moe_row_weights: weights");
  Tensor w = alloc_activation(Shape{plan.rows()}, weights.dtype(), weights.device());
  moe_row_weights_forward(weights, plan, w);
  if (needs_grad({&weights})) {
    w.set_requires_grad(true);
    current_tape()->record([weights, plan, w] {
      Tensor g = grad_of(w);
      if (!g) return;
      moe_row_weights_backward(g, plan, grad_slot(weights));
    });
  }
  return w;
}

// The permute's transpose: forward = the permute's backward kernels, backward = its forward kernels.
Tensor moe_combine(const Tensor& ys, const MoePlan& plan) {
  check_rows(ys, plan.rows(), "moe_combine: ys");
  Tensor y = alloc_activation(Shape{plan.tokens, ys.dim(1)}, ys.dtype(), ys.device());
  moe_permute_backward(ys, plan, GradSlot{y, false});
  if (needs_grad({&ys})) {
    y.set_requires_grad(true);
    current_tape()->record([ys, plan, y] {
      Tensor g = grad_of(y);
      if (!g) return;
      GradSlot dys = grad_slot(ys);
      if (!dys.accumulate) return moe_permute_forward(g, plan, dys.grad);
      Tensor copies = alloc_activation(ys.shape(), ys.dtype(), ys.device());
      moe_permute_forward(g, plan, copies);
      accumulate_grad(dys, copies);
    });
  }
  return y;
}

}  // namespace um::ops
