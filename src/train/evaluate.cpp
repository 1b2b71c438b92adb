#include "ultramem/train/evaluate.h"

#include <vector>

#include "ultramem/core/arena.h"

namespace um::train {

EvalResult evaluate_loss(nn::Transformer& model, data::TokenLoader& loader, int64_t micro_batch, int64_t max_batches,
                         Device device) {
  const int64_t available = int64_t(loader.windows_per_epoch()) / micro_batch;
  const int64_t batches = max_batches > 0 ? std::min(max_batches, available) : available;
  UM_CHECK(batches > 0, detail::concat("evaluation data with at least ", micro_batch, " windows"),
           loader.windows_per_epoch(), " windows");
  int64_t seq = 0;
  EvalResult r;
  std::vector<int32_t> ids, targets;
  Tensor d_ids, d_targets;
  double sum = 0;
  for (int64_t b = 0; b < batches; ++b) {
    if (!d_ids.defined()) {
      // The loader's window length decides the shape.
      seq = int64_t(loader.seq_len());
      ids.resize(size_t(micro_batch * seq));
      targets.resize(size_t(micro_batch * seq));
      d_ids = Tensor::empty({micro_batch, seq}, DType::i32, device);
      d_targets = Tensor::empty({micro_batch, seq}, DType::i32, device);
    }
    loader.next_batch(micro_batch, ids.data(), targets.data());
    copy_bytes(d_ids.data(), device, ids.data(), Device::cpu(), ids.size() * 4);
    copy_bytes(d_targets.data(), device, targets.data(), Device::cpu(), targets.size() * 4);
    nn::StepContext ctx;
    ctx.training = false;
    sum += model.loss(d_ids, d_targets, ctx).to_doubles()[0];  // no tape active: nothing is recorded
    arena_for(device).reset();
  }
  r.batches = batches;
  r.tokens = batches * micro_batch * seq;
  r.loss = sum / double(batches);  // every batch has the same token count
  return r;
}

}  // namespace um::train
