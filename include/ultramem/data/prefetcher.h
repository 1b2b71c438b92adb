// Reads a loader's next micro-batches on a worker thread while the current training step computes, so
// the (memory-mapped, possibly cold) token reads overlap the forward/backward instead of preceding it.
//
// Two host buffers (page-locked when a GPU is present): the consumer holds one (the batch next() returned) while the worker fills the
// other. The batches are exactly the loader's sequence; each buffer carries the loader state after it
// was read, so consumed_state() is the state after the last batch handed out, never after one merely
// prefetched: a checkpoint saved mid-run resumes exactly.
//
// Only the worker touches the loader once the prefetcher exists: set the loader's state (resume)
// before constructing it. A read error on the worker is rethrown by next().
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "ultramem/core/device.h"
#include "ultramem/data/loader.h"

namespace um::data {

class BatchPrefetcher {
 public:
  struct Batch {
    const int32_t* ids;      // [batch, seq_len] row-major, valid until the next call to next()
    const int32_t* targets;  // same shape
  };

  BatchPrefetcher(TokenLoader& loader, int64_t batch);
  ~BatchPrefetcher();  // stops and joins the worker
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  // Blocks until the next batch is read; releases the previously returned one.
  Batch next();
  // The loader state after the last batch next() returned (the construction-time state before any).
  LoaderState consumed_state() const;

 private:
  enum class SlotState { free, ready, in_use };
  struct Slot {
    HostBuffer ids, targets;  // pinned when a GPU is present: the step's host-to-device copy is direct
    LoaderState after;
    SlotState state = SlotState::free;
  };
  void work();

  TokenLoader& loader_;
  const int64_t batch_;
  Slot slots_[2];
  int fill_ = 0, take_ = 0, held_ = -1;  // next slot the worker fills / the consumer takes / the consumer holds
  LoaderState consumed_;
  bool stop_ = false;
  std::exception_ptr error_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::thread worker_;  // last: started once every other member exists
};

}  // namespace um::data
