// Streams a possibly compressed text file: gzip (.gz, also multi-member) or zstd (.zst, also several
// frames) are recognised by their magic bytes, anything else is read as it is. A corrupt or truncated
// stream is an Error naming the file.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace um::tok {

class LineReader {
 public:
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its '\n' (a trailing '\r' is kept: it is part of the text); false at the end.
  // The last line needs no '\n'.
  bool next_line(std::string& line);
  // Everything not read yet.
  void read_rest(std::string& out);

  const std::string& path() const { return path_; }
  // Decompressed bytes handed out so far.
  uint64_t bytes_read() const { return bytes_read_; }

  class Source;  // gzip, zstd or plain bytes

 private:
  bool fill();  // appends decompressed bytes to buffer_; false at the end of the stream

  std::string path_;
  std::unique_ptr<Source> source_;
  std::string buffer_;
  size_t pos_ = 0;
  bool eof_ = false;
  uint64_t bytes_read_ = 0;
};

}  // namespace um::tok
