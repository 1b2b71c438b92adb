#include "ultramem/data/raw_tokens.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "ultramem/core/check.h"
#include "src/io/atomic_file.h"

namespace um::data {

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

RawTokenFile::RawTokenFile(const std::string& path, const RawTokenOptions& opt)
    : path_(path), vocab_size_(opt.vocab_size), eos_id_(opt.eos_id) {
  if (vocab_size_ == 0)
    throw Error(path, "data.vocab_size in the config (raw token arrays carry no vocabulary size)", "none given");
  if (eos_id_ >= vocab_size_)
    throw Error(path, detail::concat("an eos id below the vocabulary size ", vocab_size_), std::to_string(eos_id_));
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(path, "a readable token file", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(path, "a file whose size can be read", std::strerror(errno));
  }
  map_bytes_ = size_t(st.st_size);
  if (map_bytes_ > 0) {
    map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    if (map_ == MAP_FAILED) map_ = nullptr;
  }
  int map_errno = errno;
  ::close(fd);
  if (map_bytes_ > 0 && !map_) throw Error(path, "a token file that can be memory-mapped", std::strerror(map_errno));
  try {
    size_t offset = 0;
    if (ends_with(path, ".npy")) {
      offset = parse_npy_header();
    } else {
      token_bytes_ = ends_with(path, ".u16") ? 2 : 4;
      count_ = map_bytes_ / token_bytes_;
      if (map_bytes_ % token_bytes_ != 0)
        throw Error(path, detail::concat("a whole number of ", token_bytes_, "-byte tokens"),
                    detail::concat(map_bytes_, " bytes (truncated?)"));
    }
    tokens_ = static_cast<const unsigned char*>(map_) + offset;
  } catch (...) {
    if (map_) ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw;
  }
}

RawTokenFile::~RawTokenFile() {
  if (map_) ::munmap(map_, map_bytes_);
}

// The value of `'key': VALUE` in a numpy header dict, VALUE running to the next top-level comma.
static std::string npy_field(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) return "";
  size_t begin = header.find_first_not_of(' ', colon + 1);
  if (begin == std::string::npos) return "";
  size_t end = header[begin] == '(' ? header.find(')', begin) + 1 : header.find_first_of(",}", begin);
  if (end == std::string::npos || end == 0) return "";
  return header.substr(begin, end - begin);
}

size_t RawTokenFile::parse_npy_header() {
  const NpyLayout l = parse_npy(map_, map_bytes_, path_);
  token_bytes_ = l.token_bytes;
  count_ = l.count;
  return l.data_offset;
}

NpyLayout parse_npy(const void* file, size_t map_bytes, const std::string& path) {
  const auto* p = static_cast<const unsigned char*>(file);
  if (map_bytes < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0)
    throw Error(path,
                "the numpy magic \"\\x93NUMPY\" (headerless token memmaps, such as OLMo's preprocessed .npy "
                "files, must be named .u16 or .u32)",
                "other bytes");
  const unsigned major = p[6];
  if (major != 1 && major != 2) throw Error(path, "npy format version 1 or 2", std::to_string(major));
  const size_t prefix = major == 1 ? 10 : 12;
  if (map_bytes < prefix) throw Error(path, "a complete npy header", detail::concat(map_bytes, " bytes (truncated?)"));
  uint32_t header_len = 0;
  if (major == 1) {
    uint16_t v;
    std::memcpy(&v, p + 8, 2);
    header_len = v;
  } else {
    std::memcpy(&header_len, p + 8, 4);
  }
  if (map_bytes - prefix < header_len)
    throw Error(path, detail::concat("an npy header of ", header_len, " bytes"),
                detail::concat(map_bytes - prefix, " bytes after the prefix (truncated?)"));
  const std::string header(reinterpret_cast<const char*>(p + prefix), header_len);
  const std::string descr = npy_field(header, "descr"), order = npy_field(header, "fortran_order"),
                    shape = npy_field(header, "shape");
  NpyLayout l;
  if (descr == "'<u2'" || descr == "'=u2'")
    l.token_bytes = 2;
  else if (descr == "'<u4'" || descr == "'=u4'")
    l.token_bytes = 4;
  else
    throw Error(path, "dtype '<u2' or '<u4' (little-endian uint16/uint32 token ids)",
                descr.empty() ? "no descr in the header" : descr.substr(0, 40));
  if (order != "False") throw Error(path, "a C-order array (fortran_order False)", order.empty() ? "none" : order.substr(0, 40));
  // A 1-d shape reads "(N,)"; anything else (2-d, 0-d "()") is rejected. N: at most 19 digits (below
  // 10^19, so it fits in 64 bits), spaces allowed around it.
  const bool shaped = shape.size() >= 4 && shape.front() == '(' && shape.substr(shape.size() - 2) == ",)" &&
                      shape.find_first_not_of("0123456789 ", 1) == shape.size() - 2;
  const std::string digits = shaped ? shape.substr(1, shape.size() - 3) : "";
  const size_t d0 = digits.find_first_not_of(' '), d1 = digits.find_last_not_of(' ');
  const bool one_number = d0 != std::string::npos && digits.find(' ', d0) >= d1 + 1 && d1 - d0 + 1 <= 19;
  if (!shaped || !one_number)
    throw Error(path, "a 1-d array, shape (N,)", shape.empty() ? "no shape in the header" : shape.substr(0, 40));
  l.count = std::stoull(digits.substr(d0, d1 - d0 + 1));
  l.data_offset = prefix + header_len;
  const uint64_t payload = map_bytes - l.data_offset;
  if (l.count > payload / l.token_bytes || payload != l.count * l.token_bytes)
    throw Error(path,
                l.count > payload / l.token_bytes
                    ? detail::concat(l.count, " tokens as the header says")
                    : detail::concat(l.count, " tokens = ", l.count * l.token_bytes, " data bytes as the header says"),
                detail::concat(payload, " data bytes (truncated or corrupt)"));
  return l;
}

void RawTokenFile::read(uint64_t start, uint64_t n, int32_t* out) const {
  UM_CHECK(start + n <= count_, detail::concat("tokens within ", path_, "'s ", count_), "[", start, ",", start + n, ")");
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t t;
    if (token_bytes_ == 2) {
      uint16_t v;
      std::memcpy(&v, tokens_ + 2 * (start + i), 2);  // .npy data need not be aligned
      t = v;
    } else {
      std::memcpy(&t, tokens_ + 4 * (start + i), 4);
    }
    if (t >= vocab_size_)
      throw Error(path_, detail::concat("token ids below data.vocab_size ", vocab_size_),
                  detail::concat("id ", t, " at token ", start + i));
    out[i] = int32_t(t);
  }
}

void write_npy_tokens(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t token_bytes) {
  UM_CHECK(token_bytes == 2 || token_bytes == 4, "2 or 4 bytes per token", token_bytes);
  std::string header = detail::concat("{'descr': '<u", token_bytes, "', 'fortran_order': False, 'shape': (",
                                      tokens.size(), ",), }");
  // numpy pads the header with spaces and a newline so the data starts on a 64-byte boundary.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::vector<unsigned char> bytes(10 + header.size() + tokens.size() * token_bytes);
  std::memcpy(bytes.data(), "\x93NUMPY\x01\x00", 8);
  uint16_t len = uint16_t(header.size());
  std::memcpy(bytes.data() + 8, &len, 2);
  std::memcpy(bytes.data() + 10, header.data(), header.size());
  unsigned char* data = bytes.data() + 10 + header.size();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (token_bytes == 2) {
      UM_CHECK(tokens[i] < 65536, "token ids below 65536 for '<u2'", tokens[i]);
      uint16_t v = uint16_t(tokens[i]);
      std::memcpy(data + 2 * i, &v, 2);
    } else {
      std::memcpy(data + 4 * i, &tokens[i], 4);
    }
  }
  io::AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace um::data
