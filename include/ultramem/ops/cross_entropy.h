// Cross-entropy op family: fused log-softmax + negative log-likelihood over a (padded) vocabulary,
// the loss of every language-model step.
//
// The forward keeps one fp32 logsumexp per row (never the softmax); the backward recomputes the
// softmax from it and writes dlogits = (softmax - onehot) * dloss / count. The logits are dead after
// this op, so when nothing else wrote their gradient yet the backward writes dlogits over the logits'
// own memory and installs that memory as their gradient: the [N, Vp] buffer, the largest activation
// of a GPT step, exists once instead of twice.
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// logits [N, Vp] (f32/bf16 on GPU, f32/f64 on CPU), targets i32 [N] with -1 = ignored position.
// Columns >= valid_vocab (padding of the vocabulary, e.g. 50257 of 50304) take no part in the
// softmax and get a zero gradient (valid_vocab <= 0 means all Vp columns).
// Returns the mean loss over non-ignored positions as an f32 scalar tensor of shape [1] (f64 on a
// f64 CPU input); 0 (and a zero gradient) when every position is ignored.
// A target outside [0, valid_vocab) other than -1 is an Error naming the row.
// Autograd: if `logits` has no gradient slot yet when the backward runs, the logits' VALUES ARE
// OVERWRITTEN by their gradient (see the file comment); otherwise the gradient is accumulated.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t valid_vocab = 0);

// Kernel-level entry points. `valid_vocab` is resolved (1 <= valid_vocab <= Vp).
// Writes row_loss [N] (0 on ignored rows), lse [N] (logsumexp of the valid columns), loss [1]
// (mean of row_loss over non-ignored rows, reduced in a fixed order) and count i32 [1] (the number
// of non-ignored rows). row_loss, lse and loss are f32 (f64 for f64 CPU logits).
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab,
                           const Tensor& row_loss, const Tensor& lse, const Tensor& loss, const Tensor& count);
// dlogits = (accumulate ? dlogits : 0) + (softmax - onehot) * dloss[0] / count[0], zero on padding
// columns and ignored rows. dloss is the loss gradient [1] read where it lives (on the device).
// dlogits may be the logits' own memory (accumulate = false).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab, const Tensor& lse,
                            const Tensor& count, const Tensor& dloss, const Tensor& dlogits, bool accumulate);

}  // namespace um::ops

namespace um::cpu {
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab,
                           const Tensor& row_loss, const Tensor& lse, const Tensor& loss, const Tensor& count);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab, const Tensor& lse,
                            const Tensor& count, const Tensor& dloss, const Tensor& dlogits, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab,
                           const Tensor& row_loss, const Tensor& lse, const Tensor& loss, const Tensor& count);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab, const Tensor& lse,
                            const Tensor& count, const Tensor& dloss, const Tensor& dlogits, bool accumulate);
}  // namespace um::cuda
