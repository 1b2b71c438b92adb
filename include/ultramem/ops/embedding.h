// Embedding op family: a row gather out = table[ids] and its scatter-add backward.
//
// The backward is the general "sum N rows of C into a [V, C] table by index" kernel, also used by
// memory layers for their value tables. It is deterministic: on the GPU the (id, position) pairs are
// radix-sorted (stable, so each id's positions stay ascending), then one block per id sums that id's
// rows in position order and adds them into the f32 table gradient; a frequent id's long run is cut
// into fixed tiles of the sorted order, summed by several blocks, whose partial sums are then added in
// tile order. Every order is fixed by the ids alone and there are no atomics: bit-reproducible.
//
// Ids are validated: an id outside [0, V) is an Error naming its position. The CPU checks before it
// touches memory; the GPU kernels never read or write out of bounds (the bad position is recorded in
// a device flag, the row is skipped) and the Error is raised after the kernel.
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// ids: i32 [...] token ids; table [V, C] -> out [..., C] in the table's dtype.
Tensor embedding(const Tensor& ids, const Tensor& table);

// Kernel-level entry points.
// out [ids..., C] = table[ids].
void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out);
// dtable[v] = (accumulate ? dtable[v] : 0) + sum over positions i with ids[i] == v of dout[i], summed in
// position order (on the GPU: in a fixed order, see above). ids: i32 with N elements (any shape), dout: N rows of C ([ids..., C]),
// dtable [V, C]: f32 on the GPU (master gradient), dout's dtype on the CPU. Rows of ids that never
// occur are left untouched when accumulating and zeroed otherwise.
void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable, bool accumulate);

}  // namespace um::ops

namespace um::cpu {
void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable, bool accumulate);
}  // namespace um::cuda
