// CUDA memory_scores: scores = q . keys^T as ONE cublasGemmStridedBatchedEx (and one per gradient).
//
// Row-major tensors seen column-major by cuBLAS. With m = (r / qr) * n key rows per batch and
// nb = 2H * qr batches (qr == r: batch b = (h*2+s)*r + p with an [n, K] key block; qr == 1: batch
// b = h*2+s with an [r*n, K] block, all ranks sharing one query), every operand has uniform strides:
//   keys  block b at keys + b*m*K, [m, K] row-major            = column-major [K, m], ld K
//   q     block b at q + b*K, rows t with stride qw = 2H*qr*K  = column-major [K, T], ld qw
//   scores block b at scores + b*m, rows stride ow = 2H*r*n    = column-major [m, T], ld ow
// forward  scores_b = keys_b^T(T) . q_b(N)      (m x T, inner K)
// dq       dq_b     = keys_b(N) . dscores_b(N)  (K x T, inner m)
// dkeys    dkeys_b  = q_b(N) . dscores_b^T(T)   (K x m, inner T)
// Compute is CUBLAS_COMPUTE_32F (bf16 inputs accumulate in f32; f32 inputs run true f32, no TF32).
// cuBLAS takes A and B of one type, so with bf16 inputs the f32 score gradient is first rounded to
// bf16 (one elementwise pass; the gradient of a bf16 matmul is bf16 anyway). The dense GEMMs do not
// exploit that dscores is zero outside the picked rows: they are small next to the model's matmuls.
#include <cublas_v2.h>

#include "common.cuh"
#include "ultramem/core/arena.h"
#include "ultramem/ops/memory_retrieval.h"

namespace um::cuda {
namespace {

// A legacy cuBLAS handle on the compute stream. It shares cuBLASLt's workspace: both libraries run on
// the same (legacy default) stream, so their kernels never overlap, and a training step allocates nothing.
cublasHandle_t cublas_handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    UM_CUBLAS(cublasCreate(&h));
    UM_CUBLAS(cublasSetStream(h, stream()));  // resets the workspace: set it afterwards
    size_t bytes = 0;
    void* ws = cublaslt_workspace(&bytes);
    UM_CUBLAS(cublasSetWorkspace(h, ws, bytes));
    // Split-K partial sums stay in f32 even when the output (dq) is bf16.
    UM_CUBLAS(
        cublasSetMathMode(h, cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    return h;
  }();
  return handle;
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32:
      return CUDA_R_32F;
    case DType::bf16:
      return CUDA_R_16BF;
    default:
      throw Error("memory_scores", "an f32 or bf16 tensor on the GPU", dtype_name(t));
  }
}

int as_int(int64_t x, const char* what) {
  UM_CHECK(x >= 0 && x <= int64_t(INT32_MAX), detail::concat("memory_scores: ", what, " below 2^31"), x);
  return int(x);
}

struct Operand {
  const void* ptr;
  cudaDataType_t type;
  int64_t ld, stride;
};

// C_b = op(A_b) . op(B_b) (+ C_b when accumulate), b < batches; column-major m x n, inner dimension k.
void batched_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Operand& a, const Operand& b,
                  void* c, cudaDataType_t c_type, int64_t ldc, int64_t stride_c, int64_t batches, bool accumulate) {
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  UM_CUBLAS(cublasGemmStridedBatchedEx(cublas_handle(), trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, as_int(m, "m"), as_int(n, "n"),
                                       as_int(k, "k"), &alpha, a.ptr, a.type, as_int(a.ld, "lda"), a.stride, b.ptr,
                                       b.type, as_int(b.ld, "ldb"), b.stride, &beta, c, c_type, as_int(ldc, "ldc"),
                                       stride_c, as_int(batches, "batches"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

__global__ void f32_to_bf16_kernel(const float* __restrict__ x, bf16* __restrict__ y, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}

struct Geometry {
  int64_t T, m, batches, qw, ow, K;
};

Geometry geometry(const Tensor& q, const ops::ScoreShape& s) {
  Geometry g;
  g.K = s.kdim;
  g.qw = s.heads * 2 * s.q_ranks * s.kdim;
  g.ow = s.heads * 2 * s.rank * s.n_keys;
  g.T = q.numel() / g.qw;
  g.m = (s.rank / s.q_ranks) * s.n_keys;
  g.batches = s.heads * 2 * s.q_ranks;
  return g;
}

}  // namespace

void memory_scores_forward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& scores) {
  const Geometry g = geometry(q, s);
  if (g.T == 0) return;
  const cudaDataType_t in = cuda_type(q.dtype());
  batched_gemm(true, false, g.m, g.T, g.K, Operand{keys.data(), in, g.K, g.m * g.K}, Operand{q.data(), in, g.qw, g.K},
               scores.data(), CUDA_R_32F, g.ow, g.m, g.batches, false);
}

void memory_scores_backward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& dscores,
                            const Tensor& dq, bool acc_q, const Tensor& dkeys, bool acc_k) {
  const Geometry g = geometry(q, s);
  if (g.T == 0) {
    if (dkeys.defined() && !acc_k) UM_CUDA(cudaMemsetAsync(dkeys.data(), 0, dkeys.nbytes(), stream()));
    return;
  }
  const cudaDataType_t in = cuda_type(q.dtype());
  // The score gradient in the inputs' type (see the top of the file).
  const void* ds = dscores.data();
  if (q.dtype() == DType::bf16) {
    const int64_t count = dscores.numel();
    auto* ds16 = static_cast<bf16*>(arena_for(q.device()).alloc_bytes(size_t(count) * sizeof(bf16)));
    const unsigned blocks = std::min<unsigned>(ceil_div(count, 256), unsigned(sm_count()) * 16u);
    f32_to_bf16_kernel<<<blocks, 256, 0, stream()>>>(dscores.data_as<float>(), ds16, count);
    UM_CUDA_LAUNCHED();
    ds = ds16;
  }
  const Operand dsb{ds, in, g.ow, g.m};
  if (dq.defined())
    batched_gemm(false, false, g.K, g.T, g.m, Operand{keys.data(), in, g.K, g.m * g.K}, dsb, dq.data(),
                 cuda_type(dq.dtype()), g.qw, g.K, g.batches, acc_q);
  if (dkeys.defined())
    batched_gemm(false, true, g.K, g.m, g.T, Operand{q.data(), in, g.qw, g.K}, dsb, dkeys.data(),
                 cuda_type(dkeys.dtype()), g.K, g.m * g.K, g.batches, acc_k);
}

}  // namespace um::cuda
