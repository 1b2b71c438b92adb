// CUDA memory lookup forward (the weighted gather of value rows with the pre-value gate) and the
// last-dimension softmax. The backward lives in memory_lookup_backward.cu.
//
// Forward: one warp per token (grid-stride), kernel lookup_forward_kernel:
//   1. lanes over slots: decode index -> physical row and group (validated), into shared memory;
//   2. with pre-values: per slot the warp dot <pre_in[t], pre_values[row]> (lanes over 16-byte packs
//      of P, kSlotUnroll slots' rows loaded before the sums, a fixed-order xor warp_sum), gate = act(dot);
//   3. coefficients gate * weights[t, s, c] into shared memory;
//   4. per output group, lanes over 16-byte packs of V: acc (f32 registers) += coef * values[row] over
//      the slots in slot order (kSlotUnroll rows in flight), then one store per pack.
// Each selected value row and pre-value row is read once, with 16-byte loads when V (and V / C) and P
// are multiples of the vector width and the pointers are aligned (a scalar path otherwise); the output
// is written once. Bytes per token: M * (V + P) * sizeof(T) read, groups * V * sizeof(T) written.
#include "memory_lookup.cuh"

namespace um::cuda {
namespace {

// One warp per token; VV / VP: elements per load of V / P rows (16 bytes, or 1 on the scalar path).
template <typename T, int VV, int VP>
__global__ void __launch_bounds__(kLookupMaxWarps * 32, kForwardMinBlocks)
    lookup_forward_kernel(LookupParams L, const float* __restrict__ weights, const T* __restrict__ values,
                          const T* __restrict__ pre_in, const T* __restrict__ pre_values, T* __restrict__ out,
                          int32_t* __restrict__ used, unsigned long long* bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const SlotSmem sm = slot_smem(smem, warp, L.M, L.C);
  const int M = L.M, C = L.C, V = L.V, packs = V / VV, cpc = V / C;
  for (int t = blockIdx.x * warps + warp; t < L.T; t += gridDim.x * warps) {
    const int64_t base = int64_t(t) * M;
    for (int s = lane; s < M; s += 32) {
      int g;
      const int row = decode_slot(L, base + s, &g, bad);
      sm.row[s] = row;
      sm.group[s] = g;
      if (used && row >= 0) used[row] = 1;  // every writer stores the same value
    }
    __syncwarp();
    if (L.pre) {
      pre_scores<T, VP>(L, t, pre_in, pre_values, sm.row, sm.a, lane);
      __syncwarp();
    }
    for (int i = lane; i < M * C; i += 32) {
      const int s = i / C;
      const float gate = L.pre ? (L.gelu ? gelu_value(sm.a[s]) : sm.a[s]) : 1.f;
      sm.b[i] = sm.row[s] >= 0 ? gate * weights[base * C + i] : 0.f;
    }
    __syncwarp();
#pragma unroll 1
    for (int g = 0; g < L.groups; ++g) {
#pragma unroll 1
      for (int j = lane; j < packs; j += 32) {
        const int col = j * VV, c = col / cpc;  // a pack lies in one chunk: (V / C) % VV == 0
        float acc[VV];
#pragma unroll
        for (int k = 0; k < VV; ++k) acc[k] = 0.f;
#pragma unroll 1
        for (int s0 = 0; s0 < M; s0 += kSlotUnroll) {
          Words<T, VV> v[kSlotUnroll];
          float w[kSlotUnroll];
          bool take[kSlotUnroll];
#pragma unroll
          for (int u = 0; u < kSlotUnroll; ++u) {
            const int s = s0 + u;
            take[u] = s < M && sm.row[s] >= 0 && sm.group[s] == g;
            w[u] = take[u] ? sm.b[s * C + c] : 0.f;
            if (take[u]) v[u] = load_words<VV>(values + int64_t(sm.row[s]) * V + col);
          }
#pragma unroll
          for (int u = 0; u < kSlotUnroll; ++u)
            if (take[u]) {
#pragma unroll
              for (int k = 0; k < VV; ++k) acc[k] += w[u] * v[u][k];
            }
        }
        Pack<T, VV> o;
#pragma unroll
        for (int k = 0; k < VV; ++k) o.v[k] = from_f32<T>(acc[k]);
        store_pack<VV>(out + (int64_t(t) * L.groups + g) * V + col, o);
      }
    }
    __syncwarp();  // the slots' shared memory is rewritten for the next token
  }
}

// ---- softmax over the last dimension: one warp per row, f32 ----

__global__ void softmax_lastdim_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t rows,
                                               int L) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = warp; r < rows; r += warps) {
    const float* xr = x + r * L;
    float m = -INFINITY;
    for (int j = lane; j < L; j += 32) m = fmaxf(m, xr[j]);
    m = warp_max(m);
    float s = 0.f;
    for (int j = lane; j < L; j += 32) s += expf(xr[j] - m);
    const float inv = 1.f / warp_sum(s);
    for (int j = lane; j < L; j += 32) y[r * L + j] = expf(xr[j] - m) * inv;
  }
}

// dx = (accumulate ? dx : 0) + y * (dy - sum(dy * y)).
__global__ void softmax_lastdim_backward_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                                float* __restrict__ dx, int64_t rows, int L, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = warp; r < rows; r += warps) {
    const float *yr = y + r * L, *dr = dy + r * L;
    float d = 0.f;
    for (int j = lane; j < L; j += 32) d += dr[j] * yr[j];
    d = warp_sum(d);
    for (int j = lane; j < L; j += 32) {
      const float v = yr[j] * (dr[j] - d);
      dx[r * L + j] = accumulate ? dx[r * L + j] + v : v;
    }
  }
}

unsigned rows_grid(int64_t rows) { return std::max(1u, std::min<unsigned>(ceil_div(rows, 8), sm_count() * 32u)); }

}  // namespace

void memory_lookup_forward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                           const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                           const Tensor& out, const Tensor& used) {
  const LookupParams L = make_lookup_params(indices, weights, values, perm, pre_values, args);
  if (L.T == 0) return;
  const int warps = lookup_warps(L.M, L.C);
  const size_t smem = size_t(warps) * slot_smem_bytes(L.M, L.C);
  unsigned long long* bad = new_bad_position_flag(values.device());
  int32_t* used_ptr = used.defined() ? used.data_as<int32_t>() : nullptr;
  UM_DISPATCH_ACT(values.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    const T* pi = L.pre ? pre_in.data_as<T>() : nullptr;
    const T* pp = L.pre ? pre_values.data_as<T>() : nullptr;
    const bool vec_v = L.V % kV == 0 && (L.V / L.C) % kV == 0 && aligned16(values.data()) && aligned16(out.data());
    const bool vec_p = L.pre && L.P % kV == 0 && aligned16(pi) && aligned16(pp);
    auto launch = [&](auto vv, auto vp) {
      constexpr int VV = decltype(vv)::value, VP = decltype(vp)::value;
      lookup_forward_kernel<T, VV, VP><<<lookup_grid(L.T, warps), warps * 32, smem, stream()>>>(
          L, weights.data_as<float>(), values.data_as<T>(), pi, pp, out.data_as<T>(), used_ptr, bad);
    };
    using One = std::integral_constant<int, 1>;
    using Wide = std::integral_constant<int, kV>;
    if (vec_v && vec_p)
      launch(Wide{}, Wide{});
    else if (vec_v)
      launch(Wide{}, One{});
    else if (vec_p)
      launch(One{}, Wide{});
    else
      launch(One{}, One{});
  });
  UM_CUDA_LAUNCHED();
  raise_if_bad_slot(bad, L, "memory_lookup");
}

void softmax_lastdim_forward(const Tensor& x, const Tensor& y) {
  const int64_t L = x.dim(-1), rows = x.numel() / L;
  UM_CHECK(L <= int64_t(INT32_MAX), "softmax_lastdim: a last dimension below 2^31", x.desc());
  if (rows == 0) return;
  softmax_lastdim_forward_kernel<<<rows_grid(rows), 256, 0, stream()>>>(x.data_as<float>(), y.data_as<float>(), rows,
                                                                        int(L));
  UM_CUDA_LAUNCHED();
}

void softmax_lastdim_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, bool accumulate) {
  const int64_t L = y.dim(-1), rows = y.numel() / L;
  UM_CHECK(L <= int64_t(INT32_MAX), "softmax_lastdim backward: a last dimension below 2^31", y.desc());
  if (rows == 0) return;
  softmax_lastdim_backward_kernel<<<rows_grid(rows), 256, 0, stream()>>>(y.data_as<float>(), dy.data_as<float>(),
                                                                         dx.data_as<float>(), rows, int(L),
                                                                         accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
