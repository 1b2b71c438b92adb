#include "ultramem/config/json_reader.h"

#include <algorithm>
#include <cmath>

#include "ultramem/core/check.h"

namespace um::config {

// True when `v` nests no deeper than `limit` levels and holds at most `*budget` values in all.
static bool is_small(const json& v, int limit, int* budget) {
  if (--*budget < 0) return false;
  if (!v.is_structured()) return true;
  if (limit == 0) return false;
  for (const auto& e : v)
    if (!is_small(e, limit - 1, budget)) return false;
  return true;
}

size_t json_nesting_depth(const char* text, size_t size) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

std::string describe_json(const json& v) {
  int budget = 32;
  if (!is_small(v, 4, &budget))
    return detail::concat("a", v.is_array() ? "n array" : "n object", " of ", v.size(), " elements");
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 160) s = s.substr(0, 150) + "...(" + std::to_string(s.size()) + " chars)";
  return s;
}

JsonReader::JsonReader(const json* obj, std::string path) : obj_(obj), path_(std::move(path)) {
  if (obj_ && !obj_->is_object())
    throw Error(path_.empty() ? "config" : path_, "a JSON object", obj_->type_name());
}

const json* JsonReader::find(const std::string& key) {
  seen_.insert(key);
  if (!obj_) return nullptr;
  auto it = obj_->find(key);
  return it == obj_->end() || it->is_null() ? nullptr : &*it;
}

int64_t JsonReader::get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi) {
  const json* v = find(key);
  if (!v) return def;
  if (!v->is_number_integer() && !(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>()))
    throw Error(key_path(key), "an integer", describe_json(*v));
  // Range-check before converting: a float beyond int64 or an unsigned above INT64_MAX must not wrap.
  const bool out_of_range = v->is_number_float()    ? !(std::fabs(v->get<double>()) < 9.2e18 && v->get<double>() >= double(lo) &&
                                                        v->get<double>() <= double(hi))
                            : v->is_number_unsigned() ? v->get<uint64_t>() > uint64_t(std::max<int64_t>(hi, 0))
                                                      : false;
  int64_t x = out_of_range ? lo : v->is_number_float() ? int64_t(v->get<double>()) : v->get<int64_t>();
  if (out_of_range || x < lo || x > hi) throw Error(key_path(key), detail::concat("an integer in [", lo, ", ", hi, "]"), describe_json(*v));
  return x;
}

double JsonReader::get_double(const std::string& key, double def, double lo, double hi) {
  const json* v = find(key);
  if (!v) return def;
  if (!v->is_number()) throw Error(key_path(key), "a number", describe_json(*v));
  double x = v->get<double>();
  if (!(x >= lo && x <= hi)) throw Error(key_path(key), detail::concat("a number in [", lo, ", ", hi, "]"), describe_json(*v));
  return x;
}

bool JsonReader::get_bool(const std::string& key, bool def) {
  const json* v = find(key);
  if (!v) return def;
  if (!v->is_boolean()) throw Error(key_path(key), "true or false", describe_json(*v));
  return v->get<bool>();
}

std::string JsonReader::get_string(const std::string& key, const std::string& def) {
  const json* v = find(key);
  if (!v) return def;
  if (!v->is_string()) throw Error(key_path(key), "a string", describe_json(*v));
  return v->get<std::string>();
}

std::string JsonReader::get_choice(const std::string& key, const std::string& def,
                                   const std::vector<std::string>& choices) {
  std::string s = get_string(key, def);
  for (auto& c : choices)
    if (s == c) return s;
  std::string list;
  for (auto& c : choices) list += (list.empty() ? "" : ", ") + ("\"" + c + "\"");
  throw Error(key_path(key), "one of " + list, describe_json(json(s)));
}

const json* JsonReader::get_object(const std::string& key) {
  const json* v = find(key);
  if (v && !v->is_object()) throw Error(key_path(key), "a JSON object", v->type_name());
  return v;
}

void JsonReader::finish() const {
  if (!obj_) return;
  for (auto it = obj_->begin(); it != obj_->end(); ++it)
    if (!seen_.count(it.key()))
      throw Error(key_path(it.key()), "a known key (see docs/config.md)", "an unknown key");
}

void apply_override(json& doc, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("--set " + assignment, "key.path=value", "no '=' or an empty key");
  std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value;
  try {
    value = json::parse(text);
  } catch (const json::exception&) {
    value = text;  // a bare word: a string
  }
  json* node = &doc;
  size_t pos = 0;
  while (true) {
    size_t dot = path.find('.', pos);
    std::string key = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    if (key.empty()) throw Error("--set " + assignment, "a key path like train.lr", "an empty path component");
    if (!node->is_object()) throw Error("--set " + path, "a path through JSON objects", "a " + std::string(node->type_name()));
    if (dot == std::string::npos) {
      (*node)[key] = value;
      return;
    }
    node = &(*node)[key];
    if (node->is_null()) *node = json::object();
    pos = dot + 1;
  }
}

}  // namespace um::config
