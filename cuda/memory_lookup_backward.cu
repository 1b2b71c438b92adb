// CUDA memory lookup backward, deterministic (no float atomics), in two parts:
//
// 1. lookup_backward_slots_kernel, one warp per token (grid-stride). Per slot (kSlotUnroll at a time,
//    their rows loaded before any sum): the per-chunk warp dots <dout[t, g], values[row]> and the
//    pre-score <pre_in[t], pre_values[row]>, reduced by the fixed-order warp_sum; from them
//    dweights = gate * dot, dgate = sum_c w * dot, dscore = dgate * act'(score). Then
//    dpre_in[t] = sum_s dscore[s] * pre_values[row_s] in slot order (lanes over packs of P). It also
//    writes what the table scatters need: the sort pairs (row, (t * groups + g) * M + s), the
//    coefficients gate * w [T * M * C] and dscore [T * M]: a few bytes per slot, never a [T * M, V]
//    contribution buffer.
//    Bytes: M * (V + 2P) * sizeof(T) per token (the second pre-value read is mostly an L2 hit), plus the
//    token's dout and pre_in rows (read once from DRAM, then from L1/L2).
// 2. The table gradients (segment_sort.cuh): the pairs are radix-sorted by row (stable: each row's
//    slots keep position order) and cut into items; scatter_items_kernel gives each item to one warp,
//    which sums coef * dout[t, g] (dvalues) or dscore * pre_in[t] (dpre_values) over the item's slots in
//    sorted order and adds the sum to the f32 row (or to a carry slot when a long run crosses a tile;
//    add_carries then adds those in tile order). Items come 32 at a time: lane l fetches item l's bounds,
//    key and first slot, so for the common one-slot item the source row, its scale and the old table
//    row are independent loads issued together. Rows no slot reads are zeroed first (a memset) when not
//    accumulating. Bytes: the touched table rows read and written in f32, the gathered source rows
//    (dout / pre_in: [T, .], mostly L2 hits).
#include "memory_lookup.cuh"

namespace um::cuda {
namespace {

// CMAX: 1 when C == 1 (the per-chunk dots then take one register per slot), else kMaxChunks.
template <typename T, int VV, int VP, int CMAX>
__global__ void __launch_bounds__(kLookupMaxWarps * 32, backward_min_blocks(CMAX))
    lookup_backward_slots_kernel(LookupParams L, const float* __restrict__ weights, const T* __restrict__ values,
                                 const T* __restrict__ pre_in, const T* __restrict__ pre_values,
                                 const T* __restrict__ dout, float* __restrict__ dweights, bool acc_w,
                                 T* __restrict__ dpre_in, bool acc_p, uint32_t* __restrict__ keys,
                                 int32_t* __restrict__ sort_values, float* __restrict__ coef_out,
                                 float* __restrict__ dscore_out, unsigned long long* bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const SlotSmem sm = slot_smem(smem, warp, L.M, L.C);
  const int M = L.M, C = L.C, V = L.V, P = L.P, vpacks = V / VV, ppacks = P / VP, cpc = V / C;
  for (int t = blockIdx.x * warps + warp; t < L.T; t += gridDim.x * warps) {
    const int64_t base = int64_t(t) * M;
    for (int s = lane; s < M; s += 32) {
      int g;
      const int row = decode_slot(L, base + s, &g, bad);
      sm.row[s] = row;
      sm.group[s] = g;
      if (keys) {
        keys[base + s] = row >= 0 ? uint32_t(row) : L.N;  // N: the invalid slots' run, never summed
        sort_values[base + s] = (t * L.groups + g) * M + s;
      }
    }
    __syncwarp();
    if (L.pre) {  // scores first (into sm.b), so that the value pass below holds fewer registers
      pre_scores<T, VP>(L, t, pre_in, pre_values, sm.row, sm.b, lane);
      __syncwarp();
    }
    // Group by group (one pass when groups == 1): the lane's dout pack is then one load per batch of
    // slots rather than one per slot.
#pragma unroll 1
    for (int g = 0; g < L.groups; ++g) {
      const T* d = dout + (int64_t(t) * L.groups + g) * V;
#pragma unroll 1
      for (int s0 = 0; s0 < M; s0 += kSlotUnroll) {
        int row[kSlotUnroll];
        bool any = false;
        float dot[kSlotUnroll][CMAX];
#pragma unroll
        for (int u = 0; u < kSlotUnroll; ++u) {
          const int s = s0 + u;
          row[u] = s < M && sm.group[s] == g ? sm.row[s] : -1;
          any |= s < M && sm.group[s] == g;
#pragma unroll
          for (int c = 0; c < CMAX; ++c) dot[u][c] = 0.f;
        }
        if (!any) continue;  // no slot of group g in this batch (warp-uniform)
#pragma unroll 1
        for (int j = lane; j < vpacks; j += 32) {
          const int col = j * VV, c = CMAX == 1 ? 0 : col / cpc;  // a pack lies in one chunk: (V / C) % VV == 0
          const Words<T, VV> pd = load_words<VV>(d + col);
          Words<T, VV> pv[kSlotUnroll];
#pragma unroll
          for (int u = 0; u < kSlotUnroll; ++u)
            if (row[u] >= 0) pv[u] = load_words<VV>(values + int64_t(row[u]) * V + col);
#pragma unroll
          for (int u = 0; u < kSlotUnroll; ++u)
            if (row[u] >= 0) {
              float part = 0.f;
#pragma unroll
              for (int k = 0; k < VV; ++k) part += pd[k] * pv[u][k];
#pragma unroll
              for (int cc = 0; cc < CMAX; ++cc)  // a constant index keeps dot[][] in registers
                if (cc == c) dot[u][cc] += part;
            }
        }
#pragma unroll
        for (int u = 0; u < kSlotUnroll; ++u) {
#pragma unroll
          for (int cc = 0; cc < CMAX; ++cc)
            if (cc < C) dot[u][cc] = warp_sum(dot[u][cc]);  // C is warp-uniform
        }
#pragma unroll
        for (int u = 0; u < kSlotUnroll; ++u) {
          const int s = s0 + u;
          if (s >= M) break;
          if (sm.group[s] != g) continue;  // written in its own group's pass (a bad slot: group 0)
          const int64_t p = base + s;
          const bool valid = row[u] >= 0;
          const float score = L.pre ? sm.b[s] : 0.f;
          const float gate = L.pre ? (L.gelu ? gelu_value(score) : score) : 1.f;
          float dgate = 0.f;
#pragma unroll
          for (int cc = 0; cc < CMAX; ++cc) {
            if (cc >= C) break;
            const float w = weights[p * C + cc];
            dgate += w * dot[u][cc];
            if (lane == 0) {
              if (dweights) {
                const float dw = valid ? gate * dot[u][cc] : 0.f;
                dweights[p * C + cc] = acc_w ? dweights[p * C + cc] + dw : dw;
              }
              if (coef_out) coef_out[p * C + cc] = valid ? gate * w : 0.f;
            }
          }
          const float ds = L.pre && valid ? dgate * (L.gelu ? gelu_derivative(score) : 1.f) : 0.f;
          if (lane == 0) {
            sm.a[s] = ds;
            if (dscore_out) dscore_out[p] = ds;
          }
        }
      }
    }
    __syncwarp();
    if (dpre_in) {
#pragma unroll 1
      for (int j = lane; j < ppacks; j += 32) {
        const int col = j * VP;
        float acc[VP];
#pragma unroll
        for (int k = 0; k < VP; ++k) acc[k] = 0.f;
#pragma unroll 1
        for (int s0 = 0; s0 < M; s0 += kSlotUnroll) {
          Words<T, VP> b[kSlotUnroll];
          bool take[kSlotUnroll];
#pragma unroll
          for (int u = 0; u < kSlotUnroll; ++u) {
            take[u] = s0 + u < M && sm.row[s0 + u] >= 0;
            if (take[u]) b[u] = load_words<VP>(pre_values + int64_t(sm.row[s0 + u]) * P + col);
          }
#pragma unroll
          for (int u = 0; u < kSlotUnroll; ++u)
            if (take[u]) {
              const float ds = sm.a[s0 + u];
#pragma unroll
              for (int k = 0; k < VP; ++k) acc[k] += ds * b[u][k];
            }
        }
        T* o = dpre_in + int64_t(t) * P + col;
        Pack<T, VP> out;
        if (acc_p) {
          const Words<T, VP> old = load_words<VP>(o);
#pragma unroll
          for (int k = 0; k < VP; ++k) out.v[k] = from_f32<T>(old[k] + acc[k]);
        } else {
#pragma unroll
          for (int k = 0; k < VP; ++k) out.v[k] = from_f32<T>(acc[k]);
        }
        store_pack<VP>(o, out);
      }
    }
    __syncwarp();  // the slots' shared memory is rewritten for the next token
  }
}

// The scatter sources. A sort value v = (t * groups + g) * M + s names the slot (t, s) and its group.
// dvalues: rows of dout viewed as [T * groups, V], scaled by coef[t, s, chunk].
template <typename T>
struct DoutSource {
  const T* dout;
  const float* coef;
  int M, groups, C, width, cpc;
  __device__ const T* row(int32_t v) const { return dout + int64_t(v / M) * width; }
  __device__ float scale(int32_t v, int chunk) const {
    const int src = v / M;
    return coef[(int64_t(src / groups) * M + (v - src * M)) * C + chunk];
  }
  __device__ int chunk(int col) const { return col / cpc; }
};
// dpre_values: rows of pre_in [T, P], scaled by dscore[t, s].
template <typename T>
struct PreInSource {
  const T* pre_in;
  const float* dscore;
  int M, groups, width;
  __device__ const T* row(int32_t v) const { return pre_in + int64_t(v / M / groups) * width; }
  __device__ float scale(int32_t v, int) const {
    const int src = v / M;
    return dscore[int64_t(src / groups) * M + (v - src * M)];
  }
  __device__ int chunk(int) const { return 0; }
};

// VEC f32 values at p (16-byte accesses when VEC is a multiple of 4: p is then 16-byte aligned).
template <int VEC>
__device__ __forceinline__ void load_floats(const float* p, float (&v)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + k);
      v[k] = q.x, v[k + 1] = q.y, v[k + 2] = q.z, v[k + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = p[k];
  }
}
template <int VEC>
__device__ __forceinline__ void store_floats(float* p, const float (&v)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 4)
      *reinterpret_cast<float4*>(p + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) p[k] = v[k];
  }
}

// Rows of a long item loaded before any is added: 2 keeps the kernel at 64 registers (32 warps per SM;
// the common one-slot item is latency-bound, so warps matter more than loads in flight per warp).
constexpr int kScatterUnroll = 2;

// One warp per item (items fetched 32 at a time, see the file comment); lanes over VEC-wide packs of
// the row. Sum order: the item's slots in sorted order, then the table row's old value + that sum.
template <typename T, int VEC, typename Source>
__global__ void __launch_bounds__(256, 4)
    scatter_items_kernel(SortedRuns runs, Source src, float* __restrict__ table, float* __restrict__ carry,
                         int64_t num_keys, int width) {
  const int lane = threadIdx.x & 31;
  const int warp = int((blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5);
  const int warps = int((int64_t(gridDim.x) * blockDim.x) >> 5);
  const int items = *runs.num_items, n = runs.n, packs = width / VEC;
  for (int base = warp * 32; base < items; base += warps * 32) {
    const int item = base + lane;
    int begin = 0, end = 0, first = 0;
    uint32_t key = uint32_t(num_keys);
    ItemTarget target;
    if (item < items) {
      begin = runs.item_starts[item];
      end = item + 1 < items ? runs.item_starts[item + 1] : n;
      key = runs.keys[begin];
      target = item_target(runs.keys, n, runs.tile, begin, end, key);
      first = runs.values[begin];
    }
    const int count = min(32, items - base);
    for (int k = 0; k < count; ++k) {
      const uint32_t kkey = __shfl_sync(0xffffffffu, key, k);
      const int kbegin = __shfl_sync(0xffffffffu, begin, k), kend = __shfl_sync(0xffffffffu, end, k);
      const int kfirst = __shfl_sync(0xffffffffu, first, k);
      const bool kcarry = __shfl_sync(0xffffffffu, int(target.to_carry), k) != 0;
      const long long kslot = __shfl_sync(0xffffffffu, (long long)target.carry_slot, k);
      if (kkey >= num_keys) continue;  // the invalid slots' run (warp-uniform)
      float* o = kcarry ? carry + kslot * width : table + int64_t(kkey) * width;
#pragma unroll 1
      for (int j = lane; j < packs; j += 32) {
        const int col = j * VEC, chunk = src.chunk(col);
        float old[VEC], acc[VEC];
        if (!kcarry) load_floats<VEC>(o + col, old);  // issued with the first row's loads
        {
          const Words<T, VEC> r = load_words<VEC>(src.row(kfirst) + col);
          const float sc = src.scale(kfirst, chunk);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = sc * r[e];
        }
#pragma unroll 1
        for (int i = kbegin + 1; i < kend; i += kScatterUnroll) {
          Words<T, VEC> r[kScatterUnroll];
          float sc[kScatterUnroll];
#pragma unroll
          for (int u = 0; u < kScatterUnroll; ++u)
            if (i + u < kend) {
              const int32_t v = runs.values[i + u];
              r[u] = load_words<VEC>(src.row(v) + col);
              sc[u] = src.scale(v, chunk);
            }
#pragma unroll
          for (int u = 0; u < kScatterUnroll; ++u)
            if (i + u < kend) {
#pragma unroll
              for (int e = 0; e < VEC; ++e) acc[e] += sc[u] * r[u][e];
            }
        }
        if (!kcarry) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = old[e] + acc[e];
        }
        store_floats<VEC>(o + col, acc);
      }
    }
  }
}

template <typename T, typename Source>
void scatter(const SortedRuns& runs, const Source& src, bool vectorize, float* table, float* carry, int64_t num_keys,
             int width) {
  constexpr int kV = 16 / int(sizeof(T));
  const unsigned grid = std::max(1u, std::min<unsigned>(ceil_div(runs.n, 256), unsigned(sm_count()) * 8u));
  if (vectorize)
    scatter_items_kernel<T, kV, Source><<<grid, 256, 0, stream()>>>(runs, src, table, carry, num_keys, width);
  else
    scatter_items_kernel<T, 1, Source><<<grid, 256, 0, stream()>>>(runs, src, table, carry, num_keys, width);
  UM_CUDA_LAUNCHED();
  add_carries(runs, carry, table, num_keys, width);
}

}  // namespace

void memory_lookup_backward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                            const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                            const Tensor& dout, const Tensor& dweights, bool acc_w, const Tensor& dvalues,
                            bool acc_v, const Tensor& dpre_in, bool acc_p, const Tensor& dpre_values, bool acc_pv) {
  const LookupParams L = make_lookup_params(indices, weights, values, perm, pre_values, args);
  UM_CHECK(L.C <= kMaxChunks, detail::concat("memory_lookup backward: at most ", kMaxChunks, " chunks on the GPU"),
           weights.desc());
  float* gv = dvalues.defined() ? dvalues.data_as<float>() : nullptr;
  float* gpv = dpre_values.defined() ? dpre_values.data_as<float>() : nullptr;
  if (gv && !acc_v) UM_CUDA(cudaMemsetAsync(gv, 0, dvalues.nbytes(), stream()));
  if (gpv && !acc_pv) UM_CUDA(cudaMemsetAsync(gpv, 0, dpre_values.nbytes(), stream()));
  if (L.T == 0) return;
  const int n = L.T * L.M;  // < 2^31 (checked with the groups by the op)
  Arena& arena = arena_for(values.device());
  const bool sort = gv || gpv;
  auto* keys = sort ? static_cast<uint32_t*>(arena.alloc_bytes(size_t(n) * sizeof(uint32_t))) : nullptr;
  auto* sort_values = sort ? static_cast<int32_t*>(arena.alloc_bytes(size_t(n) * sizeof(int32_t))) : nullptr;
  auto* coef = gv ? static_cast<float*>(arena.alloc_bytes(size_t(n) * size_t(L.C) * sizeof(float))) : nullptr;
  auto* dscore = gpv ? static_cast<float*>(arena.alloc_bytes(size_t(n) * sizeof(float))) : nullptr;
  unsigned long long* bad = new_bad_position_flag(values.device());
  const int warps = lookup_warps(L.M, L.C);
  const size_t smem = size_t(warps) * slot_smem_bytes(L.M, L.C);

  UM_DISPATCH_ACT(values.dtype(), T, {
    constexpr int kV = 16 / int(sizeof(T));
    const T* pi = L.pre ? pre_in.data_as<T>() : nullptr;
    const T* pp = L.pre ? pre_values.data_as<T>() : nullptr;
    T* gpi = dpre_in.defined() ? dpre_in.data_as<T>() : nullptr;
    const bool vec_v = L.V % kV == 0 && (L.V / L.C) % kV == 0 && aligned16(values.data()) && aligned16(dout.data());
    const bool vec_p = L.pre && L.P % kV == 0 && aligned16(pi) && aligned16(pp) && aligned16(gpi);
    auto launch = [&](auto vv, auto vp) {
      constexpr int VV = decltype(vv)::value, VP = decltype(vp)::value;
      auto kernel = L.C == 1 ? lookup_backward_slots_kernel<T, VV, VP, 1>
                             : lookup_backward_slots_kernel<T, VV, VP, kMaxChunks>;
      kernel<<<lookup_grid(L.T, warps), warps * 32, smem, stream()>>>(
          L, weights.data_as<float>(), values.data_as<T>(), pi, pp, dout.data_as<T>(),
          dweights.defined() ? dweights.data_as<float>() : nullptr, acc_w, gpi, acc_p, keys, sort_values, coef,
          dscore, bad);
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
    UM_CUDA_LAUNCHED();

    if (sort) {
      const SortedRuns runs = sort_runs(keys, sort_values, n, L.N, arena);
      // Vector path: a width that is a multiple of kV >= 4 keeps every f32 table and carry row 16-byte
      // aligned when the tables' and the sources' bases are.
      if (gv)
        scatter<T>(runs, DoutSource<T>{dout.data_as<T>(), coef, L.M, L.groups, L.C, L.V, L.V / L.C},
                   vec_v && aligned16(gv), gv, alloc_carry(runs, L.V, arena), L.N, L.V);
      if (gpv)
        scatter<T>(runs, PreInSource<T>{pi, dscore, L.M, L.groups, L.P},
                   L.P % kV == 0 && aligned16(pi) && aligned16(gpv), gpv, alloc_carry(runs, L.P, arena), L.N, L.P);
    }
  });
  raise_if_bad_slot(bad, L, "memory_lookup backward");
}

}  // namespace um::cuda
