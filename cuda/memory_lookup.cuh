// Shared by the memory lookup kernels (memory_lookup.cu: forward, memory_lookup_backward.cu): the
// device view of the lookup's geometry, slot decoding with validation, per-warp slot bookkeeping in
// shared memory, and the host-side Error for a bad index.
#pragma once
#include <algorithm>
#include <type_traits>

#include "activation_math.cuh"
#include "common.cuh"
#include "segment_sort.cuh"
#include "ultramem/ops/memory_lookup.h"

namespace um::cuda {

constexpr int kLookupMaxWarps = 8;  // warps (one token each) per block
// Blocks per SM the kernels are compiled for (register caps 85 and 128): the forward keeps 24 tokens
// per SM in flight, each with kSlotUnroll rows of 16-byte loads outstanding per lane (~36 KiB per SM,
// enough to cover HBM latency). The backward's slot kernel is heavier: 24 tokens per SM with one chunk
// (a few bytes of spilled loop invariants), 16 with several (no spills).
constexpr int kForwardMinBlocks = 3;
constexpr int backward_min_blocks(int max_chunks) { return max_chunks == 1 ? 3 : 2; }
constexpr int kSlotUnroll = 4;  // slots whose rows are loaded before any is used (loads in flight)
constexpr int kMaxChunks = 4;   // C limit of the backward (per-chunk dot products live in registers)

struct LookupParams {
  const int32_t* indices = nullptr;
  const int32_t* perm = nullptr;  // null: identity
  int T = 0, M = 0, C = 0, V = 0, P = 0, groups = 1;
  uint32_t N = 0;          // pool rows (< 2^31)
  uint32_t value_num = 0;  // min(value_num, virtual_num): the same x mod / div for every valid x
  uint32_t offset = 0;     // offset mod N
  int64_t virtual_num = 0;
  bool pre = false, gelu = false;
};

inline LookupParams make_lookup_params(const Tensor& indices, const Tensor& weights, const Tensor& values,
                                       const Tensor& perm, const Tensor& pre_values, const ops::LookupArgs& a) {
  UM_CHECK(values.dim(0) < int64_t(INT32_MAX) && values.dim(1) <= int64_t(INT32_MAX),
           "memory_lookup: a pool below 2^31 rows and columns on the GPU", values.desc());
  LookupParams p;
  p.indices = indices.data_as<int32_t>();
  p.perm = perm.defined() ? perm.data_as<int32_t>() : nullptr;
  p.T = int(indices.dim(0));
  p.M = int(indices.dim(1));
  p.C = int(weights.dim(2));
  p.V = int(values.dim(1));
  p.pre = pre_values.defined();
  p.P = p.pre ? int(pre_values.dim(1)) : 0;
  p.groups = int(a.groups);
  p.N = uint32_t(values.dim(0));
  p.virtual_num = a.virtual_count();
  // x < virtual_num <= 2^31, so with value_num clipped to virtual_num, (x mod value_num) + offset < 2^32.
  p.value_num = uint32_t(std::min(a.value_num, a.virtual_count()));
  p.offset = uint32_t(a.offset % values.dim(0));
  p.gelu = a.gelu_gate;
  return p;
}

// V elements of T read with one access and kept as 32-bit words: a bf16 pair shares a register (a
// Pack<bf16, 8> of __nv_bfloat16 values takes one register per element, which doubles the register
// footprint of the unrolled gathers), and the f32 value of element k is one shift or mask.
template <typename T, int V>
struct Words {
  static constexpr int kBytes = V * int(sizeof(T));
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16, "a 2, 4, 8 or 16-byte access");
  uint32_t w[kBytes >= 4 ? kBytes / 4 : 1];
  __device__ __forceinline__ float operator[](int k) const {  // k: a constant after unrolling
    if constexpr (std::is_same_v<T, float>) return __uint_as_float(w[k]);
    else if constexpr (V == 1) return __uint_as_float(w[0] << 16);  // bf16 = the high half of an f32
    else return __uint_as_float((k & 1) ? (w[k >> 1] & 0xffff0000u) : (w[k >> 1] << 16));
  }
};
template <int V, typename T>
__device__ __forceinline__ Words<T, V> load_words(const T* p) {
  Words<T, V> r;
  if constexpr (Words<T, V>::kBytes == 16) {
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    r.w[0] = q.x, r.w[1] = q.y, r.w[2] = q.z, r.w[3] = q.w;
  } else if constexpr (Words<T, V>::kBytes == 8) {
    const uint2 q = *reinterpret_cast<const uint2*>(p);
    r.w[0] = q.x, r.w[1] = q.y;
  } else if constexpr (Words<T, V>::kBytes == 4) {
    r.w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else {
    r.w[0] = *reinterpret_cast<const unsigned short*>(p);
  }
  return r;
}

// Physical row of the slot at flat position p, and its output group; -1 when the index or its perm
// entry lies outside [0, virtual_num): the slot is then skipped and `bad` records the position.
__device__ __forceinline__ int decode_slot(const LookupParams& L, int64_t p, int* group,
                                           unsigned long long* bad) {
  const int32_t idx = L.indices[p];
  bool ok = idx >= 0 && idx < L.virtual_num;
  int32_t x = idx;
  if (ok && L.perm) {
    x = L.perm[idx];
    ok = x >= 0 && x < L.virtual_num;
  }
  if (!ok) {
    atomicMin(bad, (unsigned long long)p);
    *group = 0;
    return -1;
  }
  const uint32_t ux = uint32_t(x);
  *group = L.groups == 1 ? 0 : int(ux / L.value_num);
  return int((ux % L.value_num + L.offset) % L.N);
}

// A warp's slot bookkeeping in dynamic shared memory: M rows, M groups, then two float arrays.
struct SlotSmem {
  int* row;    // physical row, -1 for a bad index
  int* group;  // output group (0 for a bad index)
  float* a;    // [M]      forward: pre-scores; backward: d scores
  float* b;    // [M * C]  forward: coefficients gate * weight; backward: pre-scores (first M)
};
__host__ __device__ inline size_t slot_smem_bytes(int M, int C) { return size_t(M) * (3 + size_t(C)) * sizeof(float); }
__device__ __forceinline__ SlotSmem slot_smem(unsigned char* base, int warp, int M, int C) {
  int* w = reinterpret_cast<int*>(base + size_t(warp) * slot_smem_bytes(M, C));
  return {w, w + M, reinterpret_cast<float*>(w + 2 * M), reinterpret_cast<float*>(w + 3 * M)};
}

// score[s] = <pre_in[t], pre_values[row[s]]> for every slot of token t (0 for an invalid slot), both
// arrays in shared memory: lanes over VP-wide packs of P, kSlotUnroll slots' rows loaded before any is
// used, each dot reduced by the fixed-order warp_sum. Lane 0 writes the scores.
template <typename T, int VP>
__device__ __forceinline__ void pre_scores(const LookupParams& L, int t, const T* __restrict__ pre_in,
                                           const T* __restrict__ pre_values, const int* row_of, float* score,
                                           int lane) {
  const int P = L.P, packs = P / VP;
  const T* x = pre_in + int64_t(t) * P;
#pragma unroll 1
  for (int s0 = 0; s0 < L.M; s0 += kSlotUnroll) {
    float dot[kSlotUnroll];
    int row[kSlotUnroll];
#pragma unroll
    for (int u = 0; u < kSlotUnroll; ++u) {
      dot[u] = 0.f;
      row[u] = s0 + u < L.M ? row_of[s0 + u] : -1;
    }
#pragma unroll 1
    for (int j = lane; j < packs; j += 32) {
      const Words<T, VP> a = load_words<VP>(x + j * VP);
      Words<T, VP> b[kSlotUnroll];
#pragma unroll
      for (int u = 0; u < kSlotUnroll; ++u)
        if (row[u] >= 0) b[u] = load_words<VP>(pre_values + int64_t(row[u]) * P + j * VP);
#pragma unroll
      for (int u = 0; u < kSlotUnroll; ++u)
        if (row[u] >= 0) {
#pragma unroll
          for (int k = 0; k < VP; ++k) dot[u] += a[k] * b[u][k];
        }
    }
#pragma unroll
    for (int u = 0; u < kSlotUnroll; ++u) dot[u] = warp_sum(dot[u]);
    if (lane == 0) {
#pragma unroll
      for (int u = 0; u < kSlotUnroll; ++u)
        if (s0 + u < L.M) score[s0 + u] = dot[u];
    }
  }
}

// Warps per block: as many as fit the default 48 KiB of dynamic shared memory (Error when not one).
inline int lookup_warps(int M, int C) {
  int warps = kLookupMaxWarps;
  while (warps > 1 && size_t(warps) * slot_smem_bytes(M, C) > (size_t(48) << 10)) warps /= 2;
  UM_CHECK(size_t(warps) * slot_smem_bytes(M, C) <= (size_t(48) << 10),
           "memory_lookup: M slots whose bookkeeping fits 48 KiB of shared memory", "M ", M, ", C ", C);
  return warps;
}

inline unsigned lookup_grid(int T, int warps) {
  return std::max(1u, std::min<unsigned>(ceil_div(T, warps), 1u << 20));
}

// Waits for the kernels and throws the Error the CPU reference throws for the first bad slot.
inline void raise_if_bad_slot(const unsigned long long* flag, const LookupParams& L, const char* op) {
  const unsigned long long position = read_bad_position(flag);
  if (position == kNoBadPosition) return;
  int32_t idx = 0;
  UM_CUDA(cudaMemcpy(&idx, L.indices + position, sizeof(idx), cudaMemcpyDeviceToHost));
  const std::string range = detail::concat("[0, ", L.virtual_num, ")");
  if (idx >= 0 && idx < L.virtual_num && L.perm) {
    int32_t x = 0;
    UM_CUDA(cudaMemcpy(&x, L.perm + idx, sizeof(x), cudaMemcpyDeviceToHost));
    throw Error(detail::concat(op, ": perm position ", idx), "a virtual index in " + range, std::to_string(x));
  }
  throw Error(detail::concat(op, ": indices position ", position), "an index in " + range, std::to_string(idx));
}

}  // namespace um::cuda
