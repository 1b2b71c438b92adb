#include "ultramem/ops/grouped_linear.h"

#include "src/ops/dispatch.h"
#include "src/ops/row_scale.h"
#include "ultramem/core/arena.h"
#include "ultramem/ops/activation.h"
#include "ultramem/ops/elementwise.h"

namespace um::ops {

bool RowGroups::covers(int64_t rows) const {
  int64_t next = 0;
  for (size_t g = 0; g < start.size(); ++g) {
    if (size[g] == 0) continue;
    if (start[g] != next) return false;
    next += size[g];
  }
  return next == rows;
}

static void check_groups(const Tensor& x, const Tensor& W, const RowGroups& groups, const char* op,
                         GroupedWeight layout) {
  if (!x.defined() || x.ndim() != 2) throw Error(detail::concat(op, ": x"), "a 2-d input [rows, in]", x.desc());
  const char* want =
      layout == GroupedWeight::out_in ? "a 3-d weight [groups, out, in]" : "a 3-d weight [groups, in, out]";
  if (!W.defined() || W.ndim() != 3 || W.dim(0) < 1 || W.dim(1) < 1 || W.dim(2) < 1)
    throw Error(detail::concat(op, ": W"), want, W.defined() ? W.desc() : "undefined");
  check_dtype(W, x.dtype(), detail::concat(op, ": W (x's dtype)").c_str());
  check_same_device(x, W, detail::concat(op, ": W").c_str());
  if (x.dim(1) != grouped_in(W, layout))
    throw Error(detail::concat(op, ": x"), detail::concat("rows of ", grouped_in(W, layout), " (W is ", W.desc(), ")"),
                x.desc());
  if (groups.count() != W.dim(0) || groups.size.size() != groups.start.size())
    throw Error(detail::concat(op, ": groups"), detail::concat(W.dim(0), " row groups (one per weight matrix)"),
                std::to_string(groups.count()));
  int64_t end = 0;
  for (int64_t g = 0; g < groups.count(); ++g) {
    const int64_t s = groups.start[size_t(g)], n = groups.size[size_t(g)];
    if (n < 0 || s < end || s + n > x.dim(0) || n > int64_t(INT32_MAX))
      throw Error(detail::concat(op, ": group ", g), detail::concat("rows in increasing, disjoint ranges of [0, ", x.dim(0), ")"),
                  detail::concat("start ", s, " size ", n));
    if (n > 0) end = s + n;
  }
  UM_CHECK(x.dim(1) <= int64_t(INT32_MAX) && W.dim(1) <= int64_t(INT32_MAX) && W.dim(2) <= int64_t(INT32_MAX),
           detail::concat(op, ": widths below 2^31"), W.desc());
}

static void check_weight_grad(const GradSlot& g, const Tensor& W) {
  if (!g) return;
  check_shape(g.grad, W.shape(), "grouped_linear backward: dW");
  check_same_device(g.grad, W, "grouped_linear backward: dW");
  const bool ok = g.grad.dtype() == W.dtype() || (W.device().is_cuda() && g.grad.dtype() == DType::f32);
  if (!ok) throw Error("grouped_linear backward: dW", std::string("dtype ") + dtype_name(W.dtype()) + " or f32 (GPU)", g.grad.desc());
}

void grouped_linear_forward(const Tensor& x, const Tensor& W, const RowGroups& groups, const Tensor& y,
                            GroupedWeight layout) {
  check_groups(x, W, groups, "grouped_linear", layout);
  check_tensor(y, Shape{x.dim(0), grouped_out(W, layout)}, x.dtype(), x, "grouped_linear: y");
  UM_DISPATCH_DEVICE(x, grouped_linear_forward, x, W, groups, y, layout);
}

void grouped_linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const RowGroups& groups,
                             const GradSlot& dx, const GradSlot& dW, GroupedWeight layout) {
  check_groups(x, W, groups, "grouped_linear backward", layout);
  check_tensor(dy, Shape{x.dim(0), grouped_out(W, layout)}, x.dtype(), x, "grouped_linear backward: dy");
  if (dx) {
    check_tensor(dx.grad, x.shape(), x.dtype(), x, "grouped_linear backward: dx");
  }
  check_weight_grad(dW, W);
  UM_DISPATCH_DEVICE(x, grouped_linear_backward, x, W, dy, groups, dx, dW, layout);
}

void grouped_linear_backward_weights(const GroupedWeightGrad& first, const GroupedWeightGrad& second,
                                     const RowGroups& groups) {
  for (const GroupedWeightGrad* w : {&first, &second}) {
    if (!w->dW) continue;
    const char* op =
        w == &first ? "grouped_linear backward (first product)" : "grouped_linear backward (second product)";
    check_groups(w->x, w->W, groups, op, w->layout);
    check_tensor(w->dy, Shape{w->x.dim(0), grouped_out(w->W, w->layout)}, w->x.dtype(), w->x,
                 detail::concat(op, ": dy").c_str());
    check_weight_grad(w->dW, w->W);
  }
  // One launch runs on one device: the pair must share it.
  if (first.dW && second.dW) check_same_device(second.x, first.x, "grouped_linear backward (second product): x");
#if ULTRAMEM_CUDA
  if (first.dW && second.dW && first.x.device().is_cuda() &&
      cuda::grouped_linear_backward_weights_paired(first, second, groups))
    return;
#endif
  for (const GroupedWeightGrad* w : {&first, &second})
    if (w->dW) grouped_linear_backward(w->x, w->W, w->dy, groups, GradSlot{}, w->dW, w->layout);
}

void swiglu_grouped_linear_backward(const Tensor& h, const Tensor& s, const Tensor& a, const Tensor& W,
                                    const Tensor& dy, const RowGroups& groups, const GradSlot& dh, const GradSlot& ds,
                                    const GradSlot& dW) {
  check_groups(a, W, groups, "swiglu_grouped_linear backward", GroupedWeight::in_out);
  UM_CHECK(h.defined() && h.ndim() == 2 && h.dim(0) == a.dim(0) && h.dim(1) == 2 * a.dim(1),
           detail::concat("swiglu_grouped_linear backward: h of shape [", a.dim(0), ", ", 2 * a.dim(1), "]"),
           h.defined() ? h.desc() : "undefined");
  check_dtype(h, a.dtype(), "swiglu_grouped_linear backward: h");
  check_same_device(h, a, "swiglu_grouped_linear backward: h");
  check_row_scale(h, h.dim(0), s, "swiglu_grouped_linear backward: s");
  check_tensor(dy, Shape{a.dim(0), grouped_out(W, GroupedWeight::in_out)}, a.dtype(), a,
               "swiglu_grouped_linear backward: dy");
  if (dh) {
    check_tensor(dh.grad, h.shape(), h.dtype(), h, "swiglu_grouped_linear backward: dh");
  }
  if (ds) {
    check_tensor(ds.grad, s.shape(), s.dtype(), s, "swiglu_grouped_linear backward: ds");
  }
  check_weight_grad(dW, W);
  if (!dh && !ds && !dW) return;
#if ULTRAMEM_CUDA
  if (a.device().is_cuda() && cuda::swiglu_grouped_linear_backward_fused(h, s, a, W, dy, groups, dh, ds, dW)) return;
#endif
  // The composition (the CPU reference, and the GPU without the sm90 kernel): da = dy . W_g^T (0 outside
  // the groups); a0 = swiglu(h) again, scale_rows' backward gives ds and da0 = s da; then SwiGLU's.
  GradSlot da;
  if (dh || ds) da.grad = alloc_activation(a.shape(), a.dtype(), a.device());
  grouped_linear_backward(a, W, dy, groups, da, dW, GroupedWeight::in_out);
  if (!dh && !ds) return;
  Tensor a0 = alloc_activation(a.shape(), a.dtype(), a.device());
  swiglu_forward(h, a0);
  GradSlot da0;
  if (dh) da0.grad = alloc_activation(a.shape(), a.dtype(), a.device());
  scale_rows_backward(a0, s, da.grad, da0, ds);
  if (dh) swiglu_backward(h, da0.grad, dh.grad, dh.accumulate);
}

void grouped_linear_swiglu_forward(const Tensor& x, const Tensor& W1, const Tensor& s, const RowGroups& groups,
                                   const Tensor& h, const Tensor& a) {
  check_groups(x, W1, groups, "grouped_linear_swiglu", GroupedWeight::out_in);
  UM_CHECK(W1.dim(1) % 2 == 0, "grouped_linear_swiglu: W1 of shape [groups, 2 h, in] ([gate | up])", W1.desc());
  const int64_t rows = x.dim(0);
  check_tensor(h, Shape{rows, W1.dim(1)}, x.dtype(), x, "grouped_linear_swiglu: h");
  check_tensor(a, Shape{rows, W1.dim(1) / 2}, x.dtype(), x, "grouped_linear_swiglu: a");
  check_row_scale(x, rows, s, "grouped_linear_swiglu: s");
#if ULTRAMEM_CUDA
  if (x.device().is_cuda() && cuda::grouped_linear_swiglu_forward_fused(x, W1, s, groups, h, a)) return;
#endif
  grouped_linear_forward(x, W1, groups, h);
  swiglu_forward(h, a, s);
}

Tensor swiglu_expert_mlp(const Tensor& x, const Tensor& W1, const Tensor& s, const Tensor& W2, const RowGroups& groups) {
  UM_CHECK(W1.defined() && W1.ndim() == 3 && W2.defined() && W2.ndim() == 3 &&
               W1.dim(1) == 2 * grouped_in(W2, GroupedWeight::in_out),
           "swiglu_expert_mlp: W1 [groups, 2 h, d] and W2 [groups, h, d']",
           detail::concat(W1.defined() ? W1.desc() : "undefined", ", ", W2.defined() ? W2.desc() : "undefined"));
  check_groups(x, W1, groups, "swiglu_expert_mlp", GroupedWeight::out_in);
  const int64_t rows = x.dim(0);
  Tensor h = alloc_activation(Shape{rows, W1.dim(1)}, x.dtype(), x.device());
  Tensor a = alloc_activation(Shape{rows, grouped_in(W2, GroupedWeight::in_out)}, x.dtype(), x.device());
  grouped_linear_swiglu_forward(x, W1, s, groups, h, a);
  check_groups(a, W2, groups, "swiglu_expert_mlp", GroupedWeight::in_out);
  Tensor y = alloc_activation(Shape{rows, grouped_out(W2, GroupedWeight::in_out)}, x.dtype(), x.device());
  grouped_linear_forward(a, W2, groups, y, GroupedWeight::in_out);
  if (needs_grad({&x, &W1, &s, &W2})) {
    y.set_requires_grad(true);
    current_tape()->record([x, W1, s, W2, groups, h, a, y] {
      Tensor gy = grad_of(y);
      if (!gy) return;
      GradSlot dh;  // a fresh dh (not accumulated): the fused dx epilogue writes it whole
      if (x.requires_grad() || W1.requires_grad()) dh.grad = alloc_activation(h.shape(), h.dtype(), h.device());
      swiglu_grouped_linear_backward(h, s, a, W2, gy, groups, dh, grad_slot(s), GradSlot{});  // dW2 below
      if (GradSlot dx = grad_slot(x)) grouped_linear_backward(x, W1, dh.grad, groups, dx, GradSlot{});
      // dh exists wherever W1 needs its gradient (allocated above for x or W1).
      grouped_linear_backward_weights({x, W1, dh.grad, GroupedWeight::out_in, grad_slot(W1)},
                                      {a, W2, gy, GroupedWeight::in_out, grad_slot(W2)}, groups);
    });
  }
  return y;
}

Tensor grouped_linear(const Tensor& x, const Tensor& W, const RowGroups& groups, GroupedWeight layout) {
  check_groups(x, W, groups, "grouped_linear", layout);
  Tensor y = alloc_activation(Shape{x.dim(0), grouped_out(W, layout)}, x.dtype(), x.device());
  grouped_linear_forward(x, W, groups, y, layout);
  if (needs_grad({&x, &W})) {
    y.set_requires_grad(true);
    current_tape()->record([x, W, groups, y, layout] {
      Tensor gy = grad_of(y);
      if (!gy) return;
      GradSlot dx = grad_slot(x), dW = grad_slot(W);
      grouped_linear_backward(x, W, gy, groups, dx, dW, layout);
    });
  }
  return y;
}

}  // namespace um::ops
