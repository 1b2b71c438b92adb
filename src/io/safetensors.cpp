#include "ultramem/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "src/io/atomic_file.h"
#include "ultramem/config/json_reader.h"
#include "ultramem/io/fault_injection.h"

namespace um::io {

using json = nlohmann::json;
using config::describe_json;

static const char* st_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u16: return "U16";
    case DType::u32: return "U32";
  }
  return "?";
}

static bool parse_st_dtype(const std::string& s, DType* out) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u16, DType::u32})
    if (s == st_dtype(t)) {
      *out = t;
      return true;
    }
  return false;
}

uint64_t save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                          const std::map<std::string, std::string>& metadata, uint64_t* bytes) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& nt : tensors) {
    uint64_t n = nt.tensor.nbytes();
    header[nt.name] = {{"dtype", st_dtype(nt.tensor.dtype())},
                       {"shape", nt.tensor.shape().vec()},
                       {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the format pads the header to 8 bytes with spaces
  AtomicFile file(path);
  uint64_t n = h.size();
  file.write(&n, 8);
  file.write(h.data(), h.size());
  for (const auto& nt : tensors) {
    Tensor host = nt.tensor.device().is_cpu() ? nt.tensor : nt.tensor.to(Device::cpu());
    file.write(host.data(), host.nbytes());
    crash_point("safetensors:data");  // tests: a process killed in the middle of a file
  }
  file.commit();
  if (bytes) *bytes = file.bytes_written();
  return file.checksum();
}

static constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;

SafetensorsHeader parse_safetensors_header(const void* file_prefix, size_t available, uint64_t file_size,
                                           const std::string& path) {
  const auto* bytes = static_cast<const char*>(file_prefix);
  if (file_size < 8 || available < 8)
    throw Error(path, "an 8-byte header length", detail::concat(file_size, " bytes in the file"));
  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n > file_size - 8 || n > kMaxHeaderBytes)
    throw Error(path, detail::concat("a header length within the file's ", file_size, " bytes (and under 100 MiB)"),
                std::to_string(n));
  if (n > available - 8) throw Error(path, detail::concat("a readable ", n, "-byte header"), "a short read");
  if (config::json_nesting_depth(bytes + 8, size_t(n)) > 8)
    throw Error(path, "a safetensors header nested at most 8 levels deep", "deeper nesting (a hostile file?)");
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + n);
  } catch (const json::exception& e) {
    throw Error(path, "a JSON safetensors header", e.what());
  }
  if (!header.is_object()) throw Error(path, "a JSON object header", header.type_name());
  SafetensorsHeader out;
  out.data_start = 8 + n;
  const uint64_t data_bytes = file_size - out.data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string where = path + ": tensor " + describe_json(json(it.key()));
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) throw Error(where, "an object of strings", it.value().type_name());
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        if (m.value().is_string()) out.metadata[m.key()] = m.value().get<std::string>();
      continue;
    }
    const json& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw Error(where, "an object with dtype, shape and data_offsets", describe_json(e));
    SafetensorsEntry entry;
    const json& dtype = e.at("dtype");
    if (!dtype.is_string() || !parse_st_dtype(dtype.get<std::string>(), &entry.dtype))
      throw Error(where, "a dtype among F32 F64 BF16 F16 I32 I64 U16 U32", describe_json(dtype));
    const json& shape = e.at("shape");
    if (!shape.is_array() || shape.size() > size_t(Shape::kMaxDims))
      throw Error(where, "a shape of at most 5 dimensions", describe_json(shape));
    std::vector<int64_t> dims;
    uint64_t count = 1;
    constexpr uint64_t kMaxDim = uint64_t(1) << 40, kMaxCount = uint64_t(1) << 44;
    for (const json& d : shape) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > kMaxDim)
        throw Error(where, "non-negative dimensions below 2^40", describe_json(shape));
      const uint64_t v = d.get<uint64_t>();
      // Checked before multiplying: [2^40, 2^40] must not wrap around to a small count.
      if (v != 0 && count > kMaxCount / v) throw Error(where, "a tensor below 2^44 elements", describe_json(shape));
      dims.push_back(int64_t(v));
      count *= v;
    }
    entry.shape = Shape(dims);
    const json& off = e.at("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw Error(where, "data_offsets [begin, end] of non-negative integers", describe_json(off));
    entry.begin = off[0].get<uint64_t>();
    entry.end = off[1].get<uint64_t>();
    if (entry.begin > entry.end || entry.end > data_bytes)
      throw Error(where, detail::concat("a byte range inside the ", data_bytes, "-byte data section"), describe_json(off));
    const uint64_t want = count * dtype_size(entry.dtype);
    if (entry.end - entry.begin != want)
      throw Error(where, detail::concat(want, " bytes for shape ", entry.shape.str()),
                  detail::concat(entry.end - entry.begin, " bytes"));
    if (entry.end > entry.begin) ranges.push_back({entry.begin, entry.end});  // empty tensors overlap nothing
    out.entries[it.key()] = entry;
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      throw Error(path, "tensors with disjoint byte ranges", detail::concat("an overlap at byte ", ranges[i].first));
  return out;
}

namespace {
// An open file descriptor, closed on every path.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly `n` bytes at `offset`; false on a short read or an error.
bool pread_fully(int fd, void* dst, size_t n, uint64_t offset) {
  char* p = static_cast<char*>(dst);
  while (n) {
    ssize_t r = ::pread(fd, p, n, off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
    offset += uint64_t(r);
  }
  return true;
}

uint64_t open_regular(const std::string& path, Fd& f) {
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) throw Error(path, "a readable safetensors file", std::strerror(errno));
  struct stat st;
  if (::fstat(f.fd, &st) != 0) throw Error(path, "a file whose size can be read", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path, "a regular safetensors file", "a directory or special file");
  return uint64_t(st.st_size);
}
}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  Fd f;
  const uint64_t file_size = open_regular(path, f);
  uint64_t n = 0;
  if (file_size < 8 || !pread_fully(f.fd, &n, 8, 0))
    throw Error(path, "an 8-byte header length", detail::concat(file_size, " bytes in the file"));
  // Only as much as the (validated) header length says is read; the parser re-checks it.
  const size_t want = size_t(8 + std::min<uint64_t>(n, std::min(file_size - 8, kMaxHeaderBytes)));
  std::string prefix(want, '\0');
  if (!pread_fully(f.fd, prefix.data(), want, 0)) throw Error(path, "a readable header", "a short read");
  header_ = parse_safetensors_header(prefix.data(), prefix.size(), file_size, path);
}

void SafetensorsReader::read_into(const std::string& name, const Tensor& dst) const {
  auto it = header_.entries.find(name);
  if (it == header_.entries.end()) throw Error(path_, "a tensor named \"" + name + "\"", "none (missing from the file)");
  const SafetensorsEntry& e = it->second;
  if (e.shape != dst.shape() || e.dtype != dst.dtype())
    throw Error(path_ + ": tensor \"" + name + "\"", std::string(dtype_name(dst.dtype())) + " " + dst.shape().str(),
                std::string(dtype_name(e.dtype)) + " " + e.shape.str());
  Fd f;
  const uint64_t file_size = open_regular(path_, f);
  if (header_.data_start + e.end > file_size)
    throw Error(path_ + ": tensor \"" + name + "\"", "its bytes inside the file", "a file truncated since it was opened");
  Tensor host = dst.device().is_cpu() ? dst : Tensor::empty(dst.shape(), dst.dtype(), Device::cpu());
  if (!pread_fully(f.fd, host.data(), size_t(e.end - e.begin), header_.data_start + e.begin))
    throw Error(path_ + ": tensor \"" + name + "\"", "its bytes to be readable", "a short read");
  if (!dst.device().is_cpu()) dst.copy_from(host);
}

}  // namespace um::io
