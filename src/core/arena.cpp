#include "ultramem/core/arena.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "src/core/device_memory.h"

namespace um {

static constexpr size_t kAlign = 256;  // enough for 16-byte vector loads and cuBLASLt's alignment wishes

Arena::Arena(Device device, size_t initial_bytes) : device_(device) {
  if (initial_bytes) add_chunk(initial_bytes);
}

Arena::~Arena() {
  for (auto& c : chunks_) {
    if (device_.is_cpu())
      std::free(c.base);
    else
      detail::device_free(c.base);
  }
}

void Arena::add_chunk(size_t min_bytes) {
  size_t size = (min_bytes + kAlign - 1) / kAlign * kAlign;
  char* base = device_.is_cpu() ? static_cast<char*>(std::aligned_alloc(kAlign, size))
                                : static_cast<char*>(detail::device_malloc(size));
  UM_CHECK(base != nullptr, detail::concat(size, " bytes for the activation arena"), "allocation failure");
  chunks_.push_back({base, size, 0});
  ++allocations_;
}

size_t Arena::capacity_bytes() const {
  size_t c = 0;
  for (auto& ch : chunks_) c += ch.size;
  return c;
}

void* Arena::alloc_bytes(size_t bytes) {
  size_t need = (bytes + kAlign - 1) / kAlign * kAlign;
  if (need == 0) need = kAlign;
  if (chunks_.empty() || chunks_.back().top + need > chunks_.back().size)
    add_chunk(std::max(need, capacity_bytes()));  // grow geometrically
  Chunk& c = chunks_.back();
  void* p = c.base + c.top;
  c.top += need;
  used_ += need;
  if (used_ > peak_) peak_ = used_;
  if (poison_) {
    if (device_.is_cpu())
      std::memset(p, 0xff, need);
    else
      detail::device_memset(p, 0xff, need);
  }
  return p;
}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  void* p = alloc_bytes(size_t(shape.numel()) * dtype_size(dtype));
  return Tensor::wrap(p, shape, dtype, device_);
}

void Arena::reset() {
  if (chunks_.size() > 1) {
    // The step needed several chunks: replace them by one that holds the whole peak.
    size_t want = peak_ + peak_ / 8;
    for (auto& c : chunks_) {
      if (device_.is_cpu())
        std::free(c.base);
      else
        detail::device_free(c.base);
    }
    chunks_.clear();
    add_chunk(want);
  }
  for (auto& c : chunks_) c.top = 0;
  used_ = 0;
}

Arena& arena_for(Device device) {
  thread_local std::map<std::pair<int, int>, std::unique_ptr<Arena>> arenas;
  auto key = std::make_pair(int(device.kind), device.index);
  auto it = arenas.find(key);
  if (it == arenas.end()) it = arenas.emplace(key, std::make_unique<Arena>(device)).first;
  return *it->second;
}

Tensor alloc_activation(const Shape& shape, DType dtype, Device device) {
  return arena_for(device).alloc(shape, dtype);
}

}  // namespace um
