#include "src/io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "ultramem/core/check.h"
#include "ultramem/io/fault_injection.h"

namespace um::io {

// ---- fault injection (tests) ----

static std::atomic<int64_t> g_write_budget{-1};
static std::once_flag g_env_once;
static std::string g_crash_point;
static int64_t g_crash_after = 1;
static std::atomic<int64_t> g_crash_arrivals{0};

static void read_env() {
  std::call_once(g_env_once, [] {
    if (const char* s = std::getenv("ULTRAMEM_TEST_ENOSPC_AFTER"); s && *s) {
      char* end = nullptr;
      long long v = std::strtoll(s, &end, 10);
      if (end && *end == '\0' && v >= 0) g_write_budget = v;
    }
    if (const char* s = std::getenv("ULTRAMEM_TEST_CRASH_AT"); s && *s) {
      g_crash_point = s;
      size_t colon = g_crash_point.rfind('@');
      if (colon != std::string::npos) {
        g_crash_after = std::max(1ll, std::atoll(g_crash_point.c_str() + colon + 1));
        g_crash_point.resize(colon);
      }
    }
  });
}

void set_write_failure_after(int64_t bytes) {
  read_env();  // so a later first write does not re-read the environment over this setting
  g_write_budget = bytes < 0 ? -1 : bytes;
}

int64_t write_failure_budget() {
  read_env();
  return g_write_budget.load();
}

size_t take_write_budget(size_t bytes) {
  read_env();
  int64_t cur = g_write_budget.load();
  while (cur >= 0) {
    int64_t take = std::min<int64_t>(cur, int64_t(bytes));
    if (g_write_budget.compare_exchange_weak(cur, cur - take)) return size_t(take);
  }
  return bytes;
}

void crash_point(const char* point) {
  read_env();
  if (g_crash_point.empty() || g_crash_point != point) return;
  if (++g_crash_arrivals == g_crash_after) ::raise(SIGKILL);
}

// ---- writing ----

static std::string errno_text(int e) {
  std::string s = std::strerror(e);
  if (e == ENOSPC || e == EDQUOT || e == EFBIG) s += " (the disk or quota is full; free space and retry)";
  return s;
}

void write_fully(int fd, const void* data, size_t bytes, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  const size_t allowed = take_write_budget(bytes);
  size_t left = allowed;
  while (left) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(path, "a complete write", errno_text(errno));
    }
    if (w == 0) throw Error(path, "a complete write", errno_text(ENOSPC));  // a zero-byte write: no room
    p += w;
    left -= size_t(w);
  }
  if (allowed < bytes) throw Error(path, "a complete write", errno_text(ENOSPC) + " [injected by ULTRAMEM_TEST_ENOSPC_AFTER]");
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(tmp_, "a writable file", errno_text(errno));
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  if (fd_ < 0) throw Error(tmp_, "an open file to write", "one already failed or committed");
  try {
    write_fully(fd_, data, bytes, tmp_);
  } catch (...) {
    discard();  // free the space of the partial file now; the final name keeps its old content
    throw;
  }
  sum_.update(data, bytes);
}

void AtomicFile::commit() {
  if (fd_ < 0) throw Error(tmp_, "an open file to commit", "one already failed or committed");
  if (::fsync(fd_) != 0) {
    int e = errno;
    discard();
    throw Error(tmp_, "fsync to succeed", errno_text(e));
  }
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    int e = errno;
    ::unlink(tmp_.c_str());
    throw Error(tmp_, "close to succeed", errno_text(e));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp_.c_str());
    throw Error(path_, "rename of the finished file", errno_text(e));
  }
  std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  fsync_directory(parent.empty() ? "." : parent.string());
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error(dir, "an openable directory", std::strerror(errno));
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  // Some file systems cannot fsync a directory (EINVAL); a real I/O error is reported.
  if (rc != 0 && (e == EIO || e == ENOSPC || e == EDQUOT)) throw Error(dir, "fsync of the directory", errno_text(e));
}

void write_file_atomic(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

}  // namespace um::io
