// AdamW and gradient norms on the GPU. Element ranges are cut into tiles of kTile elements; a
// launch's range table travels by value in the kernel parameters (no copy before the launch), and
// a grid-stride loop hands whole tiles to blocks, which look their range up by binary search. Inside
// a tile, 16-byte-aligned elements move as float4 and the at most 3 + 3 unaligned ones at the ends
// one by one.
//
// Norms: stage 1 writes one double per tile (a block reduction in a fixed order), stage 2 sums a
// range's tiles in tile order, so the result does not depend on the grid or on timing.
#include <algorithm>
#include <cstdint>

#include "ultramem/core/arena.h"
#include "ultramem/optim/adamw.h"
#include "common.cuh"

namespace um::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kTile = 8192;  // elements of one tile: 8 float4 per thread
constexpr int kMaxRanges = 64;   // ranges per launch: the table stays ~2 KB of kernel parameters

// One launch's ranges. Tile k of the launch lies in the range r with first_tile[r] <= k <
// first_tile[r + 1] (empty ranges own no tile).
struct TileTable {
  int count = 0;
  int64_t begin[kMaxRanges], end[kMaxRanges];
  int64_t first_tile[kMaxRanges + 1];
  float step_size[kMaxRanges], decay[kMaxRanges];  // AdamW only
};

// The largest r with first_tile[r] <= tile: the non-empty range holding the tile. Uniform per block.
__device__ __forceinline__ int find_range(const TileTable& t, int64_t tile) {
  int lo = 0, hi = t.count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (t.first_tile[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Calls scalar(i) or vec(q) (elements 4q..4q+3) for every element of [s, e), each exactly once,
// spread over the block. kVec: element index 4q is 16-byte aligned in every buffer.
template <bool kVec, typename Scalar, typename Vec>
__device__ __forceinline__ void for_each_in_tile(int64_t s, int64_t e, Scalar scalar, Vec vec) {
  if (!kVec) {
    for (int64_t i = s + threadIdx.x; i < e; i += blockDim.x) scalar(i);
    return;
  }
  int64_t a = std::min((s + 3) & ~int64_t(3), e);  // scalar head [s, a)
  int64_t b = std::max(a, e & ~int64_t(3));        // float4 body [a, b), scalar tail [b, e)
  if (s + threadIdx.x < a) scalar(s + threadIdx.x);
  for (int64_t q = a / 4 + threadIdx.x; q < b / 4; q += blockDim.x) vec(q);
  if (b + threadIdx.x < e) scalar(b + threadIdx.x);
}

// torch.optim.AdamW's update, one rounding per operation (the _rn intrinsics keep nvcc from fusing
// into FMAs, so this matches src/cpu/adamw.cpp bit for bit).
__device__ __forceinline__ void adamw_update(float& p, float& m, float& v, float grad, float step_size, float decay,
                                             const optim::AdamWStepCoefficients& c) {
  float g = __fmul_rn(grad, c.grad_scale);
  float decayed = __fmul_rn(p, decay);
  m = __fadd_rn(__fmul_rn(c.beta1, m), __fmul_rn(c.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(c.beta2, v), __fmul_rn(c.one_minus_beta2, __fmul_rn(g, g)));
  float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), c.bias_correction2_sqrt), c.eps);
  p = __fsub_rn(decayed, __fmul_rn(step_size, __fdiv_rn(m, denom)));
}

struct alignas(8) Bf16x4 {
  bf16 v[4];
};

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* param, const float* grad, float* m, float* v, bf16* copy, const __grid_constant__ TileTable t,
                 int64_t tiles, const __grid_constant__ optim::AdamWStepCoefficients c) {
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int r = find_range(t, tile);
    int64_t s = t.begin[r] + (tile - t.first_tile[r]) * kTile;
    int64_t e = std::min(s + kTile, t.end[r]);
    float step_size = t.step_size[r], decay = t.decay[r];
    auto scalar = [&](int64_t i) {
      float pi = param[i], mi = m[i], vi = v[i];
      adamw_update(pi, mi, vi, grad[i], step_size, decay, c);
      param[i] = pi;
      m[i] = mi;
      v[i] = vi;
      if (copy) copy[i] = __float2bfloat16_rn(pi);
    };
    auto vec = [&](int64_t q) {
      float4 p4 = reinterpret_cast<float4*>(param)[q], m4 = reinterpret_cast<float4*>(m)[q];
      float4 v4 = reinterpret_cast<float4*>(v)[q], g4 = reinterpret_cast<const float4*>(grad)[q];
      adamw_update(p4.x, m4.x, v4.x, g4.x, step_size, decay, c);
      adamw_update(p4.y, m4.y, v4.y, g4.y, step_size, decay, c);
      adamw_update(p4.z, m4.z, v4.z, g4.z, step_size, decay, c);
      adamw_update(p4.w, m4.w, v4.w, g4.w, step_size, decay, c);
      reinterpret_cast<float4*>(param)[q] = p4;
      reinterpret_cast<float4*>(m)[q] = m4;
      reinterpret_cast<float4*>(v)[q] = v4;
      if (copy) {
        Bf16x4 b{{__float2bfloat16_rn(p4.x), __float2bfloat16_rn(p4.y), __float2bfloat16_rn(p4.z),
                  __float2bfloat16_rn(p4.w)}};
        reinterpret_cast<Bf16x4*>(copy)[q] = b;
      }
    };
    for_each_in_tile<kVec>(s, e, scalar, vec);
  }
}

__device__ __forceinline__ double warp_sum_double(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Block-wide sum in a fixed order (blockDim.x a multiple of 32); every thread gets the result. The
// leading barrier lets a grid-stride loop call it again.
__device__ __forceinline__ double block_sum_double(double x) {
  __shared__ double part[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_sum_double(x);
  __syncthreads();
  if (lane == 0) part[warp] = x;
  __syncthreads();
  double y = lane < int(blockDim.x >> 5) ? part[lane] : 0.0;
  return warp_sum_double(y);
}

// Stage 1: partial[tile_offset + k] = sum of squares of tile k of this launch.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    sq_norm_tiles_kernel(const float* grad, const __grid_constant__ TileTable t, int64_t tiles, double* partial) {
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int r = find_range(t, tile);
    int64_t s = t.begin[r] + (tile - t.first_tile[r]) * kTile;
    int64_t e = std::min(s + kTile, t.end[r]);
    double acc = 0;
    auto scalar = [&](int64_t i) { acc += double(grad[i]) * double(grad[i]); };
    auto vec = [&](int64_t q) {
      float4 g = reinterpret_cast<const float4*>(grad)[q];
      acc += double(g.x) * double(g.x) + double(g.y) * double(g.y) + double(g.z) * double(g.z) +
             double(g.w) * double(g.w);
    };
    for_each_in_tile<kVec>(s, e, scalar, vec);
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) partial[tile] = acc;
  }
}

// Stage 2: block r sums the partials of range r in tile order.
__global__ void __launch_bounds__(kThreads)
    sq_norm_ranges_kernel(const double* partial, const __grid_constant__ TileTable t, double* out) {
  int r = blockIdx.x;
  double acc = 0;
  for (int64_t k = t.first_tile[r] + threadIdx.x; k < t.first_tile[r + 1]; k += blockDim.x) acc += partial[k];
  acc = block_sum_double(acc);
  if (threadIdx.x == 0) out[r] = acc;
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Ranges [first, first + count) as one launch's table; returns the number of tiles.
template <typename Range>
int64_t make_table(const std::vector<Range>& ranges, size_t first, size_t count, TileTable& t) {
  t.count = int(count);
  int64_t tiles = 0;
  for (size_t k = 0; k < count; ++k) {
    const Range& r = ranges[first + k];
    t.begin[k] = r.begin;
    t.end[k] = r.end;
    t.first_tile[k] = tiles;
    tiles += (r.end - r.begin + kTile - 1) / kTile;
  }
  t.first_tile[count] = tiles;
  return tiles;
}

unsigned grid_for_tiles(int64_t tiles) { return unsigned(std::min<int64_t>(tiles, int64_t(sm_count()) * 8)); }

struct Range {
  int64_t begin, end;
};

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param_copy,
                const std::vector<optim::AdamWGroupCoefficients>& groups, const optim::AdamWStepCoefficients& c) {
  bf16* copy = param_copy.defined() ? param_copy.data_as<bf16>() : nullptr;
  bool vec = aligned(param.data(), 16) && aligned(grad.data(), 16) && aligned(m.data(), 16) &&
             aligned(v.data(), 16) && (!copy || aligned(copy, 8));
  for (size_t first = 0; first < groups.size(); first += kMaxRanges) {
    size_t count = std::min<size_t>(kMaxRanges, groups.size() - first);
    TileTable t;
    int64_t tiles = make_table(groups, first, count, t);
    for (size_t k = 0; k < count; ++k) {
      t.step_size[k] = groups[first + k].step_size;
      t.decay[k] = groups[first + k].decay;
    }
    if (tiles == 0) continue;
    auto kernel = vec ? adamw_kernel<true> : adamw_kernel<false>;
    kernel<<<grid_for_tiles(tiles), kThreads, 0, stream()>>>(param.data_as<float>(), grad.data_as<float>(),
                                                              m.data_as<float>(), v.data_as<float>(), copy, t, tiles,
                                                              c);
    UM_CUDA_LAUNCHED();
  }
}

std::vector<double> grad_sq_norms(const Tensor& grad, const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  if (ranges.empty()) return {};
  std::vector<Range> rs;
  rs.reserve(ranges.size());
  for (const auto& r : ranges) rs.push_back({r.first, r.second});
  int64_t total_tiles = 0;
  for (const Range& r : rs) total_tiles += (r.end - r.begin + kTile - 1) / kTile;
  Device dev = grad.device();
  Tensor partial = alloc_activation(Shape{std::max<int64_t>(total_tiles, 1)}, DType::f64, dev);
  Tensor out = alloc_activation(Shape{int64_t(rs.size())}, DType::f64, dev);
  bool vec = aligned(grad.data(), 16);
  int64_t tile_offset = 0;
  for (size_t first = 0; first < rs.size(); first += kMaxRanges) {
    size_t count = std::min<size_t>(kMaxRanges, rs.size() - first);
    TileTable t;
    int64_t tiles = make_table(rs, first, count, t);
    double* launch_partial = partial.data_as<double>() + tile_offset;
    if (tiles > 0) {
      auto kernel = vec ? sq_norm_tiles_kernel<true> : sq_norm_tiles_kernel<false>;
      kernel<<<grid_for_tiles(tiles), kThreads, 0, stream()>>>(grad.data_as<float>(), t, tiles, launch_partial);
      UM_CUDA_LAUNCHED();
    }
    sq_norm_ranges_kernel<<<unsigned(count), kThreads, 0, stream()>>>(launch_partial, t,
                                                                       out.data_as<double>() + first);
    UM_CUDA_LAUNCHED();
    tile_offset += tiles;
  }
  std::vector<double> result(rs.size());
  copy_bytes(result.data(), Device::cpu(), out.data(), dev, rs.size() * sizeof(double));
  return result;
}

}  // namespace um::cuda
