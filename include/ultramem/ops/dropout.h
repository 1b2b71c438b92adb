// Dropout op family: inverted dropout whose mask is a pure function of (seed, offset + element index).
//
// Element i is kept when the top 32 bits of dropout_hash(seed, offset + i) are >= dropout_threshold(p),
// i.e. with probability 1 - p (to within 2^-32), and a kept element is scaled by 1 / (1 - p). The hash is
// integer arithmetic shared verbatim by the CPU and the GPU, so both devices draw bit-identical masks, a
// step can be replayed exactly from its seed, and the backward recomputes the mask instead of storing
// it. Callers advance `offset` by the element count after each call so masks never repeat in a step.
#pragma once
#include <cstdint>

#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

#ifndef UM_HOST_DEVICE
#if defined(__CUDACC__)
#define UM_HOST_DEVICE __host__ __device__
#else
#define UM_HOST_DEVICE
#endif
#endif

namespace um::ops {

// Inverted dropout with probability p in [0, 1): p == 0 returns x itself (no copy, no tape node).
Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset);

// Kernel-level entry point, used by both directions (the backward applies the same mask to dy):
// dst = (accumulate ? dst : 0) + mask(seed, offset + i) * src / (1 - p).
void dropout_apply(const Tensor& src, float p, uint64_t seed, uint64_t offset, const Tensor& dst, bool accumulate);

// SplitMix64's output function (Steele et al. 2014): a bijective 64-bit mixer.
UM_HOST_DEVICE constexpr uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The random bits of element `counter` under `seed`: SplitMix64's state at step `counter` of the
// stream seeded by mix(seed), i.e. a counter-based generator (any element is drawn independently).
UM_HOST_DEVICE constexpr uint64_t dropout_hash(uint64_t seed, uint64_t counter) {
  return splitmix64_mix(splitmix64_mix(seed) + (counter + 1) * 0x9E3779B97F4A7C15ull);
}

// Elements whose top 32 hash bits fall below this are dropped: round(p * 2^32), computed in double on
// the host so every device compares against the same integer.
inline uint64_t dropout_threshold(float p) { return uint64_t(double(p) * 4294967296.0 + 0.5); }

UM_HOST_DEVICE constexpr bool dropout_keep(uint64_t seed, uint64_t counter, uint64_t threshold) {
  return (dropout_hash(seed, counter) >> 32) >= threshold;
}

}  // namespace um::ops

namespace um::cpu {
void dropout_apply(const Tensor& src, float p, uint64_t seed, uint64_t offset, const Tensor& dst, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void dropout_apply(const Tensor& src, float p, uint64_t seed, uint64_t offset, const Tensor& dst, bool accumulate);
}  // namespace um::cuda
