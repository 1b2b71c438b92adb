#include "ultramem/train/reliability.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/io/atomic_file.h"

namespace um::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- stop requests ----

static volatile sig_atomic_t g_stop_signal = 0;

static void on_stop_signal(int sig) { g_stop_signal = sig; }

void install_stop_signal_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_RESETHAND;  // system calls resume; a second signal acts at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void request_stop(int signal_number) { g_stop_signal = signal_number; }
int stop_requested() { return g_stop_signal; }
void clear_stop_request() { g_stop_signal = 0; }

// ---- GPU memory ----

static std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, bytes >= 0.1 * double(1 << 30) ? "%.1f GiB" : "%.1f MiB",
                bytes >= 0.1 * double(1 << 30) ? bytes / double(1 << 30) : bytes / double(1 << 20));
  return buf;
}

std::string MemoryEstimate::describe() const {
  std::string s = "weights " + gib(weights) + ", gradients " + gib(gradients) + ", AdamW state " + gib(optimizer);
  if (compute_copy > 0) s += ", bf16 compute copy " + gib(compute_copy);
  return s + ", activations " + gib(activations) + ", workspaces " + gib(workspace) + ": total " + gib(total());
}

double estimate_activation_bytes(const TrainConfig& cfg, DType compute) {
  const auto& m = cfg.model;
  const double a = double(dtype_size(compute));
  const double tokens = double(cfg.train.micro_batch) * double(cfg.data.seq_len);
  const double d = double(m.d_model), h = double(m.mlp_hidden), heads = double(m.n_heads);
  const double qkv = double((m.n_heads + 2 * m.kv_heads()) * m.head_dim());
  // Per token and block, the tensors the forward pass keeps for backward (in the compute dtype):
  // norm outputs (2d), qkv (+ its rotated copy with RoPE), attention output, its projection, two
  // residual sums (4d), the MLP's hidden activations (GELU: pre- and post-activation; SwiGLU: the
  // [gate | up] projection and the product), the MLP output; dropout outputs when dropout is on;
  // f32 norm statistics (2 x 2) and attention log-sum-exp (one per head).
  const double mlp = m.mlp_act == "swiglu" ? 3 * h : 2 * h;
  double block = a * (2 * d + qkv * (m.pos_encoding == "rope" ? 2 : 1) + 4 * d + mlp + d) + 4 * (4 + heads);
  if (m.dropout > 0) block += a * 3 * d + 3;  // outputs and masks
  double mem = 0;
  if (m.mem.enabled()) {
    // A memory layer per block at most (placements): queries, row/column scores (f32), the top-k
    // candidates (scores and ids), and its output.
    const auto& mc = m.mem;
    const double hd = double(mc.head);
    mem = a * (2 * hd * double(mc.kdim) + std::max<double>(double(mc.vdim), d) + d) +
          4 * (2 * hd * double(mc.knum) * double(std::max<int64_t>(mc.key_expand_time, 1)) + 4 * hd * double(mc.knn));
  }
  // Embedding output (+ positions), final norm, logits and the loss's per-row statistics.
  const double head = a * (3 * d) + a * double(m.vocab_size) + 8;
  const double forward = tokens * (double(m.n_layers) * (block + mem) + head);
  // Backward allocates a gradient for each kept activation before the arena resets: about as much again.
  return 2 * forward;
}

MemoryEstimate estimate_memory(const TrainConfig& cfg, int64_t flat_parameters, DType compute) {
  MemoryEstimate e;
  e.parameters = flat_parameters;
  const double n = double(flat_parameters);
  e.weights = 4 * n;
  e.gradients = 4 * n;
  e.optimizer = 8 * n;
  e.compute_copy = compute == DType::f32 ? 0 : n * double(dtype_size(compute));
  // The arena grows geometrically during the first step and then holds 1/8 above its peak.
  e.activations = 1.25 * estimate_activation_bytes(cfg, compute);
  // cuBLASLt workspace, attention scratch, the ids/targets buffers, the allocator's rounding.
  e.workspace = double(size_t(512) << 20);
  return e;
}

void check_memory_fits(const MemoryEstimate& e, size_t free_bytes, size_t total_bytes, const TrainConfig& cfg,
                       const std::string& device_name) {
  if (e.total() <= 0.97 * double(free_bytes)) return;
  throw Error("train", detail::concat("a config that fits ", device_name, " (", gib(double(free_bytes)), " free of ",
                                      gib(double(total_bytes)), ")"),
              detail::concat("an estimated ", gib(e.total()), " (", e.describe(), ", for train.micro_batch ",
                             cfg.train.micro_batch, " x data.seq_len ", cfg.data.seq_len, " and ",
                             double(e.parameters) / 1e6, "M parameters); lower train.micro_batch (train.global_batch "
                             "keeps the batch through gradient accumulation), data.seq_len or the model, or set "
                             "train.check_memory=false to try anyway"));
}

// ---- resuming a run directory ----

void truncate_metrics(const std::string& out_dir, int64_t step) {
  const fs::path path = fs::path(out_dir) / "metrics.jsonl";
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  std::ifstream in(path, std::ios::binary);
  std::string line, kept;
  bool changed = false;
  while (std::getline(in, line)) {
    // A line without its newline is torn (the process died while appending it).
    const bool complete = !in.eof();
    bool keep = false;
    if (complete) {
      try {
        json j = json::parse(line);
        keep = j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= step;
      } catch (const json::exception&) {
        keep = false;
      }
    }
    if (keep)
      kept += line + "\n";
    else
      changed = true;
  }
  if (changed) io::write_file_atomic(path.string(), kept);
}

static void diff_into(const json& a, const json& b, const std::string& prefix, std::vector<std::string>& out) {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
      auto jt = b.find(it.key());
      if (jt == b.end())
        out.push_back(key);
      else
        diff_into(*it, *jt, key, out);
    }
    for (auto jt = b.begin(); jt != b.end(); ++jt)
      if (!a.contains(jt.key())) out.push_back(prefix.empty() ? jt.key() : prefix + "." + jt.key());
    return;
  }
  if (a != b) out.push_back(prefix);
}

std::vector<std::string> config_differences(const json& a, const json& b) {
  std::vector<std::string> out;
  diff_into(a, b, "", out);
  return out;
}

}  // namespace um::train
