// Tucker-core helpers for UltraMem v1/v2 (shared/specs/ultramem.md, "TDQKR"): the SVD of the summed
// cores that gives the rank-1 pre-selection vectors u, v and the aux loss that keeps the cores close
// to rank 1.
//
// The cores are tiny (h x H x r x r, r <= 8), so both run on the host in float64 whatever the
// cores' device: one small device-to-host copy per layer and step, no kernel worth launching.
#pragma once
#include <vector>

#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// SVD of one r x r matrix A = U diag(sigma) V^T (one-sided Jacobi, float64): sigma descending,
// U and V row-major r x r with the singular vectors as columns.
struct SmallSvd {
  int r = 0;
  std::vector<double> sigma, U, V;
};
SmallSvd small_svd(const std::vector<double>& A, int r);

// Per head h: the SVD of sum_m cores[m, h] (cores: [h, H, r, r], any float dtype and device).
std::vector<SmallSvd> tucker_core_svd(const Tensor& cores);

// The aux loss alpha * mean over heads and i >= 2 of max(0, sigma_i - margin)^2 on the singular values
// of each head's summed core: f32 [1] on the cores' device. Its backward adds d loss / d cores
// (d sigma_i / d A = u_i v_i^T, the same for every core m of the sum).
Tensor tucker_aux_loss(const Tensor& cores, double alpha, double margin);

}  // namespace um::ops
