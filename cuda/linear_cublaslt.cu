// cuBLASLt GEMM with cached plans (see linear_cublaslt.cuh).
#include <array>
#include <map>
#include <memory>
#include <mutex>

#include "linear_cublaslt.cuh"
#include "ultramem/ops/linear.h"

namespace um::cuda {
namespace {

// Alignment of a pointer in bytes, capped at cuBLASLt's default assumption of 256.
uint32_t alignment_of(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  uintptr_t low = a & (~a + 1);
  return uint32_t(low < 256 ? low : 256);
}

struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool supported = false;
  LtPlan() = default;
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  ~LtPlan() {  // host objects only: safe at any time, even after the CUDA context is gone
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

using PlanKey = std::array<int64_t, 19>;

PlanKey key_of(const LtGemm& g) {
  return {g.trans_a,       g.trans_b,      g.m,        g.n,      g.k,      g.lda,   g.ldb,
          g.ldd,           int64_t(g.a_type), int64_t(g.b_type), int64_t(g.d_type), int64_t(g.epilogue),
          g.aux_ld,        alignment_of(g.a), alignment_of(g.b), alignment_of(g.d), alignment_of(g.bias),
          alignment_of(g.aux), g.bias != nullptr};
}

template <typename V>
void set_desc(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const V& value) {
  UM_CUBLAS(cublasLtMatmulDescSetAttribute(op, attr, &value, sizeof(value)));
}

template <typename V>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const V& value) {
  UM_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

// Descriptors and the best algorithm cuBLASLt's heuristic offers for g.
std::unique_ptr<LtPlan> make_plan(const LtGemm& g) {
  auto p = std::make_unique<LtPlan>();
  UM_CUBLAS(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(p->op, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_desc(p->op, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_desc(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, uint32_t(g.epilogue));
  // The heuristic reads the bias and aux pointers' values for their alignment.
  if (g.bias) {
    set_desc(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(g.d_type));
    set_desc(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  }
  if (g.aux) {
    set_desc(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
    set_desc(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(g.aux_ld));
  }
  UM_CUBLAS(cublasLtMatrixLayoutCreate(&p->a, g.a_type, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda));
  UM_CUBLAS(cublasLtMatrixLayoutCreate(&p->b, g.b_type, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, g.ldb));
  UM_CUBLAS(cublasLtMatrixLayoutCreate(&p->d, g.d_type, g.m, g.n, g.ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  UM_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws_bytes = 0;
  cublaslt_workspace(&ws_bytes);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  try {
    set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(ws_bytes));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment_of(g.a));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment_of(g.b));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment_of(g.d));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment_of(g.d));
    status = cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(), p->op, p->a, p->b, p->d, p->d, pref, 1, &result,
                                            &found);
  } catch (...) {
    cublasLtMatmulPreferenceDestroy(pref);
    throw;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (status == CUBLAS_STATUS_SUCCESS && found > 0) {
    p->algo = result.algo;
    p->supported = true;
  } else if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
    throw Error(UM_HERE, "cublasLtMatmulAlgoGetHeuristic to succeed", cublasGetStatusString(status));
  }
  return p;
}

std::mutex g_plans_mutex;
std::map<PlanKey, std::unique_ptr<LtPlan>>& plans() {
  static std::map<PlanKey, std::unique_ptr<LtPlan>> m;
  return m;
}

}  // namespace

cudaDataType_t lt_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    default: throw Error("cuBLASLt matmul", "an f32 or bf16 matrix", dtype_name(t));
  }
}

bool lt_gemm(const LtGemm& g) {
  // One lock around lookup and launch: the cached descriptor's bias/aux pointers are set per call.
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  PlanKey key = key_of(g);
  auto it = plans().find(key);
  if (it == plans().end()) it = plans().emplace(key, make_plan(g)).first;
  LtPlan& p = *it->second;
  if (!p.supported) return false;
  if (g.bias) set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux) set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
  const float alpha = 1.f, beta = g.accumulate ? 1.f : 0.f;
  size_t ws_bytes = 0;
  void* ws = cublaslt_workspace(&ws_bytes);
  UM_CUBLAS(cublasLtMatmul(cublaslt_handle(), p.op, &alpha, g.a, p.a, g.b, p.b, &beta, g.d, p.d, g.d, p.d, &p.algo,
                           ws, ws_bytes, stream()));
  return true;
}

size_t linear_plan_cache_size() {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  return plans().size();
}

}  // namespace um::cuda
