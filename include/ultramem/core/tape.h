// Autograd: a tape of coarse ops. While a Tape is active (TapeScope), every op whose inputs require
// gradients records a closure that computes its inputs' gradients from its outputs'. backward()
// walks the tape in reverse. Gradients accumulate: the first writer of a gradient overwrites, later
// writers add (see GradSlot), so a tensor used twice (tied embeddings, residual streams) just works.
#pragma once
#include <functional>
#include <vector>

#include "ultramem/core/tensor.h"

namespace um {

class Tape {
 public:
  void record(std::function<void()> backward) { nodes_.push_back(std::move(backward)); }
  // Seeds d(loss)/d(loss) = seed and runs every recorded node in reverse, then clears the tape.
  void backward(const Tensor& loss, double seed = 1.0);
  // Seeds d(.)/d(out) = dout (out's shape and dtype, any tensor) and runs the tape likewise: for
  // benchmarks and tests of a layer without a loss on top.
  void backward_from(const Tensor& out, const Tensor& dout);
  // The same with several seeds at once (a layer's output and its auxiliary losses, say).
  struct Seed {
    Tensor out, grad;
  };
  void backward_from(const std::vector<Seed>& seeds);
  void clear() { nodes_.clear(); }
  size_t size() const { return nodes_.size(); }

 private:
  std::vector<std::function<void()>> nodes_;
};

// The tape of this thread, or nullptr when no TapeScope is active (evaluation: nothing recorded).
Tape* current_tape();

class TapeScope {
 public:
  explicit TapeScope(Tape& tape);
  ~TapeScope();
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;

 private:
  Tape* prev_;
};

// True when an op with these inputs must record a backward node.
bool needs_grad(std::initializer_list<const Tensor*> inputs);

// Where a backward kernel writes the gradient of `t`: `accumulate` says add to what is there.
struct GradSlot {
  Tensor grad;
  bool accumulate = false;
  explicit operator bool() const { return grad.defined(); }
};
// Gradient slot of `t` (allocated from the arena on first use), or an empty slot when `t` does not
// require a gradient. Marks the gradient as written: call it right before the kernel that writes it.
GradSlot grad_slot(const Tensor& t);
// The gradient that flowed into `t` so far (undefined when nothing reached it).
Tensor grad_of(const Tensor& t);

}  // namespace um
