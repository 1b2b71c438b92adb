// CUDA MoE dispatch.
//
// Plan: a stable counting sort of the assignments by expert id, in three passes over warp chunks of
// kPlanChunk assignments (E <= ops::kMoeMaxExperts, the router's bound): each warp counts its chunk per
// bucket (the expert id, E for an out-of-range one, whose first position also goes to the error flag);
// a warp per bucket prefixes its chunks' counts in chunk order (each chunk's start within its bucket,
// and the bucket's total); each block of the last pass turns the totals into the buckets' offsets
// (offsets[e] = the assignments of lower ids), and each of its warps walks its chunk in order, ranking
// equal ids within each 32 with a warp match, and writes sorted[r] = a and row_of[a] = r (-1 beyond the
// capacity or for a bad id). Within an expert the assignments stay ascending: the CPU's counting-sort
// order. Then the error flag and the E + 1 offsets are copied in one piece into pinned host memory, on
// a side stream, and an event recorded; moe_plan_build_finish waits for that event (the one
// synchronisation of the layer, overlapped with whatever was queued after the plan).
// Permute and its backward (which are also the combine's backward and forward): one warp per token (the
// scatter of dropless plans, and the backward's gather-sum) or per row (the capacity plans' gather),
// 16-byte packs along d (V = 8 bf16 or 4 f32, when d and the pointers allow, else scalars), fp32 sums in
// a fixed slot order. The permute writes its k copies with the streaming (evict-first) hint, so they pass
// L2 by (the gather: 81 -> 76 us at 16k tokens, top-8 of 64, d 768, on the H200; the scatter, which
// reads each row once, 60 us). No float atomics: bitwise reproducible.
#include "common.cuh"
#include "ultramem/core/arena.h"
#include "ultramem/ops/moe_dispatch.h"
#include "ultramem/ops/moe_router.h"

namespace um::cuda {
namespace {

constexpr int kWarps = 8;  // warps per block of the row kernels
constexpr unsigned long long kNoBad = ~0ull;

// The counting sort's unit: each warp owns kPlanChunk consecutive assignments; blocks of kWarps warps.
constexpr int kPlanChunk = 256;

// A warp's chunk of expert ids, lane l holding assignments begin + l + 32 i, all loads in flight before the
// first use (0 past the end).
__device__ __forceinline__ void load_chunk_ids(const int32_t* __restrict__ experts, int begin, int end, int lane,
                                               int32_t (&ids)[kPlanChunk / 32]) {
#pragma unroll
  for (int i = 0; i < kPlanChunk / 32; ++i) {
    const int a = begin + lane + 32 * i;
    ids[i] = a < end ? experts[a] : 0;
  }
}

// The inclusive prefix sum over the warp's lanes.
__device__ __forceinline__ int warp_inclusive_sum(int v) {
  const int lane = threadIdx.x & 31;
  for (int o = 1; o < 32; o <<= 1) {
    const int w = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += w;
  }
  return v;
}

// Pass 1: warp u counts its chunk per bucket (e, or E for a bad id) into counts[bucket][u] (bucket-major,
// so pass 2 reads each bucket's chunks contiguously). Shared memory: a histogram per warp, E + 1 each.
__global__ void __launch_bounds__(kWarps * 32)
    plan_count_kernel(const int32_t* __restrict__ experts, int A, int E, int chunks, int32_t* __restrict__ counts,
                      unsigned long long* bad) {
  extern __shared__ int32_t plan_hist[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, u = blockIdx.x * kWarps + warp;
  int32_t* hist = plan_hist + warp * (E + 1);
  for (int c = lane; c <= E; c += 32) hist[c] = 0;
  __syncwarp();
  if (u < chunks) {
    const int begin = u * kPlanChunk, end = min(A, begin + kPlanChunk);
    int32_t ids[kPlanChunk / 32];
    load_chunk_ids(experts, begin, end, lane, ids);
#pragma unroll
    for (int i = 0; i < kPlanChunk / 32; ++i) {
      const int a = begin + lane + 32 * i;
      if (a >= end) break;
      const bool ok = ids[i] >= 0 && ids[i] < E;
      if (!ok) atomicMin(bad, (unsigned long long)a);
      atomicAdd(&hist[ok ? ids[i] : E], 1);
    }
  }
  __syncwarp();
  if (u < chunks)
    for (int c = lane; c <= E; c += 32) counts[int64_t(c) * chunks + u] = hist[c];
}

// Pass 2: one warp per bucket c, over its chunks in order 32 at a time (a coalesced load, a warp scan and
// a carry): starts[c][u] = the bucket's assignments in chunks before u, totals[c] = all of them.
__global__ void __launch_bounds__(kWarps * 32)
    plan_scan_kernel(const int32_t* __restrict__ counts, int E, int chunks, int32_t* __restrict__ starts,
                     int32_t* __restrict__ totals) {
  const int lane = threadIdx.x & 31, c = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (c > E) return;  // warp-uniform
  const int32_t* col = counts + int64_t(c) * chunks;
  int32_t* out = starts + int64_t(c) * chunks;
  int carry = 0;
  for (int u0 = 0; u0 < chunks; u0 += 32) {
    const int u = u0 + lane;
    const int v = u < chunks ? col[u] : 0;
    const int incl = warp_inclusive_sum(v);
    if (u < chunks) out[u] = carry + incl - v;
    carry += __shfl_sync(0xffffffffu, incl, 31);
  }
  if (lane == 0) totals[c] = carry;
}

// Pass 3: each block first turns the totals into the buckets' offsets (offsets[c] = the assignments of
// lower buckets; offsets[E] = the valid ones; block 0 also writes them out for the host). Then warp u
// walks its chunk in order, 32 assignments at a time: equal buckets among the 32 are ranked by lane (a
// warp match), after the bucket's earlier assignments (the warp's running counts, from pass 2).
// sorted[r] = a for every assignment (a bad id's go after the valid ones); row_of[a] = r, or -1 past the
// capacity or for a bad id.
__global__ void __launch_bounds__(kWarps * 32)
    plan_scatter_kernel(const int32_t* __restrict__ experts, int A, int E, int chunks, int capacity,
                        const int32_t* __restrict__ starts, const int32_t* __restrict__ totals,
                        int32_t* __restrict__ offsets_out, int32_t* __restrict__ sorted,
                        int32_t* __restrict__ row_of) {
  extern __shared__ int32_t plan_smem[];
  int32_t* offsets = plan_smem;  // [E + 1], then the warps' running counts [kWarps][E + 1]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, u = blockIdx.x * kWarps + warp;
  if (warp == 0) {  // the totals' exclusive prefix, 32 buckets at a time
    int carry = 0;
    for (int c0 = 0; c0 <= E; c0 += 32) {
      const int c = c0 + lane;
      const int v = c <= E ? totals[c] : 0;
      const int incl = warp_inclusive_sum(v);
      if (c <= E) {
        offsets[c] = carry + incl - v;
        if (blockIdx.x == 0) offsets_out[c] = carry + incl - v;
      }
      carry += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
  __syncthreads();
  if (u >= chunks) return;  // warp-uniform; no block-wide barrier follows
  int32_t* run = plan_smem + (E + 1) * (1 + warp);
  for (int c = lane; c <= E; c += 32) run[c] = offsets[c] + starts[int64_t(c) * chunks + u];
  __syncwarp();
  const int begin = u * kPlanChunk, end = min(A, begin + kPlanChunk);
  int32_t ids[kPlanChunk / 32];
  load_chunk_ids(experts, begin, end, lane, ids);
#pragma unroll
  for (int i = 0; i < kPlanChunk / 32; ++i) {
    const int a = begin + lane + 32 * i;
    if (begin + 32 * i >= end) break;  // warp-uniform
    const bool live = a < end;
    const unsigned active = __ballot_sync(0xffffffffu, live);
    const int32_t bucket = live && ids[i] >= 0 && ids[i] < E ? ids[i] : E;
    const unsigned peers = __match_any_sync(0xffffffffu, live ? bucket : -1) & active;
    const int r = live ? run[bucket] + __popc(peers & ((1u << lane) - 1u)) : 0;
    __syncwarp();
    if (live) {
      if ((peers & ((1u << lane) - 1u)) == 0) run[bucket] += __popc(peers);  // the group's first lane
      sorted[r] = a;
      row_of[a] = bucket < E && (capacity == 0 || r - offsets[bucket] < capacity) ? r : -1;
    }
    __syncwarp();
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
    for (int p = lane; p < packs; p += 32) store_pack_streaming<V>(dst + p * V, load_pack<V>(src + p * V));
  }
}

// Dropless plans (no capacity) with k <= 32 scatter instead: a warp per token reads its row once and
// writes it to its k rows. The gather above reads each token's row k times, one expert's sweep over x
// after another, and the 8 x 25 MB of copies it writes evict x from L2 between the sweeps (ncu: 80 MB from
// DRAM for a 25 MB x on the 64-expert layer). Each row is still written by exactly one warp:
// deterministic. A bad expert id (row_of -1, the error moe_plan_finish raises) leaves its row unwritten.
template <typename T, int V>
__global__ void __launch_bounds__(kWarps * 32)
    permute_scatter_kernel(const T* __restrict__ x, const int32_t* __restrict__ row_of, int tokens, int k, int d,
                           T* __restrict__ xs) {
  const int lane = threadIdx.x & 31, packs = d / V;
  for (int t = blockIdx.x * kWarps + (threadIdx.x >> 5); t < tokens; t += gridDim.x * kWarps) {
    const int my_row = lane < k ? row_of[int64_t(t) * k + lane] : -1;  // k <= 32: a lane per slot
    const T* src = x + int64_t(t) * d;
    for (int p0 = 0; p0 < packs; p0 += 32) {  // every lane takes every step: the shuffles need the whole warp
      const int p = p0 + lane;
      Pack<T, V> v;
      if (p < packs) v = load_pack<V>(src + p * V);
      for (int j = 0; j < k; ++j) {
        const int r = __shfl_sync(0xffffffffu, my_row, j);
        if (p < packs && r >= 0) store_pack_streaming<V>(xs + int64_t(r) * d + p * V, v);
      }
    }
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

// The pinned staging of the plan in flight on this thread: the error flag and the offsets in one block
// (so one copy brings both), the side stream that copies them and the copy's event. One plan at a time;
// the ticket tells a finish which start it belongs to. The copy runs on its own non-blocking stream,
// after an event behind the plan's kernels, so the permute queued next on the compute stream does not
// wait behind a device-to-host copy. Streams and events belong to a device: a thread that moves to
// another device gets new ones (after the old copy has landed).
struct PlanStaging {
  unsigned char* block = nullptr;  // u64 error flag, then the int32 offsets
  size_t capacity = 0;             // offsets it holds
  int device = -1;
  cudaStream_t copy_stream = nullptr;
  cudaEvent_t planned = nullptr, copied = nullptr;
  uint64_t ticket = 0;
};

// The staged block's layout, shared by the device block and its pinned copy: the u64 flag, then the offsets.
size_t staging_bytes(size_t offsets) { return sizeof(unsigned long long) + offsets * sizeof(int32_t); }
unsigned long long* staged_flag(unsigned char* block) { return reinterpret_cast<unsigned long long*>(block); }
int32_t* staged_offsets(unsigned char* block) { return reinterpret_cast<int32_t*>(block + sizeof(unsigned long long)); }

PlanStaging& staging(size_t offsets) {
  thread_local PlanStaging s;
  int device = 0;
  UM_CUDA(cudaGetDevice(&device));
  if (s.device != device) {
    if (s.copied) {
      UM_CUDA(cudaEventSynchronize(s.copied));
      UM_CUDA(cudaEventDestroy(s.copied));
      UM_CUDA(cudaEventDestroy(s.planned));
      UM_CUDA(cudaStreamDestroy(s.copy_stream));
    }
    UM_CUDA(cudaStreamCreateWithFlags(&s.copy_stream, cudaStreamNonBlocking));
    UM_CUDA(cudaEventCreateWithFlags(&s.planned, cudaEventDisableTiming));
    UM_CUDA(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
    s.device = device;
  }
  if (s.capacity < offsets) {
    if (s.block) {
      UM_CUDA(cudaEventSynchronize(s.copied));  // an abandoned plan's copy may still be writing it
      UM_CUDA(cudaFreeHost(s.block));
    }
    UM_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&s.block), staging_bytes(offsets), cudaHostAllocDefault));
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

}  // namespace

void moe_plan_build(const Tensor& experts, ops::MoePlan& plan) {
  const int A = int(plan.rows()), E = int(plan.num_experts);
  UM_CHECK(E <= int(ops::kMoeMaxExperts),
           detail::concat("moe_plan on the GPU: at most ", ops::kMoeMaxExperts, " experts"), E);
  const int capacity = int(std::min<int64_t>(plan.capacity, INT32_MAX));
  Arena& arena = arena_for(experts.device());
  // The error flag and the offsets side by side, as in the host staging: one copy brings both.
  auto* block = static_cast<unsigned char*>(arena.alloc_bytes(staging_bytes(size_t(E + 1))));
  unsigned long long* bad = staged_flag(block);
  int32_t* offsets = staged_offsets(block);
  UM_CUDA(cudaMemsetAsync(bad, 0xff, sizeof(unsigned long long), stream()));
  if (A > 0) {
    const int chunks = int(ceil_div(A, kPlanChunk));
    const size_t per_bucket = size_t(chunks) * sizeof(int32_t);
    auto* counts = static_cast<int32_t*>(arena.alloc_bytes(size_t(E + 1) * per_bucket));
    auto* starts = static_cast<int32_t*>(arena.alloc_bytes(size_t(E + 1) * per_bucket));
    auto* totals = static_cast<int32_t*>(arena.alloc_bytes(size_t(E + 1) * sizeof(int32_t)));
    const unsigned blocks = unsigned(ceil_div(chunks, kWarps));
    const size_t hist_bytes = size_t(kWarps) * size_t(E + 1) * sizeof(int32_t);  // 32 KiB at 1024 experts
    plan_count_kernel<<<blocks, kWarps * 32, hist_bytes, stream()>>>(experts.data_as<int32_t>(), A, E, chunks, counts,
                                                                      bad);
    UM_CUDA_LAUNCHED();
    plan_scan_kernel<<<unsigned(ceil_div(E + 1, kWarps)), kWarps * 32, 0, stream()>>>(counts, E, chunks, starts,
                                                                                    totals);
    UM_CUDA_LAUNCHED();
    plan_scatter_kernel<<<blocks, kWarps * 32, hist_bytes + size_t(E + 1) * sizeof(int32_t), stream()>>>(
        experts.data_as<int32_t>(), A, E, chunks, capacity, starts, totals, offsets,
        plan.sorted_assignment.data_as<int32_t>(), plan.row_of.data_as<int32_t>());
    UM_CUDA_LAUNCHED();
  } else {
    UM_CUDA(cudaMemsetAsync(offsets, 0, size_t(E + 1) * sizeof(int32_t), stream()));
  }
  PlanStaging& st = staging(size_t(E + 1));
  UM_CUDA(cudaEventSynchronize(st.copied));  // an abandoned plan's copy must land before this one reuses the memory
  UM_CUDA(cudaEventRecord(st.planned, stream()));
  UM_CUDA(cudaStreamWaitEvent(st.copy_stream, st.planned, 0));
  // The arena block stays untouched until the copy has read it: the arena is reset only after the step
  // (whose moe_plan_finish waited for this copy), and nothing else is placed on it.
  UM_CUDA(cudaMemcpyAsync(st.block, block, staging_bytes(size_t(E + 1)), cudaMemcpyDeviceToHost, st.copy_stream));
  UM_CUDA(cudaEventRecord(st.copied, st.copy_stream));
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
  const unsigned long long bad_host = *staged_flag(st.block);
  if (bad_host != kNoBad) {
    int32_t id = 0;
    UM_CUDA(cudaMemcpy(&id, plan.experts_for_errors.data_as<int32_t>() + bad_host, sizeof(id), cudaMemcpyDeviceToHost));
    throw Error(detail::concat("moe_plan: experts position ", bad_host), detail::concat("an expert id in [0, ", E, ")"),
                std::to_string(id));
  }
  plan.experts_for_errors = Tensor();
  const int32_t* host = staged_offsets(st.block);
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
  const int tokens = int(plan.tokens);
  UM_DISPATCH_ACT(x.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    const bool vec = vectorizable<T>(d, {x.data(), xs.data()});
    if (plan.capacity == 0 && k <= 32) {
      auto* kernel = vec ? permute_scatter_kernel<T, kV> : permute_scatter_kernel<T, 1>;
      kernel<<<row_grid(tokens), kWarps * 32, 0, stream()>>>(x.data_as<T>(), plan.row_of.data_as<int32_t>(), tokens,
                                                              k, d, xs.data_as<T>());
    } else {
      auto* kernel = vec ? permute_forward_kernel<T, kV> : permute_forward_kernel<T, 1>;
      kernel<<<row_grid(rows), kWarps * 32, 0, stream()>>>(x.data_as<T>(), plan.sorted_assignment.data_as<int32_t>(),
                                                            plan.row_of.data_as<int32_t>(), rows, k, d, xs.data_as<T>());
    }
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
