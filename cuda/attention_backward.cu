// Attention backward on tensor cores, deterministic (every gradient element has one writer, sums run in
// a fixed order; no atomics). Three kernels:
//   delta   delta[b, h, t] = dy . y                                    (8 lanes per row)
//   dk/dv   a block owns kBlockN keys of one kv head and walks the query tiles at or after them,
//           for every query head of the group, so the group sum happens in registers:
//             S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T,
//             dS^T = P^T (dP^T - delta), dK += dS^T Q
//   dq      a block owns kBlockM query rows of one head and walks the key tiles up to them:
//             P = exp(scale Q K^T - lse), dS = P (dO V^T - delta), dQ += dS K
// (dq recomputes S and dP rather than exchanging partial dQ between key blocks.) Q/dO tiles (dk/dv)
// and K/V tiles (dq) are double-buffered: tile i+1 streams in while tile i is computed.
#include <type_traits>

#include "attention_common.cuh"
#include "ultramem/ops/elementwise.h"
#include "ultramem/core/arena.h"

namespace um::cuda::attention {

// ---------------------------------------------------------------------------------------------
// delta = rowsum(dy * y)

// Eight lanes per row, each reading kVec consecutive elements at a time (kVec = 8: 16-byte bf16 loads),
// so a warp reads four rows' worth of contiguous memory per load. y and dy are [rows, D] matrices
// with rows in (b, t, h) order.
template <typename T, int kVec>
__global__ void attention_delta_kernel(const Dims d, const T* __restrict__ y, const T* __restrict__ dy,
                                       float* __restrict__ delta) {
  const int sub = threadIdx.x & 7;
  const int rows = d.B * d.T * d.H;  // < 2^30, checked by the launcher
  const int groups = gridDim.x * (blockDim.x / 8);
  // Every lane runs the same number of iterations (the shuffles need the whole warp).
  for (int base = (blockIdx.x * blockDim.x + threadIdx.x) / 32 * 4; base < rows; base += groups) {
    const int r = base + threadIdx.x % 32 / 8;
    float acc = 0.f;
    if (r < rows) {
      const T* yr = y + int64_t(r) * d.D;
      const T* dyr = dy + int64_t(r) * d.D;
      for (int c = sub * kVec; c < d.D; c += 8 * kVec) {
        if constexpr (kVec == 8) {
          const uint4 a = *reinterpret_cast<const uint4*>(yr + c), b = *reinterpret_cast<const uint4*>(dyr + c);
          const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
          const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 fa = __bfloat1622float2(pa[i]), fb = __bfloat1622float2(pb[i]);
            acc = fmaf(fa.x, fb.x, fmaf(fa.y, fb.y, acc));
          }
        } else {
          acc = fmaf(to_f32(yr[c]), to_f32(dyr[c]), acc);
        }
      }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 4);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    if (sub == 0 && r < rows) {
      const int bt = r / d.H, h = r - bt * d.H, b = bt / d.T, t = bt - b * d.T;
      delta[(int64_t(b) * d.H + h) * d.T + t] = acc;
    }
  }
}

template <typename T>
void launch_attention_delta(const Dims& d, const T* y, const T* dy, float* delta) {
  const int64_t rows = int64_t(d.B) * d.T * d.H;
  UM_CHECK(rows < (int64_t(1) << 30), "fewer than 2^30 attention rows (B * T * H)", rows);
  const unsigned blocks = std::min<unsigned>(ceil_div(rows, 32), unsigned(sm_count()) * 16u);  // 32 rows a block
  if constexpr (std::is_same_v<T, bf16>) {
    if (d.D % 8 == 0) {
      attention_delta_kernel<T, 8><<<blocks, 256, 0, stream()>>>(d, y, dy, delta);
      UM_CUDA_LAUNCHED();
      return;
    }
  }
  attention_delta_kernel<T, 1><<<blocks, 256, 0, stream()>>>(d, y, dy, delta);
  UM_CUDA_LAUNCHED();
}
template void launch_attention_delta<float>(const Dims&, const float*, const float*, float*);
template void launch_attention_delta<bf16>(const Dims&, const bf16*, const bf16*, float*);

// ---------------------------------------------------------------------------------------------
// dK, dV

template <int kHeadDim_, int kNWarps_, int kMTiles_, int kBlockM_, int kMinBlocks_>
struct DkDvTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kThreads = 32 * kNWarps;
  static constexpr int kMTiles = kMTiles_;               // 16-key m-tiles per warp
  static constexpr int kWarpRows = 16 * kMTiles;
  static constexpr int kBlockN = kWarpRows * kNWarps;    // keys per block
  static constexpr int kBlockM = kBlockM_;               // query rows per step
  static constexpr int kMinBlocks = kMinBlocks_;
  // K, V, then two stages of (Q, dO), then two stages of (lse, delta).
  static constexpr int kKvElems = 2 * kBlockN * kHeadDim, kStageElems = 2 * kBlockM * kHeadDim;
  static constexpr size_t kSmemBytes =
      size_t(kKvElems + 2 * kStageElems) * sizeof(bf16) + 2 * 2 * kBlockM * sizeof(float);
  static_assert(size_t(kNWarps) * StagedRows<kHeadDim, kMTiles>::kFloatsPerWarp * sizeof(float) <= kSmemBytes,
                "the epilogue's staging fits in the block's shared memory");
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks)
    attention_dkdv_kernel(const Dims d, const bf16* __restrict__ qkv, const bf16* __restrict__ dy,
                          const float* __restrict__ lse, const float* __restrict__ delta, bf16* __restrict__ dqkv,
                          bool accumulate) {
  constexpr int kD = Tr::kHeadDim, kBM = Tr::kBlockM, kBN = Tr::kBlockN, kThreads = Tr::kThreads;
  constexpr int kM = Tr::kMTiles, kWarpRows = Tr::kWarpRows;
  extern __shared__ __align__(128) unsigned char smem[];
  // Stage s of a double-buffered tile is at base + s * (stage size): arithmetic, not an array of
  // pointers, which a run-time index would move to local memory.
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + kBN * kD;
  bf16* sQ0 = sK + Tr::kKvElems;  // stage s: sQ0 + s * kStageElems, dO right after Q
  float* sStats0 = reinterpret_cast<float*>(sQ0 + 2 * Tr::kStageElems);  // stage s: lse, then delta
  auto sQ = [&](int s) { return sQ0 + s * Tr::kStageElems; };
  auto sdO = [&](int s) { return sQ0 + s * Tr::kStageElems + kBM * kD; };
  auto sLse = [&](int s) { return sStats0 + s * 2 * kBM; };
  auto sDelta = [&](int s) { return sStats0 + s * 2 * kBM + kBM; };

  // The first key blocks have the most queries after them: they start first.
  const int num_n = (d.T + kBN - 1) / kBN;
  const int bg = int(blockIdx.x / num_n), n_block = int(blockIdx.x % num_n);
  const int b = bg / d.Hkv, g = bg % d.Hkv, group = d.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The warp's keys: warp_k0 + 16 m + (lane / 4) and + 8, for m < kM.
  const int k0 = n_block * kBN, warp_k0 = k0 + warp * kWarpRows;

  const bf16* batch = qkv + int64_t(b) * d.T * d.qkv_row;
  const bf16* dy_batch = dy + int64_t(b) * d.T * d.y_row;
  // Steps: (query head of the group, query tile) pairs, tiles from the one holding key k0 to the end.
  const int m_begin = k0 / kBM, steps_per_head = (d.T + kBM - 1) / kBM - m_begin;
  const int steps = group * steps_per_head;

  auto load_step = [&](int step, int stage) {
    const int h = g * group + step / steps_per_head, q0 = (m_begin + step % steps_per_head) * kBM;
    load_tile_async<kBM, kD, kThreads>(sQ(stage), batch + int64_t(q0) * d.qkv_row + h * kD, d.qkv_row, d.T - q0);
    load_tile_async<kBM, kD, kThreads>(sdO(stage), dy_batch + int64_t(q0) * d.y_row + h * kD, d.y_row, d.T - q0);
    const int64_t row0 = (int64_t(b) * d.H + h) * d.T;
    for (int i = threadIdx.x; i < kBM; i += kThreads) {
      const bool valid = q0 + i < d.T;  // rows past the end read as 0 and are masked below
      cp_async_4(smem_addr(sLse(stage) + i), lse + row0 + (valid ? q0 + i : 0), valid);
      cp_async_4(smem_addr(sDelta(stage) + i), delta + row0 + (valid ? q0 + i : 0), valid);
    }
  };

  load_tile_async<kBN, kD, kThreads>(sK, batch + int64_t(k0) * d.qkv_row + (d.H + g) * kD, d.qkv_row, d.T - k0);
  load_tile_async<kBN, kD, kThreads>(sV, batch + int64_t(k0) * d.qkv_row + (d.H + d.Hkv + g) * kD, d.qkv_row,
                                     d.T - k0);
  load_step(0, 0);
  cp_async_commit();

  float dk[kM][kD / 8][4], dv[kM][kD / 8][4];
  zero(dk);
  zero(dv);

  for (int step = 0; step < steps; ++step) {
    const int stage = step & 1;
    if (step + 1 < steps) {
      load_step(step + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // this step's tiles are visible to every warp

    const int q0 = (m_begin + step % steps_per_head) * kBM;
    // The warp's keys see the step's queries at or after them; keys >= T see nothing.
    const bool active = q0 + kBM - 1 >= warp_k0 && warp_k0 < d.T;
    if (active) {
      float st[kM][kBM / 8][4];  // S^T, then P^T: rows = the warp's keys, columns = the step's queries
      zero(st);
      mma_a_bt<kD, kBM, kM>(st, sK, warp * kWarpRows, sQ(stage), 0, lane);
      const bool masked = q0 < warp_k0 + kWarpRows - 1 || q0 + kBM > d.T;
#pragma unroll
      for (int j = 0; j < kBM / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = j * 8 + (lane & 3) * 2 + e, query = q0 + col;
          const float lse2 = sLse(stage)[col] * kLog2e;
#pragma unroll
          for (int m = 0; m < kM; ++m)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const int key = warp_k0 + 16 * m + (lane >> 2) + 8 * r;
              float p = fast_exp2(fmaf(st[m][j][2 * r + e], d.scale_log2, -lse2));
              if (masked && (query < key || query >= d.T)) p = 0.f;
              st[m][j][2 * r + e] = p;
            }
        }
      mma_p_b<kD, kBM, kM>(dv, st, sdO(stage), lane);  // dV += P^T dO

      float dpt[kM][kBM / 8][4];  // dP^T = V dO^T, then dS^T
      zero(dpt);
      mma_a_bt<kD, kBM, kM>(dpt, sV, warp * kWarpRows, sdO(stage), 0, lane);
#pragma unroll
      for (int j = 0; j < kBM / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float dl = sDelta(stage)[j * 8 + (lane & 3) * 2 + e];
#pragma unroll
          for (int m = 0; m < kM; ++m) {
            dpt[m][j][e] = st[m][j][e] * (dpt[m][j][e] - dl);
            dpt[m][j][2 + e] = st[m][j][2 + e] * (dpt[m][j][2 + e] - dl);
          }
        }
      mma_p_b<kD, kBM, kM>(dk, dpt, sQ(stage), lane);  // dK += dS^T Q
    }
    __syncthreads();  // every warp is done with this stage before the next prefetch refills it
  }

  // Epilogue: all shared memory is free now; each warp stages its rows in its own slice.
  using Staged = StagedRows<kD, kM>;
  float* stage = reinterpret_cast<float*>(smem) + warp * Staged::kFloatsPerWarp;
  const int64_t at = (int64_t(b) * d.T + warp_k0) * d.qkv_row;
  const int valid_rows = d.T - warp_k0;
  Staged::store(stage, dv, 1.f, lane);
  __syncwarp();
  Staged::write(stage, dqkv + at + int64_t(d.H + d.Hkv + g) * kD, d.qkv_row, valid_rows, accumulate, lane);
  __syncwarp();
  Staged::store(stage, dk, d.scale, lane);
  __syncwarp();
  Staged::write(stage, dqkv + at + int64_t(d.H + g) * kD, d.qkv_row, valid_rows, accumulate, lane);
}

// ---------------------------------------------------------------------------------------------
// dQ

template <int kHeadDim_, int kNWarps_, int kMTiles_, int kBlockN_, int kMinBlocks_>
struct DqTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kThreads = 32 * kNWarps;
  static constexpr int kMTiles = kMTiles_;               // 16-row m-tiles per warp
  static constexpr int kWarpRows = 16 * kMTiles;
  static constexpr int kBlockM = kWarpRows * kNWarps;    // query rows per block
  static constexpr int kBlockN = kBlockN_;               // keys per step
  static constexpr int kMinBlocks = kMinBlocks_;
  // Q, dO, then two stages of (K, V).
  static constexpr int kStageElems = 2 * kBlockN * kHeadDim;
  static constexpr size_t kSmemBytes = size_t(2 * kBlockM * kHeadDim + 2 * kStageElems) * sizeof(bf16);
  static_assert(size_t(kNWarps) * StagedRows<kHeadDim, kMTiles>::kFloatsPerWarp * sizeof(float) <= kSmemBytes,
                "the epilogue's staging fits in the block's shared memory");
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks)
    attention_dq_kernel(const Dims d, const bf16* __restrict__ qkv, const bf16* __restrict__ dy,
                        const float* __restrict__ lse, const float* __restrict__ delta, bf16* __restrict__ dqkv,
                        bool accumulate) {
  constexpr int kD = Tr::kHeadDim, kBM = Tr::kBlockM, kBN = Tr::kBlockN, kThreads = Tr::kThreads;
  constexpr int kM = Tr::kMTiles, kWarpRows = Tr::kWarpRows;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sdO = sQ + kBM * kD;
  bf16* sK0 = sdO + kBM * kD;  // stage s: K at sK0 + s * kStageElems, V right after it
  auto sK = [&](int s) { return sK0 + s * Tr::kStageElems; };
  auto sV = [&](int s) { return sK0 + s * Tr::kStageElems + kBN * kD; };

  const int num_m = (d.T + kBM - 1) / kBM;
  const int bh = int(blockIdx.x / num_m), m_block = num_m - 1 - int(blockIdx.x % num_m);
  const int b = bh / d.H, h = bh % d.H, g = h / d.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The warp's rows: warp_q0 + 16 m + (lane / 4) and + 8, for m < kM.
  const int q0 = m_block * kBM, warp_q0 = q0 + warp * kWarpRows;

  const bf16* batch = qkv + int64_t(b) * d.T * d.qkv_row;
  const bf16* k_src = batch + int64_t(d.H + g) * kD;
  const bf16* v_src = batch + int64_t(d.H + d.Hkv + g) * kD;
  const int n_blocks = (min(d.T, q0 + kBM) + kBN - 1) / kBN;

  auto load_kv = [&](int n, int stage) {
    const int k0 = n * kBN;
    load_tile_async<kBN, kD, kThreads>(sK(stage), k_src + int64_t(k0) * d.qkv_row, d.qkv_row, d.T - k0);
    load_tile_async<kBN, kD, kThreads>(sV(stage), v_src + int64_t(k0) * d.qkv_row, d.qkv_row, d.T - k0);
  };
  load_tile_async<kBM, kD, kThreads>(sQ, batch + int64_t(q0) * d.qkv_row + h * kD, d.qkv_row, d.T - q0);
  load_tile_async<kBM, kD, kThreads>(sdO, dy + (int64_t(b) * d.T + q0) * d.y_row + h * kD, d.y_row, d.T - q0);
  load_kv(0, 0);
  cp_async_commit();

  // The thread's rows' statistics (rows past the end get 0: their results are never written).
  float lse2[kM][2], dl[kM][2];
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int t = warp_q0 + 16 * m + (lane >> 2) + 8 * r;
      const int64_t at = (int64_t(b) * d.H + h) * d.T + t;
      lse2[m][r] = t < d.T ? lse[at] * kLog2e : 0.f;
      dl[m][r] = t < d.T ? delta[at] : 0.f;
    }

  float dq[kM][kD / 8][4];
  zero(dq);
  for (int n = 0; n < n_blocks; ++n) {
    const int stage = n & 1, k0 = n * kBN;
    if (n + 1 < n_blocks) {
      load_kv(n + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // this tile (and Q, dO) visible to every warp

    if (k0 <= warp_q0 + kWarpRows - 1) {
      float s[kM][kBN / 8][4];  // S, then P
      zero(s);
      mma_a_bt<kD, kBN, kM>(s, sQ, warp * kWarpRows, sK(stage), 0, lane);
      const bool masked = k0 + kBN - 1 > warp_q0;  // also covers keys >= T for rows < T
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = k0 + j * 8 + (lane & 3) * 2 + e;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              float p = fast_exp2(fmaf(s[m][j][2 * r + e], d.scale_log2, -lse2[m][r]));
              if (masked && key > warp_q0 + 16 * m + (lane >> 2) + 8 * r) p = 0.f;
              s[m][j][2 * r + e] = p;
            }
          }
      float ds[kM][kBN / 8][4];  // dP = dO V^T, then dS
      zero(ds);
      mma_a_bt<kD, kBN, kM>(ds, sdO, warp * kWarpRows, sV(stage), 0, lane);
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) ds[m][j][i] = s[m][j][i] * (ds[m][j][i] - dl[m][i / 2]);
      mma_p_b<kD, kBN, kM>(dq, ds, sK(stage), lane);  // dQ += dS K
    }
    __syncthreads();  // every warp is done with this stage before the next prefetch refills it
  }

  using Staged = StagedRows<kD, kM>;
  float* stage = reinterpret_cast<float*>(smem) + warp * Staged::kFloatsPerWarp;
  Staged::store(stage, dq, d.scale, lane);
  __syncwarp();
  Staged::write(stage, dqkv + (int64_t(b) * d.T + warp_q0) * d.qkv_row + int64_t(h) * kD, d.qkv_row,
                d.T - warp_q0, accumulate, lane);
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <class DkDv, class Dq>
static void launch_backward(const Dims& d, const bf16* qkv, const bf16* dy, const float* lse, const float* delta,
                            bf16* dqkv, bool accumulate) {
  auto dkdv = attention_dkdv_kernel<DkDv>;
  set_smem_limit(dkdv, DkDv::kSmemBytes);
  const int64_t dkdv_blocks = int64_t(d.B) * d.Hkv * ((d.T + DkDv::kBlockN - 1) / DkDv::kBlockN);
  dkdv<<<grid_1d(dkdv_blocks), DkDv::kThreads, DkDv::kSmemBytes, stream()>>>(d, qkv, dy, lse, delta, dqkv,
                                                                             accumulate);
  UM_CUDA_LAUNCHED();

  auto dq = attention_dq_kernel<Dq>;
  set_smem_limit(dq, Dq::kSmemBytes);
  const int64_t dq_blocks = int64_t(d.B) * d.H * ((d.T + Dq::kBlockM - 1) / Dq::kBlockM);
  dq<<<grid_1d(dq_blocks), Dq::kThreads, Dq::kSmemBytes, stream()>>>(d, qkv, dy, lse, delta, dqkv, accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda::attention

namespace um::cuda {

void attention_backward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse,
                        const Tensor& dy, const Tensor& dqkv, bool accumulate) {
  using namespace attention;
  const Dims d = make_dims(s);
  if (int64_t(d.B) * d.T == 0) return;
  Tensor delta = alloc_activation(Shape{s.batch, s.heads, s.seq}, DType::f32, qkv.device());
  if (qkv.dtype() == DType::f32) {
    attention_backward_f32(d, qkv.data_as<float>(), y.data_as<float>(), dy.data_as<float>(), lse.data_as<float>(),
                           delta.data_as<float>(), dqkv.data_as<float>(), accumulate);
    return;
  }
  UM_CHECK(qkv.dtype() == DType::bf16, "attention backward on the GPU: an f32 or bf16 qkv", qkv.desc());
  if (!bf16_head_dim_supported(d.D)) {
    // As in the forward: other head dims run the f32 CUDA-core kernels on converted copies.
    Tensor q32 = alloc_activation(qkv.shape(), DType::f32, qkv.device());
    Tensor y32 = alloc_activation(y.shape(), DType::f32, y.device());
    Tensor dy32 = alloc_activation(dy.shape(), DType::f32, dy.device());
    Tensor dq32 = alloc_activation(dqkv.shape(), DType::f32, dqkv.device());
    cast_forward(qkv, q32);
    cast_forward(y, y32);
    cast_forward(dy, dy32);
    attention_backward_f32(d, q32.data_as<float>(), y32.data_as<float>(), dy32.data_as<float>(), lse.data_as<float>(),
                           delta.data_as<float>(), dq32.data_as<float>(), false);
    um::cuda::accumulate(dqkv, dq32, accumulate);
    return;
  }
  for (const Tensor* t : {&qkv, &y, &dy, &dqkv}) check_aligned(*t, "attention backward: operands");
  launch_attention_delta(d, y.data_as<bf16>(), dy.data_as<bf16>(), delta.data_as<float>());
  const bf16 *q = qkv.data_as<bf16>(), *g = dy.data_as<bf16>();
  const float *l = lse.data_as<float>(), *dl = delta.data_as<float>();
  bf16* out = dqkv.data_as<bf16>();
  // Tile shapes measured on an H100 (bench-attention and a sweep of the traits): D=64 with two 16-row
  // m-tiles per warp and 32-row steps; D=128 with one m-tile per warp and 64-row steps.
  if (d.D == 64)
    launch_backward<DkDvTraits<64, 4, 2, 32, 1>, DqTraits<64, 4, 2, 32, 1>>(d, q, g, l, dl, out, accumulate);
  else
    launch_backward<DkDvTraits<128, 4, 1, 64, 1>, DqTraits<128, 4, 1, 64, 1>>(d, q, g, l, dl, out, accumulate);
}

}  // namespace um::cuda
