// CUDA MoE dispatch.
//
// Plan: keys[a] = experts[a] (an out-of-range id becomes E and raises the error flag), values = a;
// cub::DeviceRadixSort::SortPairs over the bits that hold E (stable: within an expert the assignments
// stay ascending, the CPU's counting-sort order); offsets[e] = lower_bound(sorted keys, e), written by
// the first sorted position whose key is >= e (plan_offsets_kernel); row_of[sorted[r]] = r (or -1 beyond
// the capacity). Then the E + 1 offsets (and
// the error flag) are copied into pinned host memory and an event recorded; moe_plan_build_finish waits for
// that event (the one synchronisation of the layer, overlapped with whatever was queued after the copy).
// Permute and its backward (which are also the combine's backward and forward): one warp per row or
// token, 16-byte packs along d (V = 8 bf16 or 4 f32, when d and the pointers allow, else scalars), fp32
// sums in a fixed slot order. No float atomics: bitwise reproducible.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"
#include "ultramem/core/arena.h"
#include "ultramem/ops/moe_dispatch.h"

namespace um::cuda {
namespace {

constexpr int kWarps = 8;  // warps per block of the row kernels
constexpr unsigned long long kNoBad = ~0ull;

__global__ void plan_keys_kernel(const int32_t* __restrict__ experts, int A, int E, uint32_t* __restrict__ keys,
                                 int32_t* __restrict__ values, unsigned long long* bad) {
  for (int a = blockIdx.x * blockDim.x + threadIdx.x; a < A; a += gridDim.x * blockDim.x) {
    const int32_t e = experts[a];
    const bool ok = e >= 0 && e < E;
    keys[a] = ok ? uint32_t(e) : uint32_t(E);
    values[a] = a;
    if (!ok) atomicMin(bad, (unsigned long long)a);
  }
}

// offsets[e] = first r with sorted_keys[r] >= e, for e in [0, E]: position r (0 <= r <= A) writes the
// e in (sorted_keys[r - 1], sorted_keys[r]] (keys[-1] = -1, keys[A] = E), so each e is written once. (A
// binary search per expert took 9.3 us for 131k keys on an H200: 17 dependent loads.)
__global__ void plan_offsets_kernel(const uint32_t* __restrict__ sorted_keys, int A, int E, int32_t* __restrict__ offsets) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r <= A; r += gridDim.x * blockDim.x) {
    const int lo = r == 0 ? -1 : int(sorted_keys[r - 1]), hi = r == A ? E : int(sorted_keys[r]);
    for (int e = lo + 1; e <= hi; ++e) offsets[e] = r;
  }
}

__global__ void plan_rows_kernel(const uint32_t* __restrict__ sorted_keys, const int32_t* __restrict__ sorted,
                                 const int32_t* __restrict__ offsets, int A, int E, int capacity,
                                 int32_t* __restrict__ row_of) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < A; r += gridDim.x * blockDim.x) {
    const uint32_t e = sorted_keys[r];
    if (e >= uint32_t(E)) continue;  // a bad id: the Error is raised after the kernel
    const int rank = r - offsets[e];
    row_of[sorted[r]] = capacity == 0 || rank < capacity ? r : -1;
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kWarps * 32)
    permute_forward_kernel(const T* __restrict__ x, const int32_t* __restrict__ sorted,
                           const int32_t* __restrict__ row_of, int rows, int k, int d, T* __restrict__ xs) {
  const int lane = threadIdx.x & 31, packs = d / V;
  for (int r = blockIdx.x * kWarps + (threadIdx.x >> 5); r < rows; r += gridDim.x * kWarps) {
    const int a = sorted[r];
    T* dst = xs + int64_t(r) * d;
    if (row_of[a] < 0) {  // dropped by the capacity: a zero row, as the CPU
      Pack<T, V> z;
#pragma unroll
      for (int v = 0; v < V; ++v) z.v[v] = from_f32<T>(0.f);
      for (int p = lane; p < packs; p += 32) store_pack<V>(dst + p * V, z);
      continue;
    }
    const T* src = x + int64_t(a / k) * d;
    for (int p = lane; p < packs; p += 32) store_pack<V>(dst + p * V, load_pack<V>(src + p * V));
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kWarps * 32)
    permute_backward_kernel(const T* __restrict__ dxs, const int32_t* __restrict__ row_of, int tokens, int k, int d,
                            T* __restrict__ dx, bool accumulate) {
  const int lane = threadIdx.x & 31, packs = d / V;
  for (int t = blockIdx.x * kWarps + (threadIdx.x >> 5); t < tokens; t += gridDim.x * kWarps) {
    for (int p = lane; p < packs; p += 32) {
      float acc[V];
      if (accumulate) {
        const Pack<T, V> o = load_pack<V>(dx + int64_t(t) * d + p * V);
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = to_f32(o.v[v]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = 0.f;
      }
      for (int j = 0; j < k; ++j) {
        const int r = row_of[int64_t(t) * k + j];
        if (r < 0) continue;
        const Pack<T, V> g = load_pack<V>(dxs + int64_t(r) * d + p * V);
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += to_f32(g.v[v]);
      }
      Pack<T, V> out;
#pragma unroll
      for (int v = 0; v < V; ++v) out.v[v] = from_f32<T>(acc[v]);
      store_pack<V>(dx + int64_t(t) * d + p * V, out);
    }
  }
}

// The routing weights in row order: w[r] = weights[sorted[r]] (0 for a dropped row); backward the inverse
// gather dweights[a] = dw[row_of[a]] (0 for a dropped assignment). One thread per element.
__global__ void row_weights_forward_kernel(const float* __restrict__ weights, const int32_t* __restrict__ sorted,
                                           const int32_t* __restrict__ row_of, int rows, float* __restrict__ w) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
    const int a = sorted[r];
    w[r] = row_of[a] < 0 ? 0.f : weights[a];
  }
}

__global__ void row_weights_backward_kernel(const float* __restrict__ dw, const int32_t* __restrict__ row_of, int rows,
                                            float* __restrict__ dweights, bool accumulate) {
  for (int a = blockIdx.x * blockDim.x + threadIdx.x; a < rows; a += gridDim.x * blockDim.x) {
    const float v = row_of[a] < 0 ? 0.f : dw[row_of[a]];
    dweights[a] = accumulate ? dweights[a] + v : v;
  }
}

// The pinned staging of the plan in flight on this thread: its offsets, the error flag and the copy's event.
// One at a time; the ticket tells a finish which start it belongs to.
struct PlanStaging {
  int32_t* offsets = nullptr;
  unsigned long long* bad = nullptr;
  size_t capacity = 0;  // offsets it holds
  cudaEvent_t copied = nullptr;
  uint64_t ticket = 0;
};

PlanStaging& staging(size_t offsets) {
  thread_local PlanStaging s;
  if (!s.copied) UM_CUDA(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
  if (!s.bad) UM_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&s.bad), sizeof(unsigned long long), cudaHostAllocDefault));
  if (s.capacity < offsets) {
    if (s.offsets) {
      UM_CUDA(cudaEventSynchronize(s.copied));  // an abandoned plan's copy may still be writing it
      UM_CUDA(cudaFreeHost(s.offsets));
    }
    UM_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&s.offsets), offsets * sizeof(int32_t), cudaHostAllocDefault));
    s.capacity = offsets;
  }
  return s;
}

unsigned row_grid(int64_t rows) {
  return std::max(1u, std::min<unsigned>(ceil_div(rows, kWarps), unsigned(sm_count()) * 32u));
}

template <typename T>
bool vectorizable(int d, std::initializer_list<const void*> ptrs) {
  if (d % (16 / int(sizeof(T))) != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

int key_bits(int64_t n) {
  int bits = 1;
  while (bits < 32 && (uint64_t(n) >> bits) != 0) ++bits;
  return bits;
}

}  // namespace

void moe_plan_build(const Tensor& experts, ops::MoePlan& plan) {
  const int A = int(plan.rows()), E = int(plan.num_experts);
  const int capacity = int(std::min<int64_t>(plan.capacity, INT32_MAX));
  Arena& arena = arena_for(experts.device());
  auto* offsets = static_cast<int32_t*>(arena.alloc_bytes(size_t(E + 1) * sizeof(int32_t)));
  auto* bad = static_cast<unsigned long long*>(arena.alloc_bytes(sizeof(unsigned long long)));
  UM_CUDA(cudaMemsetAsync(bad, 0xff, sizeof(unsigned long long), stream()));
  if (A > 0) {
    auto* keys = static_cast<uint32_t*>(arena.alloc_bytes(size_t(A) * sizeof(uint32_t)));
    auto* sorted_keys = static_cast<uint32_t*>(arena.alloc_bytes(size_t(A) * sizeof(uint32_t)));
    auto* values = static_cast<int32_t*>(arena.alloc_bytes(size_t(A) * sizeof(int32_t)));
    int32_t* sorted = plan.sorted_assignment.data_as<int32_t>();
    const int end_bit = key_bits(E);
    size_t temp_bytes = 0;
    UM_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, sorted_keys, values, sorted, A, 0, end_bit,
                                            stream()));
    void* temp = arena.alloc_bytes(std::max<size_t>(temp_bytes, 1));
    const unsigned grid = std::max(1u, std::min<unsigned>(ceil_div(A, 256), unsigned(sm_count()) * 8u));
    plan_keys_kernel<<<grid, 256, 0, stream()>>>(experts.data_as<int32_t>(), A, E, keys, values, bad);
    UM_CUDA_LAUNCHED();
    UM_CUDA(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, sorted_keys, values, sorted, A, 0, end_bit,
                                            stream()));
    plan_offsets_kernel<<<grid, 256, 0, stream()>>>(sorted_keys, A, E, offsets);
    UM_CUDA_LAUNCHED();
    plan_rows_kernel<<<grid, 256, 0, stream()>>>(sorted_keys, sorted, offsets, A, E, capacity,
                                                 plan.row_of.data_as<int32_t>());
    UM_CUDA_LAUNCHED();
  } else {
    UM_CUDA(cudaMemsetAsync(offsets, 0, size_t(E + 1) * sizeof(int32_t), stream()));
  }
  PlanStaging& st = staging(size_t(E + 1));
  UM_CUDA(cudaEventSynchronize(st.copied));  // an abandoned plan's copy must land before this one reuses the memory
  UM_CUDA(cudaMemcpyAsync(st.offsets, offsets, size_t(E + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream()));
  UM_CUDA(cudaMemcpyAsync(st.bad, bad, sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream()));
  UM_CUDA(cudaEventRecord(st.copied, stream()));
  plan.host_ticket = ++st.ticket;
  plan.experts_for_errors = experts;
}

void moe_plan_build_finish(ops::MoePlan& plan) {
  const int E = int(plan.num_experts);
  PlanStaging& st = staging(size_t(E + 1));
  UM_CHECK(plan.host_ticket == st.ticket, "moe_plan_finish: the plan this thread started last",
           "a plan abandoned by a later moe_plan_start");
  UM_CUDA(cudaEventSynchronize(st.copied));
  plan.host_ticket = 0;
  const unsigned long long bad_host = *st.bad;
  if (bad_host != kNoBad) {
    int32_t id = 0;
    UM_CUDA(cudaMemcpy(&id, plan.experts_for_errors.data_as<int32_t>() + bad_host, sizeof(id), cudaMemcpyDeviceToHost));
    throw Error(detail::concat("moe_plan: experts position ", bad_host), detail::concat("an expert id in [0, ", E, ")"),
                std::to_string(id));
  }
  plan.experts_for_errors = Tensor();
  const int32_t* host = st.offsets;
  plan.counts.assign(size_t(E), 0);
  plan.groups.start.assign(size_t(E), 0);
  plan.groups.size.assign(size_t(E), 0);
  for (int e = 0; e < E; ++e) {
    const int64_t n = host[e + 1] - host[e];
    plan.counts[size_t(e)] = n;
    plan.groups.start[size_t(e)] = host[e];
    plan.groups.size[size_t(e)] = plan.capacity > 0 ? std::min<int64_t>(n, plan.capacity) : n;
  }
}

void moe_permute_forward(const Tensor& x, const ops::MoePlan& plan, const Tensor& xs) {
  const int rows = int(plan.rows()), k = int(plan.top_k), d = int(x.dim(1));
  if (rows == 0) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (vectorizable<T>(d, {x.data(), xs.data()}))
      permute_forward_kernel<T, kV><<<row_grid(rows), kWarps * 32, 0, stream()>>>(
          x.data_as<T>(), plan.sorted_assignment.data_as<int32_t>(), plan.row_of.data_as<int32_t>(), rows, k, d,
          xs.data_as<T>());
    else
      permute_forward_kernel<T, 1><<<row_grid(rows), kWarps * 32, 0, stream()>>>(
          x.data_as<T>(), plan.sorted_assignment.data_as<int32_t>(), plan.row_of.data_as<int32_t>(), rows, k, d,
          xs.data_as<T>());
  });
  UM_CUDA_LAUNCHED();
}

void moe_permute_backward(const Tensor& dxs, const ops::MoePlan& plan, const GradSlot& dx) {
  const int tokens = int(plan.tokens), k = int(plan.top_k), d = int(dxs.dim(1));
  if (tokens == 0) return;
  UM_DISPATCH_ACT(dxs.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (vectorizable<T>(d, {dxs.data(), dx.grad.data()}))
      permute_backward_kernel<T, kV><<<row_grid(tokens), kWarps * 32, 0, stream()>>>(
          dxs.data_as<T>(), plan.row_of.data_as<int32_t>(), tokens, k, d, dx.grad.data_as<T>(), dx.accumulate);
    else
      permute_backward_kernel<T, 1><<<row_grid(tokens), kWarps * 32, 0, stream()>>>(
          dxs.data_as<T>(), plan.row_of.data_as<int32_t>(), tokens, k, d, dx.grad.data_as<T>(), dx.accumulate);
  });
  UM_CUDA_LAUNCHED();
}

// f32 only: the router's dtype on the GPU (other dtypes are refused by name).
void moe_row_weights_forward(const Tensor& weights, const ops::MoePlan& plan, const Tensor& w) {
  check_dtype(weights, DType::f32, "moe_row_weights: weights (f32 on the GPU)");
  const int rows = int(plan.rows());
  if (rows == 0) return;
  row_weights_forward_kernel<<<std::min<unsigned>(ceil_div(rows, 256), unsigned(sm_count()) * 8u), 256, 0, stream()>>>(
      weights.data_as<float>(), plan.sorted_assignment.data_as<int32_t>(), plan.row_of.data_as<int32_t>(), rows,
      w.data_as<float>());
  UM_CUDA_LAUNCHED();
}

void moe_row_weights_backward(const Tensor& dw, const ops::MoePlan& plan, const GradSlot& dweights) {
  check_dtype(dw, DType::f32, "moe_row_weights backward: dw (f32 on the GPU)");
  const int rows = int(plan.rows());
  if (rows == 0) return;
  row_weights_backward_kernel<<<std::min<unsigned>(ceil_div(rows, 256), unsigned(sm_count()) * 8u), 256, 0, stream()>>>(
      dw.data_as<float>(), plan.row_of.data_as<int32_t>(), rows, dweights.grad.data_as<float>(), dweights.accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
