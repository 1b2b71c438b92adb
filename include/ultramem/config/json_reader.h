// Reads one JSON object of the config with validation: each get_* names the key path in its error
// (wrong type, out of range, not among the choices), and finish() rejects every key nobody read, so
// a misspelt key is an error, never silently ignored.
#pragma once
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace um::config {

using json = nlohmann::json;

class JsonReader {
 public:
  // `obj` may be null (section absent: every key takes its default).
  JsonReader(const json* obj, std::string path);
  int64_t get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi);
  double get_double(const std::string& key, double def, double lo, double hi);
  bool get_bool(const std::string& key, bool def);
  std::string get_string(const std::string& key, const std::string& def);
  std::string get_choice(const std::string& key, const std::string& def, const std::vector<std::string>& choices);
  // A nested object (null when absent); the key counts as read.
  const json* get_object(const std::string& key);
  std::string key_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  // Throws for the first key that no get_* asked for.
  void finish() const;

 private:
  const json* find(const std::string& key);
  const json* obj_;
  std::string path_;
  std::set<std::string> seen_;
};

// A short description of a JSON value for error messages: scalars as JSON (long strings cut), small
// shallow arrays/objects as JSON, anything else by type and size. Never recurses deeper than a few
// levels, so a hostile, deeply nested value cannot exhaust the stack (json::dump() would).
std::string describe_json(const json& v);

// The deepest nesting of arrays/objects in JSON text (brackets inside strings ignored), without parsing:
// parsers of untrusted files reject absurd depths before building a document from them.
size_t json_nesting_depth(const char* text, size_t size);
constexpr size_t kMaxJsonDepth = 256;

// Applies "a.b.c=value" to a JSON document: value parsed as JSON when it parses, else taken as a string.
void apply_override(json& doc, const std::string& assignment);

}  // namespace um::config
