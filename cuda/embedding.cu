// CUDA embedding: a vectorised row gather, and a deterministic sort-based scatter-add backward.
//
// Backward, for N rows of C into a [V, C] f32 table:
//   1. keys[i] = ids[i] (out-of-range ids become V, a key of their own, and raise the error flag),
//      positions[i] = i;
//   2. cub::DeviceRadixSort::SortPairs on the low bits that hold V: a stable sort, so within an id the
//      positions stay ascending;
//   3. the sorted array is cut into items at every run start (where the key changes) and at every
//      multiple of `tile` (so a frequent id's long run is spread over many blocks); item starts are
//      compacted by cub::DeviceSelect::Flagged;
//   4. one block per item (grid-stride, the item count stays on the device) sums the item's dout rows.
//      An item whose run lies inside one tile adds its sum to the table row directly (its only writer);
//      an item of a run that crosses a tile boundary writes its sum to a carry slot of its tile;
//   5. for each crossing run, blocks (one per 256 columns) add its carry slots, in tile order, to its row.
// Every sum is taken in a fixed order (see the kernels), with no atomics: results are bit-reproducible.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>

#include "ultramem/ops/embedding.h"

#include "common.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {
namespace {

constexpr unsigned long long kNoBadPosition = ~0ull;
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

// An item starts where the key changes and at every multiple of `tile`.
__global__ void embedding_item_flags_kernel(const uint32_t* __restrict__ sorted_keys, int n, int tile,
                                            uint8_t* __restrict__ item_start) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    item_start[i] = i % tile == 0 || sorted_keys[i] != sorted_keys[i - 1];
}

// s + p[0] + p[stride] + ... + p[(count - 1) * stride], added in that order; eight loads are issued
// before they are added, so a long sum is not one chain of dependent loads.
__device__ __forceinline__ float sum_in_order(float s, const float* __restrict__ p, int count, int64_t stride) {
  int i = 0;
  for (; i + 8 <= count; i += 8) {
    float v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = p[(i + u) * stride];
#pragma unroll
    for (int u = 0; u < 8; ++u) s += v[u];
  }
  for (; i < count; ++i) s += p[i * stride];
  return s;
}

// One block per item (grid-stride). The item's positions are staged in shared memory kItemThreads at a
// time, so row loads do not wait on index loads. Thread t = g * col_threads + w owns packs w,
// w + col_threads, ... of the row and sums rows g, g + row_groups, ... of the item in position order;
// the row_groups partial sums are then added in group order. Both orders are fixed, so the result
// does not depend on scheduling. Threads with g >= row_groups only stage positions and take part in
// the barriers.
// Carry slots: 2 per tile, [0] for the item starting at the tile's first entry, [1] for the item
// that ends the tile when it starts later (at most these two items of a tile belong to crossing runs).
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
    const bool at_tile_start = begin % tile == 0;
    const bool from_previous_tile = at_tile_start && begin > 0 && sorted_keys[begin - 1] == key;
    const bool into_next_tile = end % tile == 0 && end < n && sorted_keys[end] == key;
    const bool to_carry = from_previous_tile || into_next_tile;
    float* out = to_carry ? carry + (2 * int64_t(begin / tile) + (at_tile_start ? 0 : 1)) * C
                          : dtable + int64_t(key) * C;
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

// Blocks (tile t (grid-stride), 256-column chunk blockIdx.y): when a run starts in tile t and continues
// into tile t + 1, adds its carry slots (tile t's, then slot 0 of each following tile it covers) in
// tile order to its row.
__global__ void embedding_backward_carry_kernel(const uint32_t* __restrict__ sorted_keys, int n, int tile,
                                                int tiles, const float* __restrict__ carry,
                                                float* __restrict__ dtable, int64_t vocab, int C) {
  for (int t = blockIdx.x; t + 1 < tiles; t += gridDim.x) {
    const int64_t tile_start = int64_t(t) * tile, next_start = tile_start + tile;  // next_start < n
    const uint32_t key = sorted_keys[next_start - 1];
    if (key >= vocab || sorted_keys[next_start] != key) continue;  // no run crosses into tile t + 1
    if (t > 0 && sorted_keys[tile_start - 1] == key) continue;     // the run started in an earlier tile
    const int first_slot = sorted_keys[tile_start] == key ? 0 : 1;
    // The tiles after t that the run covers are those whose first key is `key`: a contiguous range
    // t + 1 .. last_tile (keys are sorted), counted a block-width at a time.
    int last_tile = t;
    for (int base = t + 1;; base += blockDim.x) {
      const int u = base + threadIdx.x;
      const int covered = __syncthreads_count(u < tiles && sorted_keys[int64_t(u) * tile] == key);
      last_tile += covered;
      if (covered < int(blockDim.x)) break;
    }
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c < C) {
      const float first = carry[(2 * int64_t(t) + first_slot) * C + c];
      const float* rest = carry + 2 * int64_t(t + 1) * C + c;  // slot 0 of tiles t + 1 .. last_tile
      dtable[int64_t(key) * C + c] += sum_in_order(first, rest, last_tile - t, 2 * int64_t(C));
    }
  }
}

unsigned grid_for(int64_t n) { return std::min<unsigned>(ceil_div(n, 256), unsigned(sm_count()) * 16u); }

template <typename T>
bool can_vectorize(int C, const void* p) {
  return C % (16 / int(sizeof(T))) == 0 && (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// A device word holding the smallest out-of-range position (kNoBadPosition when none).
unsigned long long* new_bad_position_flag(Device device) {
  auto* flag = static_cast<unsigned long long*>(arena_for(device).alloc_bytes(sizeof(unsigned long long)));
  UM_CUDA(cudaMemsetAsync(flag, 0xff, sizeof(unsigned long long), stream()));
  return flag;
}

// Waits for the kernels and throws the Error the CPU would have thrown for the first bad position.
void raise_if_bad_position(const unsigned long long* flag, const int32_t* ids, int64_t vocab, const char* op) {
  unsigned long long position = kNoBadPosition;
  UM_CUDA(cudaMemcpyAsync(&position, flag, sizeof(position), cudaMemcpyDeviceToHost, stream()));
  UM_CUDA(cudaStreamSynchronize(stream()));
  if (position == kNoBadPosition) return;
  int32_t id = 0;
  UM_CUDA(cudaMemcpyAsync(&id, ids + position, sizeof(id), cudaMemcpyDeviceToHost, stream()));
  UM_CUDA(cudaStreamSynchronize(stream()));
  throw Error(detail::concat(op, ": ids position ", position), detail::concat("a token id in [0, ", vocab, ")"),
              std::to_string(id));
}

// Number of low key bits that hold every key in [0, vocab] (vocab itself marks bad ids).
int key_bits(int64_t vocab) {
  int bits = 1;
  while (bits < 32 && (uint64_t(vocab) >> bits) != 0) ++bits;
  return bits;
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
  // Tile size depends on n alone (reproducible sums); there are at most ~8192 tiles of carry slots.
  const int tile = std::max(64, int(ceil_div(n, 8192)));
  const int tiles = int(ceil_div(n, tile));

  Device dev = dtable.device();
  Arena& arena = arena_for(dev);
  auto ints = [&](size_t count) { return arena.alloc_bytes(count * sizeof(int32_t)); };
  auto* keys = static_cast<uint32_t*>(ints(n));
  auto* sorted_keys = static_cast<uint32_t*>(ints(n));
  auto* positions = static_cast<int32_t*>(ints(n));
  auto* sorted_positions = static_cast<int32_t*>(ints(n));
  auto* item_starts = static_cast<int32_t*>(ints(n));
  auto* num_items = static_cast<int32_t*>(ints(1));
  auto* item_flags = static_cast<uint8_t*>(arena.alloc_bytes(size_t(n)));
  auto* carry = static_cast<float*>(arena.alloc_bytes(size_t(2) * size_t(tiles) * size_t(C) * sizeof(float)));
  unsigned long long* bad = new_bad_position_flag(dev);

  const int end_bit = key_bits(vocab);
  size_t sort_bytes = 0, select_bytes = 0;
  UM_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys, sorted_keys, positions, sorted_positions, n, 0,
                                          end_bit, stream()));
  UM_CUDA(cub::DeviceSelect::Flagged(nullptr, select_bytes, positions, item_flags, item_starts, num_items, n,
                                     stream()));
  void* temp = arena.alloc_bytes(std::max(sort_bytes, select_bytes));

  embedding_sort_input_kernel<<<grid_for(n), 256, 0, stream()>>>(ids.data_as<int32_t>(), n, vocab, keys, positions,
                                                                  bad);
  UM_CUDA_LAUNCHED();
  UM_CUDA(cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys, sorted_keys, positions, sorted_positions, n, 0,
                                          end_bit, stream()));
  embedding_item_flags_kernel<<<grid_for(n), 256, 0, stream()>>>(sorted_keys, n, tile, item_flags);
  UM_CUDA_LAUNCHED();
  // positions is still 0..n-1 (SortPairs leaves its inputs alone): the selected items are the item starts.
  UM_CUDA(cub::DeviceSelect::Flagged(temp, select_bytes, positions, item_flags, item_starts, num_items, n, stream()));

  const unsigned grid = std::min<unsigned>(unsigned(n), unsigned(sm_count()) * 8u);
  UM_DISPATCH_ACT(dout.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      const int packs = C / V;
      const int col_threads = std::min(kItemThreads, (packs + 31) / 32 * 32);
      embedding_backward_items_kernel<T, V><<<grid, kItemThreads, 0, stream()>>>(
          sorted_keys, sorted_positions, item_starts, num_items, n, tile, dout.data_as<T>(), grad, carry, vocab, C,
          col_threads, kItemThreads / col_threads);
    };
    if (can_vectorize<T>(C, dout.data()))
      launch(std::integral_constant<int, kV>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  UM_CUDA_LAUNCHED();
  if (tiles > 1) {
    dim3 carry_grid(std::min<unsigned>(unsigned(tiles - 1), unsigned(sm_count()) * 8u), ceil_div(C, 256));
    embedding_backward_carry_kernel<<<carry_grid, 256, 0, stream()>>>(sorted_keys, n, tile, tiles, carry, grad, vocab,
                                                                       C);
    UM_CUDA_LAUNCHED();
  }
  raise_if_bad_position(bad, ids.data_as<int32_t>(), vocab, "embedding backward");
}

}  // namespace um::cuda
