// A safetensors file: the 8-byte length, the JSON header (dtypes, shapes, data_offsets, overlaps),
// then a copy of every tensor's bytes as read_into would make, bounds-checked by the sanitizers.
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "ultramem/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  UM_FUZZ_GUARD({
    um::io::SafetensorsHeader h = um::io::parse_safetensors_header(data, size, size, "fuzz.safetensors");
    std::vector<uint8_t> buf;
    for (const auto& [name, e] : h.entries) {
      if (uint64_t(e.shape.numel()) * um::dtype_size(e.dtype) != e.end - e.begin) std::abort();
      buf.resize(size_t(e.end - e.begin));
      if (!buf.empty()) std::memcpy(buf.data(), data + h.data_start + e.begin, buf.size());
    }
  });
  return 0;
}
