#include "ultramem/io/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "src/io/atomic_file.h"
#include "ultramem/io/safetensors.h"

namespace um::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

static std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

static void write_text(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

std::string save_checkpoint(const std::string& out_dir, int64_t step, const nn::ParameterStore& ps,
                            const OptimizerState& opt, const json& trainer_state, int64_t keep_last) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  fs::create_directories(root);
  const fs::path final_dir = root / step_name(step);
  const fs::path tmp_dir = root / (step_name(step) + ".tmp");
  fs::remove_all(tmp_dir);  // a leftover from an interrupted save
  fs::create_directories(tmp_dir);

  std::vector<NamedTensor> weights, moments;
  for (const auto& p : ps.params()) {
    weights.push_back({p.name, p.master});
    moments.push_back({p.name + ".exp_avg", opt.m.narrow0(p.offset, p.numel()).view(p.shape)});
    moments.push_back({p.name + ".exp_avg_sq", opt.v.narrow0(p.offset, p.numel()).view(p.shape)});
  }
  save_safetensors((tmp_dir / "model.safetensors").string(), weights, {{"format", "pt"}});
  save_safetensors((tmp_dir / "optimizer.safetensors").string(), moments, {{"format", "pt"}});
  write_text((tmp_dir / "trainer.json").string(), trainer_state.dump(2));
  fsync_directory(tmp_dir.string());

  fs::remove_all(final_dir);  // re-saving the same step replaces it
  fs::rename(tmp_dir, final_dir);
  fsync_directory(root.string());
  write_text((root / "latest").string(), step_name(step) + "\n");

  // Keep the newest keep_last complete checkpoints.
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + size_t(keep_last) < steps.size(); ++i) fs::remove_all(root / steps[i]);
  return final_dir.string();
}

std::string latest_checkpoint(const std::string& out_dir) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  std::ifstream in(root / "latest");
  std::string name;
  if (!in || !std::getline(in, name) || name.empty()) return "";
  fs::path dir = root / name;
  if (!fs::is_directory(dir))
    throw Error((root / "latest").string(), "the name of an existing checkpoint directory", "\"" + name + "\"");
  return dir.string();
}

json load_checkpoint(const std::string& dir, nn::ParameterStore& ps, OptimizerState* opt) {
  SafetensorsReader weights((fs::path(dir) / "model.safetensors").string());
  for (auto& p : ps.params()) weights.read_into(p.name, p.master);
  for (const auto& [name, e] : weights.entries())
    if (!ps.find(name))
      throw Error(weights.path(), "only tensors this model has", "an extra tensor \"" + name + "\" (another model?)");
  if (opt) {
    SafetensorsReader moments((fs::path(dir) / "optimizer.safetensors").string());
    for (auto& p : ps.params()) {
      moments.read_into(p.name + ".exp_avg", opt->m.narrow0(p.offset, p.numel()).view(p.shape));
      moments.read_into(p.name + ".exp_avg_sq", opt->v.narrow0(p.offset, p.numel()).view(p.shape));
    }
  }
  ps.refresh_compute_copy();
  const std::string tpath = (fs::path(dir) / "trainer.json").string();
  std::ifstream in(tpath);
  if (!in) throw Error(tpath, "a readable trainer state", "it cannot be opened");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(tpath, "valid JSON", e.what());
  }
}

}  // namespace um::io
