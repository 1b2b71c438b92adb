#include "ultramem/core/tape.h"

#include "ultramem/core/arena.h"

namespace um {

static thread_local Tape* g_tape = nullptr;

Tape* current_tape() { return g_tape; }

TapeScope::TapeScope(Tape& tape) : prev_(g_tape) { g_tape = &tape; }
TapeScope::~TapeScope() { g_tape = prev_; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_tape) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

GradSlot grad_slot(const Tensor& t) {
  GradSlot s;
  if (!t.defined() || !t.requires_grad()) return s;
  TensorImpl* impl = t.impl();
  if (!impl->grad) {
    Tensor g = alloc_activation(t.shape(), t.dtype(), t.device());
    impl->grad = g.impl_ptr();
    impl->grad_ready = false;
  }
  s.grad = Tensor(impl->grad);
  s.accumulate = impl->grad_ready;
  impl->grad_ready = true;
  return s;
}

Tensor grad_of(const Tensor& t) {
  if (!t.defined() || !t.impl()->grad || !t.impl()->grad_ready) return Tensor();
  return Tensor(t.impl()->grad);
}

void Tape::backward(const Tensor& loss, double seed) {
  UM_CHECK(loss.numel() == 1, "a scalar loss", loss.desc());
  UM_CHECK(loss.requires_grad(), "a loss that depends on parameters", loss.desc());
  GradSlot g = grad_slot(loss);
  Tensor host = Tensor::from_doubles({seed}, g.grad.shape(), g.grad.dtype());
  g.grad.copy_from(host);
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) (*it)();
  nodes_.clear();
}

void Tape::backward_from(const Tensor& out, const Tensor& dout) { backward_from({{out, dout}}); }

void Tape::backward_from(const std::vector<Seed>& seeds) {
  for (const Seed& s : seeds) {
    UM_CHECK(s.out.requires_grad(), "an output that depends on something requiring a gradient", s.out.desc());
    check_shape(s.grad, s.out.shape(), "backward_from: seed gradient");
    GradSlot g = grad_slot(s.out);
    g.grad.copy_from(s.grad);
  }
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) (*it)();
  nodes_.clear();
}

}  // namespace um
