// The ultramem-tokenize pipeline (um::tok::tokenize_corpus): compressed JSON Lines and text in, shards
// that read back as encode(document) + eos, manifest counts, malformed lines, the train/val split.
// Compiled only with the tokenizer library (ULTRAMEM_DATA_TOOLS=ON, the default).
#if defined(ULTRAMEM_TOKENIZER)
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data_tools/corpus/documents.h"
#include "data_tools/corpus/sha256.h"
#include "data_tools/corpus/tokenize_corpus.h"
#include "testing.h"
#include "ultramem/core/check.h"
#include "ultramem/data/shard.h"

using namespace um;
using namespace um::tok;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kSource = ULTRAMEM_SOURCE_DIR;

const Tokenizer& gpt2() {
  static Tokenizer t = Tokenizer::load(kSource + "/data_tools/tokenizers/gpt2");
  return t;
}

// A fresh empty directory for this file's tests (testing::fresh_dir, tagged by file).
static std::string scratch_dir(const std::string& name) { return testing::fresh_dir("tokenize-" + name); }

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f);
  REQUIRE(gzwrite(f, bytes.data(), unsigned(bytes.size())) == int(bytes.size()));
  gzclose(f);
}

void write_zstd(const std::string& path, const std::string& bytes) {
  std::string out(ZSTD_compressBound(bytes.size()), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), 3);
  REQUIRE(!ZSTD_isError(n));
  out.resize(n);
  write_file(path, out);
}

std::string jsonl(const std::vector<json>& records) {
  std::string s;
  for (const json& r : records) s += r.dump() + "\n";
  return s;
}

// Every token of a split's shards, in shard order.
std::vector<uint32_t> read_split(const std::vector<ShardInfo>& shards, uint64_t* documents) {
  std::vector<uint32_t> all;
  for (const ShardInfo& info : shards) {
    data::Shard s(info.path, true);
    CHECK(s.size() == info.tokens);
    CHECK(s.header().document_count == info.documents);
    CHECK(s.header().token_bytes == 2u);  // GPT-2's 50257 ids fit in u16
    CHECK(s.header().eos_id == 50256u);
    CHECK(s.token(s.size() - 1) == 50256u);  // shards hold whole documents
    *documents += info.documents;
    for (uint64_t i = 0; i < s.size(); ++i) all.push_back(s.token(i));
  }
  return all;
}

struct Doc {
  std::string file, text;
  uint64_t line;
};

}  // namespace

TEST_CASE("tokenize tool: .jsonl.gz, .jsonl.zst, .json.gz, .txt round trip", "[tokenizer][tool]") {
  std::string in = scratch_dir("in"), out = scratch_dir("out");
  std::vector<Doc> docs;  // in input order
  std::vector<json> red, c4;
  for (int i = 0; i < 40; ++i) {
    std::string text = "Document " + std::to_string(i) + ": it's caf\u00e9 \u4e2d\u6587 \U0001F600 " + std::string(i % 7, ' ') +
                       "<|endoftext|> x = " + std::to_string(i * i) + "\n\tend";
    red.push_back({{"text", text}, {"meta", {{"source", "test"}, {"n", i}}}});
    docs.push_back({in + "/red.jsonl.gz", text, uint64_t(i + 1)});
  }
  std::string red_lines = jsonl(red);
  write_gzip(in + "/red.jsonl.gz", red_lines);
  for (int i = 0; i < 25; ++i) {
    std::string text = "C4 page " + std::to_string(i) + std::string(size_t(i) * 13, 'w');
    c4.push_back({{"text", text}, {"timestamp", "2019-04-25T12:57:54Z"}, {"url", "https://example.com/" + std::to_string(i)}});
  }
  // A blank line in the middle is no document, but line numbers still count it.
  std::string c4_lines = jsonl(std::vector<json>(c4.begin(), c4.begin() + 10)) + "\n" +
                         jsonl(std::vector<json>(c4.begin() + 10, c4.end()));
  write_gzip(in + "/c4-validation.00000-of-00008.json.gz", c4_lines);
  for (int i = 0; i < 25; ++i)
    docs.push_back({in + "/c4-validation.00000-of-00008.json.gz", c4[size_t(i)]["text"].get<std::string>(),
                    uint64_t(i < 10 ? i + 1 : i + 2)});
  write_zstd(in + "/zst.jsonl.zst", red_lines);
  for (int i = 0; i < 40; ++i) docs.push_back({in + "/zst.jsonl.zst", red[size_t(i)]["text"].get<std::string>(), uint64_t(i + 1)});
  std::string book = "A whole text file is one document.\n\nWith paragraphs \u00e9\u00e8.\n";
  write_file(in + "/book.txt", book);
  docs.push_back({in + "/book.txt", book, 1});

  TokenizeOptions opt;
  opt.inputs = {in + "/red.jsonl.gz", in + "/c4-validation.00000-of-00008.json.gz", in + "/zst.jsonl.zst", in + "/book.txt"};
  opt.tokenizer_path = kSource + "/data_tools/tokenizers/gpt2";
  opt.out_dir = out;
  opt.prefix = "t";
  opt.shard_tokens = 300;  // several shards
  opt.val_fraction = 0.25;
  opt.threads = 3;
  TokenizeSummary s = tokenize_corpus(gpt2(), opt);

  std::vector<uint32_t> want_train, want_val;
  uint64_t want_train_docs = 0, want_val_docs = 0;
  for (const Doc& d : docs) {
    bool val = is_validation(d.file, d.line, 0.25);
    std::vector<uint32_t>& want = val ? want_val : want_train;
    std::vector<uint32_t> ids = gpt2().encode_ordinary(d.text);  // specials are text by default
    want.insert(want.end(), ids.begin(), ids.end());
    want.push_back(50256);
    ++(val ? want_val_docs : want_train_docs);
  }
  REQUIRE(want_val_docs > 0);
  REQUIRE(want_train_docs > 0);
  uint64_t train_docs = 0, val_docs = 0;
  CHECK(read_split(s.train.shards, &train_docs) == want_train);
  CHECK(read_split(s.val.shards, &val_docs) == want_val);
  CHECK(s.train.shards.size() > 2);
  CHECK(s.train.shards[0].path == out + "/t-train-00000.bin");
  CHECK(train_docs == want_train_docs);
  CHECK(val_docs == want_val_docs);
  CHECK(s.train.tokens == want_train.size());
  CHECK(s.val.tokens == want_val.size());

  json m = json::parse(std::ifstream(manifest_path(out, "t")));
  CHECK(m["documents"] == docs.size());
  CHECK(m["tokens"] == want_train.size() + want_val.size());
  CHECK(m["train"]["documents"] == want_train_docs);
  CHECK(m["val"]["shards"].size() == s.val.shards.size());
  CHECK(m["tokenizer"]["vocab_size"] == 50257);
  CHECK(m["tokenizer"]["files"][0]["sha256"] == sha256_file_hex(kSource + "/data_tools/tokenizers/gpt2/encoder.json"));
  REQUIRE(m["sources"].size() == 4);
  CHECK(m["sources"][0]["documents"] == 40);
  CHECK(m["sources"][1]["documents"] == 25);
  CHECK(m["sources"][3]["text_bytes"] == book.size());
  uint64_t text_bytes = 0;
  for (const Doc& d : docs) text_bytes += d.text.size();
  CHECK(m["text_bytes"] == text_bytes);
  for (const auto& e : fs::directory_iterator(out)) CHECK(e.path().extension() != ".tmp");

  // The same output for one thread; an existing output is refused unless --overwrite.
  CHECK_THROWS_WITH(tokenize_corpus(gpt2(), opt), Catch::Contains("--overwrite"));
  std::string first = [&] {
    std::ifstream f(s.train.shards[1].path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }();
  opt.threads = 1;
  opt.overwrite = true;
  TokenizeSummary again = tokenize_corpus(gpt2(), opt);
  std::ifstream f(again.train.shards[1].path, std::ios::binary);
  CHECK(std::string(std::istreambuf_iterator<char>(f), {}) == first);

  // allow_special: "<|endoftext|>" inside a document becomes the special id.
  opt.allow_special = true;
  opt.val_fraction = 0;
  opt.inputs = {in + "/red.jsonl.gz"};
  TokenizeSummary special = tokenize_corpus(gpt2(), opt);
  uint64_t n = 0;
  std::vector<uint32_t> ids = read_split(special.train.shards, &n);
  CHECK(std::count(ids.begin(), ids.end(), 50256u) == 80);  // 40 inside the texts + 40 document ends
}

TEST_CASE("tokenize tool: malformed lines are reported with file:line, skipped or fatal", "[tokenizer][tool]") {
  std::string in = scratch_dir("bad-in"), out = scratch_dir("bad-out");
  std::string lines = "{\"text\": \"one\"}\n"
                      "{\"text\": \"two\"}\n"
                      "{\"text\": \"three\"\n"                    // 3: bad JSON
                      "{\"text\": \"four\"}\n"
                      "{\"body\": \"five\"}\n"                    // 5: no field
                      "{\"text\": \"six\"}\n"
                      "{\"text\": 7}\n"                           // 7: not a string
                      "{\"text\": \"eight\"}\n"
                      "{\"text\": \"bad \xff byte\"}\n"           // 9: invalid UTF-8
                      "{\"text\": \"lone \\ud800 surrogate\"}\n"  // 10: unpaired surrogate escape
                      "[\"text\"]\n"                              // 11: not an object
                      "{\"text\": \"twelve\"}";                   // no final newline
  write_gzip(in + "/bad.jsonl.gz", lines);
  TokenizeOptions opt;
  opt.inputs = {in + "/bad.jsonl.gz"};
  opt.tokenizer_path = "gpt2";
  opt.out_dir = out;
  opt.prefix = "b";
  opt.shard_tokens = 1;  // a shard per document: the failing run below has written one before it fails
  opt.skip_malformed = true;
  std::vector<std::string> warnings;
  TokenizeCallbacks cb;
  cb.warning = [&](const std::string& w) { warnings.push_back(w); };
  TokenizeSummary s = tokenize_corpus(gpt2(), opt, cb);
  CHECK(s.malformed_lines == 6);
  CHECK(s.train.documents == 6);
  REQUIRE(warnings.size() == 6);
  const char* expected[] = {":3: skipped: bad JSON", ":5: skipped: no field \"text\"", ":7: skipped: field \"text\" is a number",
                            ":9: skipped: bad JSON", ":10: skipped: bad JSON", ":11: skipped: a JSON value that is not an object"};
  for (size_t i = 0; i < 6; ++i) {
    INFO(warnings[i]);
    CHECK(warnings[i].find(in + "/bad.jsonl.gz" + expected[i]) == 0);
  }
  uint64_t docs = 0;
  std::vector<uint32_t> ids;
  for (const ShardInfo& info : s.train.shards) {
    data::Shard shard(info.path, true);
    for (uint64_t i = 0; i < shard.size(); ++i) ids.push_back(shard.token(i));
    docs += info.documents;
  }
  std::vector<uint32_t> want;
  for (const char* t : {"one", "two", "four", "six", "eight", "twelve"}) {
    std::vector<uint32_t> e = gpt2().encode(t);
    want.insert(want.end(), e.begin(), e.end());
    want.push_back(50256);
  }
  CHECK(ids == want);
  CHECK(docs == 6);

  opt.skip_malformed = false;
  opt.overwrite = true;
  try {
    tokenize_corpus(gpt2(), opt, cb);
    FAIL("a malformed line did not end the run");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(in + "/bad.jsonl.gz:3: expected a JSON object") == 0);
  }
  CHECK(fs::is_empty(out));  // the failed run removed its shards and wrote no manifest
}

TEST_CASE("tokenize tool: the val split is a deterministic hash of (file name, line)", "[tokenizer][tool]") {
  size_t val = 0;
  for (uint64_t line = 1; line <= 20000; ++line) {
    bool v = is_validation("/data/a/c4-train.00001.json.gz", line, 0.1);
    CHECK(v == is_validation("elsewhere/c4-train.00001.json.gz", line, 0.1));  // directories do not matter
    CHECK((v || !is_validation("/data/a/c4-train.00001.json.gz", line, 0.05)));  // nested as the fraction grows
    val += v;
    CHECK_FALSE(is_validation("x.jsonl", line, 0.0));
    CHECK(is_validation("x.jsonl", line, 1.0));
  }
  CHECK(val > 1800);
  CHECK(val < 2200);
  size_t same = 0;
  for (uint64_t line = 1; line <= 1000; ++line)
    same += is_validation("a.jsonl", line, 0.5) == is_validation("b.jsonl", line, 0.5);
  CHECK(same < 600);  // another file name gives another split
}

TEST_CASE("tokenize tool: truncated gzip and unknown extensions are errors naming the file", "[tokenizer][tool]") {
  std::string in = scratch_dir("trunc-in"), out = scratch_dir("trunc-out");
  std::string lines;
  for (int i = 0; i < 2000; ++i) lines += "{\"text\": \"line " + std::to_string(i * 7919) + "\"}\n";
  write_gzip(in + "/full.jsonl.gz", lines);
  std::ifstream f(in + "/full.jsonl.gz", std::ios::binary);
  std::string gz((std::istreambuf_iterator<char>(f)), {});
  write_file(in + "/cut.jsonl.gz", gz.substr(0, gz.size() / 2));
  write_zstd(in + "/full.jsonl.zst", lines);
  std::ifstream fz(in + "/full.jsonl.zst", std::ios::binary);
  std::string zst((std::istreambuf_iterator<char>(fz)), {});
  write_file(in + "/cut.jsonl.zst", zst.substr(0, zst.size() / 2));
  write_file(in + "/notes.md", "hello");
  TokenizeOptions opt;
  opt.out_dir = out;
  for (const char* name : {"cut.jsonl.gz", "cut.jsonl.zst", "notes.md"}) {
    opt.inputs = {in + "/" + name};
    try {
      tokenize_corpus(gpt2(), opt);
      FAIL("no error for " << name);
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(in + "/" + name) != std::string::npos);
    }
  }
  opt.inputs = {in + "/full.jsonl.gz", in + "/full.jsonl.zst"};
  TokenizeSummary s = tokenize_corpus(gpt2(), opt);
  CHECK(s.train.documents == 4000);
}

#endif  // ULTRAMEM_TOKENIZER
