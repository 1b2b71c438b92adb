#include "ultramem/io/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/io/atomic_file.h"
#include "ultramem/config/json_reader.h"
#include "ultramem/io/checksum.h"
#include "ultramem/io/fault_injection.h"
#include "ultramem/io/safetensors.h"

namespace um::io {

namespace fs = std::filesystem;
using json = nlohmann::json;
using config::describe_json;

static const char* kFormatName = "ultramem checkpoint";

static std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// The step of a directory name "step-<digits>" (nothing after them), or -1.
static int64_t parse_step_name(const std::string& n) {
  if (n.size() < 6 || n.size() > 5 + 18 || n.rfind("step-", 0) != 0) return -1;
  if (n.find_first_not_of("0123456789", 5) != std::string::npos) return -1;
  return std::stoll(n.substr(5));
}

const CheckpointFile* CheckpointManifest::find(const std::string& name) const {
  for (const auto& f : files)
    if (f.name == name) return &f;
  return nullptr;
}

// Completed step directories under root, oldest first.
static std::vector<std::pair<int64_t, std::string>> complete_checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    const int64_t s = parse_step_name(n);
    if (s < 0 || !e.is_directory(ec)) continue;
    // Format 2 has a manifest (written last); format 1 directories had trainer.json last.
    if (fs::exists(e.path() / "manifest.json", ec) || fs::exists(e.path() / "trainer.json", ec)) out.push_back({s, n});
  }
  std::sort(out.begin(), out.end());
  return out;
}

static std::string read_latest_name(const fs::path& root) {
  std::ifstream in(root / "latest");
  std::string name;
  if (!in || !std::getline(in, name)) return "";
  return name;
}

// Repairs what an interrupted save can leave: "step-N.replaced" (the old copy of a step being re-saved)
// goes back to step-N when the new one never arrived, else away; "step-N.tmp" (a partial directory)
// is removed when asked (by a save; a reader leaves it).
static void recover_interrupted(const fs::path& root, bool remove_temporaries) {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(root, ec)) entries.push_back(e.path());
  for (const fs::path& p : entries) {
    const std::string n = p.filename().string();
    const size_t dot = n.rfind('.');
    if (dot == std::string::npos || parse_step_name(n.substr(0, dot)) < 0) continue;
    const std::string suffix = n.substr(dot), base = n.substr(0, dot);
    if (suffix == ".replaced") {
      if (fs::exists(root / base, ec))
        fs::remove_all(p, ec);
      else
        fs::rename(p, root / base, ec);
    } else if (suffix == ".tmp" && remove_temporaries) {
      fs::remove_all(p, ec);
    }
  }
}

std::string save_checkpoint(const std::string& out_dir, int64_t step, const nn::ParameterStore& ps,
                            const OptimizerState& opt, const json& trainer_state, int64_t keep_last) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const std::string name = step_name(step);
  const fs::path final_dir = root / name, tmp_dir = root / (name + ".tmp"), aside = root / (name + ".replaced");
  const std::string previous = read_latest_name(root);
  auto fail = [&](const std::string& cause) -> Error {
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);  // free the partial directory's space
    if (!fs::exists(final_dir, ec) && fs::exists(aside, ec)) fs::rename(aside, final_dir, ec);
    const std::string kept = previous.empty()
                                 ? "nothing was replaced (there is no earlier checkpoint)"
                                 : "nothing was replaced: the previous checkpoint " + previous + " is intact and `latest` still names it";
    return Error((root / name).string(), "a checkpoint written completely", cause + "; " + kept);
  };
  try {
    fs::create_directories(root);
    recover_interrupted(root, /*remove_temporaries=*/true);
    fs::remove_all(tmp_dir);
    fs::create_directories(tmp_dir);

    std::vector<NamedTensor> weights, moments;
    for (const auto& p : ps.params()) {
      weights.push_back({p.name, p.master});
      moments.push_back({p.name + ".exp_avg", opt.m.narrow0(p.offset, p.numel()).view(p.shape)});
      moments.push_back({p.name + ".exp_avg_sq", opt.v.narrow0(p.offset, p.numel()).view(p.shape)});
    }
    CheckpointManifest man;
    man.step = step;
    auto add_file = [&](const std::string& file, uint64_t sum, uint64_t bytes) { man.files.push_back({file, bytes, sum}); };
    auto write_text = [&](const std::string& file, const std::string& text) {
      AtomicFile f((tmp_dir / file).string());
      f.write(text.data(), text.size());
      f.commit();
      add_file(file, f.checksum(), f.bytes_written());
    };
    uint64_t bytes = 0, sum = 0;
    sum = save_safetensors((tmp_dir / "model.safetensors").string(), weights, {{"format", "pt"}}, &bytes);
    add_file("model.safetensors", sum, bytes);
    crash_point("checkpoint:model");
    sum = save_safetensors((tmp_dir / "optimizer.safetensors").string(), moments, {{"format", "pt"}}, &bytes);
    add_file("optimizer.safetensors", sum, bytes);
    crash_point("checkpoint:optimizer");
    write_text("trainer.json", trainer_state.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
    if (trainer_state.contains("config")) write_text("config.json", trainer_state["config"].dump(2, ' ', false, json::error_handler_t::replace) + "\n");
    json files = json::object();
    for (const auto& f : man.files) files[f.name] = {{"bytes", f.bytes}, {"checksum", checksum_hex(f.checksum)}};
    json manifest = {{"format", kFormatName}, {"version", kCheckpointFormat}, {"step", step},
                     {"checksum", "FNV-1a 64 over little-endian u64 words, tail zero-padded (docs/reliability.md)"},
                     {"files", files}};
    write_file_atomic((tmp_dir / "manifest.json").string(), manifest.dump(2, ' ', false, json::error_handler_t::replace) + "\n");  // last: marks completeness
    fsync_directory(tmp_dir.string());
    crash_point("checkpoint:before-rename");

    // Re-saving a step: set the old directory aside first, so a crash between the renames leaves one
    // of the two complete directories under a name latest_checkpoint() finds.
    if (fs::exists(final_dir)) {
      fs::remove_all(aside);
      fs::rename(final_dir, aside);
    }
    fs::rename(tmp_dir, final_dir);
    fsync_directory(root.string());
    crash_point("checkpoint:renamed");
    write_file_atomic((root / "latest").string(), name + "\n");
    crash_point("checkpoint:latest");
  } catch (const Error& e) {
    throw fail(e.what());
  } catch (const std::exception& e) {  // std::filesystem errors: permissions, a full disk on mkdir
    throw fail(e.what());
  }

  // The checkpoint is complete and `latest` names it; failures from here on lose nothing.
  std::error_code ec;
  fs::remove_all(aside, ec);
  auto steps = complete_checkpoints(root);
  for (size_t i = 0; i + size_t(keep_last) < steps.size(); ++i)
    if (steps[i].second != name) fs::remove_all(root / steps[i].second, ec);
  crash_point("checkpoint:pruned");
  return final_dir.string();
}

std::string latest_checkpoint(const std::string& out_dir) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return "";
  recover_interrupted(root, /*remove_temporaries=*/false);
  const std::string name = read_latest_name(root);
  // A directory under its final name is complete by construction (renamed after its last file).
  if (parse_step_name(name) >= 0 && fs::is_directory(root / name, ec)) return (root / name).string();
  auto steps = complete_checkpoints(root);
  if (steps.empty()) {
    if (!name.empty())
      throw Error((root / "latest").string(), "the name of an existing checkpoint directory",
                  describe_json(json(name)) + " (and no other complete checkpoint is there)");
    return "";
  }
  const std::string chosen = steps.back().second;
  std::fprintf(stderr, "ultramem: warning: %s names %s, which is %s; using the newest complete checkpoint %s\n",
               (root / "latest").string().c_str(), name.empty() ? "nothing" : describe_json(json(name)).c_str(),
               name.empty() ? "empty or missing" : "not a complete checkpoint", chosen.c_str());
  return (root / chosen).string();
}

CheckpointManifest parse_checkpoint_manifest(const std::string& text, const std::string& path) {
  if (config::json_nesting_depth(text.data(), text.size()) > 8)
    throw Error(path, "a checkpoint manifest nested at most 8 levels deep", "deeper nesting");
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path, "a JSON checkpoint manifest", e.what());
  }
  if (!doc.is_object()) throw Error(path, "a JSON object", doc.type_name());
  auto field = [&](const char* key) -> const json& {
    auto it = doc.find(key);
    if (it == doc.end()) throw Error(path + ": " + key, "a value", "none");
    return *it;
  };
  CheckpointManifest m;
  const json& format = field("format");
  if (!format.is_string() || format.get<std::string>() != kFormatName)
    throw Error(path + ": format", detail::concat("\"", kFormatName, "\""), describe_json(format));
  const json& version = field("version");
  const uint64_t v = version.is_number_unsigned() ? version.get<uint64_t>() : 0;
  if (v < 2 || v > uint64_t(kCheckpointFormat))
    throw Error(path + ": version", detail::concat("2 to ", kCheckpointFormat, " (a newer ultramem wrote this?)"),
                describe_json(version));
  m.format = int(v);
  const json& step = field("step");
  if (!step.is_number_unsigned() || step.get<uint64_t>() > (uint64_t(1) << 62))
    throw Error(path + ": step", "a non-negative integer", describe_json(step));
  m.step = step.get<int64_t>();
  const json& files = field("files");
  if (!files.is_object() || files.size() > 64) throw Error(path + ": files", "an object of at most 64 files", describe_json(files));
  for (auto it = files.begin(); it != files.end(); ++it) {
    const std::string& name = it.key();
    const std::string where = path + ": files." + describe_json(json(name));
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos || name.size() > 255)
      throw Error(where, "a plain file name inside the checkpoint directory", describe_json(json(name)));
    const json& f = it.value();
    if (!f.is_object() || !f.contains("bytes") || !f.contains("checksum"))
      throw Error(where, "an object {\"bytes\": N, \"checksum\": \"16 hex digits\"}", describe_json(f));
    const json& b = f.at("bytes");
    const json& c = f.at("checksum");
    if (!b.is_number_unsigned()) throw Error(where + ".bytes", "a non-negative integer", describe_json(b));
    if (!c.is_string() || c.get<std::string>().size() != 16 ||
        c.get<std::string>().find_first_not_of("0123456789abcdef") != std::string::npos)
      throw Error(where + ".checksum", "16 lowercase hex digits", describe_json(c));
    m.files.push_back({name, b.get<uint64_t>(), std::stoull(c.get<std::string>(), nullptr, 16)});
  }
  for (const char* required : {"model.safetensors", "trainer.json"})
    if (!m.find(required)) throw Error(path + ": files", detail::concat("an entry for ", required), "none");
  return m;
}

CheckpointManifest verify_checkpoint(const std::string& dir, const std::vector<std::string>& only) {
  const fs::path mpath = fs::path(dir) / "manifest.json";
  std::error_code ec;
  if (!fs::exists(mpath, ec)) {
    if (!fs::is_directory(dir, ec)) throw Error(dir, "a checkpoint directory", "none there");
    CheckpointManifest legacy;
    legacy.format = 1;
    return legacy;
  }
  std::ifstream in(mpath, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in) throw Error(mpath.string(), "a readable manifest", "it cannot be read");
  CheckpointManifest m = parse_checkpoint_manifest(ss.str(), mpath.string());
  for (const auto& f : m.files) {
    if (!only.empty() && std::find(only.begin(), only.end(), f.name) == only.end()) continue;
    const std::string p = (fs::path(dir) / f.name).string();
    if (!fs::is_regular_file(p, ec)) throw Error(p, "the file the checkpoint manifest lists", "none (deleted?)");
    uint64_t bytes = 0;
    const uint64_t sum = file_checksum(p, &bytes);
    if (bytes != f.bytes)
      throw Error(p, detail::concat(f.bytes, " bytes as manifest.json records"), detail::concat(bytes, " bytes (truncated or replaced)"));
    if (sum != f.checksum)
      throw Error(p, "checksum " + checksum_hex(f.checksum) + " as manifest.json records",
                  checksum_hex(sum) + " (the file is corrupt)");
  }
  return m;
}

json load_checkpoint(const std::string& dir, nn::ParameterStore& ps, OptimizerState* opt) {
  std::vector<std::string> files = {"model.safetensors", "trainer.json"};
  if (opt) files.push_back("optimizer.safetensors");
  CheckpointManifest man = verify_checkpoint(dir, files);
  if (opt && man.format >= 2 && !man.find("optimizer.safetensors"))
    throw Error(dir + "/manifest.json", "an entry for optimizer.safetensors (needed to resume)", "none");
  if (man.format < 3)  // before format 3 the experts' w2 was [E, d, h] (io/checkpoint.h)
    for (const auto& p : ps.params())
      if (p.name.ends_with(".experts.mlp.w2"))
        throw Error(dir + ": " + p.name, "a checkpoint of format 3 or later (w2 as [E, h, d])",
                    detail::concat("format ", man.format, ", which stored it as [E, d, h]"));
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
  json st;
  try {
    st = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(tpath, "valid JSON", e.what());
  }
  if (!st.is_object()) throw Error(tpath, "a JSON object", st.type_name());
  if (man.format >= 2 && (!st.contains("step") || !st["step"].is_number_integer() || st["step"].get<int64_t>() != man.step))
    throw Error(tpath + ": step", detail::concat(man.step, " as manifest.json records"),
                st.contains("step") ? describe_json(st["step"]) : "none");
  return st;
}

}  // namespace um::io
