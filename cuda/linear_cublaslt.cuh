// cuBLASLt GEMM for the linear op family, with a per-process cache of plans (matmul descriptor,
// matrix layouts, heuristic algorithm) keyed by everything the heuristic depends on: shape, leading
// dimensions, transpositions, dtypes, epilogue and the pointers' alignments. After the first training
// step every GEMM is a cache hit: no descriptor creation, no heuristic query.
//
// Conventions are cuBLAS's column-major ones; cuda/linear.cu maps the row-major tensors onto them.
// Compute is always CUBLAS_COMPUTE_32F with fp32 alpha/beta: bf16 inputs accumulate in fp32, and f32
// inputs run true fp32 (no TF32).
#pragma once
#include "common.cuh"

namespace um::cuda {

// D[m, n] = op(A)[m, k] . op(B)[k, n] + (accumulate ? D : 0), then the epilogue.
struct LtGemm {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  cudaDataType_t a_type = CUDA_R_32F;
  const void* b = nullptr;
  int64_t ldb = 0;
  cudaDataType_t b_type = CUDA_R_32F;
  void* d = nullptr;
  int64_t ldd = 0;
  cudaDataType_t d_type = CUDA_R_32F;
  bool accumulate = false;  // beta = 1 with C = D (in place), else beta = 0 and D is not read
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // [m] of d_type, for the *_BIAS epilogues
  void* aux = nullptr;         // [m, n] of d_type with leading dimension aux_ld, for the GELU_AUX epilogues
  int64_t aux_ld = 0;
};

// Runs g on the compute stream. Returns false, running nothing, when cuBLASLt offers no algorithm for
// this combination (callers fall back to a plain GEMM and their own epilogue kernel); cuBLAS errors throw.
bool lt_gemm(const LtGemm& g);

cudaDataType_t lt_type(DType t);

}  // namespace um::cuda
