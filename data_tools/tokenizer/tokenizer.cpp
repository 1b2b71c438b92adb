#include "data_tools/tokenizer/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <unordered_map>

#include "data_tools/tokenizer/bpe.h"
#include "data_tools/tokenizer/byte_level.h"
#include "data_tools/tokenizer/pretokenize.h"
#include "data_tools/tokenizer/thread_pool.h"
#include "data_tools/tokenizer/token_matcher.h"
#include "data_tools/tokenizer/tokenizer_spec.h"
#include "data_tools/tokenizer/unicode.h"
#include "data_tools/tokenizer/word_cache.h"
#include "ultramem/core/check.h"

namespace um::tok {

struct Tokenizer::Impl {
  std::string kind;
  std::vector<std::string> files;
  BpeModel bpe;
  std::unordered_map<std::string, uint32_t> token_ids;  // as written in the file
  std::unordered_map<std::string, uint32_t> bytes_ids;  // raw bytes -> id, only for ignore_merges
  std::vector<std::string> id_bytes;                   // decode table
  std::vector<AddedToken> added;
  // Added tokens, by where they are matched and whether encode_ordinary sees them.
  TokenMatcher raw_all, raw_ordinary, normalized_all, normalized_ordinary;
  bool nfc = false, add_prefix_space = false, use_regex = true, ignore_merges = false;
  uint64_t instance = 0;  // keys this tokenizer's per-thread word caches
  std::vector<uint32_t> replacement_ids;  // U+FFFD, for a stray byte that has no token of its own

  void encode_valid(std::string_view text, bool allow_special, WordCache& cache, std::vector<uint32_t>& out) const;
  void encode_normalized(std::string_view text, bool allow_special, WordCache& cache, std::vector<uint32_t>& out) const;
  void encode_segment(std::string_view text, WordCache& cache, std::vector<uint32_t>& out) const;
  void encode_word(std::string_view word, WordCache& cache, std::vector<uint32_t>& out) const;
};

static std::atomic<uint64_t> next_instance{1};
static constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

Tokenizer::Tokenizer(const TokenizerSpec& spec) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.kind = spec.kind;
  m.files = spec.files;
  m.nfc = spec.nfc;
  m.add_prefix_space = spec.add_prefix_space;
  m.use_regex = spec.use_regex;
  m.ignore_merges = spec.ignore_merges;
  m.added = spec.added;
  m.instance = next_instance.fetch_add(1);
  const std::string where = spec.files.empty() ? "tokenizer" : spec.files[0];

  uint32_t size = 0;
  for (const auto& [token, id] : spec.vocab) {
    m.token_ids[token] = id;
    size = std::max(size, id + 1);
  }
  for (const AddedToken& a : spec.added) size = std::max(size, a.id + 1);
  m.id_bytes.assign(size, std::string());
  // Hugging Face's ByteLevel decoder: a token spelled in the byte-level alphabet stands for those
  // bytes; any other token (NeoX's raw-space added tokens) stands for its own UTF-8.
  auto decoded = [](const std::string& token) {
    std::string bytes;
    if (!byte_level_decode(token, bytes)) bytes = token;
    return bytes;
  };
  for (const auto& [token, id] : spec.vocab) m.id_bytes[id] = decoded(token);
  for (const AddedToken& a : spec.added) {
    m.id_bytes[a.id] = decoded(a.content);
    m.token_ids.emplace(a.content, a.id);
    (a.normalized ? m.normalized_all : m.raw_all).add(a.content, a.id);
    if (!a.special) (a.normalized ? m.normalized_ordinary : m.raw_ordinary).add(a.content, a.id);
  }

  std::array<uint32_t, 256> byte_ids{};
  for (int b = 0; b < 256; ++b) {
    auto it = m.token_ids.find(byte_token_string(uint8_t(b)));
    bool never_in_utf8 = b == 0xC0 || b == 0xC1 || b >= 0xF5;
    if (it == m.token_ids.end() && !never_in_utf8)
      throw Error(where, "a byte-level vocabulary with a token for every byte of well-formed UTF-8",
                  detail::concat("no token for byte 0x", std::hex, b));
    byte_ids[b] = it == m.token_ids.end() ? kNoByteToken : it->second;
  }
  std::vector<MergeRule> merges;
  merges.reserve(spec.merges.size());
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const auto& [left, right] = spec.merges[i];
    auto l = m.token_ids.find(left), r = m.token_ids.find(right), res = m.token_ids.find(left + right);
    if (l == m.token_ids.end() || r == m.token_ids.end() || res == m.token_ids.end())
      throw Error(detail::concat(where, ": merge ", i), "a merge whose parts and result are vocabulary tokens",
                  "\"" + left + " " + right + "\"");
    merges.push_back(MergeRule{l->second, r->second, res->second});
  }
  m.bpe = BpeModel(byte_ids, merges);
  m.bpe.encode_word(kReplacementCharacter, m.replacement_ids);
  // ignore_merges looks the pre-token up in the vocabulary as Hugging Face does: spelled in the
  // byte-level alphabet, so tokens spelled otherwise never match.
  if (m.ignore_merges)
    for (const auto& [token, id] : spec.vocab) {
      std::string bytes;
      if (byte_level_decode(token, bytes)) m.bytes_ids.emplace(bytes, id);
    }
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_hf_json(const std::string& path) { return Tokenizer(read_hf_tokenizer_json(path)); }

Tokenizer Tokenizer::from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  return Tokenizer(read_gpt2_files(encoder_json, vocab_bpe));
}

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(path)) return from_hf_json(path);
  fs::path dir(path);
  if (fs::exists(dir / "tokenizer.json")) return from_hf_json((dir / "tokenizer.json").string());
  if (fs::exists(dir / "encoder.json") && fs::exists(dir / "vocab.bpe"))
    return from_gpt2_files((dir / "encoder.json").string(), (dir / "vocab.bpe").string());
  throw Error(path, "a tokenizer.json, or a directory with tokenizer.json or encoder.json + vocab.bpe",
              "a directory with neither");
}

void Tokenizer::Impl::encode_word(std::string_view word, WordCache& cache, std::vector<uint32_t>& out) const {
  bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  uint64_t hash = 0;
  if (cacheable) {
    hash = WordCache::hash(word);
    if (cache.lookup(word, hash, out)) return;
  }
  size_t before = out.size();
  if (ignore_merges) {
    auto it = bytes_ids.find(std::string(word));
    if (it != bytes_ids.end()) out.push_back(it->second);
  }
  if (out.size() == before) bpe.encode_word(word, out);
  if (cacheable) cache.insert(word, hash, out.data() + before, out.size() - before);
}

void Tokenizer::Impl::encode_segment(std::string_view text, WordCache& cache, std::vector<uint32_t>& out) const {
  if (text.empty()) return;
  std::string prefixed;
  if (add_prefix_space && text[0] != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  if (!use_regex) {
    encode_word(text, cache, out);
    return;
  }
  for_each_pretoken(text, [&](std::string_view word) { encode_word(word, cache, out); });
}

// Splits normalized text on the added tokens matched after normalization.
void Tokenizer::Impl::encode_normalized(std::string_view text, bool allow_special, WordCache& cache,
                                        std::vector<uint32_t>& out) const {
  const TokenMatcher& matcher = allow_special ? normalized_all : normalized_ordinary;
  TokenMatcher::Match match;
  size_t pos = 0;
  while (pos < text.size() && matcher.find(text, pos, &match)) {
    encode_segment(text.substr(pos, match.start - pos), cache, out);
    out.push_back(match.id);
    pos = match.start + match.length;
  }
  encode_segment(text.substr(pos), cache, out);
}

// Well-formed UTF-8: raw added tokens first, then the normalizer on the stretches between them.
void Tokenizer::Impl::encode_valid(std::string_view text, bool allow_special, WordCache& cache,
                                   std::vector<uint32_t>& out) const {
  std::string normalized;
  auto normalize_and_encode = [&](std::string_view piece) {
    if (piece.empty()) return;
    if (nfc && std::any_of(piece.begin(), piece.end(), [](char c) { return uint8_t(c) >= 0xCC; })) {
      normalized.clear();
      nfc_append(piece, normalized);
      piece = normalized;
    }
    encode_normalized(piece, allow_special, cache, out);
  };
  const TokenMatcher& matcher = allow_special ? raw_all : raw_ordinary;
  TokenMatcher::Match match;
  size_t pos = 0;
  while (pos < text.size() && matcher.find(text, pos, &match)) {
    normalize_and_encode(text.substr(pos, match.start - pos));
    out.push_back(match.id);
    pos = match.start + match.length;
  }
  normalize_and_encode(text.substr(pos));
}

void Tokenizer::encode_append(std::string_view text, bool allow_special, std::vector<uint32_t>& out) const {
  WordCache& cache = thread_word_cache(impl_->instance);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t valid = pos + utf8_valid_prefix(text.substr(pos));
    if (valid > pos) impl_->encode_valid(text.substr(pos, valid - pos), allow_special, cache, out);
    if (valid == text.size()) break;
    // A byte outside well-formed UTF-8 becomes its single-byte token; the few bytes a vocabulary has no
    // token for (never in UTF-8) become U+FFFD, as a decoder with errors="replace" would read them.
    uint32_t id = impl_->bpe.byte_id(uint8_t(text[valid]));
    if (id != kNoByteToken)
      out.push_back(id);
    else
      out.insert(out.end(), impl_->replacement_ids.begin(), impl_->replacement_ids.end());
    pos = valid + 1;
  }
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> ids;
  encode_append(text, true, ids);
  return ids;
}

std::vector<uint32_t> Tokenizer::encode_ordinary(std::string_view text) const {
  std::vector<uint32_t> ids;
  encode_append(text, false, ids);
  return ids;
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& docs, int threads,
                                                           bool allow_special) const {
  threads = std::max(1, std::min<int>(threads, int(docs.size())));
  if (threads == 1) {
    std::vector<std::vector<uint32_t>> result(docs.size());
    for (size_t i = 0; i < docs.size(); ++i) encode_append(docs[i], allow_special, result[i]);
    return result;
  }
  ThreadPool pool(threads);
  return encode_batch(docs, pool, allow_special);
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& docs, ThreadPool& pool,
                                                           bool allow_special) const {
  std::vector<std::vector<uint32_t>> result(docs.size());
  // Documents are handed out one at a time so a few long ones do not leave threads idle.
  std::atomic<size_t> next{0};
  std::vector<std::future<void>> done;
  for (int t = 0; t < pool.size(); ++t)
    done.push_back(pool.submit([&] {
      for (size_t i; (i = next.fetch_add(1)) < docs.size();) encode_append(docs[i], allow_special, result[i]);
    }));
  for (auto& f : done) f.wait();  // every task is done with the locals before an error propagates
  for (auto& f : done) f.get();
  return result;
}

const std::string& Tokenizer::token_bytes(uint32_t id) const {
  if (id >= impl_->id_bytes.size())
    throw Error("Tokenizer::decode", detail::concat("token ids below the vocabulary size ", impl_->id_bytes.size()),
                std::to_string(id));
  return impl_->id_bytes[id];
}

std::string Tokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string bytes;
  for (uint32_t id : ids) bytes += token_bytes(id);
  return bytes;
}

uint32_t Tokenizer::vocab_size() const { return uint32_t(impl_->id_bytes.size()); }

std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->token_ids.find(std::string(token));
  if (it == impl_->token_ids.end()) return std::nullopt;
  return it->second;
}

std::optional<uint32_t> Tokenizer::eos_id() const { return token_to_id("<|endoftext|>"); }

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
const std::vector<std::string>& Tokenizer::source_files() const { return impl_->files; }
const std::string& Tokenizer::kind() const { return impl_->kind; }

}  // namespace um::tok
