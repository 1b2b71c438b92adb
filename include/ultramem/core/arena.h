// Per-step activation arena: a bump allocator over one device buffer. reset() at the end of a
// step frees everything at once. When a step needed more than one chunk, reset() replaces the chunks
// by a single one of the peak size, so from the second step on a training step allocates nothing.
#pragma once
#include <vector>

#include "ultramem/core/tensor.h"

namespace um {

class Arena {
 public:
  explicit Arena(Device device, size_t initial_bytes = size_t(64) << 20);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  Tensor alloc(const Shape& shape, DType dtype);
  void* alloc_bytes(size_t bytes);
  void reset();
  size_t used_bytes() const { return used_; }
  size_t peak_bytes() const { return peak_; }
  size_t capacity_bytes() const;
  // Number of device allocations since construction (tests assert it stops growing).
  size_t allocation_count() const { return allocations_; }
  Device device() const { return device_; }
  // Tests: fill every allocation with 0xFF bytes (NaN in every float type) so a kernel that leaves
  // part of its output unwritten fails the comparison instead of passing on stale data.
  void set_poison(bool on) { poison_ = on; }

 private:
  struct Chunk {
    char* base;
    size_t size;
    size_t top;
  };
  void add_chunk(size_t min_bytes);
  Device device_;
  std::vector<Chunk> chunks_;
  size_t used_ = 0, peak_ = 0, allocations_ = 0;
  bool poison_ = false;
};

// The arena ops allocate their outputs from: one per device, per thread.
Arena& arena_for(Device device);
// Allocate an activation on `device` from its arena.
Tensor alloc_activation(const Shape& shape, DType dtype, Device device);

}  // namespace um
