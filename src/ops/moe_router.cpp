#include "ultramem/ops/moe_router.h"

#include "src/ops/dispatch.h"
#include "ultramem/core/arena.h"

namespace um::ops {

static void check_options(const Tensor& logits, const MoeRouterOptions& o, const char* op) {
  if (!logits.defined() || logits.ndim() != 2 || logits.dim(0) < 1 || logits.dim(1) < 1)
    throw Error(detail::concat(op, ": logits"), "a 2-d tensor [tokens, experts]", logits.defined() ? logits.desc() : "undefined");
  const int64_t E = logits.dim(1);
  if (E > kMoeMaxExperts)
    throw Error(detail::concat(op, ": logits"), detail::concat("at most ", kMoeMaxExperts, " experts"), logits.desc());
  if (o.top_k < 1 || o.top_k > E || o.top_k > kMoeMaxTopK)
    throw Error(detail::concat(op, ": top_k"), detail::concat("in [1, min(", E, " experts, ", kMoeMaxTopK, ")]"),
                std::to_string(o.top_k));
  if (logits.device().is_cuda()) check_dtype(logits, DType::f32, detail::concat(op, ": logits (f32 on the GPU)").c_str());
  UM_CHECK(logits.numel() <= int64_t(INT32_MAX), detail::concat(op, ": fewer than 2^31 logits"), logits.desc());
}

void moe_router_forward(const Tensor& logits, const MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                        const Tensor& weights, const Tensor& experts, const Tensor& counts,
                        const Tensor& balance_loss, const Tensor& z_loss) {
  check_options(logits, o, "moe_router");
  const int64_t N = logits.dim(0), E = logits.dim(1), k = o.top_k;
  const DType dt = logits.dtype();
  check_shape(probs, logits.shape(), "moe_router: probs");
  check_dtype(probs, dt, "moe_router: probs");
  check_shape(lse, Shape{N}, "moe_router: lse");
  check_dtype(lse, dt, "moe_router: lse");
  check_shape(weights, Shape{N, k}, "moe_router: weights");
  check_dtype(weights, dt, "moe_router: weights");
  check_shape(experts, Shape{N, k}, "moe_router: experts");
  check_dtype(experts, DType::i32, "moe_router: experts");
  check_shape(counts, Shape{E}, "moe_router: counts");
  check_dtype(counts, DType::i32, "moe_router: counts");
  check_shape(balance_loss, Shape{1}, "moe_router: balance_loss");
  check_dtype(balance_loss, dt, "moe_router: balance_loss");
  check_shape(z_loss, Shape{1}, "moe_router: z_loss");
  check_dtype(z_loss, dt, "moe_router: z_loss");
  for (const Tensor* t : {&probs, &lse, &weights, &experts, &counts, &balance_loss, &z_loss})
    check_same_device(logits, *t, "moe_router: outputs");
  UM_DISPATCH_DEVICE(logits, moe_router_forward, logits, o, probs, lse, weights, experts, counts, balance_loss, z_loss);
}

void moe_router_backward(const MoeRouterOptions& o, const Tensor& probs, const Tensor& lse, const Tensor& weights,
                         const Tensor& experts, const Tensor& counts, const Tensor& dweights, const Tensor& dbalance,
                         const Tensor& dz, const GradSlot& dlogits) {
  check_options(probs, o, "moe_router backward");
  const int64_t N = probs.dim(0), k = o.top_k;
  const DType dt = probs.dtype();
  if (dweights.defined()) {
    check_tensor(dweights, Shape{N, k}, dt, probs, "moe_router backward: dweights");
  }
  for (const Tensor* g : {&dbalance, &dz}) {
    if (!g->defined()) continue;
    check_tensor(*g, Shape{1}, dt, probs, "moe_router backward: loss gradient");
  }
  if (!dlogits) return;
  check_tensor(dlogits.grad, probs.shape(), dt, probs, "moe_router backward: dlogits");
  UM_DISPATCH_DEVICE(probs, moe_router_backward, o, probs, lse, weights, experts, counts, dweights, dbalance, dz,
                     dlogits);
}

MoeRouting moe_router(const Tensor& logits, const MoeRouterOptions& o) {
  check_options(logits, o, "moe_router");
  const int64_t N = logits.dim(0), E = logits.dim(1), k = o.top_k;
  const Device dev = logits.device();
  const DType dt = logits.dtype();
  MoeRouting r;
  Tensor probs = alloc_activation(logits.shape(), dt, dev), lse = alloc_activation(Shape{N}, dt, dev);
  r.weights = alloc_activation(Shape{N, k}, dt, dev);
  r.experts = alloc_activation(Shape{N, k}, DType::i32, dev);
  r.counts = alloc_activation(Shape{E}, DType::i32, dev);
  r.balance_loss = alloc_activation(Shape{1}, dt, dev);
  r.z_loss = alloc_activation(Shape{1}, dt, dev);
  moe_router_forward(logits, o, probs, lse, r.weights, r.experts, r.counts, r.balance_loss, r.z_loss);
  if (needs_grad({&logits})) {
    for (const Tensor* t : {&r.weights, &r.balance_loss, &r.z_loss}) t->set_requires_grad(true);
    current_tape()->record([o, logits, probs, lse, r] {
      Tensor gw = grad_of(r.weights), gb = grad_of(r.balance_loss), gz = grad_of(r.z_loss);
      if (!gw && !gb && !gz) return;
      moe_router_backward(o, probs, lse, r.weights, r.experts, r.counts, gw, gb, gz, grad_slot(logits));
    });
  }
  return r;
}

}  // namespace um::ops
