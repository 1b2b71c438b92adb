// CUDA router logits (see ultramem/ops/moe_router_logits.h for the precision argument).
//
// f32 x and W: the linear op's f32 GEMMs, unchanged. bf16 x and W, with Ep = E rounded up to 8 (so the
// lo half starts 16-byte aligned and every leading dimension is a multiple of 8 elements):
//   forward  logits^T [E, N] = W (op T) . x^T, bf16 inputs, f32 accumulate and output
//   split    G [N, 2 Ep] bf16: G[t, e] = hi, G[t, Ep + e] = lo, zero in the padding columns
//   dx       dx^T [d, N] = W2 [2 Ep, d]^T . G^T, with W2 = [W; 0; W; 0] (rows E..Ep zero), K = 2 Ep
//   dW       on Hopper (the sm90 kernel's weights mode, grouped-GEMM mode "auto", f32 dW): H_c [2 Ep, d] =
//            G_c^T x_c for chunks c of the tokens (one group each, enough to fill the SMs), then dW (+)= sum
//            over c in order of H_c[e] + H_c[Ep + e]: one product for both halves, no split-K. Elsewhere
//            dW^T [d, E] = x^T . hi (op T) (beta = slot.accumulate), then += x^T . lo (op T). Both exact
//            to the split in the f32 master gradient (a bf16 dW slot would round between the two).
//            (cuBLASLt's heuristic picks split-K kernels for the two products: 2 x 11 us and 2 x 3.7 us
//            of reduction at 16k x 64 x 768 on an H200; its one-product form failed the N 4097 test. The
//            sm90 product and the sum: 11 + 8.4 us.) The chunks follow the SM count, so the f32 sums'
//            rounding is the same run to run on one GPU model, not across models.
#include "grouped_gemm_sm90.cuh"
#include "linear_cublaslt.cuh"
#include "ultramem/core/arena.h"
#include "ultramem/ops/grouped_linear.h"
#include "ultramem/ops/linear.h"
#include "ultramem/ops/moe_router_logits.h"

namespace um::cuda {
namespace {

int64_t padded_experts(int64_t E) { return (E + 7) / 8 * 8; }

// One thread per (t, e < Ep): both halves of the split (one element per thread and a division per
// element took 8.5 us at 16k x 64 on an H200).
__global__ void split_hi_lo_kernel(const float* __restrict__ g, int64_t N, int E, int Ep, bf16* __restrict__ G) {
  const int64_t n = N * Ep;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / Ep;
    const int e = int(i - t * Ep);
    float hi = 0.f, lo = 0.f;
    if (e < E) {
      const float x = g[t * E + e];
      hi = __bfloat162float(__float2bfloat16(x));
      lo = x - hi;
    }
    G[t * 2 * Ep + e] = __float2bfloat16(hi);
    G[t * 2 * Ep + Ep + e] = __float2bfloat16(lo);
  }
}

// dW[e, j] (+)= sum over chunks c in order of H[c][e][j] + H[c][Ep + e][j] (H f32 [chunks, 2 Ep, d]).
__global__ void sum_chunks_kernel(const float* __restrict__ H, int chunks, int E, int Ep, int d,
                                  float* __restrict__ dW, bool accumulate) {
  const int64_t n = int64_t(E) * d, chunk = int64_t(2 * Ep) * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i / d, j = i - e * d;
    float acc = accumulate ? dW[i] : 0.f;
    for (int c = 0; c < chunks; ++c) acc += H[c * chunk + e * d + j] + H[c * chunk + (Ep + e) * d + j];
    dW[i] = acc;
  }
}

// dW from G = [hi | lo] on the sm90 weights mode; false (nothing done) where it does not apply.
bool router_dw_sm90(const Tensor& x, const Tensor& G, int64_t E, int64_t Ep, const GradSlot& dW) {
  const int64_t N = x.dim(0), d = x.dim(1);
  if (grouped_gemm_mode() != "auto" || dW.grad.dtype() != DType::f32 || d % 8 != 0 || N >= int64_t(INT32_MAX) ||
      !aligned16(x.data()) || !aligned16(G.data()) || !sm90::available())
    return false;
  // About one tile per SM, and at most ceil(N / 256) chunks: few tokens make few, long chunks.
  const int64_t tiles_per_chunk = sm90::weights_tiles_per_group(2 * Ep, d);
  const int64_t chunks = std::clamp<int64_t>(std::min<int64_t>(sm_count() / tiles_per_chunk, ceil_div(N, 256)), 1,
                                             sm90::kMaxGroups);
  const int64_t per = ceil_div(N, chunks);
  ops::RowGroups groups;
  for (int64_t start = 0; start < N; start += per) {
    groups.start.push_back(start);
    groups.size.push_back(std::min(per, N - start));
  }
  const int n_chunks = int(groups.count());
  Tensor H = alloc_activation(Shape{n_chunks, 2 * Ep, d}, DType::f32, x.device());
  sm90::grouped_gemm_weights({G.data_as<bf16>(), x.data_as<bf16>(), H.data_as<float>(), 2 * Ep, d, false}, groups);
  sum_chunks_kernel<<<std::min<unsigned>(ceil_div(E * d, 256), unsigned(sm_count()) * 8u), 256, 0, stream()>>>(
      H.data_as<float>(), n_chunks, int(E), int(Ep), int(d), dW.grad.data_as<float>(), dW.accumulate);
  UM_CUDA_LAUNCHED();
  return true;
}

}  // namespace

void moe_router_logits_forward(const Tensor& x, const Tensor& W, const Tensor& logits) {
  if (x.dtype() == DType::f32) return cuda::linear_forward(x, W, Tensor(), ops::Activation::none, logits, Tensor());
  const int64_t N = x.dim(0), d = x.dim(1), E = W.dim(0);
  if (N == 0) return;
  LtGemm g;
  g.trans_a = true;
  g.m = E, g.n = N, g.k = d;
  g.a = W.data(), g.lda = d, g.a_type = CUDA_R_16BF;
  g.b = x.data(), g.ldb = d, g.b_type = CUDA_R_16BF;
  g.d = logits.data(), g.ldd = E, g.d_type = CUDA_R_32F;
  UM_CHECK(lt_gemm(g), "a cuBLASLt algorithm for the router logits GEMM (bf16 in, f32 out)", x.desc(), " . ",
           W.desc());
}

void moe_router_logits_backward(const Tensor& x, const Tensor& W, const Tensor& dlogits, const GradSlot& dx,
                                const GradSlot& dW) {
  if (x.dtype() == DType::f32) return cuda::linear_backward(x, W, dlogits, Tensor(), ops::Activation::none, dx, dW, GradSlot{});
  const int64_t N = x.dim(0), d = x.dim(1), E = W.dim(0), Ep = padded_experts(E);
  if (N == 0) {
    if (dW && !dW.accumulate) dW.grad.zero_();
    return;
  }
  const Device dev = x.device();
  Tensor G = alloc_activation(Shape{N, 2 * Ep}, DType::bf16, dev);
  split_hi_lo_kernel<<<std::min<unsigned>(ceil_div(N * Ep, 256), unsigned(sm_count()) * 16u), 256, 0, stream()>>>(
      dlogits.data_as<float>(), N, int(E), int(Ep), G.data_as<bf16>());
  UM_CUDA_LAUNCHED();
  if (dx) {
    Tensor W2 = alloc_activation(Shape{2 * Ep, d}, DType::bf16, dev);
    const size_t w_bytes = size_t(E * d) * sizeof(bf16), half_bytes = size_t(Ep * d) * sizeof(bf16);
    auto* w2 = static_cast<char*>(W2.data());
    if (Ep != E) UM_CUDA(cudaMemsetAsync(w2, 0, 2 * half_bytes, stream()));
    UM_CUDA(cudaMemcpyAsync(w2, W.data(), w_bytes, cudaMemcpyDeviceToDevice, stream()));
    UM_CUDA(cudaMemcpyAsync(w2 + half_bytes, W.data(), w_bytes, cudaMemcpyDeviceToDevice, stream()));
    LtGemm g;
    g.m = d, g.n = N, g.k = 2 * Ep;
    g.a = W2.data(), g.lda = d, g.a_type = CUDA_R_16BF;
    g.b = G.data(), g.ldb = 2 * Ep, g.b_type = CUDA_R_16BF;
    g.d = dx.grad.data(), g.ldd = d, g.d_type = CUDA_R_16BF;
    g.accumulate = dx.accumulate;
    UM_CHECK(lt_gemm(g), "a cuBLASLt algorithm for the router dx GEMM", dlogits.desc(), " . ", W.desc());
  }
  if (dW && !router_dw_sm90(x, G, E, Ep, dW)) {
    for (int half = 0; half < 2; ++half) {
      LtGemm g;
      g.trans_b = true;
      g.m = d, g.n = E, g.k = N;
      g.a = x.data(), g.lda = d, g.a_type = CUDA_R_16BF;
      g.b = G.data_as<bf16>() + half * Ep, g.ldb = 2 * Ep, g.b_type = CUDA_R_16BF;
      g.d = dW.grad.data(), g.ldd = d, g.d_type = lt_type(dW.grad.dtype());
      g.accumulate = half == 1 || dW.accumulate;
      UM_CHECK(lt_gemm(g), "a cuBLASLt algorithm for the router dW GEMM", dlogits.desc(), "^T . ", x.desc());
    }
  }
}

}  // namespace um::cuda
