#include "ultramem/ops/embedding.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

// [ids..., C]: the shape of the gathered rows.
static Shape rows_shape(const Tensor& ids, int64_t C) {
  if (ids.ndim() >= Shape::kMaxDims)
    throw Error("embedding: ids", "at most 4 dimensions (the output adds one)", ids.desc());
  Shape s = ids.shape();
  s.dims[s.ndim++] = C;
  return s;
}

static void check_ids(const Tensor& ids, const char* op) {
  std::string where = detail::concat(op, ": ids");
  UM_CHECK(ids.defined(), where + " to be defined", "an undefined tensor");
  check_dtype(ids, DType::i32, where.c_str());
  UM_CHECK(ids.numel() <= int64_t(INT32_MAX), where + " with fewer than 2^31 elements", ids.desc());
}

static void check_table(const Tensor& t, const char* what) {
  if (!t.defined() || t.ndim() != 2 || t.dim(0) < 1 || t.dim(1) < 1)
    throw Error(what, "shape [V, C] with V, C >= 1", t.desc());
}

void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) {
  check_ids(ids, "embedding");
  check_table(table, "embedding: table");
  check_same_device(ids, table, "embedding: ids and table");
  check_shape(out, rows_shape(ids, table.dim(1)), "embedding: out");
  check_dtype(out, table.dtype(), "embedding: out (the table's dtype)");
  check_same_device(table, out, "embedding: table and out");
  UM_DISPATCH_DEVICE(table, embedding_forward, ids, table, out);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable, bool accumulate) {
  check_ids(ids, "embedding backward");
  check_table(dtable, "embedding backward: dtable");
  check_shape(dout, rows_shape(ids, dtable.dim(1)), "embedding backward: dout");
  check_same_device(ids, dout, "embedding backward: ids and dout");
  check_same_device(ids, dtable, "embedding backward: ids and dtable");
  check_dtype(dtable, dtable.device().is_cuda() ? DType::f32 : dout.dtype(),
              "embedding backward: dtable (f32 on the GPU, dout's dtype on the CPU)");
  UM_DISPATCH_DEVICE(dtable, embedding_backward, ids, dout, dtable, accumulate);
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  check_ids(ids, "embedding");
  check_table(table, "embedding: table");
  Tensor out = alloc_activation(rows_shape(ids, table.dim(1)), table.dtype(), table.device());
  embedding_forward(ids, table, out);
  if (needs_grad({&table})) {
    out.set_requires_grad(true);
    current_tape()->record([ids, table, out] {
      Tensor dout = grad_of(out);
      if (!dout) return;
      GradSlot dtable = grad_slot(table);
      embedding_backward(ids, dout, dtable.grad, dtable.accumulate);
    });
  }
  return out;
}

}  // namespace um::ops
