// CUDA grouped linear. Mode "auto" (the default): on a Hopper GPU with bf16 tensors and widths that are
// multiples of 8, our own TMA + wgmma grouped GEMM (grouped_gemm_sm90.cu), one launch per product for
// any number of groups; elsewhere above 16 non-empty groups one cublasGemmGroupedBatchedEx call, with 16
// or fewer one cublasGemmEx per group (the fastest cuBLAS form for a few large experts).
// UM_GROUPED_GEMM=grouped|loop forces a cuBLAS path (any other value is an error). Where cuBLAS declines
// a type combination for the grouped call it loops.
//
// Row-major tensors are column-major transposes (as cuda/linear.cu), for group g with n_g rows and W_g
// [out, in] (out_in; in_out stores W_g^T, which flips W's op and swaps dW's operands):
//   forward  y_g^T [out, n_g] = W_g (op T) . x_g^T     m = out, n = n_g, k = in
//   dx       dx_g^T [in, n_g] = W_g^T      . dy_g^T    m = in,  n = n_g, k = out
//   dW       dW_g^T [in, out] = x_g^T      . dy_g (op T)  m = in, n = out, k = n_g   (f32 out, beta = acc)
//   in_out:  dW_g^T [out, in] = dy_g^T     . x_g (op T)   m = out, n = in, k = n_g
// Sizes are host values (the MoE plan copied them to the host), so building the problem list costs no
// synchronisation. The grouped call wants device arrays of A/B/C pointers: a one-block kernel writes
// them from kernel parameters (no host-to-device copy from pageable memory, which would synchronise).
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include <cublas_v2.h>

#include "common.cuh"
#include "grouped_gemm_sm90.cuh"
#include "ultramem/core/arena.h"
#include "ultramem/ops/grouped_linear.h"

namespace um::cuda {
namespace {

struct Problem {
  cublasOperation_t ta, tb;
  int m, n, k;
  const void* a;
  int lda;
  const void* b;
  int ldb;
  void* c;
  int ldc;
};

constexpr int kPtrChunk = 128;  // 3 x 128 pointers = 3 KiB of kernel parameters
struct PtrChunk {
  const void* a[kPtrChunk];
  const void* b[kPtrChunk];
  void* c[kPtrChunk];
};

__global__ void write_pointers_kernel(PtrChunk chunk, int count, const void** a, const void** b, void** c) {
  const int i = threadIdx.x;
  if (i < count) a[i] = chunk.a[i], b[i] = chunk.b[i], c[i] = chunk.c[i];
}

std::mutex g_mutex;

cublasHandle_t handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t x;
    UM_CUBLAS(cublasCreate(&x));
    return x;
  }();
  return h;
}

constexpr size_t kAutoGroupedAbove = 16;  // "auto" on cuBLAS: the grouped call above this many groups, else the loop

bool known_mode(const std::string& m) { return m == "auto" || m == "grouped" || m == "loop"; }

std::string& mode_ref() {
  static std::string m = [] {
    const char* e = std::getenv("UM_GROUPED_GEMM");
    const std::string v = e && *e ? e : "auto";
    UM_CHECK(known_mode(v), "UM_GROUPED_GEMM of auto, grouped or loop", v);
    return v;
  }();
  return m;
}

// Type combinations cublasGemmGroupedBatchedEx declined once: they go straight to the loop.
std::map<std::pair<int, int>, bool>& declined() {
  static std::map<std::pair<int, int>, bool> m;
  return m;
}

void run_loop(const std::vector<Problem>& ps, cudaDataType_t ab, cudaDataType_t ct, bool accumulate) {
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  for (const Problem& p : ps)
    UM_CUBLAS(cublasGemmEx(handle(), p.ta, p.tb, p.m, p.n, p.k, &alpha, p.a, ab, p.lda, p.b, ab, p.ldb, &beta, p.c, ct,
                           p.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Returns false when cuBLAS does not support this grouped call (nothing was run).
bool run_grouped(const std::vector<Problem>& ps, cudaDataType_t ab, cudaDataType_t ct, bool accumulate, Device dev) {
  const int G = int(ps.size());
  std::vector<cublasOperation_t> ta(G), tb(G);
  std::vector<int> m(G), n(G), k(G), lda(G), ldb(G), ldc(G), group_size(G, 1);
  std::vector<float> alpha(G, 1.f), beta(G, accumulate ? 1.f : 0.f);
  auto** pa = static_cast<const void**>(arena_for(dev).alloc_bytes(size_t(G) * sizeof(void*)));
  auto** pb = static_cast<const void**>(arena_for(dev).alloc_bytes(size_t(G) * sizeof(void*)));
  auto** pc = static_cast<void**>(arena_for(dev).alloc_bytes(size_t(G) * sizeof(void*)));
  for (int i = 0; i < G; ++i) {
    const Problem& p = ps[size_t(i)];
    ta[i] = p.ta, tb[i] = p.tb, m[i] = p.m, n[i] = p.n, k[i] = p.k, lda[i] = p.lda, ldb[i] = p.ldb, ldc[i] = p.ldc;
  }
  for (int c0 = 0; c0 < G; c0 += kPtrChunk) {
    PtrChunk chunk{};
    const int count = std::min(kPtrChunk, G - c0);
    for (int i = 0; i < count; ++i) {
      const Problem& p = ps[size_t(c0 + i)];
      chunk.a[i] = p.a, chunk.b[i] = p.b, chunk.c[i] = p.c;
    }
    write_pointers_kernel<<<1, kPtrChunk, 0, stream()>>>(chunk, count, pa + c0, pb + c0, pc + c0);
    UM_CUDA_LAUNCHED();
  }
  const cublasStatus_t s = cublasGemmGroupedBatchedEx(
      handle(), ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(), pa, ab, lda.data(), pb, ab,
      ldb.data(), beta.data(), pc, ct, ldc.data(), G, group_size.data(), CUBLAS_COMPUTE_32F);
  // NOT_SUPPORTED / INVALID_VALUE for a type combination the grouped kernels lack (bf16 in, f32 out is
  // not in every cuBLAS's table): the caller remembers it and loops; a real error resurfaces there.
  return s == CUBLAS_STATUS_SUCCESS;
}

void run_problems(const std::vector<Problem>& ps, cudaDataType_t ab, cudaDataType_t ct, bool accumulate, Device dev) {
  if (ps.empty()) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  UM_CUBLAS(cublasSetStream(handle(), stream()));
  const auto key = std::make_pair(int(ab), int(ct));
  // "auto": measured on an H200 (bench-moe, 16k tokens, d 768), one cublasGemmEx per expert beats the grouped
  // call for 8 experts (4.5 vs 7.1 ms, 2.1 vs 2.9 ms per layer) and loses for 64 (5.6 vs 4.5 ms). With w2
  // in [E, h, d] (its forward NN, its dx TN) the loop got ~8% slower for 8 experts (4.86 / 1.95 ms).
  const bool grouped = mode_ref() == "grouped" || (mode_ref() == "auto" && ps.size() > kAutoGroupedAbove);
  if (grouped && !declined().count(key)) {
    if (run_grouped(ps, ab, ct, accumulate, dev)) return;
    declined()[key] = true;
  }
  run_loop(ps, ab, ct, accumulate);
}

cudaDataType_t type_of(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    default: throw Error("grouped_linear", "an f32 or bf16 tensor on the GPU", dtype_name(t));
  }
}

const char* byte_ptr(const Tensor& t, int64_t elems) {
  return static_cast<const char*>(t.data()) + elems * int64_t(dtype_size(t.dtype()));
}
char* byte_ptr_mut(const Tensor& t, int64_t elems) {
  return static_cast<char*>(t.data()) + elems * int64_t(dtype_size(t.dtype()));
}

// The sm90 kernel takes this product: mode "auto", a Hopper device running the sm_90a code,
// bf16 operands, 16-byte-aligned rows (widths multiples of 8) and at most sm90::kMaxGroups groups.
// Measured on an H200 (bench-moe, 16k tokens, d 768, layer fwd + bwd): the kernel is at least as fast as
// the best cuBLAS path for 8 experts (1.75 vs 1.93 ms for the loop at h 1632, 4.33 vs 4.34 at h 4992)
// and for 64 (2.47 vs 4.11 ms for the grouped call).
bool aligned(const Tensor& t) { return aligned16(t.data()); }

bool use_sm90(const Tensor& x, const Tensor& W, const ops::RowGroups& groups) {
  if (grouped_gemm_mode() != "auto") return false;
  // TMA coordinates are 32-bit: the stacked weight rows (groups x out, or x in for in_out) must fit.
  return x.dtype() == DType::bf16 && W.dim(1) % 8 == 0 && W.dim(2) % 8 == 0 && groups.count() <= sm90::kMaxGroups &&
         W.dim(0) * std::max(W.dim(1), W.dim(2)) < int64_t(INT32_MAX) &&
         x.dim(0) > 0 && x.dim(0) < int64_t(INT32_MAX) && aligned(x) && aligned(W) && sm90::available();
}

// dW_g = A_g^T B_g over the group's rows, [M, N]: A = dy, B = x for out_in ([out, in]); x, dy for in_out.
struct WeightOperands {
  const Tensor& a;
  const Tensor& b;
  int64_t M, N;
};
WeightOperands weight_operands(const Tensor& x, const Tensor& W, const Tensor& dy, ops::GroupedWeight layout) {
  const bool oi = layout == ops::GroupedWeight::out_in;
  const int64_t in = ops::grouped_in(W, layout), out = ops::grouped_out(W, layout);
  return oi ? WeightOperands{dy, x, out, in} : WeightOperands{x, dy, in, out};
}

// The weights kernel's product for dW on the sm90 path (f32 dW); false elsewhere.
bool sm90_weights_product(const ops::GroupedWeightGrad& w, const ops::RowGroups& groups,
                          sm90::WeightsProduct& product) {
  if (!use_sm90(w.x, w.W, groups) || !aligned(w.dy) || w.dW.grad.dtype() != DType::f32) return false;
  const WeightOperands o = weight_operands(w.x, w.W, w.dy, w.layout);
  product = {o.a.data_as<bf16>(), o.b.data_as<bf16>(), w.dW.grad.data_as<float>(), o.M, o.N, w.dW.accumulate};
  return true;
}

}  // namespace

void set_grouped_gemm_mode(const std::string& mode) {
  UM_CHECK(known_mode(mode), "grouped GEMM mode \"auto\", \"grouped\" or \"loop\"", mode);
  std::lock_guard<std::mutex> lock(g_mutex);
  mode_ref() = mode;
}

bool grouped_gemm_sm90_available() { return sm90::available(); }

std::string grouped_gemm_mode() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return mode_ref();
}

void grouped_linear_forward(const Tensor& x, const Tensor& W, const ops::RowGroups& groups, const Tensor& y,
                            ops::GroupedWeight layout) {
  const bool oi = layout == ops::GroupedWeight::out_in;
  const int64_t rows = x.dim(0), in = ops::grouped_in(W, layout), out = ops::grouped_out(W, layout);
  if (!groups.covers(rows) && rows > 0) UM_CUDA(cudaMemsetAsync(y.data(), 0, y.nbytes(), stream()));
  if (use_sm90(x, W, groups)) {  // W_g [out, in] is the product's K-major B; in_out's [in, out] its MN-major B
    sm90::grouped_gemm_rows(x.data_as<bf16>(), W.data_as<bf16>(), !oi, y.data_as<bf16>(), out, in, groups, false);
    return;
  }
  std::vector<Problem> ps;
  for (int64_t g = 0; g < groups.count(); ++g) {
    const int64_t s = groups.start[size_t(g)], n = groups.size[size_t(g)];
    if (n == 0) continue;
    ps.push_back({oi ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, int(out), int(n), int(in), byte_ptr(W, g * out * in),
                  int(oi ? in : out), byte_ptr(x, s * in), int(in), byte_ptr_mut(y, s * out), int(out)});
  }
  const cudaDataType_t t = type_of(x.dtype());
  run_problems(ps, t, t, false, x.device());
}

void grouped_linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const ops::RowGroups& groups,
                             const GradSlot& dx, const GradSlot& dW, ops::GroupedWeight layout) {
  const bool oi = layout == ops::GroupedWeight::out_in;
  const int64_t rows = x.dim(0), in = ops::grouped_in(W, layout), out = ops::grouped_out(W, layout);
  const cudaDataType_t t = type_of(x.dtype());
  const bool sm90_ok = use_sm90(x, W, groups) && aligned(dy);
  if (dx) {
    if (!dx.accumulate && !groups.covers(rows) && rows > 0)
      UM_CUDA(cudaMemsetAsync(dx.grad.data(), 0, dx.grad.nbytes(), stream()));
    if (sm90_ok) {  // dx = dy . W_g: W_g [out, in] is the MN-major B of a product over out; in_out's K-major
      sm90::grouped_gemm_rows(dy.data_as<bf16>(), W.data_as<bf16>(), oi, dx.grad.data_as<bf16>(), in, out, groups,
                              dx.accumulate);
    } else {
      std::vector<Problem> ps;
      for (int64_t g = 0; g < groups.count(); ++g) {
        const int64_t s = groups.start[size_t(g)], n = groups.size[size_t(g)];
        if (n == 0) continue;
        ps.push_back({oi ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, int(in), int(n), int(out), byte_ptr(W, g * out * in),
                      int(oi ? in : out), byte_ptr(dy, s * out), int(out), byte_ptr_mut(dx.grad, s * in), int(in)});
      }
      run_problems(ps, t, t, dx.accumulate, x.device());
    }
  }
  if (!dW) return;
  sm90::WeightsProduct product;
  if (sm90_weights_product({x, W, dy, layout, dW}, groups, product)) {
    sm90::grouped_gemm_weights(product, groups);
    return;
  }
  const auto [wa, wb, M, N] = weight_operands(x, W, dy, layout);
  std::vector<Problem> ps;  // column-major: dW_g^T [N, M] = B_g^T . A_g (op T)
  for (int64_t g = 0; g < groups.count(); ++g) {
    const int64_t s = groups.start[size_t(g)], n = groups.size[size_t(g)];
    char* dwg = byte_ptr_mut(dW.grad, g * out * in);
    if (n == 0) {
      if (!dW.accumulate) UM_CUDA(cudaMemsetAsync(dwg, 0, size_t(out * in) * dtype_size(dW.grad.dtype()), stream()));
      continue;
    }
    ps.push_back({CUBLAS_OP_N, CUBLAS_OP_T, int(N), int(M), int(n), byte_ptr(wb, s * N), int(N), byte_ptr(wa, s * M),
                  int(M), dwg, int(N)});
  }
  run_problems(ps, t, type_of(dW.grad.dtype()), dW.accumulate, x.device());
}

namespace {

// ds[r] = (accumulate ? ds[r] : 0) + the n-tiles' partial sums in tile order: a fixed order.
__global__ void sum_partials_kernel(const float* __restrict__ partial, int tiles, int64_t rows, float* __restrict__ ds,
                                    bool accumulate) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    float v = accumulate ? ds[r] : 0.f;
    for (int t = 0; t < tiles; ++t) v += partial[int64_t(t) * rows + r];
    ds[r] = v;
  }
}

}  // namespace

// Both products in one launch: the expert MLP's dW1 (1,344 tiles on the 64-expert layer, 10.2 waves of
// 132 SMs) and dW2 (768) fill 16 waves together instead of leaving most SMs idle in dW1's last one.
bool grouped_linear_backward_weights_paired(const ops::GroupedWeightGrad& first, const ops::GroupedWeightGrad& second,
                                            const ops::RowGroups& groups) {
  sm90::WeightsProduct p, q;
  if (!sm90_weights_product(first, groups, p) || !sm90_weights_product(second, groups, q)) return false;
  sm90::grouped_gemm_weights(p, groups, &q);
  return true;
}

// h = x . W1_g^T and a = s swiglu(h) in one sm90 kernel (SwiGLU's forward in the epilogue, so h is not read
// back: on the 64-expert layer a 214 MB read and a kernel fewer).
bool grouped_linear_swiglu_forward_fused(const Tensor& x, const Tensor& W1, const Tensor& s,
                                         const ops::RowGroups& groups, const Tensor& h, const Tensor& a) {
  const int64_t rows = x.dim(0), in = W1.dim(2), pairs = W1.dim(1) / 2;
  // a's rows and the up half of h start at multiples of 16 bytes only for pairs % 8 == 0.
  if (!use_sm90(x, W1, groups) || pairs % 8 != 0 || !aligned(h) || !aligned(a)) return false;
  if (!groups.covers(rows) && rows > 0) {
    UM_CUDA(cudaMemsetAsync(h.data(), 0, h.nbytes(), stream()));
    UM_CUDA(cudaMemsetAsync(a.data(), 0, a.nbytes(), stream()));
  }
  sm90::grouped_gemm_rows_swiglu(x.data_as<bf16>(), W1.data_as<bf16>(), s.data_as<float>(), h.data_as<bf16>(),
                                 a.data_as<bf16>(), pairs, in, groups);
  return true;
}

// On the sm90 path (dh not accumulated) one kernel computes dh and ds's per-tile partial sums from dy, W,
// h and s: SwiGLU's backward is the dx product's epilogue, so dact never reaches memory (on the 64-expert
// layer that skips a 107 MB write and read and a separate kernel).
bool swiglu_grouped_linear_backward_fused(const Tensor& h, const Tensor& s, const Tensor& a, const Tensor& W,
                                          const Tensor& dy, const ops::RowGroups& groups, const GradSlot& dh,
                                          const GradSlot& ds, const GradSlot& dW) {
  const int64_t rows = a.dim(0), in = ops::grouped_in(W, ops::GroupedWeight::in_out),
                out = ops::grouped_out(W, ops::GroupedWeight::in_out);  // W [G, h, d']
  if (!dh || dh.accumulate || !use_sm90(a, W, groups) || !aligned(dy) || !aligned(h) || !aligned(dh.grad))
    return false;
  if (!groups.covers(rows) && rows > 0) UM_CUDA(cudaMemsetAsync(dh.grad.data(), 0, dh.grad.nbytes(), stream()));
  const int tiles = sm90::swiglu_backward_n_tiles(in);
  auto* partial = static_cast<float*>(arena_for(a.device()).alloc_bytes(size_t(tiles * rows) * sizeof(float)));
  // Rows outside every group get no partial sums: zeros, so their ds is 0 (where the groups cover every
  // row the kernel writes all of them, and without ds nobody reads them).
  if (ds && !groups.covers(rows))
    UM_CUDA(cudaMemsetAsync(partial, 0, size_t(tiles * rows) * sizeof(float), stream()));
  sm90::grouped_gemm_rows_swiglu_backward(dy.data_as<bf16>(), W.data_as<bf16>(), h.data_as<bf16>(), s.data_as<float>(),
                                          dh.grad.data_as<bf16>(), partial, rows, in, out, groups);
  if (ds && rows > 0) {
    sum_partials_kernel<<<unsigned(std::min<int64_t>(ceil_div(rows, 256), int64_t(sm_count()) * 8)), 256, 0,
                          stream()>>>(partial, tiles, rows, ds.grad.data_as<float>(), ds.accumulate);
    UM_CUDA_LAUNCHED();
  }
  if (dW) cuda::grouped_linear_backward(a, W, dy, groups, GradSlot{}, dW, ops::GroupedWeight::in_out);
  return true;
}

}  // namespace um::cuda
