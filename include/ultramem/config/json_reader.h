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

// Applies "a.b.c=value" to a JSON document: value parsed as JSON when it parses, else taken as a string.
void apply_override(json& doc, const std::string& assignment);

}  // namespace um::config
