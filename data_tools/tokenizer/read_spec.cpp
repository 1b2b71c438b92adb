// Readers of tokenizer files: Hugging Face tokenizer.json and GPT-2's encoder.json + vocab.bpe.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data_tools/tokenizer/tokenizer_spec.h"
#include "ultramem/core/check.h"

namespace um::tok {

using nlohmann::json;

static std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "a readable tokenizer file", "it cannot be opened");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

static json parse_json_file(const std::string& path) {
  try {
    return json::parse(read_whole_file(path));
  } catch (const json::parse_error& e) {
    throw Error(path, "valid JSON", e.what());
  }
}

static std::string type_of(const json& j) {
  if (j.is_null()) return "null";
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "an object without a \"type\"";
  return j["type"].get<std::string>();
}

static bool flag(const json& obj, const char* key, bool fallback) {
  if (!obj.contains(key) || obj[key].is_null()) return fallback;
  return obj[key].get<bool>();
}

// normalizer: null, NFC, or a Sequence of NFC.
static bool read_normalizer(const json& j, const std::string& where) {
  std::string type = type_of(j);
  if (type == "null") return false;
  if (type == "NFC") return true;
  if (type == "Sequence") {
    bool nfc = false;
    for (const json& n : j.at("normalizers")) nfc = read_normalizer(n, where + ".normalizers[]") || nfc;
    return nfc;
  }
  throw Error(where, "a normalizer this tokenizer implements (null, NFC, or a Sequence of them)", type);
}

// pre_tokenizer: ByteLevel, or a Sequence holding exactly one ByteLevel.
static void read_pre_tokenizer(const json& j, const std::string& where, TokenizerSpec& spec) {
  std::string type = type_of(j);
  if (type == "Sequence" && j.contains("pretokenizers") && j["pretokenizers"].size() == 1) {
    read_pre_tokenizer(j["pretokenizers"][0], where + ".pretokenizers[0]", spec);
    return;
  }
  if (type != "ByteLevel") throw Error(where, "a ByteLevel pre_tokenizer (byte-level BPE)", type);
  spec.add_prefix_space = flag(j, "add_prefix_space", false);
  spec.use_regex = flag(j, "use_regex", true);
}

static void read_bpe_model(const json& m, const std::string& where, TokenizerSpec& spec) {
  std::string type = m.contains("type") ? type_of(m) : "BPE";
  if (type != "BPE") throw Error(where + ".type", "\"BPE\"", type);
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
    throw Error(where + ".dropout", "null (dropout makes encoding random)", m["dropout"].dump());
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(key) && !m[key].is_null() && !m[key].get<std::string>().empty())
      throw Error(where + "." + key, "null (byte-level BPE has no subword affixes)", m[key].dump());
  spec.ignore_merges = flag(m, "ignore_merges", false);

  const json& vocab = m.at("vocab");
  if (!vocab.is_object()) throw Error(where + ".vocab", "an object token -> id", vocab.type_name());
  spec.vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) spec.vocab.emplace_back(it.key(), it.value().get<uint32_t>());

  const json& merges = m.at("merges");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& e = merges[i];
    std::string at = detail::concat(where, ".merges[", i, "]");
    if (e.is_string()) {  // "left right" (older files)
      std::string s = e.get<std::string>();
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        throw Error(at, "\"left right\" with exactly one space", "\"" + s + "\"");
      spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["left", "right"]
      spec.merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      throw Error(at, "a merge \"left right\" or [\"left\", \"right\"]", e.dump());
    }
  }
}

static void read_added_tokens(const json& list, const std::string& where, TokenizerSpec& spec) {
  if (list.is_null()) return;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    std::string at = detail::concat(where, "[", i, "]");
    for (const char* key : {"lstrip", "rstrip", "single_word"})
      if (flag(t, key, false)) throw Error(at + "." + key, "false (true changes how tokens match and is unsupported)", "true");
    AddedToken a;
    a.content = t.at("content").get<std::string>();
    a.id = t.at("id").get<uint32_t>();
    a.special = flag(t, "special", false);
    a.normalized = flag(t, "normalized", !a.special);
    spec.added.push_back(std::move(a));
  }
}

TokenizerSpec read_hf_tokenizer_json(const std::string& path) {
  json j = parse_json_file(path);
  TokenizerSpec spec;
  spec.kind = "huggingface";
  spec.files = {path};
  try {
    for (const char* key : {"truncation", "padding"})
      if (j.contains(key) && !j[key].is_null())
        throw Error(path + ": " + key, "null (ids are returned whole and unpadded)", j[key].dump());
    spec.nfc = read_normalizer(j.value("normalizer", json()), path + ": normalizer");
    read_pre_tokenizer(j.value("pre_tokenizer", json()), path + ": pre_tokenizer", spec);
    read_bpe_model(j.at("model"), path + ": model", spec);
    read_added_tokens(j.value("added_tokens", json()), path + ": added_tokens", spec);
    // encode() is add_special_tokens=False: only a post-processor that adds nothing is accepted, and the
    // ByteLevel decoder is what decode() implements.
    std::string post = type_of(j.value("post_processor", json()));
    if (post != "null" && post != "ByteLevel")
      throw Error(path + ": post_processor", "null or ByteLevel (adds no tokens)", post);
    std::string dec = type_of(j.value("decoder", json()));
    if (dec != "null" && dec != "ByteLevel") throw Error(path + ": decoder", "null or ByteLevel", dec);
  } catch (const json::exception& e) {
    throw Error(path, "a Hugging Face tokenizer.json with the expected fields", e.what());
  }
  return spec;
}

TokenizerSpec read_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  TokenizerSpec spec;
  spec.kind = "gpt2";
  spec.files = {encoder_json, vocab_bpe};
  json enc = parse_json_file(encoder_json);
  if (!enc.is_object()) throw Error(encoder_json, "an object token -> id", enc.type_name());
  try {
    for (auto it = enc.begin(); it != enc.end(); ++it) spec.vocab.emplace_back(it.key(), it.value().get<uint32_t>());
  } catch (const json::exception& e) {
    throw Error(encoder_json, "integer ids", e.what());
  }
  std::istringstream lines(read_whole_file(vocab_bpe));
  std::string line;
  for (size_t number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
      throw Error(detail::concat(vocab_bpe, ":", number), "a merge \"left right\"", "\"" + line + "\"");
    spec.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  auto eos = enc.find("<|endoftext|>");
  if (eos != enc.end()) spec.added.push_back(AddedToken{"<|endoftext|>", eos->get<uint32_t>(), true, false});
  return spec;
}

}  // namespace um::tok
