// um::tok::Tokenizer against reference ids (tiktoken for GPT-2, Hugging Face tokenizers for GPT-NeoX:
// tests/data/tokenizer/golden-*.json from make_golden.py), round trips over valid and invalid UTF-8,
// special tokens, the pre-tokenizer, NFC, and tokenizer.json validation.
// Compiled only with the tokenizer library (ULTRAMEM_DATA_TOOLS=ON, the default).
#if defined(ULTRAMEM_TOKENIZER)
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "data_tools/tokenizer/byte_level.h"
#include "data_tools/tokenizer/pretokenize.h"
#include "data_tools/tokenizer/tokenizer.h"
#include "data_tools/tokenizer/unicode.h"
#include "testing.h"
#include "ultramem/core/check.h"

using namespace um;
using namespace um::tok;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kSource = ULTRAMEM_SOURCE_DIR;
const std::string kFixtures = kSource + "/tests/data/tokenizer";

const Tokenizer& gpt2() {
  static Tokenizer t = Tokenizer::load(kSource + "/data_tools/tokenizers/gpt2");
  return t;
}
const Tokenizer& neox() {
  static Tokenizer t = Tokenizer::load(kSource + "/data_tools/tokenizers/gpt-neox-olmo-dolma-v1_5.json");
  return t;
}

std::string base64_decode(const std::string& in) {
  static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    acc = acc << 6 | uint32_t(alphabet.find(c));
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xFF);
    }
  }
  return out;
}

// A fixture entry: a JSON string, or {"base64": ...} for raw bytes.
std::string entry_bytes(const json& e) { return e.is_string() ? e.get<std::string>() : base64_decode(e.at("base64")); }

json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return json::parse(in);
}

std::vector<std::string> fixture_inputs() {
  std::vector<std::string> texts;
  for (const json& e : read_json(kFixtures + "/inputs.json")) texts.push_back(entry_bytes(e));
  return texts;
}

void check_golden(const Tokenizer& tok, const json& golden) {
  INFO("reference: " << golden.at("reference").get<std::string>());
  size_t i = 0;
  for (const json& c : golden.at("cases")) {
    std::string text = entry_bytes(c.at("input"));
    INFO("case " << i++ << ": " << c.at("input").dump().substr(0, 120));
    CHECK(tok.encode(text) == c.at("ids").get<std::vector<uint32_t>>());
    if (c.contains("ids_ordinary")) CHECK(tok.encode_ordinary(text) == c.at("ids_ordinary").get<std::vector<uint32_t>>());
  }
}

std::vector<std::string> pretokens(std::string_view text) {
  std::vector<std::string> out;
  for_each_pretoken(text, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

// Random text mixing ASCII words, whitespace runs, multi-byte characters and (optionally) stray bytes.
std::string random_text(std::mt19937& rng, size_t pieces, bool stray_bytes) {
  static const std::vector<std::string> parts = {
      "the", " quick", "  ", "\t", "\n\n", " ", "'s", "'ll", "123", "4.5", "!!", "?", "é", "e\u0301", "中文",
      "\U0001F600", "\u00a0", "\u3000", "<|endoftext|>", "ا", "हि", "\u0085", "\ufeff", "    def", "x"};
  std::string s;
  for (size_t i = 0; i < pieces; ++i) {
    if (stray_bytes && rng() % 7 == 0) s += char(0x80 + rng() % 128);
    s += parts[rng() % parts.size()];
  }
  return s;
}

}  // namespace

TEST_CASE("tokenizer: GPT-2 ids equal tiktoken's on the golden set", "[tokenizer]") {
  json golden = read_json(kFixtures + "/golden-gpt2.json");
  REQUIRE(golden.at("cases").size() >= 70);
  CHECK(gpt2().vocab_size() == 50257);
  CHECK(gpt2().eos_id() == 50256u);
  check_golden(gpt2(), golden);
}

TEST_CASE("tokenizer: GPT-NeoX ids equal Hugging Face tokenizers' on the golden set", "[tokenizer]") {
  std::string path = kFixtures + "/golden-neox.json";
  if (!fs::exists(path)) {
    WARN("skipped: " << path << " is absent (make it with tests/data/tokenizer/make_golden.py)");
    return;
  }
  json golden = read_json(path);
  REQUIRE(golden.at("cases").size() >= 70);
  CHECK(neox().vocab_size() == 50280);
  CHECK(neox().eos_id() == 50279u);
  check_golden(neox(), golden);
}

TEST_CASE("tokenizer: decode(encode(x)) == x for valid and invalid UTF-8", "[tokenizer]") {
  std::vector<std::string> texts = fixture_inputs();
  std::mt19937 rng(1234);
  for (int i = 0; i < 200; ++i) texts.push_back(random_text(rng, 1 + rng() % 60, i % 2 == 1));
  for (int i = 0; i < 50; ++i) {  // arbitrary bytes
    std::string bytes(1 + rng() % 100, '\0');
    for (char& c : bytes) c = char(rng());
    texts.push_back(bytes);
  }
  for (const std::string& x : texts) {
    INFO("input of " << x.size() << " bytes: " << json(x.substr(0, 60)).dump(-1, ' ', false, json::error_handler_t::replace));
    CHECK(gpt2().decode(gpt2().encode(x)) == x);
    CHECK(gpt2().decode(gpt2().encode_ordinary(x)) == x);
    // NeoX normalizes to NFC and has no tokens for C0, C1, F5-FF (never in UTF-8; they become U+FFFD).
    std::string expected;
    for (size_t pos = 0; pos < x.size();) {
      size_t valid = pos + utf8_valid_prefix(std::string_view(x).substr(pos));
      nfc_append(std::string_view(x).substr(pos, valid - pos), expected);
      if (valid == x.size()) break;
      uint8_t b = uint8_t(x[valid]);
      expected += (b == 0xC0 || b == 0xC1 || b >= 0xF5) ? std::string("\xEF\xBF\xBD") : std::string(1, char(b));
      pos = valid + 1;
    }
    CHECK(neox().decode(neox().encode(x)) == expected);
  }
}

TEST_CASE("tokenizer: special tokens", "[tokenizer]") {
  CHECK(gpt2().encode("<|endoftext|>") == std::vector<uint32_t>{50256});
  CHECK(gpt2().encode("a<|endoftext|>b") == std::vector<uint32_t>{64, 50256, 65});
  std::vector<uint32_t> ordinary = gpt2().encode_ordinary("<|endoftext|>");
  CHECK(ordinary.size() > 1);
  CHECK(std::count(ordinary.begin(), ordinary.end(), 50256u) == 0);
  CHECK(gpt2().decode(ordinary) == "<|endoftext|>");

  CHECK(neox().encode("<|endoftext|>") == std::vector<uint32_t>{50279});
  CHECK(neox().encode("<|padding|>") == std::vector<uint32_t>{1});
  std::vector<uint32_t> padded = neox().encode_ordinary("x<|padding|>");
  CHECK(std::count(padded.begin(), padded.end(), 1u) == 0);
  // NeoX's runs of 2-24 spaces are added tokens (not special): matched in both modes, longest first.
  std::vector<uint32_t> spaces = neox().encode_ordinary("a" + std::string(30, ' ') + "b");
  CHECK(spaces == neox().encode("a" + std::string(30, ' ') + "b"));
  CHECK(std::count(spaces.begin(), spaces.end(), *neox().token_to_id(std::string(24, ' '))) == 1);
  CHECK(std::count(spaces.begin(), spaces.end(), *neox().token_to_id(std::string(6, ' '))) == 1);
  CHECK(neox().decode(spaces) == "a" + std::string(30, ' ') + "b");
  CHECK(neox().token_bytes(50279) == "<|endoftext|>");
  CHECK(gpt2().token_bytes(*gpt2().token_to_id("\xC4\xA0the")) == " the");  // "Ġthe"
  CHECK_THROWS_AS(gpt2().decode({50257}), Error);
}

TEST_CASE("tokenizer: GPT-2 pre-tokenization regex", "[tokenizer]") {
  using V = std::vector<std::string>;
  CHECK(pretokens("Hello world") == V{"Hello", " world"});
  CHECK(pretokens("a  b") == V{"a", " ", " b"});
  CHECK(pretokens("it's I'll 'x") == V{"it", "'s", " I", "'ll", " '", "x"});
  CHECK(pretokens("IT'S") == V{"IT", "'", "S"});  // contractions are case-sensitive
  CHECK(pretokens("\n\nfoo") == V{"\n", "\n", "foo"});
  CHECK(pretokens("end   ") == V{"end", "   "});
  CHECK(pretokens("3.14 x\xC2\xB2") == V{"3", ".", "14", " x", "\xC2\xB2"});  // ² is \p{N}
  CHECK(pretokens(" ?!  \t\tq") == V{" ?!", "  \t", "\t", "q"});
  CHECK(pretokens("a\xC2\xA0" "b") == V{"a", "\xC2\xA0", "b"});  // no-break space is \s, not ' '
  CHECK(pretokens("x\xC2\x85y") == V{"x", "\xC2\x85", "y"});     // NEL is White_Space
  CHECK(pretokens("x\xEF\xBB\xBFy") == V{"x", "\xEF\xBB\xBF", "y"});  // BOM is not
  CHECK(pretokens("") == V{});
}

TEST_CASE("tokenizer: UTF-8 validation and NFC", "[tokenizer]") {
  CHECK(utf8_valid_prefix("abc\xE2\x82\xAC") == 6);
  CHECK(utf8_valid_prefix("ab\xC0\xAF") == 2);          // overlong
  CHECK(utf8_valid_prefix("ab\xED\xA0\x80") == 2);      // surrogate
  CHECK(utf8_valid_prefix("ab\xF4\x90\x80\x80") == 2);  // above U+10FFFF
  CHECK(utf8_valid_prefix("ab\xE2\x82") == 2);          // truncated
  CHECK(utf8_valid_prefix("\xF0\x9F\x98\x80") == 4);
  auto nfc = [](std::string_view s) {
    std::string out;
    nfc_append(s, out);
    return out;
  };
  CHECK(nfc("cafe\xCC\x81") == "caf\xC3\xA9");
  CHECK(nfc("\xE2\x84\xAB") == "\xC3\x85");                   // Angstrom sign -> Å
  CHECK(nfc("\xE1\x84\x80\xE1\x85\xA1") == "\xEA\xB0\x80");   // Hangul jamo -> 가
  CHECK(nfc("plain ascii and \xC3\xA9") == "plain ascii and \xC3\xA9");
  CHECK(nfc("a\xCC\xA3\xCC\x87 b") == "\xE1\xBA\xA1\xCC\x87 b");  // reordered, then composed
  CHECK(byte_token_string(' ') == "\xC4\xA0");
  CHECK(byte_to_unicode()['A'] == U'A');
}

TEST_CASE("tokenizer: encode_batch and the word cache give encode's ids", "[tokenizer]") {
  std::mt19937 rng(99);
  std::vector<std::string> docs;
  for (int i = 0; i < 64; ++i) docs.push_back(random_text(rng, 1 + rng() % 400, i % 3 == 0));
  docs.push_back(std::string(100000, 'z'));  // one long word: O(n log n) BPE
  std::vector<std::string_view> views(docs.begin(), docs.end());
  for (const Tokenizer* tok : {&gpt2(), &neox()}) {
    std::vector<std::vector<uint32_t>> serial;
    for (const std::string& d : docs) serial.push_back(tok->encode(d));  // fills this thread's cache
    for (int threads : {1, 3}) CHECK(tok->encode_batch(views, threads) == serial);
    for (size_t i = 0; i < docs.size(); ++i) CHECK(tok->encode(docs[i]) == serial[i]);  // cache hits
    CHECK(tok->decode(serial.back()) == docs.back());
  }
}

// A small synthetic tokenizer.json: the 256 byte tokens, three merges, one special token.
static json tiny_tokenizer_json(bool array_merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_token_string(uint8_t(b))] = b;
  vocab["\xC4\xA0t"] = 256;   // "Ġt"
  vocab["he"] = 257;
  vocab["\xC4\xA0the"] = 258;  // "Ġthe"
  json merges = array_merges ? json::array({json::array({"\xC4\xA0", "t"}), json::array({"h", "e"}), json::array({"\xC4\xA0t", "he"})})
                             : json::array({"\xC4\xA0 t", "h e", "\xC4\xA0t he"});
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
          {"added_tokens", json::array({{{"id", 70000}, {"content", "<|endoftext|>"}, {"single_word", false},
                                         {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}}})},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
          {"post_processor", {{"type", "ByteLevel"}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", merges}}}};
}

static std::string write_temp_json(const json& j, const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("ultramem-tokenizer-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string path = (dir / name).string();
  std::ofstream(path) << j.dump();
  return path;
}

TEST_CASE("tokenizer: tokenizer.json merges as strings or pairs, and unsupported settings", "[tokenizer]") {
  for (bool array_merges : {false, true}) {
    Tokenizer t = Tokenizer::load(write_temp_json(tiny_tokenizer_json(array_merges), "tiny.json"));
    CHECK(t.vocab_size() == 70001);
    CHECK(t.encode(" the<|endoftext|> th") == std::vector<uint32_t>{258, 70000, 256, 'h'});
    CHECK(t.encode_ordinary("<|endoftext|>").size() == 13);
  }
  auto expect_error = [](json j, const std::string& needle) {
    std::string path = write_temp_json(j, "bad.json");
    try {
      Tokenizer::load(path);
      FAIL("no error for a tokenizer.json with " << needle);
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
      CHECK(std::string(e.what()).find(path) != std::string::npos);
    }
  };
  json j = tiny_tokenizer_json(false);
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_error(j, "normalizer");
  j = tiny_tokenizer_json(false);
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  expect_error(j, "pre_tokenizer");
  j = tiny_tokenizer_json(false);
  j["model"]["merges"].push_back("h q");
  expect_error(j, "merge 3");
  j = tiny_tokenizer_json(false);
  j["model"]["vocab"].erase("a");
  expect_error(j, "every byte");
  j = tiny_tokenizer_json(false);
  j["added_tokens"][0]["lstrip"] = true;
  expect_error(j, "lstrip");
  expect_error(json::array(), "tokenizer.json");
}

#endif  // ULTRAMEM_TOKENIZER
