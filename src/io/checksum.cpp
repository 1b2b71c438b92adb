#include "ultramem/io/checksum.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "ultramem/core/check.h"

namespace um::io {

static constexpr uint64_t kPrime = 0x100000001b3ull;

void Checksum64::update(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += bytes;
  if (tail_len_) {
    size_t take = std::min(bytes, 8 - tail_len_);
    std::memcpy(tail_ + tail_len_, p, take);
    tail_len_ += take;
    p += take;
    bytes -= take;
    if (tail_len_ < 8) return;
    uint64_t w;
    std::memcpy(&w, tail_, 8);
    h_ = (h_ ^ w) * kPrime;
    tail_len_ = 0;
  }
  uint64_t h = h_;
  const size_t words = bytes / 8;
  for (size_t i = 0; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);
    h = (h ^ w) * kPrime;
  }
  h_ = h;
  tail_len_ = bytes % 8;
  if (tail_len_) std::memcpy(tail_, p + 8 * words, tail_len_);
}

uint64_t Checksum64::value() const {
  if (!tail_len_) return h_;
  uint64_t w = 0;
  std::memcpy(&w, tail_, tail_len_);
  return (h_ ^ w) * kPrime;
}

std::string checksum_hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t file_checksum(const std::string& path, uint64_t* bytes) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(path, "a readable file", std::strerror(errno));
  Checksum64 c;
  std::vector<unsigned char> buf(size_t(4) << 20);
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw Error(path, "a readable file", std::strerror(e));
    }
    if (n == 0) break;
    c.update(buf.data(), size_t(n));
  }
  ::close(fd);
  if (bytes) *bytes = c.bytes();
  return c.value();
}

}  // namespace um::io
