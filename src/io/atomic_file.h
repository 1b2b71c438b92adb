// Private: a file that appears under its final name only when complete. Data goes to "<path>.tmp",
// commit() fsyncs, renames and fsyncs the directory; a destructor without commit() removes the
// temporary, so a crash or an error never leaves a half file under the final name.
#pragma once
#include <string>

namespace um::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t bytes);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// fsync a directory so a rename inside it is durable.
void fsync_directory(const std::string& dir);

}  // namespace um::io
