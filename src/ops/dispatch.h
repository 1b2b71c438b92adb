// UM_DISPATCH_DEVICE(tensor, fn, args...): calls um::cpu::fn or um::cuda::fn by the tensor's device.
// The one place where an op picks its backend.
#pragma once
#include "ultramem/core/check.h"
#include "ultramem/core/tensor.h"

#if ULTRAMEM_CUDA
#define UM_DISPATCH_DEVICE(t, fn, ...) \
  ((t).device().is_cpu() ? ::um::cpu::fn(__VA_ARGS__) : ::um::cuda::fn(__VA_ARGS__))
#else
#define UM_DISPATCH_DEVICE(t, fn, ...)                                                           \
  ((t).device().is_cpu() ? ::um::cpu::fn(__VA_ARGS__)                                            \
                         : throw ::um::Error(#fn, "a CPU tensor in a build without CUDA", (t).desc()))
#endif
