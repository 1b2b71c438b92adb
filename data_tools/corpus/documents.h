// What a corpus file holds and how documents come out of it: JSON Lines (RedPajama's .jsonl[.gz|.zst],
// C4's .json.gz, which is JSON Lines despite its name), one JSON object a line with the text under one
// field; or plain text (.txt[.gz|.zst]), where a whole file is one document.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace um::tok {

enum class InputFormat { kJsonLines, kText };

// By extension, after dropping a .gz or .zst suffix: .jsonl and .json are JSON Lines, .txt is text.
// Anything else is an Error naming the file.
InputFormat input_format(const std::string& path);

// Takes the string under `field` of the JSON object on `line`. Returns false, with the reason in *why,
// when the line is not a JSON object (bad JSON, invalid UTF-8 inside it, unpaired surrogate escapes), or
// the field is missing or not a string.
bool extract_text_field(std::string_view line, const std::string& field, std::string* text, std::string* why);

// True for lines that hold nothing but whitespace: blank lines between JSON objects are no documents.
bool is_blank(std::string_view line);

// The deterministic train/validation split: a document is validation when a hash of (source file name
// without its directories, line number) falls below `fraction`. The same file gives the same split from
// any directory, with any thread count, and on every run.
bool is_validation(const std::string& source_path, uint64_t line, double fraction);

}  // namespace um::tok
