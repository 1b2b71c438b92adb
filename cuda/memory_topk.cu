// CUDA memory_topk: pre-selection, k x k grid scoring and the final top-k of one (token, head) in ONE
// kernel; its backward scatters into the dense score gradient and reduces the core gradient over tokens.
//
// Forward, one 64-thread block per (token, head):
//  1. warp s in {0, 1} pre-selects side s: it streams scores[t, h, s, :, :] once (coalesced, r rows of
//     n), forms the pre-selection score (u . s or v . s; additive: s) and keeps, per lane, the 8 best
//     candidates of its strided slice (i = lane mod 32) in registers, as 64-bit keys
//     (order-preserving value bits << 32 | ~position): one integer compare orders by value desc, then
//     position asc. k rounds of a warp arg-max (two __reduce_max_sync: value bits, then the position
//     among the lanes holding that value) pick the best remaining key; the winning lane pops it and,
//     only when its queue runs dry, rescans its own slice for keys below the last one taken (rare with
//     random data: a lane holds ~k/32 of the top k on average). Then the r raw scores of the k picked
//     rows are gathered (2 r k reads, L2 hits).
//  2. both warps fill the k x k grid in shared memory (never in global memory): tucker S = s1^T Csum s2
//     via W = Csum s2 (r products per cell), additive S = a + b.
//  3. warp 0 selects the final k from the grid with the same queues (cells dealt to lanes along
//     anti-diagonals, so the top-left corner, where the best cells gather, is spread over the lanes),
//     then writes indices, pair positions and the exact per-core scores S_m of its picks.
// The arithmetic is that of the CPU reference (src/cpu/memory_retrieval.cpp) in the same order with
// __fmul_rn/__fadd_rn (no FMA contraction), so f32 rankings agree bit for bit. NaN ranks as -inf; -0
// as +0; every position read comes from our own selection and stays in bounds.
//
// Backward, one 128-thread block per (token, head): per pick its contributions to d s1 (r values) and
// d s2; per picked row/column the sum of its picks' contributions in pick order, added into dscores
// (zeroed first by a memset unless accumulating); per core entry the sum over picks in pick order,
// written to a [entries, T] scratch that a second kernel sums over tokens in a fixed order. No atomics.
#include <type_traits>

#include "common.cuh"
#include "ultramem/core/arena.h"
#include "ultramem/ops/memory_retrieval.h"

namespace um::cuda {
namespace {

constexpr int kMaxKnn = 64, kMaxRank = 4, kMaxCores = 4;
constexpr int kQueue = 8;  // candidates each lane keeps in registers
constexpr unsigned kFull = 0xffffffffu;

// Order-preserving bits: a larger float gives larger bits. NaN ranks as -inf, -0 as +0.
__device__ __forceinline__ uint32_t order_bits(float x) {
  uint32_t b = __float_as_uint(x);
  if (x != x) b = 0xff800000u;
  if (b == 0x80000000u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
// Larger key = better candidate. Never 0 (order_bits(-inf) > 0), so 0 marks an empty queue slot.
__device__ __forceinline__ uint64_t rank_key(float x, int pos) {
  return (uint64_t(order_bits(x)) << 32) | uint32_t(~uint32_t(pos));
}

// A lane's best candidates, best first, in registers (fully unrolled: no local memory).
struct LaneQueue {
  uint64_t key[kQueue];
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int m = 0; m < kQueue; ++m) key[m] = 0;
  }
  __device__ __forceinline__ void offer(uint64_t x) {
    if (x <= key[kQueue - 1]) return;
    key[kQueue - 1] = x;
#pragma unroll
    for (int m = kQueue - 1; m > 0; --m) {  // one bubble pass keeps the queue sorted
      const uint64_t hi = key[m - 1] > key[m] ? key[m - 1] : key[m], lo = key[m - 1] > key[m] ? key[m] : key[m - 1];
      key[m - 1] = hi;
      key[m] = lo;
    }
  }
  __device__ __forceinline__ void pop() {
#pragma unroll
    for (int m = 0; m + 1 < kQueue; ++m) key[m] = key[m + 1];
    key[kQueue - 1] = 0;
  }
};

// The k best candidates of the warp, best first, into out[0, k) (shared memory). scan(queue, below)
// offers each of the calling lane's candidates whose key is below `below`. Requires at least k
// candidates in all (knn <= n, knn <= knn^2); should that fail, position 0 is written, never garbage.
template <class Scan>
__device__ __forceinline__ void warp_select(int k, const Scan& scan, int* out) {
  const int lane = threadIdx.x & 31;
  LaneQueue q;
  q.clear();
  scan(q, ~0ull);
  for (int j = 0; j < k; ++j) {
    const uint64_t head = q.key[0];
    const uint32_t hi = uint32_t(head >> 32);
    const uint32_t best_hi = __reduce_max_sync(kFull, hi);
    const uint32_t lo = hi == best_hi ? uint32_t(head) : 0u;
    const uint32_t best_lo = __reduce_max_sync(kFull, lo);
    if (lane == 0) out[j] = best_hi ? int(~best_lo) : 0;
    if (best_hi != 0 && hi == best_hi && lo == best_lo) {  // the winner: positions are unique
      q.pop();
      if (q.key[0] == 0) scan(q, (uint64_t(best_hi) << 32) | best_lo);
    }
  }
  __syncwarp();
}

// Pre-selection candidates of one side: position i, value u . scores[:, i] (additive: scores[0, i]).
struct RowScan {
  const float* base;  // scores[t, h, s]: r rows of n
  int n, r, lane;
  bool weighted;
  float w[kMaxRank];
  __device__ __forceinline__ float value(int i) const {
    if (!weighted) return __ldg(base + i);
    float acc = __fmul_rn(w[0], __ldg(base + i));
#pragma unroll
    for (int p = 1; p < kMaxRank; ++p)
      if (p < r) acc = __fadd_rn(acc, __fmul_rn(w[p], __ldg(base + int64_t(p) * n + i)));
    return acc;
  }
  __device__ __forceinline__ void operator()(LaneQueue& q, uint64_t below) const {
    int i = lane;
    for (; i + 96 < n; i += 128) {  // four loads in flight per lane before the compares
      const float x0 = value(i), x1 = value(i + 32), x2 = value(i + 64), x3 = value(i + 96);
      const uint64_t k0 = rank_key(x0, i), k1 = rank_key(x1, i + 32), k2 = rank_key(x2, i + 64),
                     k3 = rank_key(x3, i + 96);
      if (k0 < below) q.offer(k0);
      if (k1 < below) q.offer(k1);
      if (k2 < below) q.offer(k2);
      if (k3 < below) q.offer(k3);
    }
    for (; i < n; i += 32) {
      const uint64_t key = rank_key(value(i), i);
      if (key < below) q.offer(key);
    }
  }
};

// Grid candidates: cell a*k + b of the shared grid; lane l owns the cells with (a + b) mod 32 == l.
struct GridScan {
  const float* grid;
  int k, lane;
  __device__ __forceinline__ void operator()(LaneQueue& q, uint64_t below) const {
    for (int a = 0; a < k; ++a)
      for (int b = (lane - a) & 31; b < k; b += 32) {
        const uint64_t key = rank_key(grid[a * k + b], a * k + b);
        if (key < below) q.offer(key);
      }
  }
};

template <typename CoreT>
__global__ void __launch_bounds__(64)
    topk_forward_kernel(const float* __restrict__ scores, const float* __restrict__ u, const float* __restrict__ v,
                        const CoreT* __restrict__ cores, int H, int r, int n, int k, int hc, bool tucker,
                        int32_t* __restrict__ indices, float* __restrict__ out_scores, int32_t* __restrict__ rows,
                        int32_t* __restrict__ pair) {
  extern __shared__ float grid[];  // [k * k]
  __shared__ int sel[2][kMaxKnn];
  __shared__ float sv[2][kMaxRank][kMaxKnn];  // raw scores of the picked rows (0) and columns (1)
  __shared__ float cs[kMaxCores * kMaxRank * kMaxRank];
  __shared__ float W[kMaxRank][kMaxKnn];
  __shared__ int best[kMaxKnn];
  const int64_t th = blockIdx.x;  // t * H + h
  const int h = int(th % H), warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;

  {  // 1. pre-selection of side `warp`
    const int s = warp;
    RowScan scan;
    scan.base = scores + (th * 2 + s) * int64_t(r) * n;
    scan.n = n;
    scan.r = r;
    scan.lane = lane;
    scan.weighted = tucker;
#pragma unroll
    for (int p = 0; p < kMaxRank; ++p) scan.w[p] = tucker && p < r ? (s == 0 ? u : v)[h * r + p] : 0.f;
    warp_select(k, scan, sel[s]);
    for (int a = lane; a < k; a += 32) {
      const int i = sel[s][a];
      rows[(th * 2 + s) * k + a] = i;
      for (int p = 0; p < r; ++p) sv[s][p][a] = scan.base[int64_t(p) * n + i];
    }
  }
  if (tucker)
    for (int e = tid; e < hc * r * r; e += blockDim.x)  // core m of head h: cores[m, h, :, :]
      cs[e] = to_f32(cores[(int64_t(e / (r * r)) * H + h) * r * r + e % (r * r)]);
  __syncthreads();

  // 2. the grid. Tucker: W[p][b] = sum_q Csum[p][q] s2[q][b] with Csum = sum_m C_m, then S = s1 . W.
  if (tucker) {
    for (int e = tid; e < r * k; e += blockDim.x) {
      const int p = e / k, b = e % k;
      float acc = 0.f;
      for (int q = 0; q < r; ++q) {
        float c = cs[p * r + q];
        for (int m = 1; m < hc; ++m) c = __fadd_rn(c, cs[m * r * r + p * r + q]);
        const float term = __fmul_rn(c, sv[1][q][b]);
        acc = q == 0 ? term : __fadd_rn(acc, term);
      }
      W[p][b] = acc;
    }
    __syncthreads();
  }
  for (int c = tid; c < k * k; c += blockDim.x) {
    const int a = c / k, b = c % k;
    float S;
    if (tucker) {
      S = __fmul_rn(sv[0][0][a], W[0][b]);
      for (int p = 1; p < r; ++p) S = __fadd_rn(S, __fmul_rn(sv[0][p][a], W[p][b]));
    } else {
      S = __fadd_rn(sv[0][0][a], sv[1][0][b]);
    }
    grid[c] = S;
  }
  __syncthreads();
  if (warp != 0) return;  // no barrier below this point

  // 3. the final top-k and the outputs.
  warp_select(k, GridScan{grid, k, lane}, best);
  for (int j = lane; j < k; j += 32) {
    const int pos = best[j], a = pos / k, b = pos % k;
    const int64_t slot = th * k + j;
    indices[slot] = sel[0][a] * n + sel[1][b];
    pair[slot] = pos;
    if (!tucker) {
      out_scores[slot] = grid[pos];
      continue;
    }
    for (int m = 0; m < hc; ++m) {  // S_m = sum_p s1[p] (sum_q C_m[p][q] s2[q])
      const float* C = cs + m * r * r;
      float acc = 0.f;
      for (int p = 0; p < r; ++p) {
        float w = __fmul_rn(C[p * r], sv[1][0][b]);
        for (int q = 1; q < r; ++q) w = __fadd_rn(w, __fmul_rn(C[p * r + q], sv[1][q][b]));
        const float term = __fmul_rn(sv[0][p][a], w);
        acc = p == 0 ? term : __fadd_rn(acc, term);
      }
      out_scores[slot * hc + m] = acc;
    }
  }
}

// Rows, pairs and scores are re-validated (a corrupt entry is skipped, never dereferenced).
template <typename CoreT>
__global__ void __launch_bounds__(128)
    topk_backward_kernel(const float* __restrict__ scores, const CoreT* __restrict__ cores,
                         const int32_t* __restrict__ rows, const int32_t* __restrict__ pair,
                         const float* __restrict__ dpick, float* __restrict__ dscores, float* __restrict__ dcore_part,
                         int64_t T, int H, int r, int n, int k, int hc, bool tucker) {
  __shared__ int sel[2][kMaxKnn];
  __shared__ int pa[kMaxKnn], pb[kMaxKnn];  // the picks' ranks in the row / column lists (-1: invalid)
  __shared__ float sv[2][kMaxRank][kMaxKnn];
  __shared__ float cs[kMaxCores * kMaxRank * kMaxRank];
  __shared__ float g[kMaxKnn][kMaxCores];          // dpick of each pick
  __shared__ float contrib[2][kMaxKnn][kMaxRank];  // each pick's d s1[p] (0) and d s2[q] (1)
  const int64_t th = blockIdx.x, t = th / H;
  const int h = int(th % H), tid = threadIdx.x;
  const int64_t side_stride = int64_t(r) * n;

  if (tid < 2 * k) {
    const int s = tid / k, a = tid % k, i = rows[(th * 2 + s) * k + a];
    sel[s][a] = i >= 0 && i < n ? i : -1;
  }
  if (tid < k) {
    const int pos = pair[th * k + tid];
    const bool ok = pos >= 0 && pos < k * k;
    pa[tid] = ok ? pos / k : -1;
    pb[tid] = ok ? pos % k : -1;
    for (int m = 0; m < hc; ++m) g[tid][m] = dpick[(th * k + tid) * hc + m];
  }
  if (tucker && tid < hc * r * r) cs[tid] = to_f32(cores[(int64_t(tid / (r * r)) * H + h) * r * r + tid % (r * r)]);
  __syncthreads();
  if (tid < 2 * k) {
    const int s = tid / k, a = tid % k, i = sel[s][a];
    for (int p = 0; p < r; ++p) sv[s][p][a] = i >= 0 ? scores[(th * 2 + s) * side_stride + int64_t(p) * n + i] : 0.f;
  }
  if (tid < k && pa[tid] >= 0 && (sel[0][pa[tid]] < 0 || sel[1][pb[tid]] < 0)) pa[tid] = pb[tid] = -1;
  __syncthreads();
  if (tid < k) {
    const int q = tid, a = pa[q], b = pb[q];
    for (int p = 0; p < r; ++p) {
      float c0 = 0.f, c1 = 0.f;
      if (a >= 0 && !tucker) c0 = c1 = g[q][0];
      if (a >= 0 && tucker)
        for (int m = 0; m < hc; ++m) {  // d s1[p] += g_m C_m[p][:] . s2;  d s2[p] += g_m s1 . C_m[:][p]
          const float* C = cs + m * r * r;
          float w0 = 0.f, w1 = 0.f;
          for (int x = 0; x < r; ++x) {
            w0 += C[p * r + x] * sv[1][x][b];
            w1 += sv[0][x][a] * C[x * r + p];
          }
          c0 += g[q][m] * w0;
          c1 += g[q][m] * w1;
        }
      contrib[0][q][p] = c0;
      contrib[1][q][p] = c1;
    }
  }
  __syncthreads();
  if (dscores && tid < 2 * k) {  // picked row/column (s, a): its picks' contributions in pick order
    const int s = tid / k, a = tid % k, i = sel[s][a];
    const int* rank = s == 0 ? pa : pb;
    if (i >= 0)
      for (int p = 0; p < r; ++p) {
        float acc = 0.f;
        bool any = false;
        for (int q = 0; q < k; ++q)
          if (rank[q] == a) {
            acc += contrib[s][q][p];
            any = true;
          }
        if (any) {
          float* d = dscores + (th * 2 + s) * side_stride + int64_t(p) * n + i;
          *d += acc;  // this block is the only writer of its rows
        }
      }
  }
  if (dcore_part && tid < hc * r * r) {  // d C_m[p][x] of this token: sum over picks of g_m s1[p] s2[x]
    const int m = tid / (r * r), p = (tid / r) % r, x = tid % r;
    float acc = 0.f;
    for (int q = 0; q < k; ++q)
      if (pa[q] >= 0) acc += g[q][m] * sv[0][p][pa[q]] * sv[1][x][pb[q]];
    dcore_part[((int64_t(m) * H + h) * r * r + p * r + x) * T + t] = acc;
  }
}

// dcores[e] (+)= sum over t of part[e, t]: one block per entry, a fixed-order (strided, then tree) sum.
__global__ void __launch_bounds__(256)
    dcores_reduce_kernel(const float* __restrict__ part, int64_t T, float* __restrict__ dcores, bool accumulate) {
  const float* p = part + int64_t(blockIdx.x) * T;
  float s = 0.f;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) s += p[t];
  s = block_sum(s);
  if (threadIdx.x == 0) dcores[blockIdx.x] = accumulate ? dcores[blockIdx.x] + s : s;
}

struct Dims {
  int64_t T, H;
  int r, n, k, hc;
  bool tucker;
};

Dims dims(const Tensor& scores, const Tensor& cores, const ops::TopkArgs& args) {
  const bool tucker = args.grid == ops::GridScore::tucker;
  Dims d{scores.dim(0),
         scores.dim(1),
         int(scores.dim(3)),
         int(scores.dim(4)),
         int(args.knn),
         tucker ? int(cores.dim(0)) : 1,
         tucker};
  UM_CHECK(d.T * d.H <= int64_t(INT32_MAX), "memory_topk: T * H below 2^31 (one block each)", d.T * d.H);
  return d;
}

// Runs body with CoreT = the cores' element type (float when there are no cores).
template <typename Body>
void with_core_type(const Tensor& cores, bool tucker, Body body) {
  if (!tucker) return body(static_cast<const float*>(nullptr));
  UM_DISPATCH_ACT(cores.dtype(), C, body(cores.data_as<const C>()));
}

}  // namespace

void memory_topk_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                         const ops::TopkArgs& args, const ops::Retrieval& out, const Tensor& pair) {
  const Dims d = dims(scores, cores, args);
  if (d.T == 0) return;
  const size_t smem = size_t(d.k) * d.k * sizeof(float);  // <= 16 KiB
  with_core_type(cores, d.tucker, [&](auto* c) {
    using C = std::remove_const_t<std::remove_pointer_t<decltype(c)>>;
    topk_forward_kernel<C><<<unsigned(d.T * d.H), 64, smem, stream()>>>(
        scores.data_as<float>(), d.tucker ? u.data_as<float>() : nullptr, d.tucker ? v.data_as<float>() : nullptr, c,
        int(d.H), d.r, d.n, d.k, d.hc, d.tucker, out.indices.data_as<int32_t>(), out.scores.data_as<float>(),
        out.rows.data_as<int32_t>(), pair.data_as<int32_t>());
  });
  UM_CUDA_LAUNCHED();
}

void memory_topk_backward(const Tensor& scores, const Tensor& cores, const ops::TopkArgs& args, const Tensor& rows,
                          const Tensor& pair, const Tensor& dpick, const Tensor& dscores, bool acc_s,
                          const Tensor& dcores, bool acc_c) {
  const Dims d = dims(scores, cores, args);
  if (dscores.defined() && !acc_s) UM_CUDA(cudaMemsetAsync(dscores.data(), 0, dscores.nbytes(), stream()));
  if (d.T == 0) {
    if (dcores.defined() && !acc_c) UM_CUDA(cudaMemsetAsync(dcores.data(), 0, dcores.nbytes(), stream()));
    return;
  }
  const int64_t entries = dcores.defined() ? dcores.numel() : 0;
  float* part =
      entries
          ? static_cast<float*>(arena_for(scores.device()).alloc_bytes(size_t(entries) * size_t(d.T) * sizeof(float)))
          : nullptr;
  with_core_type(cores, d.tucker, [&](auto* c) {
    using C = std::remove_const_t<std::remove_pointer_t<decltype(c)>>;
    topk_backward_kernel<C><<<unsigned(d.T * d.H), 128, 0, stream()>>>(
        scores.data_as<float>(), c, rows.data_as<int32_t>(), pair.data_as<int32_t>(), dpick.data_as<float>(),
        dscores.defined() ? dscores.data_as<float>() : nullptr, part, d.T, int(d.H), d.r, d.n, d.k, d.hc, d.tucker);
  });
  UM_CUDA_LAUNCHED();
  if (entries) {
    dcores_reduce_kernel<<<unsigned(entries), 256, 0, stream()>>>(part, d.T, dcores.data_as<float>(), acc_c);
    UM_CUDA_LAUNCHED();
  }
}

}  // namespace um::cuda
