#include "ultramem/ops/tucker.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ultramem/core/arena.h"
#include "ultramem/ops/elementwise.h"

namespace um::ops {

SmallSvd small_svd(const std::vector<double>& A, int r) {
  UM_CHECK(r >= 1 && A.size() == size_t(r) * size_t(r), "an r x r matrix", A.size(), " values for r = ", r);
  // One-sided Jacobi: rotate column pairs of W = A V until they are orthogonal; then sigma_j = |W_j|,
  // U_j = W_j / sigma_j. Exact to rounding for these sizes in a handful of sweeps.
  std::vector<double> W = A, V(size_t(r) * r, 0.0);
  for (int i = 0; i < r; ++i) V[size_t(i) * r + i] = 1.0;
  auto at = [r](std::vector<double>& M, int i, int j) -> double& { return M[size_t(i) * r + j]; };
  for (int sweep = 0; sweep < 60; ++sweep) {
    double off = 0;
    for (int p = 0; p < r; ++p)
      for (int q = p + 1; q < r; ++q) {
        double a = 0, b = 0, c = 0;
        for (int i = 0; i < r; ++i) {
          a += at(W, i, p) * at(W, i, p);
          b += at(W, i, q) * at(W, i, q);
          c += at(W, i, p) * at(W, i, q);
        }
        if (std::abs(c) <= 1e-300 || std::abs(c) <= 1e-17 * std::sqrt(a * b)) continue;
        off = std::max(off, std::abs(c) / std::sqrt(a * b));
        const double zeta = (b - a) / (2 * c);
        const double t = std::copysign(1.0, zeta) / (std::abs(zeta) + std::sqrt(1 + zeta * zeta));
        const double cs = 1 / std::sqrt(1 + t * t), sn = cs * t;
        for (int i = 0; i < r; ++i) {
          const double wp = at(W, i, p), wq = at(W, i, q);
          at(W, i, p) = cs * wp - sn * wq;
          at(W, i, q) = sn * wp + cs * wq;
          const double vp = at(V, i, p), vq = at(V, i, q);
          at(V, i, p) = cs * vp - sn * vq;
          at(V, i, q) = sn * vp + cs * vq;
        }
      }
    if (off < 1e-15) break;
  }
  std::vector<double> sig(r);
  for (int j = 0; j < r; ++j) {
    double s = 0;
    for (int i = 0; i < r; ++i) s += at(W, i, j) * at(W, i, j);
    sig[j] = std::sqrt(s);
  }
  std::vector<int> order(r);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return sig[x] > sig[y]; });
  SmallSvd out;
  out.r = r;
  out.sigma.resize(r);
  out.U.assign(size_t(r) * r, 0.0);
  out.V.assign(size_t(r) * r, 0.0);
  for (int k = 0; k < r; ++k) {
    const int j = order[k];
    out.sigma[k] = sig[j];
    for (int i = 0; i < r; ++i) {
      out.V[size_t(i) * r + k] = at(V, i, j);
      // A zero singular value has no defined left vector; a unit vector keeps U finite.
      out.U[size_t(i) * r + k] = sig[j] > 0 ? at(W, i, j) / sig[j] : (i == k ? 1.0 : 0.0);
    }
  }
  return out;
}

static void check_cores(const Tensor& cores) {
  if (!cores.defined() || cores.ndim() != 4 || cores.dim(2) != cores.dim(3) || cores.dim(2) < 1 || cores.dim(2) > 8)
    throw Error("tucker: cores", "shape [h, H, r, r] with 1 <= r <= 8", cores.defined() ? cores.desc() : "undefined");
}

std::vector<SmallSvd> tucker_core_svd(const Tensor& cores) {
  check_cores(cores);
  const int64_t h = cores.dim(0), H = cores.dim(1), r = cores.dim(2);
  const std::vector<double> c = cores.to_doubles();
  std::vector<SmallSvd> out;
  for (int64_t head = 0; head < H; ++head) {
    std::vector<double> sum(size_t(r * r), 0.0);
    for (int64_t m = 0; m < h; ++m)
      for (int64_t k = 0; k < r * r; ++k) sum[size_t(k)] += c[size_t((m * H + head) * r * r + k)];
    out.push_back(small_svd(sum, int(r)));
  }
  return out;
}

Tensor tucker_aux_loss(const Tensor& cores, double alpha, double margin) {
  check_cores(cores);
  const int64_t h = cores.dim(0), H = cores.dim(1), r = cores.dim(2);
  const std::vector<SmallSvd> svd = tucker_core_svd(cores);
  const double terms = double(H) * double(std::max<int64_t>(r - 1, 1));
  double loss = 0;
  std::vector<double> dA(size_t(H * r * r), 0.0);  // d loss / d (sum of cores) per head
  for (int64_t head = 0; head < H; ++head)
    for (int64_t i = 1; i < r; ++i) {
      const double excess = std::max(0.0, svd[size_t(head)].sigma[size_t(i)] - margin);
      loss += alpha * excess * excess / terms;
      const double g = 2 * alpha * excess / terms;
      if (g == 0) continue;
      for (int64_t a = 0; a < r; ++a)
        for (int64_t b = 0; b < r; ++b)
          dA[size_t((head * r + a) * r + b)] += g * svd[size_t(head)].U[size_t(a * r + i)] * svd[size_t(head)].V[size_t(b * r + i)];
    }
  // f32 like every loss; f64 for f64 cores (the CPU gradient check).
  const DType dt = cores.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor out = alloc_activation({1}, dt, cores.device());
  out.copy_from(Tensor::from_doubles({loss}, {1}, dt));
  if (needs_grad({&cores})) {
    out.set_requires_grad(true);
    current_tape()->record([cores, out, dA, h, H, r] {
      Tensor dout = grad_of(out);
      if (!dout) return;
      const double scale = dout.to_doubles()[0];
      std::vector<double> g(size_t(h * H * r * r));
      for (int64_t m = 0; m < h; ++m)
        for (int64_t k = 0; k < H * r * r; ++k) g[size_t(m * H * r * r + k)] = scale * dA[size_t(k)];
      GradSlot slot = grad_slot(cores);
      if (!slot) return;
      // Through the arena, not a fresh device allocation: a training step allocates nothing.
      Tensor dcores = alloc_activation(cores.shape(), slot.grad.dtype(), cores.device());
      dcores.copy_from(Tensor::from_doubles(g, cores.shape(), slot.grad.dtype()));
      accumulate_grad(slot, dcores);
    });
  }
  return out;
}

}  // namespace um::ops
