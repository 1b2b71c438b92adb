// A kernel timeline where Nsight Systems is not installed (the lent H200 machine has only Nsight Compute):
// a CUDA injection library that records every kernel, memcpy and memset with CUPTI's activity API and
// writes one CSV line per record, `kind,start_ns,end_ns,stream,"name"` (kind K, C or S), at exit. Unlike
// ncu, which serialises and times kernels one by one, this sees the gaps between them as they run.
//
//   g++ -O2 -shared -fPIC -I/usr/local/cuda/include bench/kernel_timeline.cpp -o /tmp/libtimeline.so \
//       -L/usr/local/cuda/lib64 -lcupti
//   CUDA_INJECTION64_PATH=/tmp/libtimeline.so TIMELINE_OUT=/tmp/timeline.csv ./build-gpu/bench/bench-moe ...
//   python3 bench/kernel_gaps.py /tmp/timeline.csv router_topk 3
//
// (bench/run_gpu.sh STEPS=timeline does this for the 64-expert MoE layer.) The record structs are CUDA
// 13.0's (CUpti_ActivityKernel10, Memcpy6, Memset4); another CUPTI version may need other names.
#include <cupti.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {

FILE* out = nullptr;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t(16) << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* r = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
      std::fprintf(out, "K,%llu,%llu,%u,\"%s\"\n", (unsigned long long)k->start, (unsigned long long)k->end,
                   k->streamId, k->name);
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
      std::fprintf(out, "C,%llu,%llu,%u,\"memcpy kind %d, %llu bytes\"\n", (unsigned long long)m->start,
                   (unsigned long long)m->end, m->streamId, int(m->copyKind), (unsigned long long)m->bytes);
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
      std::fprintf(out, "S,%llu,%llu,%u,\"memset %llu bytes\"\n", (unsigned long long)m->start,
                   (unsigned long long)m->end, m->streamId, (unsigned long long)m->bytes);
    }
  }
  std::free(buffer);
}

void flush_at_exit() {
  cuptiActivityFlushAll(1);
  if (out) std::fclose(out);
}

}  // namespace

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection(void) {
  const char* path = std::getenv("TIMELINE_OUT");
  out = std::fopen(path ? path : "timeline.csv", "w");
  if (!out) {
    std::fprintf(stderr, "kernel_timeline: cannot write %s\n", path ? path : "timeline.csv");
    return 0;
  }
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel_timeline: CUPTI refused the activity records\n");
    return 0;
  }
  std::atexit(flush_at_exit);
  return 1;
}
