// CUDA embedding: a vectorised row gather, and a deterministic sort-based scatter-add backward.
//
// Backward, for N rows of C into a [V, C] f32 table (the sort, item cuts and carries are the shared
// machinery of segment_sort.cuh):
//   1. keys[i] = ids[i] (out-of-range ids become V, a key of their own, and raise the error flag),
//      positions[i] = i;
//   2. sort_runs: a stable radix sort (within an id the positions stay ascending), cut into items at
//      every run start and every multiple of `tile`;
//   3. one block per item (grid-stride, the item count stays on the device) sums the item's dout rows.
//      An item whose run lies inside one tile adds its sum to the table row directly (its only writer);
//      an item of a run that crosses a tile boundary writes its sum to a carry slot of its tile;
//   4. add_carries: for each crossing run, its carry slots are added, in tile order, to its row.
// Every sum is taken in a fixed order (see the kernels), with no atomics: results are bit-reproducible.
#include "ultramem/ops/embedding.h"

#include "common.cuh"
#include "segment_sort.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {
namespace {

constexpr int kItemThreads = 256;  // threads of an item-summing block


// out[r, c:c+V] = table[ids[r], c:c+V]; pack i covers columns [c, c + V) of row r.
template <typename T, int V>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                         T* __restrict__ out, int64_t n, int64_t vocab, int C,
                                         unsigned long long* bad_position) {
  const int packs_per_row = C / V;
  const int64_t total = n * packs_per_row;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / packs_per_row;
    const int c = int(i - r * packs_per_row) * V;
    const int32_t id = ids[r];
    Pack<T, V> p;
    if (id >= 0 && id < vocab) {
      p = load_pack<V>(table + int64_t(id) * C + c);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) p.v[k] = from_f32<T>(0.f);
      if (c == 0) atomicMin(bad_position, (unsigned long long)r);
    }
    store_pack<V>(out + r * C + c, p);
  }
}

// keys[i] = ids[i] when in range, else `vocab` (sorted into a run of its own that nobody sums).
__global__ void embedding_sort_input_kernel(const int32_t* __restrict__ ids, int n, int64_t vocab,
                                            uint32_t* __restrict__ keys, int32_t* __restrict__ positions,
                                            unsigned long long* bad_position) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const int32_t id = ids[i];
    const bool ok = id >= 0 && id < vocab;
    keys[i] = ok ? uint32_t(id) : uint32_t(vocab);
    positions[i] = i;
    if (!ok) atomicMin(bad_position, (unsigned long long)i);
  }
}

// One block per item (grid-stride). The item's positions are staged in shared memory kItemThreads at a
// time, so row loads do not wait on index loads. Thread t = g * col_threads + w owns packs w,
// w + col_threads, ... of the row and sums rows g, g + row_groups, ... of the item in position order;
// the row_groups partial sums are then added in group order. Both orders are fixed, so the result
// does not depend on scheduling. Threads with g >= row_groups only stage positions and take part in
// the barriers.
// Carry slots: see item_target (segment_sort.cuh).
template <typename T, int V>
__global__ void __launch_bounds__(kItemThreads)
    embedding_backward_items_kernel(const uint32_t* __restrict__ sorted_keys,
                                    const int32_t* __restrict__ sorted_positions,
                                    const int32_t* __restrict__ item_starts, const int32_t* __restrict__ num_items,
                                    int n, int tile, const T* __restrict__ dout, float* __restrict__ dtable,
                                    float* __restrict__ carry, int64_t vocab, int C, int col_threads,
                                    int row_groups) {
  __shared__ float partial[kItemThreads * V];
  __shared__ int32_t rows[kItemThreads];
  const int items = *num_items;
  const int packs_per_row = C / V;
  const int g = threadIdx.x / col_threads, w = threadIdx.x % col_threads;
  for (int s = blockIdx.x; s < items; s += gridDim.x) {
    const int begin = item_starts[s], end = s + 1 < items ? item_starts[s + 1] : n;
    const uint32_t key = sorted_keys[begin];
    if (key >= vocab) continue;  // the out-of-range ids' run (block-uniform)
    const ItemTarget target = item_target(sorted_keys, n, tile, begin, end, key);
    const bool to_carry = target.to_carry;
    float* out = to_carry ? carry + target.carry_slot * C : dtable + int64_t(key) * C;
    for (int pack0 = 0; pack0 < packs_per_row; pack0 += col_threads) {
      const int pack = pack0 + w;
      const bool active = g < row_groups && pack < packs_per_row;
      float acc[V];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] = 0.f;
      // kItemThreads is a multiple of row_groups, so group g keeps rows g mod row_groups across chunks.
      for (int chunk = begin; chunk < end; chunk += kItemThreads) {
        const int len = min(kItemThreads, end - chunk);
        __syncthreads();  // everyone is done with the previous `rows`
        if (int(threadIdx.x) < len) rows[threadIdx.x] = sorted_positions[chunk + threadIdx.x];
        __syncthreads();
        if (active) {
#pragma unroll 8
          for (int j = g; j < len; j += row_groups) {
            Pack<T, V> p = load_pack<V>(dout + int64_t(rows[j]) * C + pack * V);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[k] += to_f32(p.v[k]);
          }
        }
      }
      if (row_groups > 1) {
        __syncthreads();  // the previous pass has finished reading `partial`
#pragma unroll
        for (int k = 0; k < V; ++k) partial[threadIdx.x * V + k] = acc[k];
        __syncthreads();
        if (g == 0 && active) {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            float t = 0.f;
            for (int q = 0; q < row_groups; ++q) t += partial[(q * col_threads + w) * V + k];
            acc[k] = t;
          }
        }
      }
      if (g == 0 && active) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          float* o = out + pack * V + k;
          *o = to_carry ? acc[k] : *o + acc[k];
        }
      }
    }
  }
}

unsigned grid_for(int64_t n) { return std::min<unsigned>(ceil_div(n, 256), unsigned(sm_count()) * 16u); }

template <typename T>
bool can_vectorize(int C, const void* p) {
  return C % (16 / int(sizeof(T))) == 0 && (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Waits for the kernels and throws the Error the CPU would have thrown for the first bad position.
void raise_if_bad_position(const unsigned long long* flag, const int32_t* ids, int64_t vocab, const char* op) {
  const unsigned long long position = read_bad_position(flag);
  if (position == kNoBadPosition) return;
  int32_t id = 0;
  UM_CUDA(cudaMemcpyAsync(&id, ids + position, sizeof(id), cudaMemcpyDeviceToHost, stream()));
  UM_CUDA(cudaStreamSynchronize(stream()));
  throw Error(detail::concat(op, ": ids position ", position), detail::concat("a token id in [0, ", vocab, ")"),
              std::to_string(id));
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) {
  const int64_t n = ids.numel(), vocab = table.dim(0);
  UM_CHECK(table.dim(1) <= int64_t(INT32_MAX), "embedding: a row width below 2^31", table.desc());
  const int C = int(table.dim(1));
  if (n == 0) return;
  unsigned long long* bad = new_bad_position_flag(table.device());
  UM_DISPATCH_ACT(table.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (can_vectorize<T>(C, table.data()) && can_vectorize<T>(C, out.data()))
      embedding_forward_kernel<T, kV><<<grid_for(n * (C / kV)), 256, 0, stream()>>>(
          ids.data_as<int32_t>(), table.data_as<T>(), out.data_as<T>(), n, vocab, C, bad);
    else
      embedding_forward_kernel<T, 1><<<grid_for(n * C), 256, 0, stream()>>>(
          ids.data_as<int32_t>(), table.data_as<T>(), out.data_as<T>(), n, vocab, C, bad);
  });
  UM_CUDA_LAUNCHED();
  raise_if_bad_position(bad, ids.data_as<int32_t>(), vocab, "embedding");
}

void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable, bool accumulate) {
  const int64_t vocab = dtable.dim(0);
  UM_CHECK(dtable.dim(1) <= int64_t(INT32_MAX) && vocab <= int64_t(INT32_MAX),
           "embedding backward: a table below 2^31 rows and columns", dtable.desc());
  const int n = int(ids.numel()), C = int(dtable.dim(1));
  float* grad = dtable.data_as<float>();
  if (!accumulate) UM_CUDA(cudaMemsetAsync(grad, 0, dtable.nbytes(), stream()));
  if (n == 0) return;
  Device dev = dtable.device();
  Arena& arena = arena_for(dev);
  auto* keys = static_cast<uint32_t*>(arena.alloc_bytes(size_t(n) * sizeof(uint32_t)));
  auto* positions = static_cast<int32_t*>(arena.alloc_bytes(size_t(n) * sizeof(int32_t)));
  unsigned long long* bad = new_bad_position_flag(dev);
  embedding_sort_input_kernel<<<grid_for(n), 256, 0, stream()>>>(ids.data_as<int32_t>(), n, vocab, keys, positions,
                                                                  bad);
  UM_CUDA_LAUNCHED();
  const SortedRuns runs = sort_runs(keys, positions, n, vocab, arena);
  float* carry = alloc_carry(runs, C, arena);

  const unsigned grid = std::min<unsigned>(unsigned(n), unsigned(sm_count()) * 8u);
  UM_DISPATCH_ACT(dout.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      const int packs = C / V;
      const int col_threads = std::min(kItemThreads, (packs + 31) / 32 * 32);
      embedding_backward_items_kernel<T, V><<<grid, kItemThreads, 0, stream()>>>(
          runs.keys, runs.values, runs.item_starts, runs.num_items, n, runs.tile, dout.data_as<T>(), grad, carry,
          vocab, C, col_threads, kItemThreads / col_threads);
    };
    if (can_vectorize<T>(C, dout.data()))
      launch(std::integral_constant<int, kV>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  UM_CUDA_LAUNCHED();
  add_carries(runs, carry, grad, vocab, C);
  raise_if_bad_position(bad, ids.data_as<int32_t>(), vocab, "embedding backward");
}

}  // namespace um::cuda
