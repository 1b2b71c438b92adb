#include "ultramem/ops/memory_lookup.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {
namespace {

// The sizes every lookup entry point agrees on, read off (and checked against) its inputs.
struct LookupShape {
  int64_t T = 0, M = 0, C = 0, N = 0, V = 0, P = 0;
  bool pre = false;
};

void check_args(const LookupArgs& a, const char* op) {
  const std::string w = detail::concat(op, ": args");
  UM_CHECK(a.value_num >= 1, w + ".value_num >= 1", a.value_num);
  UM_CHECK(a.offset >= 0, w + ".offset >= 0", a.offset);
  UM_CHECK(a.virtual_num >= 0 && a.virtual_count() <= int64_t(INT32_MAX),
           w + ".virtual_num in [0, 2^31) (0 = value_num)", a.virtual_num);
  UM_CHECK(a.groups >= 1, w + ".groups >= 1", a.groups);
  UM_CHECK(a.groups == 1 || a.virtual_count() <= a.groups * a.value_num,
           w + ".virtual_num <= groups * value_num (every virtual index needs a group)", "virtual_num ",
           a.virtual_count(), ", groups ", a.groups, ", value_num ", a.value_num);
}

// Checks the forward inputs and returns their sizes. The pre-value tensors: both or neither.
LookupShape check_inputs(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                         const Tensor& pre_in, const Tensor& pre_values, const LookupArgs& args, const char* op) {
  auto where = [op](const char* what) { return detail::concat(op, ": ", what); };
  check_args(args, op);
  LookupShape s;
  if (!indices.defined() || indices.ndim() != 2 || indices.dim(1) < 1)
    throw Error(where("indices"), "shape [T, M] with M >= 1", indices.defined() ? indices.desc() : "undefined");
  check_dtype(indices, DType::i32, where("indices").c_str());
  s.T = indices.dim(0);
  s.M = indices.dim(1);
  if (!values.defined() || values.ndim() != 2 || values.dim(0) < 1 || values.dim(1) < 1)
    throw Error(where("values"), "shape [N, V] with N, V >= 1", values.defined() ? values.desc() : "undefined");
  s.N = values.dim(0);
  s.V = values.dim(1);
  if (!weights.defined() || weights.ndim() != 3 || weights.dim(0) != s.T || weights.dim(1) != s.M ||
      weights.dim(2) < 1)
    throw Error(where("weights"), detail::concat("shape [", s.T, ", ", s.M, ", C] (indices' T and M, C >= 1)"),
                weights.defined() ? weights.desc() : "undefined");
  s.C = weights.dim(2);
  const bool f64 = values.dtype() == DType::f64 && weights.dtype() == DType::f64;
  if (!f64) check_dtype(weights, DType::f32, where("weights (f32; f64 only with f64 values)").c_str());
  UM_CHECK(s.V % s.C == 0, where("values") + " with V a multiple of the C chunks of weights",
           values.desc(), " and C = ", s.C);
  check_same_device(indices, values, where("indices and values").c_str());
  check_same_device(weights, values, where("weights and values").c_str());
  if (perm.defined()) {
    check_shape(perm, Shape{args.virtual_count()}, where("perm ([virtual_num])").c_str());
    check_dtype(perm, DType::i32, where("perm").c_str());
    check_same_device(perm, values, where("perm and values").c_str());
  }
  UM_CHECK(pre_in.defined() == pre_values.defined(), where("pre_in and pre_values") + " both defined or both not",
           pre_in.defined() ? "only pre_in" : "only pre_values");
  s.pre = pre_in.defined();
  if (s.pre) {
    if (pre_values.ndim() != 2 || pre_values.dim(0) != s.N || pre_values.dim(1) < 1)
      throw Error(where("pre_values"), detail::concat("shape [", s.N, ", P] (values' N, P >= 1)"), pre_values.desc());
    s.P = pre_values.dim(1);
    check_shape(pre_in, Shape{s.T, s.P}, where("pre_in ([T, P])").c_str());
    check_dtype(pre_in, values.dtype(), where("pre_in (the values' dtype)").c_str());
    check_dtype(pre_values, values.dtype(), where("pre_values (the values' dtype)").c_str());
    check_same_device(pre_in, values, where("pre_in and values").c_str());
    check_same_device(pre_values, values, where("pre_values and values").c_str());
  }
  UM_CHECK(s.T * s.M * args.groups <= int64_t(INT32_MAX), where("indices") + " with T * M * groups below 2^31",
           indices.desc(), ", groups ", args.groups);
  return s;
}

// A table gradient: the table's shape; f32 on the GPU, the table's dtype on the CPU.
void check_table_grad(const Tensor& g, const Tensor& table, const char* what) {
  check_shape(g, table.shape(), what);
  check_dtype(g, table.device().is_cuda() ? DType::f32 : table.dtype(), what);
  check_same_device(g, table, what);
}

void check_like(const Tensor& g, const Tensor& x, const char* what) {
  check_shape(g, x.shape(), what);
  check_dtype(g, x.dtype(), what);
  check_same_device(g, x, what);
}

}  // namespace

void memory_lookup_forward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                           const Tensor& pre_in, const Tensor& pre_values, const LookupArgs& args, const Tensor& out,
                           const Tensor& used) {
  LookupShape s = check_inputs(indices, weights, values, perm, pre_in, pre_values, args, "memory_lookup");
  check_shape(out, Shape{s.T, args.groups * s.V}, "memory_lookup: out ([T, groups * V])");
  check_dtype(out, values.dtype(), "memory_lookup: out (the values' dtype)");
  check_same_device(out, values, "memory_lookup: out and values");
  if (used.defined()) {
    check_shape(used, Shape{s.N}, "memory_lookup: used ([N])");
    check_dtype(used, DType::i32, "memory_lookup: used");
    check_same_device(used, values, "memory_lookup: used and values");
  }
  UM_DISPATCH_DEVICE(values, memory_lookup_forward, indices, weights, values, perm, pre_in, pre_values, args, out,
                     used);
}

void memory_lookup_backward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                            const Tensor& pre_in, const Tensor& pre_values, const LookupArgs& args,
                            const Tensor& dout, const Tensor& dweights, bool acc_w, const Tensor& dvalues,
                            bool acc_v, const Tensor& dpre_in, bool acc_p, const Tensor& dpre_values, bool acc_pv) {
  const char* op = "memory_lookup backward";
  LookupShape s = check_inputs(indices, weights, values, perm, pre_in, pre_values, args, op);
  check_shape(dout, Shape{s.T, args.groups * s.V}, "memory_lookup backward: dout ([T, groups * V])");
  check_dtype(dout, values.dtype(), "memory_lookup backward: dout (the values' dtype)");
  check_same_device(dout, values, "memory_lookup backward: dout and values");
  if (dweights.defined()) check_like(dweights, weights, "memory_lookup backward: dweights (weights' shape, dtype)");
  if (dvalues.defined()) check_table_grad(dvalues, values, "memory_lookup backward: dvalues (f32 on the GPU)");
  UM_CHECK(s.pre || (!dpre_in.defined() && !dpre_values.defined()),
           "memory_lookup backward: no pre-value gradients without pre-values", "dpre_in or dpre_values");
  if (dpre_in.defined()) check_like(dpre_in, pre_in, "memory_lookup backward: dpre_in (pre_in's shape, dtype)");
  if (dpre_values.defined())
    check_table_grad(dpre_values, pre_values, "memory_lookup backward: dpre_values (f32 on the GPU)");
  if (!dweights.defined() && !dvalues.defined() && !dpre_in.defined() && !dpre_values.defined()) return;
  UM_DISPATCH_DEVICE(values, memory_lookup_backward, indices, weights, values, perm, pre_in, pre_values, args, dout,
                     dweights, acc_w, dvalues, acc_v, dpre_in, acc_p, dpre_values, acc_pv);
}

Tensor memory_lookup(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                     const Tensor& pre_in, const Tensor& pre_values, const LookupArgs& args) {
  LookupShape s = check_inputs(indices, weights, values, perm, pre_in, pre_values, args, "memory_lookup");
  Tensor out = alloc_activation({s.T, args.groups * s.V}, values.dtype(), values.device());
  memory_lookup_forward(indices, weights, values, perm, pre_in, pre_values, args, out, Tensor());
  if (needs_grad({&weights, &values, &pre_in, &pre_values})) {
    out.set_requires_grad(true);
    current_tape()->record([indices, weights, values, perm, pre_in, pre_values, args, out] {
      Tensor dout = grad_of(out);
      if (!dout) return;
      GradSlot dw = grad_slot(weights), dv = grad_slot(values), dp = grad_slot(pre_in),
               dpv = grad_slot(pre_values);
      memory_lookup_backward(indices, weights, values, perm, pre_in, pre_values, args, dout, dw.grad, dw.accumulate,
                             dv.grad, dv.accumulate, dp.grad, dp.accumulate, dpv.grad, dpv.accumulate);
    });
  }
  return out;
}

// ---- softmax over the last dimension ----

static void check_softmax(const Tensor& x, const char* op) {
  UM_CHECK(x.defined() && x.ndim() >= 1 && x.dim(-1) >= 1, detail::concat(op, ": x with a last dimension >= 1"),
           x.defined() ? x.desc() : "an undefined tensor");
  if (x.dtype() != DType::f64 || x.device().is_cuda())
    check_dtype(x, DType::f32, detail::concat(op, ": x (f32; f64 too on the CPU)").c_str());
}

void softmax_lastdim_forward(const Tensor& x, const Tensor& y) {
  check_softmax(x, "softmax_lastdim");
  check_like(y, x, "softmax_lastdim: y");
  UM_DISPATCH_DEVICE(x, softmax_lastdim_forward, x, y);
}

void softmax_lastdim_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, bool accumulate) {
  check_softmax(y, "softmax_lastdim backward");
  check_like(dy, y, "softmax_lastdim backward: dy");
  check_like(dx, y, "softmax_lastdim backward: dx");
  UM_DISPATCH_DEVICE(y, softmax_lastdim_backward, y, dy, dx, accumulate);
}

Tensor softmax_lastdim(const Tensor& x) {
  check_softmax(x, "softmax_lastdim");
  Tensor y = alloc_activation(x.shape(), x.dtype(), x.device());
  softmax_lastdim_forward(x, y);
  if (needs_grad({&x})) {
    y.set_requires_grad(true);
    current_tape()->record([x, y] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      GradSlot dx = grad_slot(x);
      softmax_lastdim_backward(y, dy, dx.grad, dx.accumulate);
    });
  }
  return y;
}

}  // namespace um::ops
