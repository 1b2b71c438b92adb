// UM_DISPATCH_CPU(dtype, T, body): CPU reference kernels run in f32 (training) and f64 (gradcheck).
#pragma once
#include "ultramem/core/check.h"
#include "ultramem/core/dtype.h"

#define UM_DISPATCH_CPU(dtype, T, ...)                                                     \
  do {                                                                                     \
    switch (dtype) {                                                                       \
      case ::um::DType::f32: { using T = float; __VA_ARGS__; break; }                      \
      case ::um::DType::f64: { using T = double; __VA_ARGS__; break; }                     \
      default:                                                                             \
        throw ::um::Error(UM_HERE, "an f32 or f64 tensor on the CPU", ::um::dtype_name(dtype)); \
    }                                                                                      \
  } while (0)
