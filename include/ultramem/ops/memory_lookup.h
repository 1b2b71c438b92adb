// Memory lookup op family: the weighted gather ("embedding bag") of value rows that ends every
// memory layer, with UltraMem's implicit value expansion, multi-core chunk weights and UltraMemV2's
// pre-value gate (math: shared/specs/ultramem.md, docs/memory-layers.md).
//
// For token t and slot s (M slots: heads x knn picks):
//   x      = perm ? perm[indices[t, s]] : indices[t, s]       virtual index, in [0, virtual_num)
//   row    = (x mod value_num + offset) mod N                 physical row of the pool (values [N, V])
//   g      = groups == 1 ? 0 : x div value_num                output group (implicit value expansion)
//   gate   = pre_values ? act(<pre_in[t], pre_values[row]>) : 1      act = gelu or identity
//   out[t, g, chunk c] += gate * weights[t, s, c] * values[row, chunk c]   (C chunks of V/C columns)
// out: [T, groups * V] in the values' dtype, accumulated in f32 (f64 for f64 CPU tensors). Every
// output element is written (a group no slot picks is zero). Sums over slots run in slot order.
//
// Backward: d weights (f32), d values and d pre_values (scatter-adds into [N, .] tables, f32 master
// gradients on the GPU, deterministic: sorted by row, summed in a fixed order, no float atomics), d pre_in.
//   dot[t,s,c]     = <dout[t, g, chunk c], values[row, chunk c]>
//   dweights[t,s,c] = gate * dot[t,s,c];  dgate = sum_c weights[t,s,c] * dot[t,s,c]
//   dscore[t,s]    = dgate * act'(<pre_in[t], pre_values[row]>)
//   dpre_in[t]     = sum_s dscore[t,s] * pre_values[row]          (slot order)
//   dvalues[row, chunk c] += gate * weights[t,s,c] * dout[t, g, chunk c]   (position order t*M+s on the
//   dpre_values[row]      += dscore[t,s] * pre_in[t]                        CPU; a fixed order on the GPU)
//
// Indices are validated: an index outside [0, virtual_num) is an Error naming its flat position t*M+s
// ("indices position p"), a perm entry outside it an Error naming the perm position ("perm position
// i"). The CPU checks before touching memory; the GPU kernels skip such slots (never reading or
// writing out of bounds) and raise the Error after the kernel, which synchronises the host with the
// stream once per call.
//
// GPU limits: C <= 4 chunks, N < 2^31 rows, T * M * groups < 2^31, and M slots' bookkeeping in shared
// memory (M up to ~1000).
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

struct LookupArgs {
  int64_t value_num = 0;    // rows one layer addresses
  int64_t offset = 0;       // its first row in the pool (>= 0; may exceed N, it wraps)
  int64_t virtual_num = 0;  // valid virtual indices: [0, virtual_num); 0 = value_num
  int64_t groups = 1;       // 1, or virtual_num / value_num output groups (virtual_num <= groups * value_num)
  bool gelu_gate = false;   // pre-value gate through GELU (mem_use_glu_act)
  int64_t virtual_count() const { return virtual_num ? virtual_num : value_num; }
};

// indices: i32 [T, M]; weights: f32 [T, M, C] (f64 allowed with f64 values on the CPU, for gradchecks);
// values: [N, V] with V % C == 0; perm: i32 [virtual_num] or undefined; pre_in: [T, P] and pre_values:
// [N, P], both or neither, in the values' dtype. Returns [T, groups * V]. Differentiable in weights,
// values, pre_in and pre_values (the tape node recomputes the gates from its inputs).
Tensor memory_lookup(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                     const Tensor& pre_in, const Tensor& pre_values, const LookupArgs& args);

// Softmax over the last dimension, f32 in and out (Memory+'s weights over the knn picks; f64 too on the
// CPU). Computed as exp(x - max) / sum in fp32 (f64 for f64) per row.
Tensor softmax_lastdim(const Tensor& x);

// Kernel-level entry points. `used` (i32 [N] or undefined): used[row] = 1 for every row read; other
// entries are left as they are (the caller zeroes it, e.g. once per step for key-usage statistics).
void memory_lookup_forward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                           const Tensor& pre_in, const Tensor& pre_values, const LookupArgs& args, const Tensor& out,
                           const Tensor& used);
// Each gradient may be undefined (not wanted); acc_* = add to what is there. dweights, dpre_in: the
// shapes/dtypes of their inputs (dweights f32); dvalues / dpre_values: f32 on the GPU, the table's dtype
// on the CPU; rows no slot reads are zeroed when not accumulating, untouched otherwise.
void memory_lookup_backward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                            const Tensor& pre_in, const Tensor& pre_values, const LookupArgs& args,
                            const Tensor& dout, const Tensor& dweights, bool acc_w, const Tensor& dvalues,
                            bool acc_v, const Tensor& dpre_in, bool acc_p, const Tensor& dpre_values, bool acc_pv);
void softmax_lastdim_forward(const Tensor& x, const Tensor& y);
// dx = (accumulate ? dx : 0) + y * (dy - sum(dy * y)).
void softmax_lastdim_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, bool accumulate);

}  // namespace um::ops

namespace um::cpu {
void memory_lookup_forward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                           const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                           const Tensor& out, const Tensor& used);
void memory_lookup_backward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                            const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                            const Tensor& dout, const Tensor& dweights, bool acc_w, const Tensor& dvalues,
                            bool acc_v, const Tensor& dpre_in, bool acc_p, const Tensor& dpre_values, bool acc_pv);
void softmax_lastdim_forward(const Tensor& x, const Tensor& y);
void softmax_lastdim_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void memory_lookup_forward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                           const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                           const Tensor& out, const Tensor& used);
void memory_lookup_backward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                            const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                            const Tensor& dout, const Tensor& dweights, bool acc_w, const Tensor& dvalues,
                            bool acc_v, const Tensor& dpre_in, bool acc_p, const Tensor& dpre_values, bool acc_pv);
void softmax_lastdim_forward(const Tensor& x, const Tensor& y);
void softmax_lastdim_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, bool accumulate);
}  // namespace um::cuda
