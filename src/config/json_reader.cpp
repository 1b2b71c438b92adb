#include "ultramem/config/json_reader.h"

#include <cmath>

#include "ultramem/core/check.h"

namespace um::config {

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
    throw Error(key_path(key), "an integer", v->dump());
  int64_t x = v->is_number_float() ? int64_t(v->get<double>()) : v->get<int64_t>();
  if (x < lo || x > hi) throw Error(key_path(key), detail::concat("an integer in [", lo, ", ", hi, "]"), v->dump());
  return x;
}

double JsonReader::get_double(const std::string& key, double def, double lo, double hi) {
  const json* v = find(key);
  if (!v) return def;
  if (!v->is_number()) throw Error(key_path(key), "a number", v->dump());
  double x = v->get<double>();
  if (!(x >= lo && x <= hi)) throw Error(key_path(key), detail::concat("a number in [", lo, ", ", hi, "]"), v->dump());
  return x;
}

bool JsonReader::get_bool(const std::string& key, bool def) {
  const json* v = find(key);
  if (!v) return def;
  if (!v->is_boolean()) throw Error(key_path(key), "true or false", v->dump());
  return v->get<bool>();
}

std::string JsonReader::get_string(const std::string& key, const std::string& def) {
  const json* v = find(key);
  if (!v) return def;
  if (!v->is_string()) throw Error(key_path(key), "a string", v->dump());
  return v->get<std::string>();
}

std::string JsonReader::get_choice(const std::string& key, const std::string& def,
                                   const std::vector<std::string>& choices) {
  std::string s = get_string(key, def);
  for (auto& c : choices)
    if (s == c) return s;
  std::string list;
  for (auto& c : choices) list += (list.empty() ? "" : ", ") + ("\"" + c + "\"");
  throw Error(key_path(key), "one of " + list, "\"" + s + "\"");
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
