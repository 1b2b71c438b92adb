// Catch2 entry point. When asked to run only [gpu] tests on a machine without a CUDA device it exits
// with 77, which ctest reports as "Skipped" (SKIP_RETURN_CODE), so a CPU-only run shows the skip.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>

#include "ultramem/core/device.h"

int main(int argc, char** argv) {
  bool gpu_only = false;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "[gpu]") == 0) gpu_only = true;
  if (gpu_only && !um::cuda_available()) {
    std::printf("[gpu] tests skipped: no CUDA device (built with CUDA: %s)\n", ULTRAMEM_CUDA ? "yes" : "no");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
