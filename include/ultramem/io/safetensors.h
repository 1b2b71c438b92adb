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

// Writes atomically: a temporary file, fsync, rename.
void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  struct Entry {
    DType dtype;
    Shape shape;
    uint64_t begin, end;  // byte range in the data section
  };
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  // Reads `name` into `dst` (any device), checking shape and dtype against dst; errors name the file
  // and the tensor.
  void read_into(const std::string& name, const Tensor& dst) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  uint64_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace um::io
