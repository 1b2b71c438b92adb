// Hopper warpgroup MMA for the sm90 kernels (cuda/grouped_gemm_sm90.cu): shared-memory matrix
// descriptors with the 128-byte swizzle, wgmma m64 x N x k16 (f32 += bf16 . bf16, both operands from
// shared memory; N = 64, 128, 192 or 256, twice the accumulator count per thread), and the fences,
// commits and waits around it. Compiled for sm_90a only: the portable PTX pass sees none of it, and
// UM_SM90_DEVICE tells the including file which pass it is in.
#pragma once
#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define UM_SM90_DEVICE 1
#endif

#if defined(UM_SM90_DEVICE) || !defined(__CUDA_ARCH__)
namespace um::cuda::sm90 {

// Matrix descriptor: start address, leading / stride byte offsets (all >> 4), 128-byte swizzle.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(lbo >> 4) << 16) | (uint64_t(sbo >> 4) << 32) | (1ull << 62);
}

// K-major: 8-row core groups 1024 bytes apart, the leading offset unused with a swizzle (1 by convention).
// MN-major: 64-wide mn panels 8192 bytes apart (leading), 8-k-row groups 1024 bytes apart (stride).
template <bool kMN>
__device__ __forceinline__ uint64_t operand_desc(uint32_t tile) {
  if constexpr (kMN) return make_desc(tile, 8192u, 1024u);
  else return make_desc(tile, 16u, 1024u);
}

// The accumulator operands of a wgmma: eight "+f" registers per use of the macro.
#define UM_ACC8(i)                                            \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), \
      "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])

// wgmma m64 x n x k16, f32 += bf16 . bf16; n = 2 x the accumulator count (64, 128, 192 or 256).
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[32], uint64_t da, uint64_t db) {
#ifdef UM_SM90_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : UM_ACC8(0), UM_ACC8(8), UM_ACC8(16), UM_ACC8(24)
      : "l"(da), "l"(db), "r"(1), "n"(kTransA), "n"(kTransB));
#endif
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[64], uint64_t da, uint64_t db) {
#ifdef UM_SM90_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : UM_ACC8(0), UM_ACC8(8), UM_ACC8(16), UM_ACC8(24),
        UM_ACC8(32), UM_ACC8(40), UM_ACC8(48), UM_ACC8(56)
      : "l"(da), "l"(db), "r"(1), "n"(kTransA), "n"(kTransB));
#endif
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[96], uint64_t da, uint64_t db) {
#ifdef UM_SM90_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
      "}, %96, %97, p, 1, 1, %99, %100;\n}\n"
      : UM_ACC8(0), UM_ACC8(8), UM_ACC8(16), UM_ACC8(24),
        UM_ACC8(32), UM_ACC8(40), UM_ACC8(48), UM_ACC8(56),
        UM_ACC8(64), UM_ACC8(72), UM_ACC8(80), UM_ACC8(88)
      : "l"(da), "l"(db), "r"(1), "n"(kTransA), "n"(kTransB));
#endif
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[128], uint64_t da, uint64_t db) {
#ifdef UM_SM90_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
      : UM_ACC8(0), UM_ACC8(8), UM_ACC8(16), UM_ACC8(24),
        UM_ACC8(32), UM_ACC8(40), UM_ACC8(48), UM_ACC8(56),
        UM_ACC8(64), UM_ACC8(72), UM_ACC8(80), UM_ACC8(88),
        UM_ACC8(96), UM_ACC8(104), UM_ACC8(112), UM_ACC8(120)
      : "l"(da), "l"(db), "r"(1), "n"(kTransA), "n"(kTransB));
#endif
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator accesses across the asynchronous MMAs.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// One k16 slice of a tile W columns wide (a multiple of 64 up to BN: an n tail pads at most 63 columns),
// on the first W / 2 accumulators; W = 0 (a consumer with no rows in the tile) issues none. W is a
// template argument and the tile's k-loop is instantiated per width: a wgmma under a branch inside the
// loop makes ptxas serialise them all (C7520); a 128 + 64 pair for 192 runs out of registers (C7511).
template <int W, int kTransA, int kTransB, int kAcc>
__device__ __forceinline__ void mma_k16(float (&acc)[kAcc], uint64_t da, uint64_t db) {
  static_assert(W % 64 == 0 && W <= 2 * kAcc, "a tile width of 64-column steps within the accumulators");
  if constexpr (W > 0) wgmma_m64k16<kTransA, kTransB>(*reinterpret_cast<float(*)[W / 2]>(acc), da, db);
}

#undef UM_ACC8

}  // namespace um::cuda::sm90
#endif
