#include "data_tools/corpus/tokenize_corpus.h"

#include <chrono>
#include <deque>
#include <filesystem>

#include "data_tools/corpus/documents.h"
#include "data_tools/corpus/line_reader.h"
#include "data_tools/tokenizer/thread_pool.h"
#include "ultramem/core/check.h"

namespace um::tok {

namespace {

constexpr size_t kBatchBytes = size_t(1) << 20;  // lines handed to a worker at a time

// Lines of one source file, packed into one buffer.
struct Batch {
  uint32_t source = 0;
  std::string bytes;
  struct Line {
    uint64_t number;
    size_t offset, length;
  };
  std::vector<Line> lines;
};

struct DocumentResult {
  uint64_t line = 0;
  bool ok = false, validation = false;
  std::string why;            // when !ok
  size_t begin = 0, end = 0;  // its ids, eos included, in BatchResult::ids
  uint64_t text_bytes = 0;
};

struct BatchResult {
  uint32_t source = 0;
  std::vector<DocumentResult> documents;
  std::vector<uint32_t> ids;
};

class Pipeline {
 public:
  Pipeline(const Tokenizer& tokenizer, const TokenizeOptions& options, const TokenizeCallbacks& callbacks,
           uint32_t eos_id)
      : tok_(tokenizer), opt_(options), cb_(callbacks), eos_(eos_id),
        train_(options.out_dir, options.prefix, "train", options.shard_tokens, tokenizer.vocab_size(), eos_id),
        val_(options.out_dir, options.prefix, "val", options.shard_tokens, tokenizer.vocab_size(), eos_id) {
    for (const std::string& path : options.inputs) {
      formats_.push_back(input_format(path));  // an unknown extension fails before any work
      summary_.sources.push_back(SourceStats{path});
    }
    summary_.vocab_size = tokenizer.vocab_size();
    summary_.eos_id = eos_id;
  }

  TokenizeSummary run();
  // The shards written so far (removed when the run fails).
  std::vector<std::string> written_shards() const;

 private:
  BatchResult process(const Batch& batch) const;
  void submit(Batch&& batch);
  void consume(BatchResult result);
  void report_progress();

  const Tokenizer& tok_;
  const TokenizeOptions& opt_;
  const TokenizeCallbacks& cb_;
  uint32_t eos_;
  std::vector<InputFormat> formats_;
  ShardSink train_, val_;
  TokenizeSummary summary_;
  TokenizeProgress progress_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::unique_ptr<ThreadPool> pool_;
  std::deque<std::future<BatchResult>> in_flight_;
};

BatchResult Pipeline::process(const Batch& batch) const {
  BatchResult r;
  r.source = batch.source;
  const std::string& path = opt_.inputs[batch.source];
  bool json_lines = formats_[batch.source] == InputFormat::kJsonLines;
  std::string text;
  for (const Batch::Line& line : batch.lines) {
    DocumentResult d;
    d.line = line.number;
    std::string_view raw(batch.bytes.data() + line.offset, line.length);
    std::string_view doc = raw;
    if (json_lines) {
      d.ok = extract_text_field(raw, opt_.field, &text, &d.why);
      doc = text;
    } else {
      d.ok = true;
    }
    if (d.ok) {
      d.validation = is_validation(path, line.number, opt_.val_fraction);
      d.text_bytes = doc.size();
      d.begin = r.ids.size();
      tok_.encode_append(doc, opt_.allow_special, r.ids);
      r.ids.push_back(eos_);
      d.end = r.ids.size();
    }
    r.documents.push_back(std::move(d));
  }
  return r;
}

void Pipeline::consume(BatchResult r) {
  SourceStats& src = summary_.sources[r.source];
  for (const DocumentResult& d : r.documents) {
    std::string where = detail::concat(src.path, ":", d.line);
    if (!d.ok) {
      ++src.malformed_lines;
      ++summary_.malformed_lines;
      if (!opt_.skip_malformed)
        throw Error(where, "a JSON object with a string field \"" + opt_.field + "\" (--on-error skip skips such lines)",
                    d.why);
      if (cb_.warning) cb_.warning(where + ": skipped: " + d.why);
      continue;
    }
    (d.validation ? val_ : train_).add_document(r.ids.data() + d.begin, d.end - d.begin);
    SplitStats& split = d.validation ? summary_.val : summary_.train;
    uint64_t tokens = d.end - d.begin;
    ++split.documents;
    split.tokens += tokens;
    split.text_bytes += d.text_bytes;
    ++src.documents;
    ++(d.validation ? src.val_documents : src.train_documents);
    src.tokens += tokens;
    src.text_bytes += d.text_bytes;
    ++progress_.documents;
    progress_.tokens += tokens;
    progress_.text_bytes += d.text_bytes;
  }
  report_progress();
}

void Pipeline::report_progress() {
  progress_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (cb_.progress) cb_.progress(progress_);
}

void Pipeline::submit(Batch&& batch) {
  if (batch.lines.empty()) return;
  // Bounded read-ahead: at most two batches per worker wait, so memory stays small for any corpus.
  while (in_flight_.size() >= size_t(2 * pool_->size())) {
    BatchResult r = in_flight_.front().get();
    in_flight_.pop_front();
    consume(std::move(r));
  }
  auto shared = std::make_shared<Batch>(std::move(batch));
  in_flight_.push_back(pool_->submit([this, shared] { return process(*shared); }));
}

TokenizeSummary Pipeline::run() {
  pool_ = std::make_unique<ThreadPool>(opt_.threads);
  progress_.files_total = opt_.inputs.size();
  for (uint32_t s = 0; s < opt_.inputs.size(); ++s) {
    LineReader reader(opt_.inputs[s]);
    Batch batch;
    batch.source = s;
    if (formats_[s] == InputFormat::kText) {
      reader.read_rest(batch.bytes);
      batch.lines.push_back({1, 0, batch.bytes.size()});
      submit(std::move(batch));
    } else {
      std::string line;
      for (uint64_t number = 1; reader.next_line(line); ++number) {
        if (is_blank(line)) continue;
        batch.lines.push_back({number, batch.bytes.size(), line.size()});
        batch.bytes += line;
        if (batch.bytes.size() >= kBatchBytes) {
          submit(std::move(batch));
          batch = Batch();
          batch.source = s;
        }
      }
      submit(std::move(batch));
    }
    progress_.files_done = s + 1;
  }
  while (!in_flight_.empty()) {
    BatchResult r = in_flight_.front().get();
    in_flight_.pop_front();
    consume(std::move(r));
  }
  train_.finish();
  val_.finish();
  summary_.train.shards = train_.shards();
  summary_.val.shards = val_.shards();
  report_progress();
  summary_.seconds = progress_.seconds;
  return summary_;
}

std::vector<std::string> Pipeline::written_shards() const {
  std::vector<std::string> paths;
  for (const ShardSink* sink : {&train_, &val_})
    for (const ShardInfo& info : sink->shards()) paths.push_back(info.path);
  return paths;
}

}  // namespace

TokenizeSummary tokenize_corpus(const Tokenizer& tokenizer, const TokenizeOptions& options,
                                const TokenizeCallbacks& callbacks) {
  UM_CHECK(!options.inputs.empty(), "at least one input file", "none");
  UM_CHECK(options.shard_tokens > 0, "--shard-tokens > 0", options.shard_tokens);
  UM_CHECK(options.val_fraction >= 0 && options.val_fraction <= 1, "--val-fraction in [0, 1]", options.val_fraction);
  UM_CHECK(options.threads > 0, "--threads > 0", options.threads);
  std::optional<uint32_t> eos = options.eos_id ? options.eos_id : tokenizer.eos_id();
  if (!eos) throw Error("--eos", "an end-of-document id (the tokenizer has no \"<|endoftext|>\")", "none");
  if (*eos >= tokenizer.vocab_size())
    throw Error("--eos", detail::concat("an id below the vocabulary size ", tokenizer.vocab_size()), std::to_string(*eos));

  std::filesystem::create_directories(options.out_dir);
  clear_previous_output(options.out_dir, options.prefix, options.overwrite);
  Pipeline pipeline(tokenizer, options, callbacks, *eos);
  try {
    TokenizeSummary summary = pipeline.run();
    summary.manifest_path = manifest_path(options.out_dir, options.prefix);
    write_manifest(tokenizer, options, summary);
    return summary;
  } catch (...) {
    // The run failed: leave no shard that looks like finished output.
    for (const std::string& path : pipeline.written_shards()) std::filesystem::remove(path);
    throw;
  }
}

}  // namespace um::tok
