#include "ultramem/nn/registry.h"

#include <map>

#include "src/nn/mlp.h"
#include "src/nn/moe.h"

namespace um::nn {

static std::map<std::string, FfnFactory>& factories() {
  // Built-in layers are registered here, in one place.
  static std::map<std::string, FfnFactory> f = {
      {"mlp", [](const ModelConfig& c, int, const std::string& prefix, ParameterStore& ps) {
         return std::unique_ptr<FeedForward>(new Mlp(c, prefix, ps));
       }},
      {"moe", [](const ModelConfig& c, int layer, const std::string& prefix, ParameterStore& ps) {
         return std::unique_ptr<FeedForward>(new Moe(c, layer, prefix, ps));
       }},
  };
  return f;
}

void register_ffn(const std::string& name, FfnFactory factory) { factories()[name] = std::move(factory); }

std::vector<std::string> registered_ffns() {
  std::vector<std::string> names;
  for (auto& [k, v] : factories()) names.push_back(k);
  return names;
}

std::unique_ptr<FeedForward> make_ffn(const ModelConfig& cfg, int layer, const std::string& prefix, ParameterStore& ps) {
  auto it = factories().find(cfg.ffn);
  if (it == factories().end()) {
    std::string known;
    for (auto& n : registered_ffns()) known += (known.empty() ? "" : ", ") + n;
    throw Error("model.ffn", "one of: " + known, "\"" + cfg.ffn + "\"");
  }
  return it->second(cfg, layer, prefix, ps);
}

}  // namespace um::nn
