// Element types. bf16 is stored as its raw 16 bits on the host; conversions round to nearest even.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "ultramem/core/check.h"

namespace um {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, u16, u32 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: case DType::u32: return 4;
    case DType::bf16: case DType::f16: case DType::u16: return 2;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u16: return "u16";
    case DType::u32: return "u32";
  }
  return "?";
}

inline DType dtype_from_name(const std::string& s, const std::string& where) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u16,
                  DType::u32})
    if (s == dtype_name(t)) return t;
  throw Error(where, "a dtype name (f32, f64, bf16, f16, i32, i64, u16, u32)", "\"" + s + "\"");
}

inline bool is_float(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}

// Host-side bf16 helpers (the CUDA side uses __nv_bfloat16 from cuda_bf16.h).
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace um
