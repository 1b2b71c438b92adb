#include "ultramem/ops/cross_entropy.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

// Checks logits/targets and returns the number of valid (non-padding) columns.
static int64_t check_cross_entropy_args(const Tensor& logits, const Tensor& targets, int64_t valid_vocab) {
  if (!logits.defined() || logits.ndim() != 2 || logits.dim(1) < 1)
    throw Error("cross_entropy: logits", "shape [N, Vp] with Vp >= 1", logits.desc());
  int64_t n = logits.dim(0), vp = logits.dim(1);
  check_shape(targets, Shape{n}, "cross_entropy: targets");
  check_dtype(targets, DType::i32, "cross_entropy: targets");
  check_same_device(logits, targets, "cross_entropy: logits and targets");
  if (valid_vocab > vp)
    throw Error("cross_entropy: valid_vocab", detail::concat("at most the logits' width ", vp),
                std::to_string(valid_vocab));
  return valid_vocab <= 0 ? vp : valid_vocab;
}

// Statistics (row losses, logsumexp, the loss) are f32, or f64 when the CPU runs in f64.
static DType stat_dtype(const Tensor& logits) { return logits.dtype() == DType::f64 ? DType::f64 : DType::f32; }

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab,
                           const Tensor& row_loss, const Tensor& lse, const Tensor& loss, const Tensor& count) {
  int64_t v = check_cross_entropy_args(logits, targets, valid_vocab);
  Shape rows{logits.dim(0)};
  check_shape(row_loss, rows, "cross_entropy: row_loss");
  check_shape(lse, rows, "cross_entropy: lse");
  check_shape(loss, Shape{1}, "cross_entropy: loss");
  check_shape(count, Shape{1}, "cross_entropy: count");
  for (const Tensor* t : {&row_loss, &lse, &loss}) check_dtype(*t, stat_dtype(logits), "cross_entropy: statistics");
  check_dtype(count, DType::i32, "cross_entropy: count");
  UM_DISPATCH_DEVICE(logits, cross_entropy_forward, logits, targets, v, row_loss, lse, loss, count);
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab, const Tensor& lse,
                            const Tensor& count, const Tensor& dloss, const Tensor& dlogits, bool accumulate) {
  int64_t v = check_cross_entropy_args(logits, targets, valid_vocab);
  check_shape(lse, Shape{logits.dim(0)}, "cross_entropy backward: lse");
  check_shape(count, Shape{1}, "cross_entropy backward: count");
  check_shape(dloss, Shape{1}, "cross_entropy backward: dloss");
  check_shape(dlogits, logits.shape(), "cross_entropy backward: dlogits");
  check_dtype(lse, stat_dtype(logits), "cross_entropy backward: lse");
  check_dtype(dloss, stat_dtype(logits), "cross_entropy backward: dloss");
  check_dtype(count, DType::i32, "cross_entropy backward: count");
  check_same_device(logits, dlogits, "cross_entropy backward: logits and dlogits");
  check_same_device(logits, dloss, "cross_entropy backward: logits and dloss");
  UM_DISPATCH_DEVICE(logits, cross_entropy_backward, logits, targets, v, lse, count, dloss, dlogits, accumulate);
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t valid_vocab) {
  int64_t v = check_cross_entropy_args(logits, targets, valid_vocab);
  Device dev = logits.device();
  DType st = stat_dtype(logits);
  Tensor row_loss = alloc_activation(Shape{logits.dim(0)}, st, dev);
  Tensor lse = alloc_activation(Shape{logits.dim(0)}, st, dev);
  Tensor loss = alloc_activation(Shape{1}, st, dev);
  Tensor count = alloc_activation(Shape{1}, DType::i32, dev);
  cross_entropy_forward(logits, targets, v, row_loss, lse, loss, count);
  if (needs_grad({&logits})) {
    loss.set_requires_grad(true);
    current_tape()->record([logits, targets, v, lse, count, loss] {
      Tensor dloss = grad_of(loss);
      if (!dloss) return;
      TensorImpl* li = logits.impl();
      if (!li->grad) {
        // Nothing else reads the logits after this op: their memory becomes their gradient.
        Tensor in_place = logits.view(logits.shape());
        cross_entropy_backward(logits, targets, v, lse, count, dloss, in_place, false);
        li->grad = in_place.impl_ptr();
        li->grad_ready = true;
      } else {
        GradSlot slot = grad_slot(logits);
        cross_entropy_backward(logits, targets, v, lse, count, dloss, slot.grad, slot.accumulate);
      }
    });
  }
  return loss;
}

}  // namespace um::ops
