// CUDA GELU (tanh approximation), SwiGLU and silu_mul: elementwise, fp32 math (activation_math.cuh),
// 16-byte vector loads when the sizes and pointers allow (a scalar path otherwise).
#include "ultramem/ops/activation.h"

#include "activation_math.cuh"
#include "common.cuh"

namespace um::cuda {
namespace {

// Grid-stride loops over `n` packs of V elements.
template <typename T, int V>
__global__ void gelu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    Pack<T, V> p = load_pack<V>(x + i * V), o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(gelu_value(to_f32(p.v[k])));
    store_pack<V>(y + i * V, o);
  }
}

template <typename T, int V>
__global__ void gelu_backward_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t n,
                                     bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    Pack<T, V> px = load_pack<V>(x + i * V), pd = load_pack<V>(dy + i * V), old{}, o;
    if (accumulate) old = load_pack<V>(dx + i * V);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float d = to_f32(pd.v[k]) * gelu_derivative(to_f32(px.v[k]));
      o.v[k] = from_f32<T>(accumulate ? to_f32(old.v[k]) + d : d);
    }
    store_pack<V>(dx + i * V, o);
  }
}

// x [rows, 2h] = [gate | up], y [rows, h]; pack i covers columns [k, k + V) of row r, hv = h / V. A
// non-null scale multiplies row r's outputs by scale[r].
template <typename T, int V>
__global__ void swiglu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ scale,
                                      int64_t rows, int64_t h) {
  const int64_t hv = h / V, n = rows * hv;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / hv, k = (i - r * hv) * V;
    const T* xr = x + r * 2 * h;
    const float sr = scale ? scale[r] : 1.f;
    Pack<T, V> pg = load_pack<V>(xr + k), pu = load_pack<V>(xr + h + k), o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(sr * silu_mul_value(to_f32(pg.v[j]), to_f32(pu.v[j])));
    store_pack<V>(y + r * h + k, o);
  }
}

// d/dgate = dy * up * s * (1 + g (1 - s)), d/dup = dy * g * s, s = sigmoid(gate). One warp per row
// (grid-stride over rows), its lanes over the row's packs, so a warp's two stores stay inside one row's
// gate and up spans: the flat mapping of the forward split most warps across two rows at the MoE expert
// widths and ran 1.2-1.5x slower there (H200: 259 vs 178 us at h 1632, 311 vs 257 at h 408, 176 vs 172
// at the dense h 3264). The forward, which stores one span, stays flat (the row form was slower there).
template <typename T, int V>
__global__ void swiglu_backward_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                       int64_t rows, int64_t h, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t hv = h / V, warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const T* xr = x + r * 2 * h;
    const T* dyr = dy + r * h;
    T* dxr = dx + r * 2 * h;
#pragma unroll 2
    for (int64_t p = lane; p < hv; p += 32) {
      const int64_t k = p * V;
      Pack<T, V> pg = load_pack<V>(xr + k), pu = load_pack<V>(xr + h + k), pd = load_pack<V>(dyr + k);
      Pack<T, V> old_g{}, old_u{}, og, ou;
      if (accumulate) {
        old_g = load_pack<V>(dxr + k);
        old_u = load_pack<V>(dxr + h + k);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float dgate, dup;
        silu_mul_grads(to_f32(pg.v[j]), to_f32(pu.v[j]), to_f32(pd.v[j]), dgate, dup);
        og.v[j] = from_f32<T>(accumulate ? to_f32(old_g.v[j]) + dgate : dgate);
        ou.v[j] = from_f32<T>(accumulate ? to_f32(old_u.v[j]) + dup : dup);
      }
      store_pack<V>(dxr + k, og);
      store_pack<V>(dxr + h + k, ou);
    }
  }
}

// y = silu(gate) * up over `n` packs of V elements.
template <typename T, int V>
__global__ void silu_mul_forward_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ y,
                                        int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    Pack<T, V> pg = load_pack<V>(gate + i * V), pu = load_pack<V>(up + i * V), o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(silu_mul_value(to_f32(pg.v[j]), to_f32(pu.v[j])));
    store_pack<V>(y + i * V, o);
  }
}

// The gradients of silu_mul (activation_math.cuh) into dgate and dup; a null output is skipped
// (the test is uniform over the grid).
template <typename T, int V>
__global__ void silu_mul_backward_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                                         const T* __restrict__ dy, T* __restrict__ dgate, bool acc_gate,
                                         T* __restrict__ dup, bool acc_up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    Pack<T, V> pg = load_pack<V>(gate + i * V), pu = load_pack<V>(up + i * V), pd = load_pack<V>(dy + i * V);
    Pack<T, V> old_g{}, old_u{}, og, ou;
    if (dgate && acc_gate) old_g = load_pack<V>(dgate + i * V);
    if (dup && acc_up) old_u = load_pack<V>(dup + i * V);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float vg, vu;
      silu_mul_grads(to_f32(pg.v[j]), to_f32(pu.v[j]), to_f32(pd.v[j]), vg, vu);
      og.v[j] = from_f32<T>(acc_gate ? to_f32(old_g.v[j]) + vg : vg);
      ou.v[j] = from_f32<T>(acc_up ? to_f32(old_u.v[j]) + vu : vu);
    }
    if (dgate) store_pack<V>(dgate + i * V, og);
    if (dup) store_pack<V>(dup + i * V, ou);
  }
}

unsigned grid_for(int64_t n) { return std::min<unsigned>(ceil_div(n, 256), unsigned(sm_count()) * 16u); }
// The SwiGLU backward: a warp per row, 8 per block.
unsigned row_grid_for(int64_t rows) { return std::min<unsigned>(ceil_div(rows, 8), unsigned(sm_count()) * 16u); }

// 16-byte packs need the element count (per row for SwiGLU) to be a multiple of the vector width and
// every pointer 16-byte aligned.
template <typename T>
bool can_vectorize(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % (16 / int64_t(sizeof(T)))) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) & 15u) return false;
  return true;
}

constexpr int kThreads = 256;

}  // namespace

void gelu_forward(const Tensor& x, const Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (can_vectorize<T>(n, {x.data(), y.data()}))
      gelu_forward_kernel<T, kV><<<grid_for(n / kV), kThreads, 0, stream()>>>(x.data_as<T>(), y.data_as<T>(), n / kV);
    else
      gelu_forward_kernel<T, 1><<<grid_for(n), kThreads, 0, stream()>>>(x.data_as<T>(), y.data_as<T>(), n);
  });
  UM_CUDA_LAUNCHED();
}

void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  const int64_t n = x.numel();
  if (n == 0) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (can_vectorize<T>(n, {x.data(), dy.data(), dx.data()}))
      gelu_backward_kernel<T, kV><<<grid_for(n / kV), kThreads, 0, stream()>>>(
          x.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), n / kV, accumulate);
    else
      gelu_backward_kernel<T, 1><<<grid_for(n), kThreads, 0, stream()>>>(x.data_as<T>(), dy.data_as<T>(),
                                                                         dx.data_as<T>(), n, accumulate);
  });
  UM_CUDA_LAUNCHED();
}

void swiglu_forward(const Tensor& x, const Tensor& y, const Tensor& row_scale) {
  const int64_t h = x.dim(-1) / 2, rows = x.numel() / (2 * h);
  if (rows == 0) return;
  const float* scale = row_scale.defined() ? row_scale.data_as<float>() : nullptr;
  UM_DISPATCH_ACT(x.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (can_vectorize<T>(h, {x.data(), y.data()}))
      swiglu_forward_kernel<T, kV><<<grid_for(rows * h / kV), kThreads, 0, stream()>>>(x.data_as<T>(), y.data_as<T>(),
                                                                                        scale, rows, h);
    else
      swiglu_forward_kernel<T, 1><<<grid_for(rows * h), kThreads, 0, stream()>>>(x.data_as<T>(), y.data_as<T>(), scale,
                                                                                 rows, h);
  });
  UM_CUDA_LAUNCHED();
}

void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  const int64_t h = x.dim(-1) / 2, rows = x.numel() / (2 * h);
  if (rows == 0) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (can_vectorize<T>(h, {x.data(), dy.data(), dx.data()}))
      swiglu_backward_kernel<T, kV><<<row_grid_for(rows), kThreads, 0, stream()>>>(
          x.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), rows, h, accumulate);
    else
      swiglu_backward_kernel<T, 1><<<row_grid_for(rows), kThreads, 0, stream()>>>(
          x.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), rows, h, accumulate);
  });
  UM_CUDA_LAUNCHED();
}

void silu_mul_forward(const Tensor& gate, const Tensor& up, const Tensor& y) {
  const int64_t n = gate.numel();
  if (n == 0) return;
  UM_DISPATCH_ACT(gate.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    if (can_vectorize<T>(n, {gate.data(), up.data(), y.data()}))
      silu_mul_forward_kernel<T, kV><<<grid_for(n / kV), kThreads, 0, stream()>>>(
          gate.data_as<T>(), up.data_as<T>(), y.data_as<T>(), n / kV);
    else
      silu_mul_forward_kernel<T, 1><<<grid_for(n), kThreads, 0, stream()>>>(gate.data_as<T>(), up.data_as<T>(),
                                                                            y.data_as<T>(), n);
  });
  UM_CUDA_LAUNCHED();
}

void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, bool acc_gate,
                       const Tensor& dup, bool acc_up) {
  const int64_t n = gate.numel();
  if (n == 0 || (!dgate && !dup)) return;
  UM_DISPATCH_ACT(gate.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    T* pg = dgate ? dgate.data_as<T>() : nullptr;
    T* pu = dup ? dup.data_as<T>() : nullptr;
    if (can_vectorize<T>(n, {gate.data(), up.data(), dy.data(), pg, pu}))
      silu_mul_backward_kernel<T, kV><<<grid_for(n / kV), kThreads, 0, stream()>>>(
          gate.data_as<T>(), up.data_as<T>(), dy.data_as<T>(), pg, acc_gate, pu, acc_up, n / kV);
    else
      silu_mul_backward_kernel<T, 1><<<grid_for(n), kThreads, 0, stream()>>>(
          gate.data_as<T>(), up.data_as<T>(), dy.data_as<T>(), pg, acc_gate, pu, acc_up, n);
  });
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
