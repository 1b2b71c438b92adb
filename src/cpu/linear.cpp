// CPU linear: a packed, cache-blocked GEMM (the GotoBLAS/BLIS loop nest) plus bias, GELU and the
// bias-gradient column sum. The CPU trains the tiny default model, where these GEMMs are most of the
// time, so they are written for speed while staying plain C++. Each OpenMP thread owns a contiguous
// range of C's rows and runs
//   for jc (NC columns of B)  for pc (KC of the depth)  pack B block -> panels of NR columns
//     for ic (MC rows of its range)  pack A block -> panels of MR rows
//       for jr, ir: an MR x NR register tile accumulates over the KC depth (micro_kernel)
// The micro-kernel uses GCC vector extensions (32-byte vectors); on x86-64 an AVX2+FMA build of the
// inner loops is chosen at run time when the CPU has them (the library itself is built for baseline
// x86-64). Every C element is summed over k in the same order whatever the thread count or block sizes
// in m and n, so results are deterministic.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "ultramem/ops/linear.h"
#include "ultramem/core/arena.h"
#include "src/cpu/dispatch.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define UM_X86_DISPATCH 1
#else
#define UM_X86_DISPATCH 0
#endif

namespace um::cpu {
namespace {

// Register tile and cache blocks. MR x NR accumulators = 6 x 2 vectors of 32 bytes (12 of the 16 AVX2
// registers); KC x NR of packed B (16 KiB in f32) stays in L1, MC x KC of packed A (144 KiB) in L2.
template <typename T>
struct Tile {
  static constexpr int kLanes = 32 / int(sizeof(T));  // elements per 32-byte vector
  static constexpr int MR = 6;
  static constexpr int NR = 2 * kLanes;
  static constexpr int64_t KC = 256;
  static constexpr int64_t MC = 144;
  static constexpr int64_t NC = 2048;
};

// C tile (mr x nr valid of MR x NR) = (add ? C : 0) + Ap . Bp over kc, Ap packed [kc][MR], Bp [kc][NR].
template <typename T>
[[gnu::always_inline]] inline void micro_kernel(int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc, int mr,
                                                int nr, bool add) {
  using Cfg = Tile<T>;
  constexpr int L = Cfg::kLanes, MR = Cfg::MR, NR = Cfg::NR;
  typedef T V __attribute__((vector_size(32)));
  V acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = V{};
  for (int64_t kk = 0; kk < kc; ++kk) {
    V b0, b1;
    std::memcpy(&b0, bp + kk * NR, sizeof(V));
    std::memcpy(&b1, bp + kk * NR + L, sizeof(V));
    const T* a = ap + kk * MR;
    for (int i = 0; i < MR; ++i) {
      acc[i][0] += a[i] * b0;
      acc[i][1] += a[i] * b1;
    }
  }
  if (mr == MR && nr == NR) {
    for (int i = 0; i < MR; ++i) {
      T* row = c + i * ldc;
      if (add) {
        V c0, c1;
        std::memcpy(&c0, row, sizeof(V));
        std::memcpy(&c1, row + L, sizeof(V));
        acc[i][0] += c0;
        acc[i][1] += c1;
      }
      std::memcpy(row, &acc[i][0], sizeof(V));
      std::memcpy(row + L, &acc[i][1], sizeof(V));
    }
    return;
  }
  // Edge tile: go through memory so only the valid mr x nr part of C is touched.
  alignas(32) T tile[MR][NR];
  std::memcpy(tile, acc, sizeof(tile));
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) c[i * ldc + j] = (add ? c[i * ldc + j] : T(0)) + tile[i][j];
}

// C block (mc x nc) from packed A (ceil(mc/MR) panels of [kc][MR]) and packed B (ceil(nc/NR) panels).
template <typename T>
[[gnu::always_inline]] inline void macro_kernel(int64_t mc, int64_t nc, int64_t kc, const T* ap, const T* bp, T* c,
                                                int64_t ldc, bool add) {
  using Cfg = Tile<T>;
  for (int64_t jr = 0; jr < nc; jr += Cfg::NR) {
    const T* bpanel = bp + (jr / Cfg::NR) * kc * Cfg::NR;
    for (int64_t ir = 0; ir < mc; ir += Cfg::MR)
      micro_kernel<T>(kc, ap + (ir / Cfg::MR) * kc * Cfg::MR, bpanel, c + ir * ldc + jr, ldc,
                      int(std::min<int64_t>(Cfg::MR, mc - ir)), int(std::min<int64_t>(Cfg::NR, nc - jr)), add);
  }
}

template <typename T>
void macro_kernel_baseline(int64_t mc, int64_t nc, int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc,
                           bool add) {
  macro_kernel<T>(mc, nc, kc, ap, bp, c, ldc, add);
}

#if UM_X86_DISPATCH
template <typename T>
[[gnu::target("avx2,fma")]] void macro_kernel_avx2(int64_t mc, int64_t nc, int64_t kc, const T* ap, const T* bp,
                                                   T* c, int64_t ldc, bool add) {
  macro_kernel<T>(mc, nc, kc, ap, bp, c, ldc, add);
}
bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

template <typename T>
void run_macro_kernel(int64_t mc, int64_t nc, int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc, bool add) {
#if UM_X86_DISPATCH
  if (cpu_has_avx2_fma()) return macro_kernel_avx2<T>(mc, nc, kc, ap, bp, c, ldc, add);
#endif
  macro_kernel_baseline<T>(mc, nc, kc, ap, bp, c, ldc, add);
}

// Packs rows [0, mc) x depth [0, kc) of A (element (i, k) at a[i*rs + k*cs]) into MR-row panels
// [kc][MR], zero-padding the last panel.
template <typename T>
void pack_a(int64_t mc, int64_t kc, const T* a, int64_t rs, int64_t cs, T* out) {
  constexpr int MR = Tile<T>::MR;
  for (int64_t ir = 0; ir < mc; ir += MR) {
    T* panel = out + (ir / MR) * kc * MR;
    const int mr = int(std::min<int64_t>(MR, mc - ir));
    const T* src = a + ir * rs;
    // k outer: the panel is written contiguously while MR rows (or one column) are read in parallel.
    if (mr == MR) {
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) panel[k * MR + i] = src[i * rs + k * cs];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) panel[k * MR + i] = i < mr ? src[i * rs + k * cs] : T(0);
    }
  }
}

// Packs depth [0, kc) x columns [0, nc) of B (element (k, j) at b[k*rs + j*cs]) into NR-column panels
// [kc][NR], zero-padding the last panel.
template <typename T>
void pack_b_panel(int64_t jr, int64_t nc, int64_t kc, const T* b, int64_t rs, int64_t cs, T* out) {
  constexpr int NR = Tile<T>::NR;
  T* panel = out + (jr / NR) * kc * NR;
  const int nr = int(std::min<int64_t>(NR, nc - jr));
  if (cs == 1) {
    for (int64_t k = 0; k < kc; ++k)
      for (int j = 0; j < NR; ++j) panel[k * NR + j] = j < nr ? b[k * rs + jr + j] : T(0);
  } else {
    for (int j = 0; j < NR; ++j) {
      const T* src = b + (jr + j) * cs;
      for (int64_t k = 0; k < kc; ++k) panel[k * NR + j] = j < nr ? src[k * rs] : T(0);
    }
  }
}

template <typename T>
struct AlignedFree {
  void operator()(T* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T[], AlignedFree<T>> aligned_buffer(size_t n) {
  size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64));
  UM_CHECK(p != nullptr, detail::concat(bytes, " bytes for GEMM packing"), "allocation failure");
  return std::unique_ptr<T[], AlignedFree<T>>(p);
}

}  // namespace

template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t b_rs,
          int64_t b_cs, T* c, int64_t ldc, bool accumulate) {
  using Cfg = Tile<T>;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    return;
  }
  int threads = 1;
#ifdef _OPENMP
  // Small products are not worth waking the thread team; every thread gets at least one MR row panel.
  if (double(m) * double(n) * double(k) >= 1e6)
    threads = int(std::min<int64_t>(omp_get_max_threads(), (m + Cfg::MR - 1) / Cfg::MR));
#endif
  // Each thread owns a contiguous range of C's rows and packs its own copy of B: packing B costs
  // ~1/MC of the FLOPs, and the threads never wait for each other (no barriers inside the loop nest,
  // which matters when the cores are shared).
  const int64_t kc_max = std::min<int64_t>(Cfg::KC, k);
  const int64_t nc_max = (std::min<int64_t>(Cfg::NC, n) + Cfg::NR - 1) / Cfg::NR * Cfg::NR;
  const size_t bpack_elems = size_t(kc_max) * size_t(nc_max);
  const size_t apack_elems = size_t(kc_max) * size_t(Cfg::MC);
  auto packs = aligned_buffer<T>((bpack_elems + apack_elems) * size_t(threads));
  const int64_t panels = (m + Cfg::MR - 1) / Cfg::MR;

#pragma omp parallel num_threads(threads)
  {
    int tid = 0, nt = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    T* bp = packs.get() + size_t(tid) * (bpack_elems + apack_elems);
    T* ap = bp + bpack_elems;
    const int64_t row0 = std::min(m, panels * tid / nt * Cfg::MR);
    const int64_t row1 = std::min(m, panels * (tid + 1) / nt * Cfg::MR);
    for (int64_t jc = 0; jc < n && row0 < row1; jc += Cfg::NC) {
      const int64_t nc = std::min<int64_t>(Cfg::NC, n - jc);
      for (int64_t pc = 0; pc < k; pc += Cfg::KC) {
        const int64_t kc = std::min<int64_t>(Cfg::KC, k - pc);
        const bool add = accumulate || pc > 0;
        for (int64_t jr = 0; jr < nc; jr += Cfg::NR)
          pack_b_panel<T>(jr, nc, kc, b + pc * b_rs + jc * b_cs, b_rs, b_cs, bp);
        for (int64_t ic = row0; ic < row1; ic += Cfg::MC) {
          const int64_t mc = std::min<int64_t>(Cfg::MC, row1 - ic);
          pack_a<T>(mc, kc, a + ic * a_rs + pc * a_cs, a_rs, a_cs, ap);
          run_macro_kernel<T>(mc, nc, kc, ap, bp, c + ic * ldc + jc, ldc, add);
        }
      }
    }
  }
}

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                          float*, int64_t, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t, const double*, int64_t,
                           int64_t, double*, int64_t, bool);

namespace {

// GELU, GPT-2's tanh approximation, and its derivative. f64 (gradcheck) uses std::tanh; f32 uses a
// branch-free tanh that the compiler vectorises, since libm's tanhf in the MLP costs about as much as
// the MLP's GEMMs on a small model. Its absolute error (~1e-7) is what GELU's 1 + tanh(.) sees.
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;

inline double tanh_value(double u) { return std::tanh(u); }
inline float tanh_value(float u) {
  // tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|) in (0, 1]; exp by the Cephes expf scheme:
  // e = 2^n exp(r), n = round(x / ln2), r = x - n ln2 (ln2 split in two so n * ln2_hi is exact).
  // |u| is clamped to 20 (tanh(20) rounds to 1; e stays normal) with an integer select: a float compare
  // may trap, so GCC would keep it a branch and not vectorise the loops. A NaN u gives +-1 here, but
  // GELU and its derivative multiply by u, so NaN still propagates.
  int32_t abs_bits;
  std::memcpy(&abs_bits, &u, 4);
  abs_bits &= 0x7fffffff;
  abs_bits = abs_bits < 0x41a00000 ? abs_bits : 0x41a00000;  // 20.0f
  float abs_u;
  std::memcpy(&abs_u, &abs_bits, 4);
  const float x = -2.f * abs_u;  // in [-40, 0]
  const int ni = int(x * 1.44269504088896341f - 0.5f);  // x <= 0: truncation rounds to nearest
  const float n = float(ni);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const uint32_t bits = uint32_t(ni + 127) << 23;  // 2^n, n in [-58, 0]
  float scale;
  std::memcpy(&scale, &bits, 4);
  const float e = p * scale;
  return std::copysign((1.f - e) / (1.f + e), u);
}

template <typename T>
inline T gelu_value(T v) {
  const T t = tanh_value(T(kSqrt2OverPi) * (v + T(kGeluCubic) * v * v * v));
  return T(0.5) * v * (T(1) + t);
}

template <typename T>
inline T gelu_derivative(T v) {
  const T t = tanh_value(T(kSqrt2OverPi) * (v + T(kGeluCubic) * v * v * v));
  return T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * v * v);
}

// Row-parallel loops over [rows, cols]: the element work is tiny, so only large tensors use threads.
inline bool worth_threads(int64_t elems) { return elems >= (int64_t(1) << 15); }

// y = act(y + b) in place (y holds x . W^T), pre = y + b when requested. One loop per case keeps the
// inner loops free of branches (they vectorise).
template <typename T>
void bias_activation(T* y, T* pre, const T* b, bool gelu, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (worth_threads(rows * cols))
  for (int64_t r = 0; r < rows; ++r) {
    T* yr = y + r * cols;
    if (b)
      for (int64_t j = 0; j < cols; ++j) yr[j] += b[j];
    if (!gelu) continue;
    if (pre) std::memcpy(pre + r * cols, yr, size_t(cols) * sizeof(T));
    for (int64_t j = 0; j < cols; ++j) yr[j] = gelu_value(yr[j]);
  }
}

// dz = dy * gelu'(pre).
template <typename T>
void gelu_backward(const T* dy, const T* pre, T* dz, int64_t n) {
#pragma omp parallel for schedule(static) if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) dz[i] = dy[i] * gelu_derivative(pre[i]);
}

// db[j] = (accumulate ? db[j] : 0) + sum_r dz[r, j], rows summed in order; threads split the columns.
template <typename T>
void column_sum(const T* dz, T* db, int64_t rows, int64_t cols, bool accumulate) {
  constexpr int64_t kCols = 256;
#pragma omp parallel for schedule(static) if (worth_threads(rows * cols))
  for (int64_t j0 = 0; j0 < cols; j0 += kCols) {
    const int64_t jn = std::min(kCols, cols - j0);
    T acc[kCols];
    for (int64_t j = 0; j < jn; ++j) acc[j] = accumulate ? db[j0 + j] : T(0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = dz + r * cols + j0;
      for (int64_t j = 0; j < jn; ++j) acc[j] += row[j];
    }
    for (int64_t j = 0; j < jn; ++j) db[j0 + j] = acc[j];
  }
}

template <typename T>
void forward_impl(const Tensor& x, const Tensor& W, const Tensor& b, bool gelu, const Tensor& y, const Tensor& pre) {
  const int64_t rows = x.dim(0), in = x.dim(1), out = W.dim(0);
  // y[r, j] = sum_k x[r, k] W[j, k]: B(k, j) = W[j*in + k].
  gemm<T>(rows, out, in, x.data_as<T>(), in, 1, W.data_as<T>(), 1, in, y.data_as<T>(), out, false);
  if (b.defined() || gelu)
    bias_activation<T>(y.data_as<T>(), pre.defined() ? pre.data_as<T>() : nullptr,
                       b.defined() ? b.data_as<T>() : nullptr, gelu, rows, out);
}

template <typename T>
void backward_impl(const Tensor& x, const Tensor& W, const Tensor& dy, const Tensor& pre, bool gelu,
                   const GradSlot& dx, const GradSlot& dW, const GradSlot& db) {
  const int64_t rows = x.dim(0), in = x.dim(1), out = W.dim(0);
  const T* dz = dy.data_as<T>();
  Tensor scratch;
  if (gelu) {
    scratch = alloc_activation(dy.shape(), dy.dtype(), dy.device());
    gelu_backward<T>(dz, pre.data_as<T>(), scratch.data_as<T>(), rows * out);
    dz = scratch.data_as<T>();
  }
  // dx[r, k] = sum_j dz[r, j] W[j, k].
  if (dx) gemm<T>(rows, in, out, dz, out, 1, W.data_as<T>(), in, 1, dx.grad.data_as<T>(), in, dx.accumulate);
  // dW[j, k] = sum_r dz[r, j] x[r, k]: A(j, r) = dz[r*out + j].
  if (dW) gemm<T>(out, in, rows, dz, 1, out, x.data_as<T>(), in, 1, dW.grad.data_as<T>(), in, dW.accumulate);
  if (db) column_sum<T>(dz, db.grad.data_as<T>(), rows, out, db.accumulate);
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& W, const Tensor& b, ops::Activation act, const Tensor& y,
                    const Tensor& pre) {
  UM_DISPATCH_CPU(x.dtype(), T, forward_impl<T>(x, W, b, act == ops::Activation::gelu, y, pre));
}

void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const Tensor& pre, ops::Activation act,
                     const GradSlot& dx, const GradSlot& dW, const GradSlot& db) {
  UM_DISPATCH_CPU(x.dtype(), T, backward_impl<T>(x, W, dy, pre, act == ops::Activation::gelu, dx, dW, db));
}

}  // namespace um::cpu
