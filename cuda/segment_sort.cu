// The shared segment-sum machinery (see segment_sort.cuh): sort, item cuts, carries, bad-position flag.
#include "segment_sort.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>

namespace um::cuda {
namespace {

// An item starts where the key changes and at every multiple of `tile`; iota[i] = i is what
// DeviceSelect compacts into the item starts.
__global__ void item_flags_kernel(const uint32_t* __restrict__ sorted_keys, int n, int tile,
                                  uint8_t* __restrict__ item_start, int32_t* __restrict__ iota) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    item_start[i] = i % tile == 0 || sorted_keys[i] != sorted_keys[i - 1];
    iota[i] = i;
  }
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

// Blocks (tile t (grid-stride), 256-column chunk blockIdx.y): when a run starts in tile t and continues
// into tile t + 1, adds its carry slots (tile t's, then slot 0 of each following tile it covers) in
// tile order to its row.
__global__ void add_carries_kernel(const uint32_t* __restrict__ sorted_keys, int n, int tile, int tiles,
                                   const float* __restrict__ carry, float* __restrict__ table, int64_t num_keys,
                                   int C) {
  for (int t = blockIdx.x; t + 1 < tiles; t += gridDim.x) {
    const int64_t tile_start = int64_t(t) * tile, next_start = tile_start + tile;  // next_start < n
    const uint32_t key = sorted_keys[next_start - 1];
    if (key >= num_keys || sorted_keys[next_start] != key) continue;  // no run crosses into tile t + 1
    if (t > 0 && sorted_keys[tile_start - 1] == key) continue;        // the run started in an earlier tile
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
      table[int64_t(key) * C + c] += sum_in_order(first, rest, last_tile - t, 2 * int64_t(C));
    }
  }
}

unsigned grid_for(int64_t n) { return std::min<unsigned>(ceil_div(n, 256), unsigned(sm_count()) * 16u); }

// Number of low key bits that hold every key in [0, num_keys] (num_keys itself marks bad entries).
int key_bits(int64_t num_keys) {
  int bits = 1;
  while (bits < 32 && (uint64_t(num_keys) >> bits) != 0) ++bits;
  return bits;
}

}  // namespace

SortedRuns sort_runs(const uint32_t* keys, const int32_t* values, int n, int64_t num_keys, Arena& arena) {
  UM_CHECK(n > 0 && num_keys > 0 && num_keys < int64_t(UINT32_MAX), "sort_runs: n >= 1 and 1 <= num_keys < 2^32",
           "n ", n, ", num_keys ", num_keys);
  SortedRuns r;
  r.n = n;
  r.tile = segment_tile(n);
  r.tiles = int(ceil_div(n, r.tile));
  auto ints = [&](size_t count) { return arena.alloc_bytes(count * sizeof(int32_t)); };
  auto* sorted_keys = static_cast<uint32_t*>(ints(size_t(n)));
  auto* sorted_values = static_cast<int32_t*>(ints(size_t(n)));
  auto* iota = static_cast<int32_t*>(ints(size_t(n)));
  auto* item_starts = static_cast<int32_t*>(ints(size_t(n)));
  auto* num_items = static_cast<int32_t*>(ints(1));
  auto* item_flags = static_cast<uint8_t*>(arena.alloc_bytes(size_t(n)));

  const int end_bit = key_bits(num_keys);
  size_t sort_bytes = 0, select_bytes = 0;
  UM_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys, sorted_keys, values, sorted_values, n, 0,
                                          end_bit, stream()));
  UM_CUDA(cub::DeviceSelect::Flagged(nullptr, select_bytes, iota, item_flags, item_starts, num_items, n, stream()));
  void* temp = arena.alloc_bytes(std::max(sort_bytes, select_bytes));
  UM_CUDA(cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys, sorted_keys, values, sorted_values, n, 0, end_bit,
                                          stream()));
  item_flags_kernel<<<grid_for(n), 256, 0, stream()>>>(sorted_keys, n, r.tile, item_flags, iota);
  UM_CUDA_LAUNCHED();
  UM_CUDA(cub::DeviceSelect::Flagged(temp, select_bytes, iota, item_flags, item_starts, num_items, n, stream()));
  r.keys = sorted_keys;
  r.values = sorted_values;
  r.item_starts = item_starts;
  r.num_items = num_items;
  return r;
}

float* alloc_carry(const SortedRuns& runs, int width, Arena& arena) {
  return static_cast<float*>(arena.alloc_bytes(size_t(2) * size_t(runs.tiles) * size_t(width) * sizeof(float)));
}

void add_carries(const SortedRuns& runs, const float* carry, float* table, int64_t num_keys, int width) {
  if (runs.tiles <= 1) return;  // one tile: no run crosses a boundary
  dim3 grid(std::min<unsigned>(unsigned(runs.tiles - 1), unsigned(sm_count()) * 8u), ceil_div(width, 256));
  add_carries_kernel<<<grid, 256, 0, stream()>>>(runs.keys, runs.n, runs.tile, runs.tiles, carry, table, num_keys,
                                                 width);
  UM_CUDA_LAUNCHED();
}

unsigned long long* new_bad_position_flag(Device device) {
  auto* flag = static_cast<unsigned long long*>(arena_for(device).alloc_bytes(sizeof(unsigned long long)));
  UM_CUDA(cudaMemsetAsync(flag, 0xff, sizeof(unsigned long long), stream()));
  return flag;
}

unsigned long long read_bad_position(const unsigned long long* flag) {
  unsigned long long position = kNoBadPosition;
  UM_CUDA(cudaMemcpyAsync(&position, flag, sizeof(position), cudaMemcpyDeviceToHost, stream()));
  UM_CUDA(cudaStreamSynchronize(stream()));
  return position;
}

}  // namespace um::cuda
