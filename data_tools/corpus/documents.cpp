#include "data_tools/corpus/documents.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ultramem/core/check.h"

namespace um::tok {

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

InputFormat input_format(const std::string& path) {
  std::string name = path;
  for (const char* compressed : {".gz", ".zst"})
    if (ends_with(name, compressed)) name.resize(name.size() - std::strlen(compressed));
  if (ends_with(name, ".jsonl") || ends_with(name, ".json")) return InputFormat::kJsonLines;
  if (ends_with(name, ".txt")) return InputFormat::kText;
  throw Error(path, "a corpus file named *.jsonl, *.json or *.txt (optionally .gz or .zst)", "another extension");
}

namespace {

// A SAX handler that keeps only the top-level `field`, so the rest of a record (C4's url and timestamp,
// RedPajama's meta) is validated but never built into a DOM.
class FieldPicker : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit FieldPicker(const std::string& field) : field_(field) {}

  bool null() override { return value("null"); }
  bool boolean(bool) override { return value("a boolean"); }
  bool number_integer(number_integer_t) override { return value("a number"); }
  bool number_unsigned(number_unsigned_t) override { return value("a number"); }
  bool number_float(number_float_t, const string_t&) override { return value("a number"); }
  bool binary(binary_t&) override { return value("binary data"); }
  bool string(string_t& s) override {
    if (depth_ == 1 && at_field_) {
      text_ = std::move(s);
      found_ = true;
      kind_ = "a string";
    }
    at_field_ = false;
    return true;
  }
  bool start_object(std::size_t) override { return open(true, "an object"); }
  bool start_array(std::size_t) override { return open(false, "an array"); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    at_field_ = depth_ == 1 && k == field_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error_ = e.what();
    return false;
  }

  bool top_is_object = false;
  std::string text_, kind_, error_;
  bool found_ = false;

 private:
  bool value(const char* kind) {
    if (depth_ == 1 && at_field_) {
      kind_ = kind;
      found_ = false;
    }
    at_field_ = false;
    return true;
  }
  bool open(bool object, const char* kind) {
    if (depth_ == 0) top_is_object = object;
    if (depth_ == 1 && at_field_) {
      kind_ = kind;
      found_ = false;
    }
    at_field_ = false;
    ++depth_;
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }

  const std::string& field_;
  int depth_ = 0;
  bool at_field_ = false;
};

}  // namespace

bool extract_text_field(std::string_view line, const std::string& field, std::string* text, std::string* why) {
  FieldPicker picker(field);
  bool parsed = nlohmann::json::sax_parse(line.begin(), line.end(), &picker);
  if (!parsed) {
    *why = "bad JSON (" + picker.error_ + ")";
    return false;
  }
  if (!picker.top_is_object) {
    *why = "a JSON value that is not an object";
    return false;
  }
  if (!picker.found_) {
    *why = picker.kind_.empty() ? "no field \"" + field + "\"" : "field \"" + field + "\" is " + picker.kind_ + ", not a string";
    return false;
  }
  *text = std::move(picker.text_);
  return true;
}

bool is_blank(std::string_view line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  return true;
}

bool is_validation(const std::string& source_path, uint64_t line, double fraction) {
  if (fraction <= 0) return false;
  if (fraction >= 1) return true;
  std::string name = std::filesystem::path(source_path).filename().string();
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64 of the file name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  uint64_t z = h + line * 0x9E3779B97F4A7C15ull;  // then splitmix64 of (name hash, line)
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53 < fraction;
}

}  // namespace um::tok
