// libFuzzer targets (tests/fuzz/run_fuzzers.sh): each feeds arbitrary bytes to one parser of
// untrusted input. A parser may only return or throw um::Error (a clear message naming the file and
// the field); any other exception is a bug and aborts, as do the sanitizers' findings.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "ultramem/core/check.h"

#define UM_FUZZ_GUARD(body)                                                                      \
  try {                                                                                          \
    body;                                                                                        \
  } catch (const um::Error&) {                                                                   \
  } catch (const std::exception& e) {                                                            \
    std::fprintf(stderr, "fuzz: an exception that is not um::Error escaped: %s\n", e.what());   \
    std::abort();                                                                                \
  }
