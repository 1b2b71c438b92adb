// A checkpoint's manifest.json: format, version, step, and the file list (names that must stay
// inside the checkpoint directory, sizes, 16-hex-digit checksums).
#include <string>

#include "fuzz_common.h"
#include "ultramem/io/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  UM_FUZZ_GUARD({
    um::io::CheckpointManifest m =
        um::io::parse_checkpoint_manifest(std::string(reinterpret_cast<const char*>(data), size), "manifest.json");
    for (const auto& f : m.files)
      if (f.name.empty() || f.name.find('/') != std::string::npos || f.name == "..") std::abort();
  });
  return 0;
}
