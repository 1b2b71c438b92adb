#include "ultramem/train/trainer.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "ultramem/core/arena.h"
#include "ultramem/core/tape.h"
#include "ultramem/optim/schedule.h"
#include "ultramem/train/evaluate.h"
#include "ultramem/train/reliability.h"
#include "src/io/atomic_file.h"

namespace um::train {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

static Device resolve_device(const std::string& want) {
  if (want == "cpu") return Device::cpu();
  if (want == "cuda") {
    if (!cuda_available())
      throw Error("train.device", "a CUDA device (\"cuda\")",
                  ULTRAMEM_CUDA ? "none present" : "a build without the CUDA backend");
    return Device::cuda(0);
  }
  return cuda_available() ? Device::cuda(0) : Device::cpu();
}

static double peak_flops_for(const std::string& gpu_name, double configured_tflops) {
  if (configured_tflops > 0) return configured_tflops * 1e12;
  // Dense bf16 tensor-core peak of the SXM parts (the figure MFU is quoted against).
  if (gpu_name.find("H100") != std::string::npos || gpu_name.find("H200") != std::string::npos) return 989e12;
  if (gpu_name.find("A100") != std::string::npos) return 312e12;
  return 0;
}

static std::string human_seconds(double s) {
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  else
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  return buf;
}

static void append_jsonl(const std::string& out_dir, const json& j) {
  std::ofstream f(fs::path(out_dir) / "metrics.jsonl", std::ios::app);
  f << j.dump() << "\n";
}

// trainer.json's "loader": {epoch, cursor} for one source; {draws, sources: [{name, epoch, cursor}]}
// for a mixture (names checked on resume, so a reordered or renamed mixture is an error, not a silent shift).
static json loader_state_to_json(const data::LoaderState& s, const data::TokenLoader& loader) {
  if (!loader.is_mixture()) return {{"epoch", s.epoch}, {"cursor", s.cursor}};
  json sources = json::array();
  for (size_t i = 0; i < s.sources.size(); ++i)
    sources.push_back({{"name", loader.source_name(i)}, {"epoch", s.sources[i].epoch}, {"cursor", s.sources[i].cursor}});
  return {{"draws", s.draws}, {"sources", sources}};
}

static data::LoaderState loader_state_from_json(const json& j, const data::TokenLoader& loader) {
  data::LoaderState s;
  if (!loader.is_mixture()) {
    s.epoch = j.at("epoch").get<uint64_t>();
    s.cursor = j.at("cursor").get<uint64_t>();
    return s;
  }
  s.draws = j.at("draws").get<uint64_t>();
  const json& src = j.at("sources");
  for (size_t i = 0; i < src.size(); ++i) {
    std::string name = src[i].at("name").get<std::string>();
    if (i >= loader.source_count() || name != loader.source_name(i))
      throw Error("trainer.json loader.sources", "the mixture sources of the config, in order",
                  detail::concat("\"", name, "\" at position ", i));
    s.sources.push_back({src[i].at("epoch").get<uint64_t>(), src[i].at("cursor").get<uint64_t>()});
  }
  return s;
}

// ---- reliability helpers (docs/reliability.md) ----

static bool has_step(const std::vector<int64_t>& steps, int64_t step) {
  return std::find(steps.begin(), steps.end(), step) != steps.end();
}

// Test hook: fills one parameter's gradient with NaN.
static void poison_gradient(nn::ParameterStore& ps, const std::string& name) {
  for (auto& p : ps.params())
    if (p.name == name) {
      p.grad.copy_from(Tensor::from_doubles(std::vector<double>(size_t(p.numel()), NAN), p.shape, DType::f32));
      return;
    }
  throw Error("TrainerFaults::nan_grad_param", "a parameter name", "\"" + name + "\"");
}

// The first parameter, in model order (embeddings, then block by block), whose gradient is not finite.
static std::string first_nonfinite_gradient(const nn::ParameterStore& ps) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const auto& p : ps.params()) ranges.push_back({p.offset, p.offset + p.numel()});
  const std::vector<double> sq = optim::grad_sq_norms(ps.flat_grad(), ranges);
  size_t i = 0;
  for (const auto& p : ps.params())
    if (!std::isfinite(sq[i++])) return p.name;
  return "? (the global norm overflowed; every parameter's own norm is finite)";
}

// Refuses, before anything is allocated, a config whose estimated footprint exceeds the free GPU memory.
static void check_gpu_memory(const TrainConfig& cfg, const nn::ParameterStore& ps, DType compute) {
  size_t free_bytes = 0, total_bytes = 0;
  cuda_mem_info(&free_bytes, &total_bytes);
  check_memory_fits(estimate_memory(cfg, ps.flat_numel(), compute), free_bytes, total_bytes, cfg, cuda_device_name());
}

// On resume: name the config keys that differ from the checkpoint's (changing, say, the seed or
// the batch makes the continuation differ from an uninterrupted run).
static void warn_config_changes(const json& state, const TrainConfig& cfg) {
  if (!state.contains("config")) return;
  std::string list;
  for (const auto& k : config_differences(state["config"], to_json(cfg)))
    if (k != "train.max_steps" && k != "train.out_dir") list += (list.empty() ? "" : ", ") + k;
  if (!list.empty()) std::printf("resume: config differs from the checkpoint's in %s\n", list.c_str());
}

Trainer::Trainer(const TrainConfig& cfg, bool resume, bool quiet) : cfg_(cfg), quiet_(quiet) {
  device_ = resolve_device(cfg.train.device);
  const std::string& prec = cfg.train.precision;
  if (prec == "bf16" && device_.is_cpu())
    throw Error("train.precision", "\"fp32\" or \"auto\" on the CPU (bf16 compute is GPU-only)", "\"bf16\"");
  compute_dtype_ = (prec == "bf16" || (prec == "auto" && device_.is_cuda())) ? DType::bf16 : DType::f32;
  if (device_.is_cuda()) cuda_set_device(device_.index);

  model_ = std::make_unique<nn::Transformer>(cfg.model, ps_);
  if (device_.is_cuda() && cfg.train.check_memory) check_gpu_memory(cfg, ps_, compute_dtype_);  // before allocating
  ps_.finalize(device_, compute_dtype_, cfg.train.seed);
  opt_.m = Tensor::zeros({ps_.flat_numel()}, DType::f32, device_);
  opt_.v = Tensor::zeros({ps_.flat_numel()}, DType::f32, device_);
  for (const auto& p : ps_.params()) {
    const LrGroup group = p.kind == nn::ParamKind::memory_value ? LrGroup::memory_value
                          : p.kind == nn::ParamKind::buffer     ? LrGroup::frozen
                                                                : LrGroup::base;
    bool decay = p.kind == nn::ParamKind::matrix || p.kind == nn::ParamKind::memory_value ||
                 (p.kind == nn::ParamKind::embedding && cfg.optim.decay_embeddings) ||
                 ((p.kind == nn::ParamKind::norm || p.kind == nn::ParamKind::bias) && cfg.optim.decay_norms_and_biases);
    if (group == LrGroup::frozen) decay = false;
    int64_t end = p.offset + (p.numel() + 63) / 64 * 64;
    if (!ranges_.empty() && ranges_.back().decay == decay && ranges_.back().group == group && ranges_.back().end == p.offset)
      ranges_.back().end = end;
    else
      ranges_.push_back({p.offset, end, decay, group});
  }

  const int64_t world = 1;  // data parallelism arrives with the NCCL issue
  accum_steps_ = cfg.train.global_batch / (cfg.train.micro_batch * world);
  data::LoaderOptions lo;
  lo.seq_len = cfg.data.seq_len;
  lo.seed = cfg.train.seed;
  lo.verify_checksum = cfg.data.verify_checksum;
  lo.raw = raw_token_options(cfg.data);
  if (cfg.data.mixture.empty()) {
    train_loader_ = std::make_unique<data::TokenLoader>(data::expand_patterns(cfg.data.train, "data.train"), lo);
  } else {
    std::vector<data::LoaderSource> sources;
    for (const auto& m : cfg.data.mixture)
      sources.push_back({m.name, data::expand_patterns(m.path, "data.train." + m.name + ".path"), m.weight});
    train_loader_ = std::make_unique<data::TokenLoader>(sources, lo);
  }
  if (int64_t(train_loader_->vocab_size()) > cfg.model.real_vocab())
    throw Error("data.train", detail::concat("shards whose vocabulary (", train_loader_->vocab_size(),
                                             ") fits model.valid_vocab/vocab_size (", cfg.model.real_vocab(), ")"),
                "a larger vocabulary");
  ids_ = Tensor::empty({cfg.train.micro_batch, cfg.data.seq_len}, DType::i32, device_);
  targets_ = Tensor::empty({cfg.train.micro_batch, cfg.data.seq_len}, DType::i32, device_);
  peak_flops_ = device_.is_cuda() ? peak_flops_for(cuda_device_name(), cfg.train.peak_tflops) : 0;

  fs::create_directories(cfg.train.out_dir);
  if (resume) {
    std::string dir = io::latest_checkpoint(cfg.train.out_dir);
    if (dir.empty())
      throw Error(cfg.train.out_dir, "a checkpoint to resume from (checkpoints/latest)", "none");
    json st = io::load_checkpoint(dir, ps_, &opt_);
    try {
      step_ = st.at("step").get<int64_t>();
      tokens_seen_ = st.at("tokens_seen").get<int64_t>();
      train_loader_->set_state(loader_state_from_json(st.at("loader"), *train_loader_));
      if (st.contains("nonfinite")) skipped_steps_ = st["nonfinite"].at("skipped_steps").get<int64_t>();
    } catch (const json::exception& e) {
      throw Error(dir + "/trainer.json", "step, tokens_seen and loader {epoch, cursor} or {draws, sources}", e.what());
    }
    if (!quiet_) warn_config_changes(st, cfg);
    truncate_metrics(cfg.train.out_dir, step_);  // drop what a killed run logged after this checkpoint
    last_saved_step_ = step_;
    if (!quiet_) std::printf("resumed from %s at step %lld\n", dir.c_str(), static_cast<long long>(step_));
  }
  prefetcher_ = std::make_unique<data::BatchPrefetcher>(*train_loader_, cfg.train.micro_batch);  // after the resume
  io::write_file_atomic((fs::path(cfg.train.out_dir) / "config.json").string(), to_json(cfg).dump(2, ' ', false, json::error_handler_t::replace) + "\n");
  if (!quiet_)
    std::printf("ultramem: %s, %s compute, %.2fM parameters, %lld micro-batches of %lldx%lld per step\n",
                device_.is_cuda() ? cuda_device_name().c_str() : "cpu", dtype_name(compute_dtype_),
                double(ps_.numel()) / 1e6, static_cast<long long>(accum_steps_),
                static_cast<long long>(cfg.train.micro_batch), static_cast<long long>(cfg.data.seq_len));
}

Trainer::~Trainer() = default;

size_t Trainer::arena_peak_bytes() const { return arena_for(device_).peak_bytes(); }

void Trainer::load_batch() {
  // The worker reads the following micro-batch while this one trains.
  const data::BatchPrefetcher::Batch b = prefetcher_->next();
  const size_t bytes = size_t(cfg_.train.micro_batch * cfg_.data.seq_len) * 4;
  copy_bytes(ids_.data(), device_, b.ids, Device::cpu(), bytes);
  copy_bytes(targets_.data(), device_, b.targets, Device::cpu(), bytes);
}

double Trainer::memory_value_lr(double lr) const {
  const auto& o = cfg_.optim;
  if (o.mem_value_lr > 0) return o.mem_value_lr;  // a constant (Memory+)
  // The multiplier falls linearly from mem_value_lr_times to 1 at max_steps x rate, then stays 1.
  const double end = double(cfg_.train.max_steps) * o.mem_value_lr_max_steps_rate;
  const double frac = end > 0 ? std::min(1.0, double(step_) / end) : 1.0;
  return lr * (o.mem_value_lr_times + (1.0 - o.mem_value_lr_times) * frac);
}

std::vector<optim::AdamWGroup> Trainer::groups_for_lr(double lr) const {
  std::vector<optim::AdamWGroup> g;
  const double value_lr = memory_value_lr(lr);
  for (const auto& r : ranges_) {
    const double group_lr = r.group == LrGroup::frozen ? 0.0 : r.group == LrGroup::memory_value ? value_lr : lr;
    g.push_back({r.begin, r.end, float(group_lr), r.decay ? float(cfg_.optim.weight_decay) : 0.f});
  }
  return g;
}

StepStats Trainer::step() {
  const auto t0 = Clock::now();
  optim::Schedule sched{cfg_.optim.lr, cfg_.optim.warmup_steps, cfg_.train.max_steps, cfg_.optim.lr_end_ratio,
                        cfg_.optim.schedule};
  StepStats s;
  s.lr = sched.lr(step_);
  const data::LoaderState before = prefetcher_->consumed_state();  // the last good state, should this step fail
  ps_.begin_step();
  model_->begin_step();
  Arena& arena = arena_for(device_);
  double loss_sum = 0;
  for (int64_t micro = 0; micro < accum_steps_; ++micro) {
    load_batch();
    if (!s.nonfinite.empty()) continue;  // the step is lost: its remaining data is consumed unread
    nn::StepContext ctx;
    ctx.training = true;
    ctx.dropout_seed = cfg_.train.seed * 1000003ull + uint64_t(step_) * 4099ull + uint64_t(micro);
    // Layers report health statistics from the last micro-batch of the steps that are logged.
    ctx.collect_stats = micro + 1 == accum_steps_ && is_log_step(step_ + 1);
    Tape tape;
    {
      TapeScope scope(tape);
      Tensor loss = model_->loss(ids_, targets_, ctx);
      // The loss, the cross-entropy and every auxiliary loss in one read (one synchronisation).
      std::vector<Tensor> reads{loss};
      if (!ctx.aux_losses.empty()) reads.push_back(ctx.ce_loss);
      for (const auto& aux : ctx.aux_losses) reads.push_back(aux.value);
      const std::vector<double> values = scalar_values(reads);
      double l = values[0];
      if (micro == 0 && has_step(faults_.nan_loss_steps, step_ + 1)) l = NAN;
      if (!std::isfinite(l)) {
        s.nonfinite = detail::concat("loss (", l, ") in micro-batch ", micro);
        continue;  // no backward: the tape and the arena are dropped
      }
      // The logged loss is the cross-entropy; auxiliary losses are logged by name beside it.
      loss_sum += ctx.aux_losses.empty() ? l : values[1];
      for (size_t i = 0; i < ctx.aux_losses.size(); ++i)
        s.aux[ctx.aux_losses[i].name] += values[2 + i] / double(accum_steps_);
      if (ctx.collect_stats) s.stats = std::move(ctx.stats);
      // Each micro-batch contributes 1/accum of the mean loss's gradient.
      tape.backward(loss, 1.0 / double(accum_steps_));
    }
    arena.reset();
  }
  if (!s.nonfinite.empty()) arena.reset();  // the micro-batch whose loss was non-finite left it in use
  s.loss = loss_sum / double(accum_steps_);
  if (s.nonfinite.empty()) {
    ps_.zero_unwritten_grads();
    if (has_step(faults_.nan_grad_steps, step_ + 1)) poison_gradient(ps_, faults_.nan_grad_param);
    s.grad_norm = optim::grad_norm(ps_.flat_grad());
    if (!std::isfinite(s.grad_norm)) s.nonfinite = "gradient, first in " + first_nonfinite_gradient(ps_);
  }
  if (!s.nonfinite.empty()) handle_nonfinite(s, before);  // throws NonFiniteStop, or marks the step skipped
  if (!s.skipped) {
    optim::AdamWHyper h;
    h.beta1 = float(cfg_.optim.beta1);
    h.beta2 = float(cfg_.optim.beta2);
    h.eps = float(cfg_.optim.eps);
    h.step = step_ + 1 - skipped_steps_;  // updates made, for the bias correction
    h.grad_scale = (cfg_.optim.grad_clip > 0 && s.grad_norm > cfg_.optim.grad_clip) ? float(cfg_.optim.grad_clip / s.grad_norm) : 1.f;
    optim::adamw_step(ps_.flat_master(), ps_.flat_grad(), opt_.m, opt_.v, ps_.flat_compute(), groups_for_lr(s.lr), h);
  }
  if (device_.is_cuda()) cuda_synchronize();
  ++step_;
  const int64_t tokens = cfg_.train.global_batch * cfg_.data.seq_len;
  tokens_seen_ += tokens;
  s.step = step_;
  s.step_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  elapsed_ += s.step_seconds;
  s.tokens_per_s = double(tokens) / s.step_seconds;
  if (peak_flops_ > 0) s.mfu = s.tokens_per_s * model_->flops_per_token(cfg_.data.seq_len) / peak_flops_;
  return s;
}

double Trainer::validate() {
  if (cfg_.data.val.empty()) return NAN;
  data::LoaderOptions lo;
  lo.seq_len = cfg_.data.seq_len;
  lo.shuffle = false;  // always the same leading windows: comparable across steps and runs
  lo.verify_checksum = cfg_.data.verify_checksum;
  lo.raw = raw_token_options(cfg_.data);
  data::TokenLoader val(data::expand_patterns(cfg_.data.val, "data.val"), lo);
  return evaluate_loss(*model_, val, cfg_.train.micro_batch, cfg_.train.val_batches, device_).loss;
}

json Trainer::trainer_state() const {
  // The state after the last micro-batch a step consumed, not after the one being prefetched.
  return trainer_state(prefetcher_->consumed_state());
}

json Trainer::trainer_state(const data::LoaderState& loader_state) const {
  json loader = loader_state_to_json(loader_state, *train_loader_);
  optim::Schedule sched{cfg_.optim.lr, cfg_.optim.warmup_steps, cfg_.train.max_steps, cfg_.optim.lr_end_ratio,
                        cfg_.optim.schedule};
  // Every random stream is a pure function of the seed and a counter, so the counters above restore
  // them: initial weights (seed, name), data order (seed, epoch), mixture draws (seed, draw), dropout
  // (seed, step, micro-batch).
  json rng = {{"seed", cfg_.train.seed}, {"streams", "counter-based: weights (seed, name), data order (seed, epoch), "
                                                     "mixture (seed, draw), dropout (seed, step, micro-batch)"}};
  json schedule = {{"step", step_}, {"next_lr", sched.lr(step_)}, {"schedule", cfg_.optim.schedule},
                   {"warmup_steps", cfg_.optim.warmup_steps}, {"max_steps", cfg_.train.max_steps}};
  return {{"step", step_}, {"tokens_seen", tokens_seen_}, {"loader", loader}, {"rng", rng}, {"schedule", schedule},
          {"nonfinite", {{"skipped_steps", skipped_steps_}}}, {"config", to_json(cfg_)}};
}

void Trainer::save_checkpoint() {
  std::string dir = io::save_checkpoint(cfg_.train.out_dir, step_, ps_, opt_, trainer_state(), cfg_.train.keep_last);
  last_saved_step_ = step_;
  if (!quiet_) std::printf("checkpoint %s\n", dir.c_str());
}

void Trainer::handle_nonfinite(StepStats& s, const data::LoaderState& before) {
  const auto& t = cfg_.train;
  if (t.nonfinite_policy == "skip" && skipped_steps_ < t.nonfinite_max_skips) {
    ++skipped_steps_;
    s.skipped = true;
    s.loss = NAN;
    if (!quiet_)
      std::printf("step %6lld | warning: non-finite %s; step skipped, no update (%lld of train.nonfinite.max_skips %lld)\n",
                  static_cast<long long>(step_ + 1), s.nonfinite.c_str(), static_cast<long long>(skipped_steps_),
                  static_cast<long long>(t.nonfinite_max_skips));
    return;
  }
  // The weights and moments are untouched by this step; the loader goes back to before it, so the
  // checkpoint is exactly the state after step_ (a resume replays this step's data).
  const std::string dir = io::save_checkpoint(t.out_dir, step_, ps_, opt_, trainer_state(before), t.keep_last);
  last_saved_step_ = step_;
  const std::string why = t.nonfinite_policy == "skip"
                              ? detail::concat("train.nonfinite.max_skips (", t.nonfinite_max_skips, ") steps were already skipped")
                              : std::string("train.nonfinite.policy is \"stop\"");
  throw NonFiniteStop(detail::concat("step ", step_ + 1), "a finite loss and finite gradients",
                      detail::concat("a non-finite ", s.nonfinite, "; stopped because ", why, ". The last good state (step ",
                                     step_, ") is saved in ", dir, "; --resume continues from it (consider a lower optim.lr, "
                                     "optim.grad_clip, or train.nonfinite.policy=skip)"));
}

bool Trainer::is_log_step(int64_t step) const {
  return step % cfg_.train.log_every == 0 || step == cfg_.train.max_steps || step == 1;
}

void Trainer::log_step(const StepStats& s) {
  json line = {{"step", s.step}, {"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm},
               {"tokens", tokens_seen_}, {"tokens_per_s", s.tokens_per_s}, {"mfu", s.mfu}, {"step_s", s.step_seconds}};
  if (!s.aux.empty()) line["aux_losses"] = s.aux;
  if (!s.stats.empty()) line["stats"] = s.stats;
  if (s.skipped) line["skipped"] = s.nonfinite;  // train.nonfinite.policy "skip": no update this step
  append_jsonl(cfg_.train.out_dir, line);
  if (quiet_ || !is_log_step(s.step)) return;
  const double eta = double(cfg_.train.max_steps - s.step) * (elapsed_ / double(std::max<int64_t>(s.step, 1)));
  char mfu[32] = "";
  if (s.mfu > 0) std::snprintf(mfu, sizeof mfu, " | MFU %4.1f%%", 100 * s.mfu);
  std::printf("step %6lld/%lld | loss %.4f | lr %.2e | gnorm %6.3f | %9.0f tok/s%s | ETA %s\n",
              static_cast<long long>(s.step), static_cast<long long>(cfg_.train.max_steps), s.loss, s.lr, s.grad_norm,
              s.tokens_per_s, mfu, human_seconds(eta).c_str());
  std::fflush(stdout);
}

void Trainer::run(int64_t steps) {
  const int64_t stop = steps > 0 ? std::min(step_ + steps, cfg_.train.max_steps) : cfg_.train.max_steps;
  // SIGINT/SIGTERM (train/reliability.h): end after the step in flight, with a checkpoint.
  auto stop_on_request = [&] {
    const int sig = stop_requested();
    if (!sig) return false;
    if (last_saved_step_ != step_) save_checkpoint();
    stopped_by_signal_ = sig;
    if (!quiet_)
      std::printf("stopped by signal %d (%s) after step %lld; the checkpoint is saved: --resume continues\n", sig,
                  sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "?", static_cast<long long>(step_));
    return true;
  };
  while (step_ < stop) {
    if (stop_on_request()) return;
    StepStats s = step();
    log_step(s);
    const bool last = step_ == cfg_.train.max_steps;
    if (!cfg_.data.val.empty() && ((cfg_.train.val_every > 0 && step_ % cfg_.train.val_every == 0) || last)) {
      double v = validate();
      append_jsonl(cfg_.train.out_dir, {{"step", step_}, {"val_loss", v}, {"val_ppl", std::exp(v)}});
      if (!quiet_) std::printf("step %6lld | val loss %.4f | val ppl %.2f\n", static_cast<long long>(step_), v, std::exp(v));
    }
    if ((cfg_.train.checkpoint_every > 0 && step_ % cfg_.train.checkpoint_every == 0) || last) save_checkpoint();
  }
  if (stop_on_request()) return;
  if (!quiet_)
    std::printf("done: %lld steps, %.1fs, activation arena peak %.1f MiB\n", static_cast<long long>(step_), elapsed_,
                double(arena_peak_bytes()) / (1 << 20));
}

}  // namespace um::train
