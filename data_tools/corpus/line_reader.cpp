#include "data_tools/corpus/line_reader.h"

#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "ultramem/core/check.h"

namespace um::tok {

class LineReader::Source {
 public:
  virtual ~Source() = default;
  // Up to `capacity` decompressed bytes into dst; 0 at the end of the stream.
  virtual size_t read(char* dst, size_t capacity) = 0;
};

namespace {

constexpr size_t kChunk = size_t(1) << 20;

// gzip through zlib's gz* interface, which also reads a file that is not gzip as it is.
class GzipSource : public LineReader::Source {
 public:
  explicit GzipSource(const std::string& path) : path_(path), file_(gzopen(path.c_str(), "rb")) {
    if (!file_) throw Error(path, "a readable file", std::strerror(errno));
    gzbuffer(file_, 1 << 17);
  }
  ~GzipSource() override { gzclose(file_); }

  size_t read(char* dst, size_t capacity) override {
    int n = gzread(file_, dst, unsigned(capacity));
    int code = Z_OK;
    const char* message = gzerror(file_, &code);
    if (n < 0 || (code != Z_OK && code != Z_BUF_ERROR)) throw Error(path_, "a readable gzip stream", message);
    // Z_BUF_ERROR at the end of the input: the file ends inside a gzip member.
    if (n == 0 && code == Z_BUF_ERROR) throw Error(path_, "a complete gzip stream", "a truncated file");
    return size_t(n);
  }

 private:
  std::string path_;
  gzFile file_;
};

class ZstdSource : public LineReader::Source {
 public:
  explicit ZstdSource(const std::string& path)
      : path_(path), file_(std::fopen(path.c_str(), "rb")), stream_(ZSTD_createDStream()), in_(ZSTD_DStreamInSize()) {
    if (!file_) throw Error(path, "a readable file", std::strerror(errno));
    ZSTD_initDStream(stream_);
  }
  ~ZstdSource() override {
    ZSTD_freeDStream(stream_);
    if (file_) std::fclose(file_);
  }

  size_t read(char* dst, size_t capacity) override {
    ZSTD_outBuffer out{dst, capacity, 0};
    while (out.pos == 0) {
      if (input_.pos == input_.size) {
        size_t got = std::fread(in_.data(), 1, in_.size(), file_);
        if (got == 0) {
          if (std::ferror(file_)) throw Error(path_, "a readable zstd file", std::strerror(errno));
          // A non-zero hint from the last call means the frame still wanted input.
          if (frame_open_) throw Error(path_, "a complete zstd stream", "a truncated file");
          return 0;
        }
        input_ = ZSTD_inBuffer{in_.data(), got, 0};
      }
      size_t hint = ZSTD_decompressStream(stream_, &out, &input_);
      if (ZSTD_isError(hint)) throw Error(path_, "a readable zstd stream", ZSTD_getErrorName(hint));
      frame_open_ = hint != 0;
    }
    return out.pos;
  }

 private:
  std::string path_;
  std::FILE* file_;
  ZSTD_DStream* stream_;
  std::vector<char> in_;
  ZSTD_inBuffer input_{nullptr, 0, 0};
  bool frame_open_ = false;
};

bool starts_with_zstd_magic(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(path, "a readable file", std::strerror(errno));
  unsigned char magic[4] = {};
  size_t n = std::fread(magic, 1, 4, f);
  std::fclose(f);
  return n == 4 && magic[0] == 0x28 && magic[1] == 0xB5 && magic[2] == 0x2F && magic[3] == 0xFD;
}

}  // namespace

LineReader::LineReader(const std::string& path) : path_(path) {
  if (starts_with_zstd_magic(path))
    source_ = std::make_unique<ZstdSource>(path);
  else
    source_ = std::make_unique<GzipSource>(path);
}

LineReader::~LineReader() = default;

bool LineReader::fill() {
  if (eof_) return false;
  buffer_.erase(0, pos_);
  pos_ = 0;
  size_t old = buffer_.size();
  buffer_.resize(old + kChunk);
  size_t n = source_->read(&buffer_[old], kChunk);
  buffer_.resize(old + n);
  if (n == 0) eof_ = true;
  return n > 0;
}

bool LineReader::next_line(std::string& line) {
  size_t scanned = 0;  // bytes after pos_ known to hold no '\n'
  for (;;) {
    size_t nl = buffer_.find('\n', pos_ + scanned);
    if (nl != std::string::npos) {
      line.assign(buffer_, pos_, nl - pos_);
      bytes_read_ += nl - pos_ + 1;
      pos_ = nl + 1;
      return true;
    }
    scanned = buffer_.size() - pos_;
    if (!fill()) break;
  }
  if (pos_ == buffer_.size()) return false;
  line.assign(buffer_, pos_, std::string::npos);
  bytes_read_ += buffer_.size() - pos_;
  pos_ = buffer_.size();
  return true;
}

void LineReader::read_rest(std::string& out) {
  while (fill()) {
  }
  out.append(buffer_, pos_, std::string::npos);
  bytes_read_ += buffer_.size() - pos_;
  pos_ = buffer_.size();
}

}  // namespace um::tok
