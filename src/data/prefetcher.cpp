#include "ultramem/data/prefetcher.h"

namespace um::data {

BatchPrefetcher::BatchPrefetcher(TokenLoader& loader, int64_t batch)
    : loader_(loader), batch_(batch), consumed_(loader.state()) {
  const size_t n = size_t(batch * loader.seq_len());
  for (Slot& s : slots_) {
    s.ids = HostBuffer(n * sizeof(int32_t));
    s.targets = HostBuffer(n * sizeof(int32_t));
  }
  worker_ = std::thread([this] { work(); });
}

BatchPrefetcher::~BatchPrefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void BatchPrefetcher::work() {
  for (;;) {
    Slot* slot;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || slots_[fill_].state == SlotState::free; });
      if (stop_) return;
      slot = &slots_[fill_];
    }
    // The slot is free and only this thread writes free slots: fill it without the lock.
    try {
      loader_.next_batch(batch_, static_cast<int32_t*>(slot->ids.data()), static_cast<int32_t*>(slot->targets.data()));
      slot->after = loader_.state();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
      cv_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot->state = SlotState::ready;
      fill_ ^= 1;
    }
    cv_.notify_all();
  }
}

BatchPrefetcher::Batch BatchPrefetcher::next() {
  std::unique_lock<std::mutex> lock(mu_);
  if (held_ >= 0) {
    slots_[held_].state = SlotState::free;
    held_ = -1;
    cv_.notify_all();
  }
  // Batches come out in the order they were read; an error surfaces once the batches read before it are used.
  cv_.wait(lock, [&] { return slots_[take_].state == SlotState::ready || error_; });
  if (slots_[take_].state != SlotState::ready) std::rethrow_exception(error_);
  Slot& s = slots_[take_];
  s.state = SlotState::in_use;
  held_ = take_;
  take_ ^= 1;
  consumed_ = s.after;
  return {static_cast<const int32_t*>(s.ids.data()), static_cast<const int32_t*>(s.targets.data())};
}

LoaderState BatchPrefetcher::consumed_state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return consumed_;
}

}  // namespace um::data
