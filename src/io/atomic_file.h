// Private: a file that appears under its final name only when complete. Data goes to "<path>.tmp",
// commit() fsyncs, renames and fsyncs the directory; a destructor without commit() removes the
// temporary, so a crash or an error never leaves a half file under the final name. A failed write
// (a full disk: ENOSPC) removes the temporary at once, freeing its space, and throws an Error naming
// the file and the cause; whatever the final name held before is untouched.
#pragma once
#include <cstdint>
#include <string>

#include "ultramem/io/checksum.h"

namespace um::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t bytes);
  void commit();
  // Bytes written so far and their checksum (io/checksum.h), for manifests.
  uint64_t bytes_written() const { return sum_.bytes(); }
  uint64_t checksum() const { return sum_.value(); }
  const std::string& path() const { return path_; }

 private:
  void discard();
  std::string path_, tmp_;
  int fd_ = -1;
  Checksum64 sum_;
};

// Writes all `bytes` to `fd` (retrying short writes and EINTR); an Error names `path` and the cause
// (e.g. "No space left on device"). The fault-injection hook (io/fault_injection.h) applies here.
void write_fully(int fd, const void* data, size_t bytes, const std::string& path);

// fsync a directory so a rename inside it is durable.
void fsync_directory(const std::string& dir);

// Writes `text` to `path` atomically.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace um::io
