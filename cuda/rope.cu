// RoPE on the GPU: one thread per rotated pair (x_i, x_{i+D/2}) of a q or k head, one per element pair
// of a v head (copied). Neighbouring threads take neighbouring i, so both halves are read coalesced.
#include "ultramem/ops/rope.h"

#include "common.cuh"

namespace um::cuda {

namespace {

// The rotation angle t * theta^(-2i/D) is formed and reduced to [-pi, pi] in double, then its sine and
// cosine are taken in fp32: an fp32 product t * inv_freq would carry an error of t * 1e-7 radians
// (1e-4 at t = 4096), far above what bf16 hides in long contexts.
__device__ __forceinline__ void rope_sincos(int64_t t, int64_t i, int64_t D, double log2_theta, float* s, float* c) {
  const double inv_freq = exp2(-2.0 * double(i) / double(D) * log2_theta);
  double angle = double(t) * inv_freq;
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  angle -= kTwoPi * rint(angle * (1.0 / kTwoPi));
  sincosf(float(angle), s, c);
}

template <typename S, typename D>
__global__ void rope_kernel(const S* src, D* dst, int64_t tokens, int64_t seq, int64_t row, int64_t rotated_heads,
                            int64_t head_dim, double log2_theta, float direction, bool accumulate) {
  const int64_t half = head_dim / 2, pairs_per_token = row / 2;
  const int64_t n_pairs = tokens * pairs_per_token;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < n_pairs; n += int64_t(gridDim.x) * blockDim.x) {
    const int64_t token = n / pairs_per_token, p = n % pairs_per_token;
    const int64_t head = p / half, i = p % half;
    // Pair (i, i + D/2) of head `head`: a rotation for q/k heads, a copy for v heads.
    const int64_t a = token * row + head * head_dim + i, b = a + half;
    const float x1 = to_f32(src[a]), x2 = to_f32(src[b]);
    float y1 = x1, y2 = x2;
    if (head < rotated_heads) {
      float sn, cs;
      rope_sincos(token % seq, i, head_dim, log2_theta, &sn, &cs);
      sn *= direction;
      y1 = x1 * cs - x2 * sn;
      y2 = x2 * cs + x1 * sn;
    }
    if (accumulate) {
      y1 += to_f32(dst[a]);
      y2 += to_f32(dst[b]);
    }
    dst[a] = from_f32<D>(y1);
    dst[b] = from_f32<D>(y2);
  }
}

}  // namespace

void rope(const ops::RopeShape& s, const Tensor& src, const Tensor& dst, int direction, bool accumulate) {
  const int64_t tokens = s.batch * s.seq, n_pairs = tokens * s.row() / 2;
  if (n_pairs == 0) return;
  const unsigned blocks = std::min<unsigned>(ceil_div(n_pairs, 256), unsigned(sm_count()) * 16u);
  const double log2_theta = std::log2(double(s.theta));
  UM_DISPATCH_ACT(src.dtype(), S, {
    UM_DISPATCH_ACT(dst.dtype(), D, {
      rope_kernel<<<blocks, 256, 0, stream()>>>(src.data_as<S>(), dst.data_as<D>(), tokens, s.seq, s.row(),
                                                 s.rotated_heads(), s.head_dim, log2_theta, float(direction),
                                                 accumulate);
    });
  });
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
