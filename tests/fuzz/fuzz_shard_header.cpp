// A .bin token shard: the header's validation against the file's size (and its checksum), then the
// token reads a loader would do, bounds-checked by the sanitizers.
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "ultramem/data/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (bool verify : {false, true}) {
    UM_FUZZ_GUARD({
      um::data::ShardHeader h = um::data::parse_shard_header(data, size, "fuzz.bin", verify);
      const uint8_t* tokens = data + um::data::kShardHeaderBytes;
      uint64_t bad = 0;
      for (uint64_t i = 0; i < h.token_count; ++i) {
        uint32_t t = 0;
        std::memcpy(&t, tokens + i * h.token_bytes, h.token_bytes);
        bad += t >= h.vocab_size;  // Shard::read turns these into errors
      }
      (void)bad;
    });
  }
  return 0;
}
