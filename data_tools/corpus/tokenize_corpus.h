// The corpus -> token shards pipeline behind ultramem-tokenize, as a library call so tests drive it
// directly. The main thread reads and decompresses the files in order and cuts them into batches of
// lines; worker threads parse the JSON and tokenize; the main thread takes the results back in input
// order and appends them to the train or val shards, so the output is the same for any thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "data_tools/corpus/shard_sink.h"
#include "data_tools/tokenizer/tokenizer.h"

namespace um::tok {

struct TokenizeOptions {
  std::vector<std::string> inputs;  // corpus files (see documents.h for the formats), in this order
  std::string tokenizer_path;       // recorded in the manifest with the SHA-256 of the tokenizer's files
  std::string field = "text";       // the JSON field holding a document's text
  std::string out_dir = ".";
  std::string prefix = "corpus";
  uint64_t shard_tokens = 100'000'000;
  double val_fraction = 0.0;  // documents to the val split, chosen by is_validation()
  bool skip_malformed = false;  // a malformed line is skipped with a warning (true) or ends the run (false)
  // "<|endoftext|>" written inside a document: plain text (false, like tiktoken's encode_ordinary and
  // llm.c / nanoGPT data scripts) or the special token (true, like Hugging Face's encode).
  bool allow_special = false;
  bool overwrite = false;  // replace an earlier PREFIX-* output in out_dir instead of refusing
  int threads = 1;         // tokenizing threads
  std::optional<uint32_t> eos_id;  // default: the tokenizer's "<|endoftext|>"
};

struct TokenizeProgress {
  size_t files_done = 0, files_total = 0;
  uint64_t documents = 0, tokens = 0, text_bytes = 0;
  double seconds = 0;
};

struct SourceStats {
  std::string path;
  uint64_t documents = 0, train_documents = 0, val_documents = 0;
  uint64_t tokens = 0, text_bytes = 0, malformed_lines = 0;
};

struct SplitStats {
  uint64_t documents = 0, tokens = 0, text_bytes = 0;
  std::vector<ShardInfo> shards;
};

struct TokenizeSummary {
  SplitStats train, val;
  std::vector<SourceStats> sources;
  uint64_t malformed_lines = 0;
  uint32_t vocab_size = 0, eos_id = 0;
  std::string manifest_path;
  double seconds = 0;
};

struct TokenizeCallbacks {
  std::function<void(const TokenizeProgress&)> progress;  // on the calling thread, after every batch
  std::function<void(const std::string&)> warning;        // "FILE:LINE: skipped: WHY" for a skipped line
};

// Tokenizes options.inputs into PREFIX-train-NNNNN.bin / PREFIX-val-NNNNN.bin (every document followed by
// the eos id; u16 tokens when the vocabulary fits in 65536 ids, else u32) and then PREFIX-manifest.json in
// options.out_dir. Every file appears under its final name only when complete, and the manifest last: a
// run is complete exactly when its manifest exists. On any error (a malformed line without
// skip_malformed names FILE:LINE) the shards this run wrote are removed before the Error propagates.
TokenizeSummary tokenize_corpus(const Tokenizer& tokenizer, const TokenizeOptions& options,
                                const TokenizeCallbacks& callbacks = {});

// PREFIX-manifest.json inside out_dir.
std::string manifest_path(const std::string& out_dir, const std::string& prefix);

// Earlier outputs of `prefix` in out_dir (shards, their temporaries, the manifest): an Error listing
// one of them, or with `remove` they are deleted.
void clear_previous_output(const std::string& out_dir, const std::string& prefix, bool remove);

// Writes the manifest atomically.
void write_manifest(const Tokenizer& tokenizer, const TokenizeOptions& options, const TokenizeSummary& summary);

}  // namespace um::tok
