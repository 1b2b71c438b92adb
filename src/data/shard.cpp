#include "ultramem/data/shard.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ultramem/core/check.h"
#include "src/io/atomic_file.h"

namespace um::data {

uint64_t payload_checksum(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ull;
  const uint64_t prime = 0x100000001b3ull;
  size_t words = bytes / 8;
  for (size_t i = 0; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);
    h = (h ^ w) * prime;
  }
  if (bytes % 8) {
    uint64_t w = 0;
    std::memcpy(&w, p + 8 * words, bytes % 8);
    h = (h ^ w) * prime;
  }
  return h;
}

template <typename T>
static T read_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // x86-64 and arm64 are little-endian
  return v;
}

Shard::Shard(const std::string& path, bool verify_checksum) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(path, "a readable token shard", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(path, "a file whose size can be read", std::strerror(errno));
  }
  map_bytes_ = size_t(st.st_size);
  if (map_bytes_ < kShardHeaderBytes) {
    ::close(fd);
    throw Error(path, detail::concat("a shard of at least ", kShardHeaderBytes, " header bytes"),
                detail::concat(map_bytes_, " bytes (truncated?)"));
  }
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error(path, "a shard that can be memory-mapped", std::strerror(errno));
  }
  try {
    header_ = parse_shard_header(map_, map_bytes_, path, verify_checksum);
  } catch (...) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw;
  }
  tokens_ = static_cast<const unsigned char*>(map_) + kShardHeaderBytes;
}

ShardHeader parse_shard_header(const void* file, size_t file_bytes, const std::string& path, bool verify_checksum) {
  const auto* h = static_cast<const unsigned char*>(file);
  auto fail = [&](const std::string& expected, const std::string& found) { throw Error(path, expected, found); };
  if (file_bytes < kShardHeaderBytes)
    fail(detail::concat("a shard of at least ", kShardHeaderBytes, " header bytes"),
         detail::concat(file_bytes, " bytes (truncated?)"));
  if (std::memcmp(h, "UMTOKENS", 8) != 0) fail("magic \"UMTOKENS\" (an ultramem .bin shard)", "other bytes");
  ShardHeader header;
  header.version = read_le<uint32_t>(h + 8);
  header.token_bytes = read_le<uint32_t>(h + 12);
  header.token_count = read_le<uint64_t>(h + 16);
  header.vocab_size = read_le<uint32_t>(h + 24);
  header.eos_id = read_le<uint32_t>(h + 28);
  header.checksum = read_le<uint64_t>(h + 32);
  header.document_count = read_le<uint64_t>(h + 40);
  if (header.version != kShardVersion) fail("shard version 1", std::to_string(header.version));
  if (header.token_bytes != 2 && header.token_bytes != 4)
    fail("2 or 4 bytes per token", std::to_string(header.token_bytes));
  const uint64_t payload = file_bytes - kShardHeaderBytes;
  if (header.token_count > payload / header.token_bytes || payload != header.token_count * header.token_bytes)
    fail(header.token_count > payload / header.token_bytes
             ? detail::concat(header.token_count, " tokens as the header says")
             : detail::concat(header.token_count, " tokens = ", header.token_count * header.token_bytes,
                              " payload bytes as the header says"),
         detail::concat(payload, " payload bytes (truncated or corrupt)"));
  if (header.vocab_size == 0 || header.eos_id >= header.vocab_size)
    fail("an eos id below a non-zero vocabulary size", detail::concat("eos ", header.eos_id, ", vocab ", header.vocab_size));
  if (verify_checksum && payload_checksum(h + kShardHeaderBytes, payload) != header.checksum)
    fail("a payload matching the header checksum", "a mismatch (the shard is corrupt)");
  return header;
}

Shard::~Shard() {
  if (map_) ::munmap(map_, map_bytes_);
}

void Shard::read(uint64_t start, uint64_t n, int32_t* out) const {
  UM_CHECK(start + n <= size(), detail::concat("tokens within ", path_, "'s ", size()), "[", start, ",", start + n, ")");
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t t = token(start + i);
    if (t >= header_.vocab_size)
      throw Error(path_, detail::concat("token ids below the vocabulary size ", header_.vocab_size),
                  detail::concat("id ", t, " at token ", start + i));
    out[i] = int32_t(t);
  }
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t vocab_size, uint32_t eos_id,
                 uint64_t document_count) {
  uint32_t token_bytes = vocab_size <= 65536 ? 2 : 4;
  std::vector<unsigned char> payload(tokens.size() * token_bytes);
  for (size_t i = 0; i < tokens.size(); ++i) {
    UM_CHECK(tokens[i] < vocab_size, detail::concat("token ids below ", vocab_size), tokens[i]);
    if (token_bytes == 2) {
      uint16_t v = uint16_t(tokens[i]);
      std::memcpy(&payload[2 * i], &v, 2);
    } else {
      std::memcpy(&payload[4 * i], &tokens[i], 4);
    }
  }
  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, "UMTOKENS", 8);
  uint64_t count = tokens.size(), checksum = payload_checksum(payload.data(), payload.size());
  uint32_t version = kShardVersion;
  std::memcpy(header + 8, &version, 4);
  std::memcpy(header + 12, &token_bytes, 4);
  std::memcpy(header + 16, &count, 8);
  std::memcpy(header + 24, &vocab_size, 4);
  std::memcpy(header + 28, &eos_id, 4);
  std::memcpy(header + 32, &checksum, 8);
  std::memcpy(header + 40, &document_count, 8);

  io::AtomicFile file(path);
  file.write(header, sizeof(header));
  file.write(payload.data(), payload.size());
  file.commit();
}

std::vector<std::string> expand_patterns(const std::string& patterns, const std::string& key) {
  std::vector<std::string> files;
  size_t pos = 0;
  while (pos <= patterns.size()) {
    size_t comma = patterns.find(',', pos);
    std::string pat = patterns.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? patterns.size() + 1 : comma + 1;
    if (pat.empty()) continue;
    glob_t g;
    int rc = ::glob(pat.c_str(), 0, nullptr, &g);
    if (rc != 0) {
      if (rc == GLOB_NOMATCH) throw Error(key, "a path or pattern matching at least one file", "\"" + pat + "\" matches none");
      throw Error(key, "a valid glob pattern", "\"" + pat + "\"");
    }
    std::vector<std::string> these(g.gl_pathv, g.gl_pathv + g.gl_pathc);
    ::globfree(&g);
    std::sort(these.begin(), these.end());
    files.insert(files.end(), these.begin(), these.end());
  }
  if (files.empty()) throw Error(key, "at least one shard path", "an empty list");
  return files;
}

}  // namespace um::data
