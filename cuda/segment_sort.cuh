// Deterministic segment sums by key: the machinery the scatter-add backwards share (embedding,
// memory lookup). For n (key, value) pairs with keys in [0, num_keys] (num_keys marks invalid
// entries: a run of its own that nobody sums):
//   1. sort_runs: cub::DeviceRadixSort::SortPairs on the low bits that hold num_keys. The sort is
//      stable, so the values of one key keep their input order;
//   2. sort_runs: the sorted array is cut into items at every run start (where the key changes) and
//      at every multiple of `tile` (so a frequent key's long run is spread over many summers); the
//      item starts are compacted by cub::DeviceSelect::Flagged;
//   3. the caller's kernel sums each item's rows in sorted order. An item whose run lies inside one
//      tile adds its sum to the table row directly (its only writer); an item of a run that crosses a
//      tile boundary writes its sum to a carry slot of its tile instead (item_target);
//   4. add_carries: for each crossing run, its carry slots are added to its row in tile order.
// Every order is fixed by the keys alone and nothing uses atomics: the sums are bit-reproducible.
//
// Also here: the device flag that records the smallest out-of-range position a kernel met, so that
// the host can raise the Error the CPU reference raises (the kernels skip such entries).
#pragma once
#include <algorithm>

#include "common.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {

struct SortedRuns {
  int n = 0;      // pairs
  int tile = 0;   // no item crosses a multiple of `tile` in the sorted order
  int tiles = 0;  // ceil(n / tile)
  const uint32_t* keys = nullptr;        // [n] sorted keys
  const int32_t* values = nullptr;       // [n] values in sorted order
  const int32_t* item_starts = nullptr;  // [*num_items] sorted positions where items start, ascending
  const int32_t* num_items = nullptr;    // device scalar (the count stays on the device)
};

// The tile depends on n alone (so the order of every sum does too); at most ~8192 tiles of carry.
inline int segment_tile(int n) { return std::max(64, int(ceil_div(n, 8192))); }

// Sorts the pairs (keys, values: n device entries, left unchanged) and cuts them into items.
// Temporaries and the result come from `arena`.
SortedRuns sort_runs(const uint32_t* keys, const int32_t* values, int n, int64_t num_keys, Arena& arena);

// Carry slots for runs that cross tile boundaries: 2 per tile, `width` floats each. Only the slots
// of crossing runs are written and read.
float* alloc_carry(const SortedRuns& runs, int width, Arena& arena);

// table[key] += (carry slots of the key's crossing run, in tile order), for every crossing run;
// table: [num_keys, width] f32.
void add_carries(const SortedRuns& runs, const float* carry, float* table, int64_t num_keys, int width);

// Where the sum of the item [begin, end) of run `key` goes: its table row, or carry slot
// `carry_slot` (in units of rows) when the run crosses a tile boundary. Slots: 2 per tile, [0] for
// the item that starts at the tile's first entry, [1] for the item that ends the tile when it starts
// later (at most these two items of a tile belong to crossing runs).
struct ItemTarget {
  bool to_carry = false;
  int64_t carry_slot = 0;
};
__device__ __forceinline__ ItemTarget item_target(const uint32_t* __restrict__ sorted_keys, int n, int tile,
                                                  int begin, int end, uint32_t key) {
  const bool at_tile_start = begin % tile == 0;
  const bool from_previous_tile = at_tile_start && begin > 0 && sorted_keys[begin - 1] == key;
  const bool into_next_tile = end % tile == 0 && end < n && sorted_keys[end] == key;
  ItemTarget t;
  t.to_carry = from_previous_tile || into_next_tile;
  t.carry_slot = 2 * int64_t(begin / tile) + (at_tile_start ? 0 : 1);
  return t;
}

// The bad-position flag: a device word holding the smallest bad position (kNoBadPosition: none).
constexpr unsigned long long kNoBadPosition = ~0ull;
unsigned long long* new_bad_position_flag(Device device);
// Waits for the stream and returns the flag's value.
unsigned long long read_bad_position(const unsigned long long* flag);

}  // namespace um::cuda
