// Attention in f32 on CUDA cores, for any head dim D <= 128: the tight-tolerance reference for the
// GPU path and the kernels f32 training runs. Same algorithm as the bf16 kernels (online softmax
// forward saving lse; deterministic backward with a dk/dv kernel over keys and a dq kernel over
// queries), with simple work assignment: one warp per row, tiles of 32 rows in shared memory with
// one row per lane for the dot products, and lane-sliced head dims (d = lane + 32 c) for the sums.
#include "attention_common.cuh"

namespace um::cuda::attention {

namespace {

constexpr int kRows = 8;      // rows a block owns, one per warp
constexpr int kTile = 32;     // rows of a shared-memory tile, one per lane
constexpr int kMaxD = 128;
constexpr int kSlices = kMaxD / 32;
constexpr int kThreads = 32 * kRows;

// Copies `rows` rows of D floats (row r at src + r * stride) into dst with row stride dst_stride,
// zero-filling rows >= valid_rows.
__device__ __forceinline__ void load_rows(float* dst, int dst_stride, const float* src, int64_t stride, int rows,
                                          int valid_rows, int D) {
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    dst[r * dst_stride + c] = r < valid_rows ? src[r * stride + c] : 0.f;
  }
}

__device__ __forceinline__ float dot(const float* a, const float* b, int D) {
  float acc = 0.f;
  for (int c = 0; c < D; ++c) acc = fmaf(a[c], b[c], acc);
  return acc;
}

// out[d] = (accumulate ? out[d] : 0) + scale * v[d] for the lane's slices of one row.
__device__ __forceinline__ void write_row(float* out, const float (&v)[kSlices], float scale, bool accumulate,
                                          int lane, int D) {
#pragma unroll
  for (int c = 0; c < kSlices; ++c) {
    const int i = lane + 32 * c;
    if (i < D) out[i] = (accumulate ? out[i] : 0.f) + scale * v[c];
  }
}

__global__ void __launch_bounds__(kThreads)
    attention_forward_f32_kernel(const Dims d, const float* __restrict__ qkv, float* __restrict__ y,
                                 float* __restrict__ lse) {
  extern __shared__ float smem[];
  const int D = d.D, ks = D + 1;  // tiles read one row per lane are padded against bank conflicts
  float* sQ = smem;               // [kRows][D]
  float* sK = sQ + kRows * D;     // [kTile][D + 1]
  float* sV = sK + kTile * ks;    // [kTile][D]

  const int num_m = (d.T + kRows - 1) / kRows;
  const int bh = int(blockIdx.x / num_m), m_block = num_m - 1 - int(blockIdx.x % num_m);
  const int b = bh / d.H, h = bh % d.H, g = h / d.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = m_block * kRows, row = q0 + warp;
  const float* batch = qkv + int64_t(b) * d.T * d.qkv_row;

  load_rows(sQ, D, batch + int64_t(q0) * d.qkv_row + h * D, d.qkv_row, kRows, d.T - q0, D);
  float o[kSlices] = {0.f, 0.f, 0.f, 0.f}, m = -INFINITY, l = 0.f;
  const int kv_len = min(d.T, q0 + kRows);
  for (int k0 = 0; k0 < kv_len; k0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_rows(sK, ks, batch + int64_t(k0) * d.qkv_row + (d.H + g) * D, d.qkv_row, kTile, d.T - k0, D);
    load_rows(sV, D, batch + int64_t(k0) * d.qkv_row + (d.H + d.Hkv + g) * D, d.qkv_row, kTile, d.T - k0, D);
    __syncthreads();
    if (row >= d.T || k0 > row) continue;
    const int key = k0 + lane;
    const float s = key <= row ? dot(sQ + warp * D, sK + lane * ks, D) * d.scale : -INFINITY;
    const float m_new = fmaxf(m, warp_max(s));  // finite: key k0 <= row
    const float p = key <= row ? expf(s - m_new) : 0.f;
    const float correction = expf(m - m_new);
    l = l * correction + warp_sum(p);
#pragma unroll
    for (int c = 0; c < kSlices; ++c) o[c] *= correction;
    for (int j = 0; j < kTile; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
      for (int c = 0; c < kSlices; ++c)
        if (lane + 32 * c < D) o[c] = fmaf(pj, sV[j * D + lane + 32 * c], o[c]);
    }
    m = m_new;
  }
  if (row >= d.T) return;
  write_row(y + (int64_t(b) * d.T + row) * d.y_row + h * D, o, 1.f / l, false, lane, D);
  if (lane == 0) lse[(int64_t(b) * d.H + h) * d.T + row] = m + logf(l);
}

__global__ void __launch_bounds__(kThreads)
    attention_dq_f32_kernel(const Dims d, const float* __restrict__ qkv, const float* __restrict__ dy,
                            const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dqkv,
                            bool accumulate) {
  extern __shared__ float smem[];
  const int D = d.D, ks = D + 1;
  float* sQ = smem;               // [kRows][D]
  float* sdO = sQ + kRows * D;    // [kRows][D]
  float* sK = sdO + kRows * D;    // [kTile][D + 1]
  float* sV = sK + kTile * ks;    // [kTile][D + 1]

  const int num_m = (d.T + kRows - 1) / kRows;
  const int bh = int(blockIdx.x / num_m), m_block = num_m - 1 - int(blockIdx.x % num_m);
  const int b = bh / d.H, h = bh % d.H, g = h / d.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = m_block * kRows, row = q0 + warp;
  const float* batch = qkv + int64_t(b) * d.T * d.qkv_row;

  load_rows(sQ, D, batch + int64_t(q0) * d.qkv_row + h * D, d.qkv_row, kRows, d.T - q0, D);
  load_rows(sdO, D, dy + (int64_t(b) * d.T + q0) * d.y_row + h * D, d.y_row, kRows, d.T - q0, D);
  const int64_t stat = (int64_t(b) * d.H + h) * d.T + row;
  const float row_lse = row < d.T ? lse[stat] : 0.f, row_delta = row < d.T ? delta[stat] : 0.f;

  float dq[kSlices] = {0.f, 0.f, 0.f, 0.f};
  const int kv_len = min(d.T, q0 + kRows);
  for (int k0 = 0; k0 < kv_len; k0 += kTile) {
    __syncthreads();
    load_rows(sK, ks, batch + int64_t(k0) * d.qkv_row + (d.H + g) * D, d.qkv_row, kTile, d.T - k0, D);
    load_rows(sV, ks, batch + int64_t(k0) * d.qkv_row + (d.H + d.Hkv + g) * D, d.qkv_row, kTile, d.T - k0, D);
    __syncthreads();
    if (row >= d.T || k0 > row) continue;
    float ds = 0.f;
    if (k0 + lane <= row) {
      const float p = expf(dot(sQ + warp * D, sK + lane * ks, D) * d.scale - row_lse);
      ds = p * (dot(sdO + warp * D, sV + lane * ks, D) - row_delta);
    }
    for (int j = 0; j < kTile; ++j) {
      const float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
      for (int c = 0; c < kSlices; ++c)
        if (lane + 32 * c < D) dq[c] = fmaf(dsj, sK[j * ks + lane + 32 * c], dq[c]);
    }
  }
  if (row < d.T) write_row(dqkv + (int64_t(b) * d.T + row) * d.qkv_row + h * D, dq, d.scale, accumulate, lane, D);
}

// One warp per key (of one kv head); the block's 8 keys walk the query tiles at or after them for every
// query head of the group.
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_f32_kernel(const Dims d, const float* __restrict__ qkv, const float* __restrict__ dy,
                              const float* __restrict__ lse, const float* __restrict__ delta,
                              float* __restrict__ dqkv, bool accumulate) {
  extern __shared__ float smem[];
  const int D = d.D, ks = D + 1;
  float* sKr = smem;               // [kRows][D]: the block's keys
  float* sVr = sKr + kRows * D;    // [kRows][D]: their values
  float* sQ = sVr + kRows * D;     // [kTile][D + 1]
  float* sdO = sQ + kTile * ks;    // [kTile][D + 1]
  float* sLse = sdO + kTile * ks;  // [kTile]
  float* sDelta = sLse + kTile;    // [kTile]

  const int num_n = (d.T + kRows - 1) / kRows;
  const int bg = int(blockIdx.x / num_n), n_block = int(blockIdx.x % num_n);
  const int b = bg / d.Hkv, g = bg % d.Hkv, group = d.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k0 = n_block * kRows, key = k0 + warp;
  const float* batch = qkv + int64_t(b) * d.T * d.qkv_row;

  load_rows(sKr, D, batch + int64_t(k0) * d.qkv_row + (d.H + g) * D, d.qkv_row, kRows, d.T - k0, D);
  load_rows(sVr, D, batch + int64_t(k0) * d.qkv_row + (d.H + d.Hkv + g) * D, d.qkv_row, kRows, d.T - k0, D);
  float dk[kSlices] = {0.f, 0.f, 0.f, 0.f}, dv[kSlices] = {0.f, 0.f, 0.f, 0.f};
  for (int h = g * group; h < (g + 1) * group; ++h) {
    for (int q0 = k0 / kTile * kTile; q0 < d.T; q0 += kTile) {
      __syncthreads();
      load_rows(sQ, ks, batch + int64_t(q0) * d.qkv_row + h * D, d.qkv_row, kTile, d.T - q0, D);
      load_rows(sdO, ks, dy + (int64_t(b) * d.T + q0) * d.y_row + h * D, d.y_row, kTile, d.T - q0, D);
      if (threadIdx.x < kTile) {
        const int t = q0 + threadIdx.x;
        const int64_t at = (int64_t(b) * d.H + h) * d.T + t;
        sLse[threadIdx.x] = t < d.T ? lse[at] : 0.f;
        sDelta[threadIdx.x] = t < d.T ? delta[at] : 0.f;
      }
      __syncthreads();
      if (key >= d.T || q0 + kTile - 1 < key) continue;
      const int query = q0 + lane;
      float p = 0.f, ds = 0.f;
      if (query >= key && query < d.T) {
        p = expf(dot(sQ + lane * ks, sKr + warp * D, D) * d.scale - sLse[lane]);
        ds = p * (dot(sdO + lane * ks, sVr + warp * D, D) - sDelta[lane]);
      }
      for (int i = 0; i < kTile; ++i) {
        const float pi = __shfl_sync(0xffffffffu, p, i), dsi = __shfl_sync(0xffffffffu, ds, i);
#pragma unroll
        for (int c = 0; c < kSlices; ++c) {
          const int col = lane + 32 * c;
          if (col < D) {
            dv[c] = fmaf(pi, sdO[i * ks + col], dv[c]);
            dk[c] = fmaf(dsi, sQ[i * ks + col], dk[c]);
          }
        }
      }
    }
  }
  if (key >= d.T) return;
  float* out = dqkv + (int64_t(b) * d.T + key) * d.qkv_row;
  write_row(out + (d.H + g) * D, dk, d.scale, accumulate, lane, D);
  write_row(out + (d.H + d.Hkv + g) * D, dv, 1.f, accumulate, lane, D);
}

void check_head_dim(const Dims& d) {
  if (d.D > kMaxD) throw Error("attention (CUDA, f32)", "a head dim D <= 128", "D=" + std::to_string(d.D));
}

}  // namespace

void attention_forward_f32(const Dims& d, const float* qkv, float* y, float* lse) {
  check_head_dim(d);
  const size_t smem = size_t(kRows * d.D + kTile * (d.D + 1) + kTile * d.D) * sizeof(float);
  const int64_t blocks = int64_t(d.B) * d.H * ((d.T + kRows - 1) / kRows);
  attention_forward_f32_kernel<<<grid_1d(blocks), kThreads, smem, stream()>>>(d, qkv, y, lse);
  UM_CUDA_LAUNCHED();
}

void attention_backward_f32(const Dims& d, const float* qkv, const float* y, const float* dy, const float* lse,
                            float* delta, float* dqkv, bool accumulate) {
  check_head_dim(d);
  launch_attention_delta(d, y, dy, delta);
  const size_t dkdv_smem = size_t(2 * kRows * d.D + 2 * kTile * (d.D + 1) + 2 * kTile) * sizeof(float);
  const int64_t dkdv_blocks = int64_t(d.B) * d.Hkv * ((d.T + kRows - 1) / kRows);
  attention_dkdv_f32_kernel<<<grid_1d(dkdv_blocks), kThreads, dkdv_smem, stream()>>>(d, qkv, dy, lse, delta, dqkv,
                                                                                       accumulate);
  UM_CUDA_LAUNCHED();
  const size_t dq_smem = size_t(2 * kRows * d.D + 2 * kTile * (d.D + 1)) * sizeof(float);
  const int64_t dq_blocks = int64_t(d.B) * d.H * ((d.T + kRows - 1) / kRows);
  attention_dq_f32_kernel<<<grid_1d(dq_blocks), kThreads, dq_smem, stream()>>>(d, qkv, dy, lse, delta, dqkv,
                                                                                accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda::attention
