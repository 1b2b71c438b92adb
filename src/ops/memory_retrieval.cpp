// Memory retrieval: argument checks, arena outputs, device dispatch and the tape closures of
// memory_scores (q . keys, one batched GEMM) and memory_topk (pre-selection, grid, final top-k).
#include "ultramem/ops/memory_retrieval.h"

#include "src/ops/dispatch.h"
#include "ultramem/core/arena.h"

namespace um::ops {
namespace {

// Score logits are f32, or f64 when the CPU reference runs in f64 (gradcheck).
DType score_dtype(DType in) { return in == DType::f64 ? DType::f64 : DType::f32; }

std::string where(const char* op, const char* tensor) { return detail::concat(op, ": ", tensor); }

void check_score_shape(const ScoreShape& s, const char* op) {
  if (s.heads < 1 || s.n_keys < 1 || s.rank < 1 || s.kdim < 1 || (s.q_ranks != 1 && s.q_ranks != s.rank))
    throw Error(where(op, "ScoreShape"), "heads, n_keys, rank, kdim >= 1 and q_ranks 1 or rank",
                detail::concat("heads ", s.heads, ", n_keys ", s.n_keys, ", rank ", s.rank, ", q_ranks ", s.q_ranks,
                               ", kdim ", s.kdim));
}

// q [..., H*2*qr*K] (T = the product of the leading dims), keys [..., K] holding H*2*r*n rows, both
// f32/bf16 (GPU) or f32/f64 (CPU), one dtype, one device. Returns T.
int64_t check_q_keys(const Tensor& q, const Tensor& keys, const ScoreShape& s, const char* op) {
  check_score_shape(s, op);
  const int64_t qw = s.heads * 2 * s.q_ranks * s.kdim, rows = s.heads * 2 * s.rank * s.n_keys;
  if (!q.defined() || q.ndim() < 1 || q.dim(-1) != qw)
    throw Error(where(op, "q"), detail::concat("shape [T, ", qw, "] (H*2*q_ranks*K)"),
                q.defined() ? q.desc() : "an undefined tensor");
  if (!keys.defined() || keys.ndim() < 1 || keys.dim(-1) != s.kdim || keys.numel() != rows * s.kdim)
    throw Error(where(op, "keys"), detail::concat("shape [", rows, ", ", s.kdim, "] (H*2*rank*n_keys, K)"),
                keys.defined() ? keys.desc() : "an undefined tensor");
  check_dtype(keys, q.dtype(), where(op, "keys (q's dtype)").c_str());
  check_same_device(q, keys, where(op, "q and keys").c_str());
  const bool ok = q.device().is_cuda() ? (q.dtype() == DType::f32 || q.dtype() == DType::bf16)
                                       : (q.dtype() == DType::f32 || q.dtype() == DType::f64);
  if (!ok) throw Error(where(op, "q"), q.device().is_cuda() ? "dtype f32 or bf16" : "dtype f32 or f64", q.desc());
  return q.numel() / qw;
}

Shape scores_shape(int64_t T, const ScoreShape& s) { return Shape{T, s.heads, 2, s.rank, s.n_keys}; }

// A gradient of x: x's shape, x's dtype, or f32 on the GPU (a master gradient or f32 accumulation).
void check_grad(const Tensor& g, const Tensor& x, const char* what) {
  if (!g.defined()) return;
  check_shape(g, x.shape(), what);
  check_same_device(g, x, what);
  const bool ok = g.dtype() == x.dtype() || (x.device().is_cuda() && g.dtype() == DType::f32);
  if (!ok)
    throw Error(what, detail::concat("dtype ", dtype_name(x.dtype()), x.device().is_cuda() ? " or f32" : ""), g.desc());
}

struct TopkDims {
  int64_t T, H, r, n, h;
};

// scores [T, H, 2, r, n]: f32 (f64 on the CPU), 1 <= knn <= min(64, n), n * n < 2^31, r == 1 for additive.
TopkDims check_topk_scores(const Tensor& scores, const TopkArgs& args, const char* op) {
  if (!scores.defined() || scores.ndim() != 5 || scores.dim(2) != 2 || scores.dim(1) < 1 || scores.dim(3) < 1 ||
      scores.dim(4) < 1)
    throw Error(where(op, "scores"), "shape [T, H, 2, r, n] with H, r, n >= 1",
                scores.defined() ? scores.desc() : "an undefined tensor");
  const bool cuda = scores.device().is_cuda();
  if (scores.dtype() != DType::f32 && !(scores.dtype() == DType::f64 && !cuda))
    throw Error(where(op, "scores"), cuda ? "dtype f32" : "dtype f32 or f64", scores.desc());
  TopkDims d{scores.dim(0), scores.dim(1), scores.dim(3), scores.dim(4), 1};
  if (args.knn < 1 || args.knn > 64 || args.knn > d.n)
    throw Error(where(op, "knn"), detail::concat("1 <= knn <= min(64, n = ", d.n, ")"), std::to_string(args.knn));
  if (d.n * d.n > int64_t(INT32_MAX))
    throw Error(where(op, "scores"), "n * n below 2^31 (indices i*n + j are i32)", scores.desc());
  if (args.grid == GridScore::additive && d.r != 1)
    throw Error(where(op, "scores"), "rank 1 for the additive grid: [T, H, 2, 1, n]", scores.desc());
  if (args.grid == GridScore::tucker && d.r > 4) throw Error(where(op, "scores"), "Tucker rank r <= 4", scores.desc());
  return d;
}

// cores [h, H, r, r] with 1 <= h <= 4: f32 or bf16 on the GPU, scores' dtype on the CPU. Returns h.
int64_t check_topk_cores(const Tensor& cores, const Tensor& scores, const TopkDims& d, const char* op) {
  if (!cores.defined() || cores.ndim() != 4 || cores.dim(0) < 1 || cores.dim(0) > 4 || cores.dim(1) != d.H ||
      cores.dim(2) != d.r || cores.dim(3) != d.r)
    throw Error(where(op, "cores"), detail::concat("shape [h, ", d.H, ", ", d.r, ", ", d.r, "] with 1 <= h <= 4"),
                cores.defined() ? cores.desc() : "an undefined tensor");
  check_same_device(cores, scores, where(op, "cores").c_str());
  const bool cuda = scores.device().is_cuda();
  const bool ok =
      cuda ? (cores.dtype() == DType::f32 || cores.dtype() == DType::bf16) : cores.dtype() == scores.dtype();
  if (!ok) throw Error(where(op, "cores"), cuda ? "dtype f32 or bf16" : "scores' dtype", cores.desc());
  return cores.dim(0);
}

// Everything memory_topk reads: scores, then u/v [H, r] in scores' dtype and the cores for tucker; u, v and
// cores undefined for additive.
TopkDims check_topk_inputs(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                           const TopkArgs& args, const char* op) {
  TopkDims d = check_topk_scores(scores, args, op);
  if (args.grid == GridScore::additive) {
    if (u.defined() || v.defined() || cores.defined())
      throw Error(where(op, "u, v, cores"), "undefined tensors for the additive grid", "a defined one");
    return d;
  }
  for (auto [t, name] : {std::pair{&u, "u"}, std::pair{&v, "v"}}) {
    std::string w = where(op, name);
    check_shape(*t, Shape{d.H, d.r}, w.c_str());
    check_dtype(*t, scores.dtype(), (w + " (scores' dtype)").c_str());
    check_same_device(*t, scores, w.c_str());
  }
  d.h = check_topk_cores(cores, scores, d, op);
  return d;
}

}  // namespace

void memory_scores_forward(const Tensor& q, const Tensor& keys, const ScoreShape& s, const Tensor& scores) {
  const int64_t T = check_q_keys(q, keys, s, "memory_scores");
  check_shape(scores, scores_shape(T, s), "memory_scores: scores");
  check_dtype(scores, score_dtype(q.dtype()), "memory_scores: scores (f32; f64 for f64 inputs)");
  check_same_device(q, scores, "memory_scores: q and scores");
  UM_DISPATCH_DEVICE(q, memory_scores_forward, q, keys, s, scores);
}

void memory_scores_backward(const Tensor& q, const Tensor& keys, const ScoreShape& s, const Tensor& dscores,
                            const Tensor& dq, bool acc_q, const Tensor& dkeys, bool acc_k) {
  const int64_t T = check_q_keys(q, keys, s, "memory_scores backward");
  check_shape(dscores, scores_shape(T, s), "memory_scores backward: dscores");
  check_dtype(dscores, score_dtype(q.dtype()), "memory_scores backward: dscores (the scores' dtype)");
  check_same_device(q, dscores, "memory_scores backward: q and dscores");
  check_grad(dq, q, "memory_scores backward: dq");
  check_grad(dkeys, keys, "memory_scores backward: dkeys");
  if (!dq.defined() && !dkeys.defined()) return;
  UM_DISPATCH_DEVICE(q, memory_scores_backward, q, keys, s, dscores, dq, acc_q, dkeys, acc_k);
}

Tensor memory_scores(const Tensor& q, const Tensor& keys, const ScoreShape& s) {
  const int64_t T = check_q_keys(q, keys, s, "memory_scores");
  Tensor scores = alloc_activation(scores_shape(T, s), score_dtype(q.dtype()), q.device());
  memory_scores_forward(q, keys, s, scores);
  if (needs_grad({&q, &keys})) {
    scores.set_requires_grad(true);
    current_tape()->record([q, keys, s, scores] {
      Tensor ds = grad_of(scores);
      if (!ds) return;
      GradSlot dq = grad_slot(q), dk = grad_slot(keys);
      memory_scores_backward(q, keys, s, ds, dq.grad, dq.accumulate, dk.grad, dk.accumulate);
    });
  }
  return scores;
}

void memory_topk_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                         const TopkArgs& args, const Retrieval& out, const Tensor& pair) {
  const char* op = "memory_topk";
  TopkDims d = check_topk_inputs(scores, u, v, cores, args, op);
  const int64_t picks = d.H * args.knn;
  for (auto [t, name, shape] :
       {std::tuple{&out.indices, "indices", Shape{d.T, picks}}, std::tuple{&pair, "pair", Shape{d.T, picks}},
        std::tuple{&out.rows, "rows", Shape{d.T, d.H, 2, args.knn}}}) {
    std::string w = where(op, name);
    check_shape(*t, shape, w.c_str());
    check_dtype(*t, DType::i32, w.c_str());
    check_same_device(*t, scores, w.c_str());
  }
  check_shape(out.scores, Shape{d.T, picks, d.h}, "memory_topk: out.scores [T, H*knn, h]");
  check_dtype(out.scores, scores.dtype(), "memory_topk: out.scores (scores' dtype)");
  check_same_device(out.scores, scores, "memory_topk: out.scores");
  UM_DISPATCH_DEVICE(scores, memory_topk_forward, scores, u, v, cores, args, out, pair);
}

void memory_topk_backward(const Tensor& scores, const Tensor& cores, const TopkArgs& args, const Tensor& rows,
                          const Tensor& pair, const Tensor& dpick, const Tensor& dscores, bool acc_s,
                          const Tensor& dcores, bool acc_c) {
  const char* op = "memory_topk backward";
  const bool tucker = args.grid == GridScore::tucker;
  TopkDims d = check_topk_scores(scores, args, op);
  if (tucker) d.h = check_topk_cores(cores, scores, d, op);
  const int64_t T = d.T, H = d.H, picks = H * args.knn, h = d.h;
  check_shape(rows, Shape{T, H, 2, args.knn}, "memory_topk backward: rows");
  check_shape(pair, Shape{T, picks}, "memory_topk backward: pair");
  check_dtype(rows, DType::i32, "memory_topk backward: rows");
  check_dtype(pair, DType::i32, "memory_topk backward: pair");
  check_same_device(rows, scores, "memory_topk backward: rows");
  check_same_device(pair, scores, "memory_topk backward: pair");
  check_shape(dpick, Shape{T, picks, h}, "memory_topk backward: dpick [T, H*knn, h]");
  check_dtype(dpick, scores.dtype(), "memory_topk backward: dpick (scores' dtype)");
  check_same_device(dpick, scores, "memory_topk backward: dpick");
  if (dscores.defined()) {
    check_shape(dscores, scores.shape(), "memory_topk backward: dscores");
    check_dtype(dscores, scores.dtype(), "memory_topk backward: dscores (scores' dtype)");
    check_same_device(dscores, scores, "memory_topk backward: dscores");
  }
  if (dcores.defined()) {
    UM_CHECK(tucker, "no dcores for the additive grid", dcores.desc());
    check_shape(dcores, cores.shape(), "memory_topk backward: dcores");
    check_dtype(dcores, scores.device().is_cuda() ? DType::f32 : cores.dtype(),
                "memory_topk backward: dcores (f32 on the GPU, cores' dtype on the CPU)");
    check_same_device(dcores, scores, "memory_topk backward: dcores");
  }
  if (!dscores.defined() && !dcores.defined()) return;
  UM_DISPATCH_DEVICE(scores, memory_topk_backward, scores, cores, args, rows, pair, dpick, dscores, acc_s, dcores,
                     acc_c);
}

Retrieval memory_topk(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                      const TopkArgs& args) {
  TopkDims d = check_topk_inputs(scores, u, v, cores, args, "memory_topk");
  const Device dev = scores.device();
  const int64_t picks = d.H * args.knn;
  Retrieval out;
  out.indices = alloc_activation(Shape{d.T, picks}, DType::i32, dev);
  out.scores = alloc_activation(Shape{d.T, picks, d.h}, scores.dtype(), dev);
  out.rows = alloc_activation(Shape{d.T, d.H, 2, args.knn}, DType::i32, dev);
  Tensor pair = alloc_activation(Shape{d.T, picks}, DType::i32, dev);
  memory_topk_forward(scores, u, v, cores, args, out, pair);
  const bool tucker = args.grid == GridScore::tucker;
  if (needs_grad({&scores, tucker ? &cores : nullptr})) {
    out.scores.set_requires_grad(true);
    Tensor picked = out.scores, rows = out.rows;
    current_tape()->record([scores, cores, args, rows, pair, picked, tucker] {
      Tensor dpick = grad_of(picked);
      if (!dpick) return;
      GradSlot ds = grad_slot(scores);
      GradSlot dc = tucker ? grad_slot(cores) : GradSlot{};
      memory_topk_backward(scores, cores, args, rows, pair, dpick, ds.grad, ds.accumulate, dc.grad, dc.accumulate);
    });
  }
  return out;
}

}  // namespace um::ops
