// safetensors files (the Hugging Face format PyTorch users load with safetensors.torch.load_file):
// an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__"},
// then the raw data. The reader validates everything before touching data: header length, JSON,
// dtypes, shapes against byte ranges, ranges inside the file, no overlaps.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "ultramem/core/tensor.h"

namespace um::io {

struct NamedTensor {
  std::string name;
  Tensor tensor;  // any device; copied to the host for writing
};

// Writes atomically: a temporary file, fsync, rename. Returns the file's checksum (io/checksum.h)
// and, through `bytes`, its size.
uint64_t save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                          const std::map<std::string, std::string>& metadata = {}, uint64_t* bytes = nullptr);

struct SafetensorsEntry {
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // byte range in the data section
};

struct SafetensorsHeader {
  uint64_t data_start = 0;  // file offset of the data section (8 + header length)
  std::map<std::string, SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};

// Validates the header of a safetensors file of `file_size` bytes whose first `available` bytes are
// `file_prefix` (at least the 8-byte length and the header; the data need not be there). Every problem
// (a length beyond the file or over 100 MiB, bad JSON, an unknown dtype, a shape that does not match its
// byte range, a range outside the data section, overlapping tensors) is an Error naming `path` and the tensor.
SafetensorsHeader parse_safetensors_header(const void* file_prefix, size_t available, uint64_t file_size,
                                           const std::string& path);

class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  using Entry = SafetensorsEntry;
  const std::map<std::string, Entry>& entries() const { return header_.entries; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  bool has(const std::string& name) const { return header_.entries.count(name) != 0; }
  // Reads `name` into `dst` (any device), checking shape and dtype against dst; errors name the file
  // and the tensor.
  void read_into(const std::string& name, const Tensor& dst) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  SafetensorsHeader header_;
};

}  // namespace um::io
