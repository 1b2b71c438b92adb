// Tokenizer throughput: MB of UTF-8 text per second through um::tok::Tokenizer::encode_batch, with 1 and
// N threads, for GPT-2 and GPT-NeoX.
//   bench-tokenizer [--threads N] [--repeat R] [--field text] [--tokenizer PATH] [FILE_OR_GLOB...]
// Inputs are corpus files as ultramem-tokenize reads them (.jsonl/.json/.txt, optionally .gz/.zst);
// without any, the text of the bundled sample data_tools/sample/shakespeare-train.bin (decoded with
// GPT-2) is used. "cold" is the first pass (empty word caches, new threads), "warm" the best of the
// repeats with the same threads. Reading and JSON parsing are not timed.
#if defined(ULTRAMEM_TOKENIZER)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data_tools/corpus/documents.h"
#include "data_tools/corpus/line_reader.h"
#include "data_tools/tokenizer/thread_pool.h"
#include "data_tools/tokenizer/tokenizer.h"
#include "ultramem/data/shard.h"

using namespace um::tok;

namespace {

const std::string kSource = ULTRAMEM_SOURCE_DIR;

std::vector<std::string> load_documents(const std::vector<std::string>& patterns, const std::string& field) {
  std::vector<std::string> docs;
  size_t malformed = 0;
  for (const std::string& pattern : patterns) {
    for (const std::string& path : um::data::expand_patterns(pattern, "bench input")) {
      LineReader reader(path);
      if (input_format(path) == InputFormat::kText) {
        docs.emplace_back();
        reader.read_rest(docs.back());
        continue;
      }
      std::string line, text, why;
      while (reader.next_line(line)) {
        if (is_blank(line)) continue;
        if (extract_text_field(line, field, &text, &why))
          docs.push_back(std::move(text));
        else
          ++malformed;
      }
    }
  }
  if (malformed) std::printf("skipped %zu malformed lines\n", malformed);
  return docs;
}

// The bundled sample's documents: its GPT-2 tokens decoded back to text, split at each eos.
std::vector<std::string> sample_documents(const Tokenizer& gpt2) {
  std::string path = kSource + "/data_tools/sample/shakespeare-train.bin";
  um::data::Shard shard(path, true);
  std::vector<std::string> docs(1);
  std::vector<uint32_t> ids;
  for (uint64_t i = 0; i < shard.size(); ++i) {
    uint32_t t = shard.token(i);
    if (t != shard.header().eos_id) {
      ids.push_back(t);
      continue;
    }
    docs.back() = gpt2.decode(ids);
    ids.clear();
    docs.emplace_back();
  }
  docs.pop_back();
  return docs;
}

struct Row {
  std::string tokenizer;
  int threads;
  double cold_mbs, warm_mbs, mtokens_per_s, bytes_per_token;
};

Row measure(const std::string& name, const Tokenizer& tok, const std::vector<std::string_view>& docs, double mb,
            int threads, int repeat) {
  using clock = std::chrono::steady_clock;
  ThreadPool pool(threads);
  double best = 1e30, cold = 0;
  size_t tokens = 0;
  for (int r = 0; r < repeat; ++r) {
    auto t0 = clock::now();
    auto ids = threads == 1 ? tok.encode_batch(docs, 1) : tok.encode_batch(docs, pool);
    double s = std::chrono::duration<double>(clock::now() - t0).count();
    if (r == 0) cold = s;
    best = std::min(best, s);
    tokens = 0;
    for (const auto& v : ids) tokens += v.size();
  }
  return Row{name, threads, mb / cold, mb / best, double(tokens) / best / 1e6, mb * 1e6 / double(tokens)};
}

}  // namespace

int main(int argc, char** argv) {
  int max_threads = ThreadPool::hardware_threads(), repeat = 3;
  std::string field = "text";
  std::vector<std::string> tokenizer_paths, patterns;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (a == "--threads")
      max_threads = std::max(1, std::atoi(value().c_str()));
    else if (a == "--repeat")
      repeat = std::max(1, std::atoi(value().c_str()));
    else if (a == "--field")
      field = value();
    else if (a == "--tokenizer")
      tokenizer_paths.push_back(value());
    else
      patterns.push_back(a);
  }
  if (tokenizer_paths.empty())
    tokenizer_paths = {kSource + "/data_tools/tokenizers/gpt2", kSource + "/data_tools/tokenizers/gpt-neox-olmo-dolma-v1_5.json"};

  std::vector<std::string> docs;
  if (patterns.empty()) {
    docs = sample_documents(Tokenizer::load(kSource + "/data_tools/tokenizers/gpt2"));
    std::printf("input: data_tools/sample/shakespeare-train.bin decoded to text\n");
  } else {
    docs = load_documents(patterns, field);
  }
  std::vector<std::string_view> views(docs.begin(), docs.end());
  size_t bytes = 0;
  for (const std::string& d : docs) bytes += d.size();
  double mb = double(bytes) / 1e6;
  std::printf("%zu documents, %.2f MB of text; %d hardware threads\n", docs.size(), mb, ThreadPool::hardware_threads());

  std::vector<Row> rows;
  for (const std::string& path : tokenizer_paths) {
    Tokenizer tok = Tokenizer::load(path);
    std::string name = tok.kind() == "gpt2" ? "gpt2" : path.substr(path.find_last_of('/') + 1);
    for (int threads : {1, max_threads}) {
      rows.push_back(measure(name, tok, views, mb, threads, repeat));
      if (max_threads == 1) break;
    }
  }
  std::printf("\n%-36s %7s %11s %11s %9s %11s\n", "tokenizer", "threads", "MB/s cold", "MB/s warm", "Mtok/s", "bytes/token");
  for (const Row& r : rows)
    std::printf("%-36s %7d %11.2f %11.2f %9.2f %11.2f\n", r.tokenizer.c_str(), r.threads, r.cold_mbs, r.warm_mbs,
                r.mtokens_per_s, r.bytes_per_token);
  return 0;
}

#else  // configured with ULTRAMEM_DATA_TOOLS=OFF: there is no tokenizer to measure
#include <cstdio>

int main() {
  std::fprintf(stderr, "bench-tokenizer: built without the tokenizer (ULTRAMEM_DATA_TOOLS=OFF)\n");
  return 1;
}
#endif  // ULTRAMEM_TOKENIZER
