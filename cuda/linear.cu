// CUDA linear: cuBLASLt GEMMs (linear_cublaslt.cu) plus the small kernels around them.
//
// Row-major tensors are column-major transposes, so with x [rows, in], W [out, in], y [rows, out]:
//   forward  y^T [out, rows] = W (op T)  . x^T          m = out, n = rows, k = in    (epilogue: bias, GELU)
//   dx       dx^T [in, rows] = W^T       . dz^T         m = in,  n = rows, k = out
//   dW       dW^T [in, out]  = x^T       . dz (op T)    m = in,  n = out,  k = rows  (f32 output, beta = acc)
// In column-major terms the bias runs along D's rows (length out), as cuBLASLt's BIAS epilogue wants.
// GELU_AUX stores the pre-activation for the backward pass; it needs the aux leading dimension (out) to
// be a multiple of 8, so other widths (and any combination cuBLASLt declines) run a plain GEMM followed
// by bias_activation_kernel.
//
// The bias gradient is a deterministic two-pass column sum: chunks of rows give f32 partial sums
// [chunks, out], then the chunks are added in a fixed order. With GELU the first pass also computes
// dz = dy * gelu'(pre), which the two GEMMs then read.
#include "ultramem/ops/linear.h"

#include <type_traits>

#include "linear_cublaslt.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

__device__ __forceinline__ float gelu_value(float v) {
  const float t = tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
  return 0.5f * v * (1.f + t);
}

// The hardware tanh (MUFU, relative error ~2^-11) is below bf16's rounding (2^-9), and tanhf's ~20
// instructions made the bf16 GELU backward pass compute-bound; f32 keeps tanhf for the 1e-5 tests.
template <typename T>
__device__ __forceinline__ float gelu_derivative(float v) {
  const float u = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
  float t;
  if constexpr (std::is_same_v<T, bf16>)
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(u));
  else
    t = tanhf(u);
  return 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
}

// Forward epilogue where cuBLASLt cannot fuse it: y holds x . W^T; pre = y + b (when pre is given),
// y = act(y + b).
template <typename T>
__global__ void bias_activation_kernel(T* y, T* pre, const T* b, int64_t n, int64_t cols, bool gelu) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f32(y[i]) + (b ? to_f32(b[i % cols]) : 0.f);
    if (pre) pre[i] = from_f32<T>(v);
    y[i] = from_f32<T>(gelu ? gelu_value(v) : v);
  }
}

// Column-sum pass 1. A block covers 32*V consecutive columns (each thread V of them through one 16-byte
// access when the width and pointers allow, else V = 1) by one chunk of rows; its 8 row lanes each sum
// every 8th row of the chunk, then the lane sums are added in a fixed order. With kGelu the pass writes
// dz = dy * gelu'(pre) and sums dz as stored (so db matches the dz the GEMMs read).
constexpr int kSumThreads = 256, kSumRowLanes = 8;

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V, bool kGelu>
__global__ void __launch_bounds__(kSumThreads)
    column_partials_kernel(const T* __restrict__ dy, const T* __restrict__ pre, T* __restrict__ dz,
                           float* __restrict__ partials, int64_t rows, int64_t cols, int64_t rows_per_chunk) {
  constexpr int kBlockCols = 32 * V;
  __shared__ float lane_sums[kSumRowLanes][V][32];  // [row lane][element][column lane]: conflict-free
  const int lane = threadIdx.x & 31, row_lane = threadIdx.x >> 5;
  const int64_t col0 = int64_t(blockIdx.x) * kBlockCols, col = col0 + int64_t(lane) * V;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float s[V];
#pragma unroll
  for (int v = 0; v < V; ++v) s[v] = 0.f;
  if (col < cols) {  // V > 1 only when cols % V == 0: a thread's V columns are all in range
#pragma unroll 4
    for (int64_t r = r0 + row_lane; r < r1; r += kSumRowLanes) {
      const int64_t i = r * cols + col;
      Pack<T, V> g = *reinterpret_cast<const Pack<T, V>*>(dy + i);
      if constexpr (kGelu) {
        const Pack<T, V> p = *reinterpret_cast<const Pack<T, V>*>(pre + i);
#pragma unroll
        for (int v = 0; v < V; ++v) g.v[v] = from_f32<T>(to_f32(g.v[v]) * gelu_derivative<T>(to_f32(p.v[v])));
        *reinterpret_cast<Pack<T, V>*>(dz + i) = g;
      }
#pragma unroll
      for (int v = 0; v < V; ++v) s[v] += to_f32(g.v[v]);
    }
  }
  if (partials == nullptr) return;  // uniform over the block: GELU backward without a bias
#pragma unroll
  for (int v = 0; v < V; ++v) lane_sums[row_lane][v][lane] = s[v];
  __syncthreads();
  for (int c = threadIdx.x; c < kBlockCols; c += kSumThreads) {
    if (col0 + c >= cols) break;
    float t = 0.f;
#pragma unroll
    for (int q = 0; q < kSumRowLanes; ++q) t += lane_sums[q][c % V][c / V];
    partials[int64_t(blockIdx.y) * cols + col0 + c] = t;
  }
}

// Column-sum pass 2: db[c] = (accumulate ? db[c] : 0) + the chunks' partial sums. Block (32, 16): 32
// columns, 16 lanes over the chunks, lane sums added in a fixed order.
constexpr int kFinalCols = 32, kFinalLanes = 16;

template <typename G>
__global__ void __launch_bounds__(kFinalCols* kFinalLanes)
    column_finalize_kernel(const float* __restrict__ partials, int64_t chunks, int64_t cols, G* db, bool accumulate) {
  __shared__ float lane_sums[kFinalLanes][kFinalCols + 1];
  const int64_t col = int64_t(blockIdx.x) * kFinalCols + threadIdx.x;
  float s = 0.f;
  if (col < cols) {
#pragma unroll 8
    for (int64_t c = threadIdx.y; c < chunks; c += kFinalLanes) s += partials[c * cols + col];
  }
  lane_sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float t = 0.f;
    for (int q = 0; q < kFinalLanes; ++q) t += lane_sums[q][threadIdx.x];
    db[col] = from_f32<G>((accumulate ? to_f32(db[col]) : 0.f) + t);
  }
}

unsigned elementwise_grid(int64_t n) { return std::min<unsigned>(ceil_div(n, 256), unsigned(sm_count()) * 16u); }

void fallback_epilogue(const Tensor& y, const Tensor& pre, const Tensor& b, bool gelu) {
  const int64_t n = y.numel(), cols = y.dim(1);
  UM_DISPATCH_ACT(y.dtype(), T, {
    bias_activation_kernel<T><<<elementwise_grid(n), 256, 0, stream()>>>(
        y.data_as<T>(), pre.defined() ? pre.data_as<T>() : nullptr, b.defined() ? b.data_as<T>() : nullptr, n,
        cols, gelu);
  });
  UM_CUDA_LAUNCHED();
}

// Pass 1 over dy [rows, cols]: dz (GELU) and/or the bias-gradient partials [chunks, cols]. 64 rows per
// chunk give a narrow layer (768 columns) enough blocks to fill the GPU; the chunking depends on the shape
// only, so the summation order is the same on every GPU.
int64_t rows_per_chunk(int64_t rows) { return std::max<int64_t>(64, (rows + 65534) / 65535); }

bool aligned16(const Tensor& t) { return !t.defined() || reinterpret_cast<uintptr_t>(t.data()) % 16 == 0; }

template <typename T, int V>
void launch_column_partials(const Tensor& dy, const Tensor& pre, const Tensor& dz, float* partials, bool gelu) {
  const int64_t rows = dy.dim(0), cols = dy.dim(1), rpc = rows_per_chunk(rows);
  const dim3 grid(ceil_div(cols, 32 * V), ceil_div(rows, rpc));
  if (gelu)
    column_partials_kernel<T, V, true><<<grid, kSumThreads, 0, stream()>>>(dy.data_as<T>(), pre.data_as<T>(),
                                                                            dz.data_as<T>(), partials, rows, cols, rpc);
  else
    column_partials_kernel<T, V, false><<<grid, kSumThreads, 0, stream()>>>(dy.data_as<T>(), nullptr, nullptr,
                                                                             partials, rows, cols, rpc);
  UM_CUDA_LAUNCHED();
}

void column_partials(const Tensor& dy, const Tensor& pre, const Tensor& dz, const Tensor& partials, bool gelu) {
  float* part = partials.defined() ? partials.data_as<float>() : nullptr;
  UM_DISPATCH_ACT(dy.dtype(), T, {
    constexpr int V = 16 / int(sizeof(T));
    const bool vector = dy.dim(1) % V == 0 && aligned16(dy) && (!gelu || (aligned16(pre) && aligned16(dz)));
    if (vector)
      launch_column_partials<T, V>(dy, pre, dz, part, gelu);
    else
      launch_column_partials<T, 1>(dy, pre, dz, part, gelu);
  });
}

void column_finalize(const Tensor& partials, int64_t chunks, const GradSlot& db) {
  const int64_t cols = db.grad.numel();
  const float* part = partials.defined() ? partials.data_as<float>() : nullptr;
  UM_DISPATCH_ACT(db.grad.dtype(), G, {
    column_finalize_kernel<G><<<ceil_div(cols, kFinalCols), dim3(kFinalCols, kFinalLanes), 0, stream()>>>(
        part, chunks, cols, db.grad.data_as<G>(), db.accumulate);
  });
  UM_CUDA_LAUNCHED();
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& W, const Tensor& b, ops::Activation act, const Tensor& y,
                    const Tensor& pre) {
  const int64_t rows = x.dim(0), in = x.dim(1), out = W.dim(0);
  if (rows == 0) return;
  const bool gelu = act == ops::Activation::gelu, bias = b.defined();
  const cudaDataType_t type = lt_type(x.dtype());
  LtGemm g;
  g.trans_a = true;
  g.m = out, g.n = rows, g.k = in;
  g.a = W.data(), g.lda = in, g.a_type = type;
  g.b = x.data(), g.ldb = in, g.b_type = type;
  g.d = y.data(), g.ldd = out, g.d_type = type;
  g.bias = bias ? b.data() : nullptr;
  bool fusable = true;
  if (gelu && pre.defined()) {
    // GELU_AUX: the aux leading dimension must be a multiple of 8 (cublasLt.h, EPILOGUE_AUX_LD).
    fusable = out % 8 == 0 && reinterpret_cast<uintptr_t>(pre.data()) % 16 == 0;
    g.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    g.aux = pre.data(), g.aux_ld = out;
  } else if (gelu) {
    g.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  } else {
    g.epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  }
  if (fusable && lt_gemm(g)) return;
  g.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  g.bias = nullptr, g.aux = nullptr, g.aux_ld = 0;
  UM_CHECK(lt_gemm(g), "a cuBLASLt algorithm for the linear forward GEMM",
           x.desc(), " . ", W.desc(), "^T");
  if (bias || gelu) fallback_epilogue(y, pre, b, gelu);
}

void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const Tensor& pre, ops::Activation act,
                     const GradSlot& dx, const GradSlot& dW, const GradSlot& db) {
  const int64_t rows = x.dim(0), in = x.dim(1), out = W.dim(0);
  const bool gelu = act == ops::Activation::gelu;
  const Device dev = x.device();
  const cudaDataType_t type = lt_type(x.dtype());

  // Pass 1: dz (with GELU) and the bias-gradient partials, in one read of dy.
  Tensor dz = dy, partials;
  const int64_t chunks = rows > 0 ? int64_t(ceil_div(rows, rows_per_chunk(rows))) : 0;
  if (gelu) dz = alloc_activation(dy.shape(), dy.dtype(), dev);
  if (db && chunks > 0) partials = alloc_activation(Shape{chunks, out}, DType::f32, dev);
  if (rows > 0 && (gelu || db)) column_partials(dy, pre, dz, partials, gelu);

  if (dx && rows > 0) {
    LtGemm g;
    g.m = in, g.n = rows, g.k = out;
    g.a = W.data(), g.lda = in, g.a_type = type;
    g.b = dz.data(), g.ldb = out, g.b_type = type;
    g.d = dx.grad.data(), g.ldd = in, g.d_type = type;
    g.accumulate = dx.accumulate;
    UM_CHECK(lt_gemm(g), "a cuBLASLt algorithm for the linear dx GEMM", dy.desc(), " . ", W.desc());
  }
  if (dW) {
    if (rows == 0) {
      if (!dW.accumulate) dW.grad.zero_();
    } else {
      LtGemm g;
      g.trans_b = true;
      g.m = in, g.n = out, g.k = rows;
      g.a = x.data(), g.lda = in, g.a_type = type;
      g.b = dz.data(), g.ldb = out, g.b_type = type;
      g.d = dW.grad.data(), g.ldd = in, g.d_type = lt_type(dW.grad.dtype());
      g.accumulate = dW.accumulate;
      UM_CHECK(lt_gemm(g), "a cuBLASLt algorithm for the linear dW GEMM", dy.desc(), "^T . ", x.desc());
    }
  }
  if (db) column_finalize(partials, chunks, db);
}

}  // namespace um::cuda
