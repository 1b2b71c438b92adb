// A raw .npy token array: the numpy header (magic, version, header length, descr, fortran_order,
// shape) against the file's size, then a read of every token the layout promises.
#include <cstring>

#include "fuzz_common.h"
#include "ultramem/data/raw_tokens.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  UM_FUZZ_GUARD({
    um::data::NpyLayout l = um::data::parse_npy(data, size, "fuzz.npy");
    uint64_t sum = 0;
    for (uint64_t i = 0; i < l.count; ++i) {
      uint32_t t = 0;
      std::memcpy(&t, data + l.data_offset + i * l.token_bytes, l.token_bytes);
      sum += t;
    }
    (void)sum;
  });
  return 0;
}
