// The sm90 grouped GEMM's epilogues (cuda/grouped_gemm_sm90.cu): what a consumer warpgroup does with
// its 64 x BN accumulators once a tile's k-steps are done. Direct register stores (slabs crossing a
// group's end, bf16 accumulation), the staged TMA store of a slab, and SwiGLU's backward for the dx
// product of a SwiGLU expert output (gate and up arriving through the operand ring).
#pragma once
#include <cuda_bf16.h>

#include "activation_math.cuh"
#include "common.cuh"
#include "grouped_gemm_sm90_tile.cuh"
#include "tma_sm90.cuh"
#include "wgmma_sm90.cuh"

#if defined(UM_SM90_DEVICE) || !defined(__CUDA_ARCH__)
namespace um::cuda::sm90 {

// Barrier of one consumer warpgroup (ids 2 and 3; 1 is both consumers', 0 the CTA's).
__device__ __forceinline__ void warpgroup_bar(int cw) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
}

__device__ __forceinline__ void store_pair(bf16* p, float v0, float v1, bool accumulate) {
  if (accumulate) {
    const __nv_bfloat162 o = *reinterpret_cast<const __nv_bfloat162*>(p);
    v0 += __bfloat162float(o.x), v1 += __bfloat162float(o.y);
  }
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1);
}
__device__ __forceinline__ void store_pair(float* p, float v0, float v1, bool accumulate) {
  float2 v = make_float2(v0, v1);
  if (accumulate) {
    const float2 o = *reinterpret_cast<const float2*>(p);
    v.x += o.x, v.y += o.y;
  }
  *reinterpret_cast<float2*>(p) = v;
}

// The wgmma accumulator layout: thread (warp w of its warpgroup, lane l) holds rows 16 w + l / 4 (+ 8)
// and, per 8-column block j, columns 8 j + 2 (l % 4) (+ 1): d[4 j + 2 i + c]. cw: the consumer warpgroup.
template <class T, typename OutT>
__device__ __forceinline__ void store_tile(const float (&acc)[T::kAcc], int cw, OutT* c, int64_t ldc, int m0,
                                           int m_end, int n0, int n_end, bool accumulate) {
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int row0 = m0 + cw * 64 + warp * 16 + (lane >> 2);
#pragma unroll
  for (int j = 0; j < T::kBN / 8; ++j) {
    const int col = n0 + j * 8 + (lane & 3) * 2;
    if (col >= n_end) continue;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = row0 + i * 8;
      if (row < m_end) store_pair(c + int64_t(row) * ldc + col, acc[j * 4 + i * 2], acc[j * 4 + i * 2 + 1], accumulate);
    }
  }
}

// One 64 x 64 bf16 chunk of a warpgroup's slab (pair p of each thread: row warp 16 + lane / 4 + 8 (p % 2),
// columns 8 (p / 2) + 2 (lane % 4) (+ 1)) through the warpgroup's two staging buffers into a TMA store at
// (col, row). As in store_slab_tma, `ep` counts chunks across tiles and a buffer is rewritten once the
// store that read it two chunks ago is done reading.
__device__ __forceinline__ void store_chunk_tma(const uint32_t (&pairs)[16], int cw, uint32_t staging,
                                                const CUtensorMap& map, int col, int row, int& ep) {
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const bool issuer = (threadIdx.x & 127) == 0;
  const uint32_t buf = staging + uint32_t((cw * 2 + (ep & 1)) * kChunkBytes);
  if (issuer) bulk_wait_read<1>();
  warpgroup_bar(cw);
#pragma unroll
  for (int p = 0; p < 16; ++p) {
    const int r = warp * 16 + (lane >> 2) + (p & 1) * 8, c = (p >> 1) * 8 + (lane & 3) * 2;
    const uint32_t off = uint32_t(r * 128 + ((((c >> 3) ^ (r & 7)) << 4) | ((c & 7) * 2)));
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(buf + off), "r"(pairs[p]) : "memory");
  }
  fence_proxy_async();  // the generic-proxy writes before the copy engine reads them
  warpgroup_bar(cw);
  if (issuer) {
    tma_store_2d(map, buf, col, row);
    bulk_commit();
  }
  ++ep;
}

// The staged epilogue of one warpgroup's 64 x BN slab: 128-byte-wide chunks (64 bf16 or 32 f32 columns)
// go through two 8 KiB buffers with the 128-byte swizzle (16-byte unit u of row r at u ^ (r % 8): the
// warp's rows land in distinct banks), then one thread's TMA store writes each chunk while the next is
// staged, and the last ones drain while the warpgroup starts its next tile. `ep` counts chunks across
// tiles (buffer ep % 2); before a buffer is rewritten, the store that read it two chunks ago has finished
// reading (wait_group.read 1). rows: c0 = the slab's first column, c1 its first row; weights: c2 = group.
template <class T, typename OutT>
__device__ __forceinline__ void store_slab_tma(const float (&acc)[T::kAcc], int cw, uint32_t staging,
                                               const CUtensorMap& map, int n0, int n_end, int row0, int g, bool add,
                                               int& ep) {
  if constexpr (sizeof(OutT) == 2) {  // bf16: 64-column chunks
#pragma unroll
    for (int q = 0; q < T::kBN / 64; ++q) {
      if (n0 + q * 64 >= n_end) break;  // uniform: the rest of the slab lies past N
      uint32_t pairs[16];
#pragma unroll
      for (int p = 0; p < 16; ++p) {
        const int j = q * 8 + (p >> 1), i = p & 1;
        pairs[p] = pack_bf16(acc[j * 4 + i * 2], acc[j * 4 + i * 2 + 1]);
      }
      store_chunk_tma(pairs, cw, staging, map, n0 + q * 64, row0, ep);
    }
  } else {  // f32: 32-column chunks, stored or reduce-added
    const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const bool issuer = (threadIdx.x & 127) == 0;
#pragma unroll
    for (int q = 0; q < T::kBN / 32; ++q) {
      if (n0 + q * 32 >= n_end) break;
      const uint32_t buf = staging + uint32_t((cw * 2 + (ep & 1)) * kChunkBytes);
      if (issuer) bulk_wait_read<1>();
      warpgroup_bar(cw);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int j = q * 4 + jj;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int r = warp * 16 + (lane >> 2) + i * 8;
          const int byte = (jj * 8 + (lane & 3) * 2) * 4;  // within the 128-byte row
          const uint32_t addr = buf + uint32_t(r * 128 + ((((byte >> 4) ^ (r & 7)) << 4) | (byte & 15)));
          asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(acc[j * 4 + i * 2]),
                       "f"(acc[j * 4 + i * 2 + 1])
                       : "memory");
        }
      }
      fence_proxy_async();  // the generic-proxy writes before the copy engine reads them
      warpgroup_bar(cw);
      if (issuer) {
        tma_store_3d(map, buf, n0 + q * 32, row0, g, add);
        bulk_commit();
      }
      ++ep;
    }
  }
}

// SwiGLU's backward as the epilogue of the dx product dact = dy . W_g^T (kRowsDSwiGLU, W [G][N][K]). After
// a tile's k-steps the producer queues one ring slot per 64-column chunk of the tile, holding the tile's 128 rows
// of gate (two 64-row boxes, one per consumer warpgroup) and then of up (two more): gate and up come in
// through the ring like operands, so their loads overlap the k-steps. Each thread reads its pairs and
// frees the slot at once (the producer refills it with the next tile's k-steps while this epilogue
// runs), turns them into dgate, dup (activation_math.cuh), and stages both 64 x 64 chunks in its
// warpgroup's two staging buffers, from which two TMA stores write them into the halves of
// dh = [dgate | dup]. A slab crossing its group's end (the next group's rows) stores its rows directly.
template <class T>
__device__ __forceinline__ void swiglu_backward_chunks(const float (&acc)[T::kAcc], const float (&scale)[2], int cw,
                                                       uint32_t base,
                                                       uint32_t staging, uint32_t full0, uint32_t empty0, int& it,
                                                       const CUtensorMap& map_dg, const CUtensorMap& map_du,
                                                       const Args& args, int n0, int width, int slab0, int m_end) {
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, N = args.N;
  const bool issuer = (threadIdx.x & 127) == 0, active = slab0 < m_end, staged = slab0 + 64 <= m_end;
  const uint32_t dg_buf = staging + uint32_t(cw * 2 * kChunkBytes), du_buf = dg_buf + uint32_t(kChunkBytes);
  bf16* dh = static_cast<bf16*>(args.c);
  // This thread's two rows (their scales, 0 past the group's end, came with the call) and their ds partial
  // sums over the tile's columns.
  const int row0 = slab0 + warp * 16 + (lane >> 2);
  float ds[2] = {0.f, 0.f};
#pragma unroll
  for (int q = 0; q < T::kBN / 64; ++q) {
    if (q * 64 >= width) break;  // uniform: the tile's chunks
    const int s = it % T::kStages;
    mbar_wait(full0 + 8u * s, uint32_t((it / T::kStages) & 1));
    const uint32_t g_buf = base + uint32_t(s * T::kStageBytes + cw * kBoxBytes), u_buf = g_buf + 2u * kBoxBytes;
    uint32_t g2[16], u2[16];  // pair (jj, i): row warp 16 + lane / 4 + 8 i, columns 8 jj + 2 (lane % 4) (+ 1)
    if (active) {
#pragma unroll
      for (int p = 0; p < 16; ++p) {
        const int jj = p >> 1, r = warp * 16 + (lane >> 2) + (p & 1) * 8, col = jj * 8 + (lane & 3) * 2;
        const uint32_t off = uint32_t(r * 128 + ((((col >> 3) ^ (r & 7)) << 4) | ((col & 7) * 2)));
        asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(g2[p]) : "r"(g_buf + off) : "memory");
        asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(u2[p]) : "r"(u_buf + off) : "memory");
      }
    }
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(empty0 + 8u * s);  // the warp's reads are done: the slot is free
    ++it;
    if (!active) continue;
    // dgate, dup in place of gate, up; only then wait for the previous chunk's stores to have read the
    // staging buffers, so that wait overlaps this arithmetic.
#pragma unroll
    for (int p = 0; p < 16; ++p) {
      const int j = q * 8 + (p >> 1), i = p & 1;
      const __nv_bfloat162 g = *reinterpret_cast<const __nv_bfloat162*>(&g2[p]);
      const __nv_bfloat162 u = *reinterpret_cast<const __nv_bfloat162*>(&u2[p]);
      // a = s silu(g) u: d(gate, up) = s x SwiGLU's gradients of dact, ds += dact silu(g) u.
      const float d0 = acc[j * 4 + i * 2], d1 = acc[j * 4 + i * 2 + 1];
      float v0, dg0, du0, v1, dg1, du1;
      silu_mul_value_grads(__bfloat162float(g.x), __bfloat162float(u.x), scale[i] * d0, v0, dg0, du0);
      silu_mul_value_grads(__bfloat162float(g.y), __bfloat162float(u.y), scale[i] * d1, v1, dg1, du1);
      if (n0 + q * 64 + (p >> 1) * 8 + (lane & 3) * 2 < N) ds[i] += d0 * v0 + d1 * v1;  // columns past N hold noise
      g2[p] = pack_bf16(dg0, dg1), u2[p] = pack_bf16(du0, du1);
    }
    if (staged) {
      if (issuer) bulk_wait_read<0>();
      warpgroup_bar(cw);
    }
#pragma unroll
    for (int p = 0; p < 16; ++p) {
      const int r = warp * 16 + (lane >> 2) + (p & 1) * 8, col = (p >> 1) * 8 + (lane & 3) * 2;
      if (staged) {
        const uint32_t off = uint32_t(r * 128 + ((((col >> 3) ^ (r & 7)) << 4) | ((col & 7) * 2)));
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(dg_buf + off), "r"(g2[p]) : "memory");
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(du_buf + off), "r"(u2[p]) : "memory");
      } else {
        const int row = slab0 + r, c = n0 + q * 64 + col;
        if (row < m_end && c < N) {
          uint32_t* out = reinterpret_cast<uint32_t*>(dh + int64_t(row) * 2 * N + c);
          out[0] = g2[p];
          out[N / 2] = u2[p];  // N is even (a multiple of 8)
        }
      }
    }
    if (staged) {
      fence_proxy_async();  // the generic-proxy writes before the copy engine reads them
      warpgroup_bar(cw);
      if (issuer) {
        tma_store_2d(map_dg, dg_buf, n0 + q * 64, slab0);
        tma_store_2d(map_du, du_buf, n0 + q * 64, slab0);
        bulk_commit();
      }
    }
  }
  if (!active) return;
  // The quad's four lanes hold one row's columns: sum them (a fixed order), one write per row and n-tile.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    ds[i] += __shfl_xor_sync(0xffffffffu, ds[i], 1);
    ds[i] += __shfl_xor_sync(0xffffffffu, ds[i], 2);
    if ((lane & 3) == 0 && row0 + 8 * i < m_end)
      args.ds_partial[int64_t(n0 / T::kBN) * args.rows_total + row0 + 8 * i] = ds[i];
  }
}

// SwiGLU's forward as the epilogue of h = x . W1_g^T (kRowsSwiGLU). The tile's W columns are P = W / 2
// pairs' gate columns, then the same pairs' up columns (the producer loads W1's gate and up rows into the
// two halves of the B tile), so each thread holds the gate and the up of the same pairs: 8-column block j
// of gate at accumulator block j, its up at j + P / 8. Per 64-pair chunk three 64 x 64 bf16 chunks go out
// through TMA stores: gate and up into the halves of h = [gate | up], and a = s silu(gate) up from the
// rounded gate and up (swiglu_forward's arithmetic, so the fused and the composed paths agree). The maps
// clip at N, which the last tile's pairs may pass (the columns past N hold other rows' products). A slab
// crossing its group's end (the next group's rows) stores its rows directly.
template <class T, int W>
__device__ __forceinline__ void swiglu_forward_chunks(const float (&acc)[T::kAcc], const float (&scale)[2], int cw,
                                                      uint32_t staging,
                                                      const CUtensorMap& map_gate, const CUtensorMap& map_up,
                                                      const CUtensorMap& map_act, const Args& args, int n0, int slab0,
                                                      int m_end, int& ep) {
  constexpr int P = W / 2, kUp = P / 8;  // pairs; the up half's first accumulator block
  static_assert(P % 32 == 0 && W <= T::kBN, "a tile of 32-pair steps");
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, N = args.N;
  const bool staged = slab0 + 64 <= m_end;
  const int row0 = slab0 + warp * 16 + (lane >> 2);  // and row0 + 8: the rows of scale[0], scale[1]
  bf16* h = static_cast<bf16*>(args.c);
  bf16* a = static_cast<bf16*>(args.c2);
#pragma unroll
  for (int q = 0; q < (P + 63) / 64; ++q) {
    const int blocks = P - 64 * q >= 64 ? 8 : (P - 64 * q) / 8;  // the chunk's 8-pair blocks (unrolled: constant)
    uint32_t gate[16], up[16], act[16];
#pragma unroll
    for (int p = 0; p < 16; ++p) {
      const int j = q * 8 + (p >> 1), i = p & 1;
      const bool in_tile = (p >> 1) < blocks;  // past the tile's pairs: clipped at N, never stored
      gate[p] = in_tile ? pack_bf16(acc[j * 4 + i * 2], acc[j * 4 + i * 2 + 1]) : 0u;
      up[p] = in_tile ? pack_bf16(acc[(j + kUp) * 4 + i * 2], acc[(j + kUp) * 4 + i * 2 + 1]) : 0u;
    }
    auto activation = [&] {  // a from the rounded gate and up
#pragma unroll
      for (int p = 0; p < 16; ++p) {
        const __nv_bfloat162 g = *reinterpret_cast<const __nv_bfloat162*>(&gate[p]);
        const __nv_bfloat162 u = *reinterpret_cast<const __nv_bfloat162*>(&up[p]);
        const float sc = scale[p & 1];
        act[p] = (p >> 1) < blocks ? pack_bf16(sc * silu_mul_value(__bfloat162float(g.x), __bfloat162float(u.x)),
                                               sc * silu_mul_value(__bfloat162float(g.y), __bfloat162float(u.y)))
                                   : 0u;
      }
    };
    const int col0 = n0 + q * 64;
    if (staged) {  // a's arithmetic between the stores, while the copy engine reads gate's and up's buffers
      store_chunk_tma(gate, cw, staging, map_gate, col0, slab0, ep);
      store_chunk_tma(up, cw, staging, map_up, col0, slab0, ep);
      activation();
      store_chunk_tma(act, cw, staging, map_act, col0, slab0, ep);
      continue;
    }
    activation();
#pragma unroll
    for (int p = 0; p < 16; ++p) {
      const int row = row0 + (p & 1) * 8, col = col0 + (p >> 1) * 8 + (lane & 3) * 2;
      if ((p >> 1) >= blocks || row >= m_end || col >= N) continue;  // N is a multiple of 8: col + 1 < N too
      *reinterpret_cast<uint32_t*>(h + int64_t(row) * 2 * N + col) = gate[p];
      *reinterpret_cast<uint32_t*>(h + int64_t(row) * 2 * N + N + col) = up[p];
      *reinterpret_cast<uint32_t*>(a + int64_t(row) * N + col) = act[p];
    }
  }
}

}  // namespace um::cuda::sm90
#endif
