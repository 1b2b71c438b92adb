// Attention forward on tensor cores (bf16 inputs, fp32 accumulation and softmax statistics), the
// flash-attention-2 scheme: a block owns kBlockM query rows of one (batch, head), 16 * kMTiles rows
// per warp, and walks the key/value tiles 0 .. its diagonal with an online softmax, so the T x T
// scores never leave registers. It writes y and the per-row logsumexp the backward pass recomputes P from.
//
// Pipeline (one K and one V buffer): while the warps compute S = Q K[n]^T, V[n] streams in; while
// they compute the softmax and O += P V[n], K[n+1] streams in.
#include <climits>
#include <cmath>

#include "attention_common.cuh"
#include "ultramem/core/arena.h"
#include "ultramem/ops/elementwise.h"

namespace um::cuda::attention {

template <int kHeadDim_, int kNWarps_, int kMTiles_, int kBlockN_, int kMinBlocks_>
struct ForwardTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kThreads = 32 * kNWarps;
  static constexpr int kMTiles = kMTiles_;               // 16-row m-tiles per warp
  static constexpr int kWarpRows = 16 * kMTiles;
  static constexpr int kBlockM = kWarpRows * kNWarps;    // query rows per block
  static constexpr int kBlockN = kBlockN_;               // keys per tile
  static constexpr int kMinBlocks = kMinBlocks_;
  static constexpr size_t kSmemBytes = size_t(kBlockM + 2 * kBlockN) * kHeadDim * sizeof(bf16);
};

// s[j] holds scores of rows (row, row + 8) and keys k0 + 8j + 2*quad + {0, 1}: keys after the row are
// masked out (this also masks the zero-filled keys >= T for every row < T).
template <int kN>
__device__ __forceinline__ void causal_mask(float (&s)[kN / 8][4], int k0, int row, int lane) {
#pragma unroll
  for (int j = 0; j < kN / 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int key = k0 + j * 8 + (lane & 3) * 2 + e;
      if (key > row) s[j][e] = -INFINITY;
      if (key > row + 8) s[j][2 + e] = -INFINITY;
    }
}

// One step of the online softmax for one m-tile's two rows of this thread: raise the running max,
// rescale the running sum and output, and turn s into the unnormalised probabilities
// exp2(s * scale_log2 - max). row_sum stays a per-thread partial sum (the quad reduces it at the end).
template <int kN, int kD>
__device__ __forceinline__ void online_softmax(float (&s)[kN / 8][4], float (&o)[kD / 8][4], float (&row_max)[2],
                                               float (&row_sum)[2], float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = row_max[r];
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // A row that has seen only masked keys keeps max -inf; exponents then use 0 (no -inf - -inf).
    const float base = mx == -INFINITY ? 0.f : mx * scale_log2;
    const float correction = fast_exp2(row_max[r] * scale_log2 - base);
    row_max[r] = mx;
    row_sum[r] *= correction;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
      o[j][2 * r] *= correction;
      o[j][2 * r + 1] *= correction;
    }
#pragma unroll
    for (int j = 0; j < kN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = fast_exp2(fmaf(s[j][2 * r + e], scale_log2, -base));
        s[j][2 * r + e] = p;
        row_sum[r] += p;
      }
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks)
    attention_forward_kernel(const Dims d, const bf16* __restrict__ qkv, bf16* __restrict__ y, float* __restrict__ lse) {
  constexpr int kD = Tr::kHeadDim, kBM = Tr::kBlockM, kBN = Tr::kBlockN, kThreads = Tr::kThreads;
  constexpr int kM = Tr::kMTiles, kWarpRows = Tr::kWarpRows;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + kBM * kD;
  bf16* sV = sK + kBN * kD;

  // Blocks of one (batch, head) are adjacent (they share K and V through L2); within it the block
  // with the most keys starts first.
  const int num_m = (d.T + kBM - 1) / kBM;
  const int bh = int(blockIdx.x / num_m), m_block = num_m - 1 - int(blockIdx.x % num_m);
  const int b = bh / d.H, h = bh % d.H, g = h / d.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The warp's rows: warp_q0 + 16 m + (lane / 4) and + 8, for m < kM.
  const int q0 = m_block * kBM, warp_q0 = q0 + warp * kWarpRows;

  const bf16* batch = qkv + int64_t(b) * d.T * d.qkv_row;
  const bf16* k_src = batch + int64_t(d.H + g) * kD;
  const bf16* v_src = batch + int64_t(d.H + d.Hkv + g) * kD;
  const int n_blocks = (min(d.T, q0 + kBM) + kBN - 1) / kBN;  // keys 0 .. the block's last row

  load_tile_async<kBM, kD, kThreads>(sQ, batch + int64_t(q0) * d.qkv_row + h * kD, d.qkv_row, d.T - q0);
  load_tile_async<kBN, kD, kThreads>(sK, k_src, d.qkv_row, d.T);
  cp_async_commit();

  float o[kM][kD / 8][4];
  zero(o);
  float row_max[kM][2], row_sum[kM][2];
#pragma unroll
  for (int m = 0; m < kM; ++m) row_max[m][0] = row_max[m][1] = -INFINITY, row_sum[m][0] = row_sum[m][1] = 0.f;

  for (int n = 0; n < n_blocks; ++n) {
    const int k0 = n * kBN;
    cp_async_wait<0>();
    __syncthreads();  // K[n] (and Q) visible to all warps; every warp is done reading V[n-1]
    load_tile_async<kBN, kD, kThreads>(sV, v_src + int64_t(k0) * d.qkv_row, d.qkv_row, d.T - k0);
    cp_async_commit();

    // A warp whose rows all precede the tile's first key sees none of it.
    const bool active = k0 <= warp_q0 + kWarpRows - 1;
    float s[kM][kBN / 8][4];
    if (active) {
      zero(s);
      mma_a_bt<kD, kBN, kM>(s, sQ, warp * kWarpRows, sK, 0, lane);
    }

    cp_async_wait<0>();
    __syncthreads();  // V[n] visible; every warp is done reading K[n]
    if (n + 1 < n_blocks) {
      load_tile_async<kBN, kD, kThreads>(sK, k_src + int64_t(k0 + kBN) * d.qkv_row, d.qkv_row, d.T - k0 - kBN);
      cp_async_commit();
    }
    if (active) {
      if (k0 + kBN - 1 > warp_q0) {
#pragma unroll
        for (int m = 0; m < kM; ++m) causal_mask<kBN>(s[m], k0, warp_q0 + 16 * m + (lane >> 2), lane);
      }
#pragma unroll
      for (int m = 0; m < kM; ++m) online_softmax<kBN, kD>(s[m], o[m], row_max[m], row_sum[m], d.scale_log2);
      mma_p_b<kD, kBN, kM>(o, s, sV, lane);
    }
  }

  // Normalise, write lse, and stage the warp's rows of y (bf16) in its own rows of sQ, which no other
  // warp reads, for 16-byte stores.
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[m][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = 1.f / l;  // l >= 1: the row's max term contributes exp2(0)
      const int local = 16 * m + (lane >> 2) + 8 * r, t = warp_q0 + local;
      if ((lane & 3) == 0 && t < d.T) lse[(int64_t(b) * d.H + h) * d.T + t] = row_max[m][r] * d.scale + logf(l);
#pragma unroll
      for (int j = 0; j < kD / 8; ++j)
        *reinterpret_cast<uint32_t*>(sQ + swizzle<kD>(warp * kWarpRows + local, j * 8 + (lane & 3) * 2)) =
            pack_bf16(o[m][j][2 * r] * inv, o[m][j][2 * r + 1] * inv);
    }
  __syncwarp();
  bf16* y_dst = y + (int64_t(b) * d.T + warp_q0) * d.y_row + h * kD;
  constexpr int kChunksPerRow = kD / 8;
#pragma unroll
  for (int c = lane; c < kWarpRows * kChunksPerRow; c += 32) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    if (warp_q0 + r < d.T)
      *reinterpret_cast<uint4*>(y_dst + r * d.y_row + col) =
          *reinterpret_cast<const uint4*>(sQ + swizzle<kD>(warp * kWarpRows + r, col));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

Dims make_dims(const ops::AttentionShape& s) {
  UM_CHECK(s.batch <= INT_MAX && s.seq <= INT_MAX && s.heads + 2 * s.kv_heads <= INT_MAX,
           "attention sizes that fit in 32 bits", "B=", s.batch, " T=", s.seq, " H=", s.heads);
  Dims d;
  d.B = int(s.batch);
  d.T = int(s.seq);
  d.H = int(s.heads);
  d.Hkv = int(s.kv_heads);
  d.D = int(s.head_dim);
  d.qkv_row = s.qkv_row();
  d.y_row = s.y_row();
  d.scale = s.scale;
  d.scale_log2 = s.scale * kLog2e;
  return d;
}

unsigned grid_1d(int64_t blocks) {
  UM_CHECK(blocks <= INT_MAX, "an attention grid of at most 2^31 - 1 blocks", blocks);
  return unsigned(blocks);
}

template <class Tr>
static void launch_forward(const Dims& d, const bf16* qkv, bf16* y, float* lse) {
  auto kernel = attention_forward_kernel<Tr>;
  set_smem_limit(kernel, Tr::kSmemBytes);
  const int64_t blocks = int64_t(d.B) * d.H * ((d.T + Tr::kBlockM - 1) / Tr::kBlockM);
  kernel<<<grid_1d(blocks), Tr::kThreads, Tr::kSmemBytes, stream()>>>(d, qkv, y, lse);
  UM_CUDA_LAUNCHED();
}

// 16-byte loads and stores need 16-byte aligned head rows.
void check_aligned(const Tensor& t, const char* what) {
  UM_CHECK(reinterpret_cast<uintptr_t>(t.data()) % 16 == 0, std::string(what) + " aligned to 16 bytes", t.desc());
}

}  // namespace um::cuda::attention

namespace um::cuda {

bool bf16_head_dim_supported(int D) { return D == 64 || D == 128; }

void attention_forward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse) {
  using namespace attention;
  const Dims d = make_dims(s);
  if (int64_t(d.B) * d.T == 0) return;
  if (qkv.dtype() == DType::f32) {
    attention_forward_f32(d, qkv.data_as<float>(), y.data_as<float>(), lse.data_as<float>());
    return;
  }
  UM_CHECK(qkv.dtype() == DType::bf16, "attention on the GPU: an f32 or bf16 qkv", qkv.desc());
  if (!bf16_head_dim_supported(d.D)) {
    // Small models (head dims like 16 or 32): the CUDA-core kernel in f32 on converted copies.
    Tensor q32 = alloc_activation(qkv.shape(), DType::f32, qkv.device());
    Tensor y32 = alloc_activation(y.shape(), DType::f32, y.device());
    cast_forward(qkv, q32);
    attention_forward_f32(d, q32.data_as<float>(), y32.data_as<float>(), lse.data_as<float>());
    cast_forward(y32, y);
    return;
  }
  check_aligned(qkv, "attention: qkv");
  check_aligned(y, "attention: y");
  const bf16* q = qkv.data_as<bf16>();
  bf16* out = y.data_as<bf16>();
  float* l = lse.data_as<float>();
  // Tile shapes measured on an H100 (bench-attention and a sweep of the traits): 16 rows per warp,
  // 4 warps; D=64 with 64-key tiles at 4 blocks per SM, D=128 with 128-key tiles.
  switch (d.D) {
    case 64: launch_forward<ForwardTraits<64, 4, 1, 64, 4>>(d, q, out, l); break;
    case 128: launch_forward<ForwardTraits<128, 4, 1, 128, 1>>(d, q, out, l); break;
    default:
      throw Error("attention (CUDA, bf16)", "a head dim D of 64 or 128", "D=" + std::to_string(d.D));
  }
}

}  // namespace um::cuda
