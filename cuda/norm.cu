// CUDA LayerNorm / RMSNorm. One warp per row up to C = 1024 (eight rows per 256-thread block), one
// block per row beyond; 16-byte vector loads when C and every pointer allow, scalar ones otherwise.
// Statistics and all arithmetic are fp32. Weight/bias gradients: per row-chunk partial sums into an
// arena scratch buffer, then one fixed-order sum over chunks per column (no atomics: reproducible).
#include <type_traits>

#include "ultramem/ops/norm.h"

#include "common.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {
namespace {

constexpr int kMaxWarpRowC = 1024;   // up to this width a row is one warp's work
constexpr int kWarpRowThreads = 256; // warp-per-row blocks: 8 rows each
constexpr int kMaxRowBlock = 512;    // block-per-row blocks: at most this many threads
constexpr int kParamCols = 32;       // parameter-gradient partials: columns per block (one per lane)
constexpr int kParamRowThreads = 8;  // ... and row strides per block

// V elements of T moved by one load/store (16 bytes for the vector path).

// The threads that share one row: a warp or the whole block.
template <bool kWarpPerRow>
__device__ __forceinline__ int64_t row_index() {
  return kWarpPerRow ? int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32 : int64_t(blockIdx.x);
}
template <bool kWarpPerRow>
__device__ __forceinline__ int row_lane() {
  return kWarpPerRow ? int(threadIdx.x & 31) : int(threadIdx.x);
}
template <bool kWarpPerRow>
__device__ __forceinline__ int row_threads() {
  return kWarpPerRow ? 32 : int(blockDim.x);
}
template <bool kWarpPerRow>
__device__ __forceinline__ float row_sum(float v) {
  if constexpr (kWarpPerRow)
    return warp_sum(v);
  else
    return block_sum(v);
}

// mean == nullptr: RMSNorm (no centring, mean taken as 0). w/b == nullptr: scale 1 / offset 0.
template <typename T, int V, bool kWarpPerRow>
__global__ void __launch_bounds__(kMaxRowBlock)
    norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                        float* __restrict__ mean, float* __restrict__ rstd, int64_t rows, int C, float eps) {
  const int64_t row = row_index<kWarpPerRow>();
  if (row >= rows) return;  // a whole warp (warp-per-row) or never (one block per row)
  const int lane = row_lane<kWarpPerRow>(), step = row_threads<kWarpPerRow>() * V;
  const T* xr = x + row * C;
  float mu = 0.f;
  if (mean) {
    float s = 0.f;
    for (int c = lane * V; c < C; c += step) {
      Pack<T, V> p = load_pack<V>(xr + c);
#pragma unroll
      for (int k = 0; k < V; ++k) s += to_f32(p.v[k]);
    }
    mu = row_sum<kWarpPerRow>(s) / float(C);
  }
  float ss = 0.f;
  for (int c = lane * V; c < C; c += step) {
    Pack<T, V> p = load_pack<V>(xr + c);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float d = to_f32(p.v[k]) - mu;
      ss += d * d;
    }
  }
  const float rs = rsqrtf(row_sum<kWarpPerRow>(ss) / float(C) + eps);
  T* yr = y + row * C;
  for (int c = lane * V; c < C; c += step) {
    Pack<T, V> p = load_pack<V>(xr + c), pw{}, pb{}, o;
    if (w) pw = load_pack<V>(w + c);
    if (b) pb = load_pack<V>(b + c);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float v = (to_f32(p.v[k]) - mu) * rs;
      if (w) v *= to_f32(pw.v[k]);
      if (b) v += to_f32(pb.v[k]);
      o.v[k] = from_f32<T>(v);
    }
    store_pack<V>(yr + c, o);
  }
  if (lane == 0) {
    if (mean) mean[row] = mu;
    rstd[row] = rs;
  }
}

// dx = rstd * (g - mean_C(g) - xhat * mean_C(g * xhat)), g = dy * w; RMSNorm (mean == nullptr) drops
// the mean_C(g) term.
template <typename T, int V, bool kWarpPerRow>
__global__ void __launch_bounds__(kMaxRowBlock)
    norm_backward_dx_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ mean,
                            const float* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dx, int64_t rows,
                            int C, bool accumulate) {
  const int64_t row = row_index<kWarpPerRow>();
  if (row >= rows) return;
  const int lane = row_lane<kWarpPerRow>(), step = row_threads<kWarpPerRow>() * V;
  const T* xr = x + row * C;
  const T* dyr = dy + row * C;
  const float mu = mean ? mean[row] : 0.f, rs = rstd[row];
  float sum_g = 0.f, sum_gx = 0.f;
  for (int c = lane * V; c < C; c += step) {
    Pack<T, V> px = load_pack<V>(xr + c), pd = load_pack<V>(dyr + c), pw{};
    if (w) pw = load_pack<V>(w + c);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float g = to_f32(pd.v[k]) * (w ? to_f32(pw.v[k]) : 1.f);
      sum_g += g;
      sum_gx += g * (to_f32(px.v[k]) - mu) * rs;
    }
  }
  sum_g = row_sum<kWarpPerRow>(sum_g);
  sum_gx = row_sum<kWarpPerRow>(sum_gx);
  const float mean_g = mean ? sum_g / float(C) : 0.f, mean_gx = sum_gx / float(C);
  T* dxr = dx + row * C;
  for (int c = lane * V; c < C; c += step) {
    Pack<T, V> px = load_pack<V>(xr + c), pd = load_pack<V>(dyr + c), pw{}, old{}, o;
    if (w) pw = load_pack<V>(w + c);
    if (accumulate) old = load_pack<V>(dxr + c);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float g = to_f32(pd.v[k]) * (w ? to_f32(pw.v[k]) : 1.f);
      float xhat = (to_f32(px.v[k]) - mu) * rs;
      float d = rs * (g - mean_g - xhat * mean_gx);
      o.v[k] = from_f32<T>(accumulate ? to_f32(old.v[k]) + d : d);
    }
    store_pack<V>(dxr + c, o);
  }
}

// Block (kParamCols, kParamRowThreads) sums dy * xhat and dy over rows [chunk * chunk_rows, +chunk_rows)
// for kParamCols columns: each thread strides over the chunk's rows, then the kParamRowThreads partials
// of a column are added in a fixed order. Writes part_w/part_b [chunks, C] (either may be null).
template <typename T>
__global__ void norm_param_grad_partial_kernel(const T* __restrict__ x, const float* __restrict__ mean,
                                               const float* __restrict__ rstd, const T* __restrict__ dy,
                                               float* __restrict__ part_w, float* __restrict__ part_b, int64_t rows,
                                               int C, int64_t chunk_rows) {
  __shared__ float sw[kParamRowThreads][kParamCols];
  __shared__ float sb[kParamRowThreads][kParamCols];
  const int c = blockIdx.x * kParamCols + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float aw = 0.f, ab = 0.f;
  if (c < C) {
#pragma unroll 4
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kParamRowThreads) {
      float g = to_f32(dy[r * C + c]);
      float xhat = (to_f32(x[r * C + c]) - (mean ? mean[r] : 0.f)) * rstd[r];
      aw += g * xhat;
      ab += g;
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float tw = 0.f, tb = 0.f;
#pragma unroll
    for (int k = 0; k < kParamRowThreads; ++k) {
      tw += sw[k][threadIdx.x];
      tb += sb[k][threadIdx.x];
    }
    const int64_t o = int64_t(blockIdx.y) * C + c;
    if (part_w) part_w[o] = tw;
    if (part_b) part_b[o] = tb;
  }
}

// Second pass, block (kParamCols, kParamRowThreads): thread (x, y) sums the partials of column x over
// chunks y, y + kParamRowThreads, ... in order, then the kParamRowThreads sums are added in order.
__global__ void norm_param_grad_reduce_kernel(const float* __restrict__ part_w, const float* __restrict__ part_b,
                                              int64_t chunks, int C, float* __restrict__ dw, bool acc_w,
                                              float* __restrict__ db, bool acc_b) {
  __shared__ float sw[kParamRowThreads][kParamCols];
  __shared__ float sb[kParamRowThreads][kParamCols];
  const int c = blockIdx.x * kParamCols + threadIdx.x;
  float aw = 0.f, ab = 0.f;
  if (c < C) {
#pragma unroll 4
    for (int64_t k = threadIdx.y; k < chunks; k += kParamRowThreads) {
      if (dw) aw += part_w[k * C + c];
      if (db) ab += part_b[k * C + c];
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float tw = 0.f, tb = 0.f;
#pragma unroll
    for (int k = 0; k < kParamRowThreads; ++k) {
      tw += sw[k][threadIdx.x];
      tb += sb[k][threadIdx.x];
    }
    if (dw) dw[c] = acc_w ? dw[c] + tw : tw;
    if (db) db[c] = acc_b ? db[c] + tb : tb;
  }
}

template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_as<T>() : nullptr;
}

// The 16-byte path needs C to be a multiple of the vector width and every row pointer 16-byte aligned
// (row starts are then aligned too).
template <typename T>
bool can_vectorize(int C, std::initializer_list<const void*> ptrs) {
  if (C % (16 / int(sizeof(T)))) return false;
  for (const void* p : ptrs)
    if (p && (reinterpret_cast<uintptr_t>(p) & 15u)) return false;
  return true;
}

// Calls launch(V, kWarpPerRow, grid, block) with V and kWarpPerRow as integral constants.
template <typename T, typename F>
void launch_rows(int64_t rows, int C, bool vectorize, F&& launch) {
  constexpr int kV = 16 / int(sizeof(T));
  auto with_width = [&](auto v) {
    constexpr int V = decltype(v)::value;
    if (C <= kMaxWarpRowC) {
      launch(v, std::true_type{}, dim3(ceil_div(rows, kWarpRowThreads / 32)), dim3(kWarpRowThreads));
    } else {
      int vectors = int(ceil_div(C, V));
      int threads = std::min(kMaxRowBlock, (vectors + 31) / 32 * 32);
      launch(v, std::false_type{}, dim3(unsigned(rows)), dim3(threads));
    }
  };
  if (vectorize)
    with_width(std::integral_constant<int, kV>{});
  else
    with_width(std::integral_constant<int, 1>{});
}

int checked_width(const Tensor& x) {
  UM_CHECK(x.dim(-1) <= int64_t(INT32_MAX), "norm: a last dimension below 2^31", x.desc());
  return int(x.dim(-1));
}

void norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                  const Tensor& mean, const Tensor& rstd) {
  const int C = checked_width(x);
  const int64_t rows = x.numel() / C;
  if (rows == 0) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    const T* w = data_or_null<T>(weight);
    const T* b = data_or_null<T>(bias);
    bool vec = can_vectorize<T>(C, {x.data(), w, b, y.data()});
    launch_rows<T>(rows, C, vec, [&](auto v, auto warp, dim3 grid, dim3 block) {
      norm_forward_kernel<T, decltype(v)::value, decltype(warp)::value><<<grid, block, 0, stream()>>>(
          x.data_as<T>(), w, b, y.data_as<T>(), data_or_null<float>(mean), rstd.data_as<float>(), rows, C, eps);
      UM_CUDA_LAUNCHED();
    });
  });
}

void norm_backward_dx(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                      const GradSlot& dx) {
  const int C = checked_width(x);
  const int64_t rows = x.numel() / C;
  if (!dx || rows == 0) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    const T* w = data_or_null<T>(weight);
    bool vec = can_vectorize<T>(C, {x.data(), w, dy.data(), dx.grad.data()});
    launch_rows<T>(rows, C, vec, [&](auto v, auto warp, dim3 grid, dim3 block) {
      norm_backward_dx_kernel<T, decltype(v)::value, decltype(warp)::value><<<grid, block, 0, stream()>>>(
          x.data_as<T>(), w, data_or_null<float>(mean), rstd.data_as<float>(), dy.data_as<T>(),
          dx.grad.data_as<T>(), rows, C, dx.accumulate);
      UM_CUDA_LAUNCHED();
    });
  });
}

void norm_backward_params(const Tensor& x, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                          const GradSlot& dweight, const GradSlot& dbias) {
  if (!dweight && !dbias) return;
  const int C = checked_width(x);
  const int64_t rows = x.numel() / C;
  // Chunk size depends on the shape alone, so the summation order (and the result) is reproducible.
  const int64_t chunk_rows = std::max<int64_t>(64, (rows + 511) / 512);
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;  // <= 512: fits gridDim.y
  float* part_w = nullptr;
  float* part_b = nullptr;
  if (chunks > 0) {
    Arena& arena = arena_for(x.device());
    size_t bytes = size_t(chunks) * size_t(C) * sizeof(float);
    if (dweight) part_w = static_cast<float*>(arena.alloc_bytes(bytes));
    if (dbias) part_b = static_cast<float*>(arena.alloc_bytes(bytes));
    UM_DISPATCH_ACT(x.dtype(), T, {
      dim3 grid(ceil_div(C, kParamCols), unsigned(chunks)), block(kParamCols, kParamRowThreads);
      norm_param_grad_partial_kernel<T><<<grid, block, 0, stream()>>>(
          x.data_as<T>(), data_or_null<float>(mean), rstd.data_as<float>(), dy.data_as<T>(), part_w, part_b, rows,
          C, chunk_rows);
    });
    UM_CUDA_LAUNCHED();
  }
  norm_param_grad_reduce_kernel<<<ceil_div(C, kParamCols), dim3(kParamCols, kParamRowThreads), 0, stream()>>>(
      part_w, part_b, chunks, C, dweight ? dweight.grad.data_as<float>() : nullptr, dweight.accumulate,
      dbias ? dbias.grad.data_as<float>() : nullptr, dbias.accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace

void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                        const Tensor& mean, const Tensor& rstd) {
  norm_forward(x, weight, bias, eps, y, mean, rstd);
}

void rms_norm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& rstd) {
  norm_forward(x, weight, Tensor(), eps, y, Tensor(), rstd);
}

void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                         const Tensor& dy, const GradSlot& dx, const GradSlot& dweight, const GradSlot& dbias) {
  norm_backward_dx(x, weight, mean, rstd, dy, dx);
  norm_backward_params(x, mean, rstd, dy, dweight, dbias);
}

void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                       const GradSlot& dx, const GradSlot& dweight) {
  norm_backward_dx(x, weight, Tensor(), rstd, dy, dx);
  norm_backward_params(x, Tensor(), rstd, dy, dweight, GradSlot());
}

}  // namespace um::cuda
