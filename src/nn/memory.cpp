#include "src/nn/memory.h"

#include <cmath>

#include "ultramem/ops/activation.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/linear.h"
#include "ultramem/ops/memory_balance.h"
#include "ultramem/ops/memory_lookup.h"
#include "ultramem/ops/memory_retrieval.h"
#include "ultramem/ops/memory_usage.h"
#include "ultramem/ops/norm.h"
#include "ultramem/ops/tucker.h"

namespace um::nn {

MemoryGeometry memory_geometry(const ModelConfig& cfg, int64_t layer, int64_t n_mem_layers) {
  const MemoryConfig& m = cfg.mem;
  MemoryGeometry g;
  if (m.type == "memory_plus") {
    // One pool of knum^2 rows that every layer addresses whole.
    g.n = m.knum;
    g.value_num = g.virtual_num = g.pool_rows = m.knum * m.knum;
  } else if (m.type == "ultramem_v1") {
    // Each layer has its own knum^2 rows; implicit value expansion E makes n = sqrt(E) knum keys per
    // side address E x knum^2 virtual rows, summed into E output groups.
    const int64_t root = int64_t(std::llround(std::sqrt(double(m.value_expand_time))));
    g.n = root * m.knum;
    g.value_num = g.pool_rows = m.knum * m.knum;
    g.virtual_num = g.n * g.n;
    g.groups = m.value_expand_time;
    g.pool = layer;
  } else {
    // UltraMemV2: one pool of knum^2 x layers rows; each layer addresses knum'^2 rows from its own
    // offset (wrapping), knum' = floor(sqrt(pool x share_ratio)), so neighbours overlap.
    g.pool_rows = m.knum * m.knum * n_mem_layers;
    const int64_t kn = int64_t(std::floor(std::sqrt(double(g.pool_rows) * m.share_ratio) + 1e-9));
    g.value_num = kn * kn;
    g.n = m.key_expand_time * kn;
    g.virtual_num = g.n * g.n;
    g.groups = m.value_expand_time;
    g.offset = (layer * m.knum * m.knum) % g.pool_rows;
  }
  if (m.tucker()) {
    g.rank = m.tucker_rank;
    g.q_ranks = m.q_for_each_tucker_rank ? m.tucker_rank : 1;
    g.cores = m.tucker_multihead;
  }
  return g;
}

struct MemorySystem::Pool {
  Parameter* values = nullptr;
  Parameter* pre_values = nullptr;
  Tensor used;  // i32 [rows]: rows read since the usage window started
  int64_t window_steps = 0;
};

struct MemorySystem::Layer {
  std::string name;
  MemoryGeometry geo;
  Parameter *query_proj = nullptr, *keys = nullptr, *query_norm = nullptr, *keys_norm = nullptr;
  Parameter *cores = nullptr, *u = nullptr, *v = nullptr;  // UltraMem
  Parameter *values_proj = nullptr, *pre_values_proj = nullptr, *swilu = nullptr;
  Tensor perm;                       // i32 [virtual_num] on the device (UltraMem), built on first use
  std::vector<ops::SmallSvd> svd;    // of the summed cores at the last begin_step
};

// The fixed random permutation of virtual rows (UltraMem's shuffle_index): Fisher-Yates driven by
// splitmix64 from the layer index, so it is a pure function of the config and needs no storage.
static std::vector<int64_t> shuffle_index(int64_t n, int64_t layer) {
  std::vector<int64_t> p{};
  p.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = i;
  uint64_t s = 0x5DEECE66Dull ^ (uint64_t(layer) * 0x9E3779B97F4A7C15ull);
  auto next = [&s] {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[size_t(i)], p[size_t(next() % uint64_t(i + 1))]);
  return p;
}

MemorySystem::MemorySystem(const ModelConfig& cfg, ParameterStore& ps) : cfg_(cfg) {
  placements_ = memory_placements(cfg.mem, cfg.n_layers, "model.mem_insert_way");
  if (placements_.empty()) return;
  const MemoryConfig& m = cfg.mem;
  const int64_t d = cfg.d_model, K = m.kdim, V = m.vdim, H = m.head, L = int64_t(placements_.size());
  const bool plus = m.type == "memory_plus", v1 = m.type == "ultramem_v1";
  // Norm weights start at 1 (Memory+), 1/K^0.33 (v1) or 1/K^0.4 (v2), as the originals.
  const float norm_init = plus ? 1.f : float(1.0 / std::pow(double(K), v1 ? 0.33 : 0.4));
  const float out_std = cfg.init == "megatron" ? cfg.init_std / std::sqrt(2.f * float(cfg.n_layers)) : cfg.init_std;

  auto add_pool = [&](const std::string& prefix, int64_t rows) {
    auto pool = std::make_unique<Pool>();
    const float vstd = plus ? float(1.0 / std::sqrt(double(V))) : 0.02f;
    pool->values = &ps.add(prefix + ".values_for_look_up", {rows, V}, ParamInit::normal(vstd), ParamKind::memory_value);
    if (m.pre_vdim > 0)
      pool->pre_values = &ps.add(prefix + ".pre_values_for_look_up", {rows, m.pre_vdim}, ParamInit::normal(0.02f),
                                 ParamKind::memory_value);
    pools_.push_back(std::move(pool));
  };
  if (!v1) add_pool("transformer.memory", memory_geometry(cfg, 0, L).pool_rows);

  for (int64_t i = 0; i < L; ++i) {
    auto layer = std::make_unique<Layer>();
    const std::string p = "transformer.memory.layers." + std::to_string(i);
    layer->name = "memory." + std::to_string(i);
    MemoryGeometry& g = layer->geo;
    g = memory_geometry(cfg, i, L);
    if (v1) add_pool(p, g.pool_rows);
    const int64_t q_out = H * 2 * g.q_ranks * K;
    const ParamInit q_init = plus ? ParamInit::uniform(-std::sqrt(6.f / float(d + q_out)), std::sqrt(6.f / float(d + q_out)))
                                  : ParamInit::normal(float(1.0 / std::sqrt(double(K))));
    layer->query_proj = &ps.add(p + ".query_proj.weight", {q_out, d}, q_init, ParamKind::matrix);
    const float kb = float(1.0 / std::sqrt(2.0 * double(K)));
    layer->keys = &ps.add(p + ".keys", {H * 2 * g.rank * g.n, K},
                          plus ? ParamInit::uniform(-kb, kb) : ParamInit::normal(float(1.0 / std::sqrt(double(K)))),
                          ParamKind::matrix);
    layer->query_norm = &ps.add(p + ".query_norm.weight", {K}, ParamInit::constant(norm_init), ParamKind::norm);
    layer->keys_norm = &ps.add(p + ".keys_norm.weight", {K}, ParamInit::constant(norm_init), ParamKind::norm);
    if (m.tucker()) {
      layer->cores = &ps.add(p + ".tucker_core", {g.cores, H, g.rank, g.rank}, ParamInit::uniform(0.f, 1.f),
                             ParamKind::matrix);
      layer->u = &ps.add(p + ".tucker_core_u", {H, g.rank}, ParamInit::zeros(), ParamKind::buffer);
      layer->v = &ps.add(p + ".tucker_core_v", {H, g.rank}, ParamInit::zeros(), ParamKind::buffer);
    }
    const int64_t vin = g.groups * V;
    const float vp_std = plus ? float(1.0 / std::sqrt(double(V)))
                         : m.type == "ultramem_v2" ? out_std
                                                   : float(1.0 / std::sqrt(double(vin)));
    layer->values_proj = &ps.add(p + ".values_proj.weight", {d, vin}, ParamInit::normal(vp_std), ParamKind::matrix);
    if (m.pre_vdim > 0)
      layer->pre_values_proj = &ps.add(p + ".pre_values_proj.weight", {m.pre_vdim, d},
                                       ParamInit::normal(float(1.0 / std::sqrt(double(d)))), ParamKind::matrix);
    if (plus)
      layer->swilu = &ps.add(p + ".swilu_projection.weight", {V, d}, ParamInit::normal(float(1.0 / std::sqrt(double(V)))),
                             ParamKind::matrix);
    layers_.push_back(std::move(layer));
  }
}

MemorySystem::~MemorySystem() = default;

Tensor MemorySystem::forward(size_t i, const Tensor& h, StepContext& ctx) {
  Layer& L = *layers_[i];
  const MemoryConfig& m = cfg_.mem;
  const MemoryGeometry& g = L.geo;
  Pool& pool = *pools_[size_t(g.pool)];
  const bool plus = m.type == "memory_plus";
  const int64_t B = h.dim(0), S = h.dim(1), d = cfg_.d_model, T = B * S, K = m.kdim, H = m.head;
  auto norm = [&](const Tensor& x, const Parameter* w) {
    return cfg_.norm == "rmsnorm" ? ops::rms_norm(x, w->compute, cfg_.norm_eps)
                                  : ops::layer_norm(x, w->compute, Tensor(), cfg_.norm_eps);
  };
  Tensor x = ops::reshape(h, {T, d});
  // Normalised queries [T, H*2*qr*K] (one norm per K-vector) and keys [H*2*r*n, K].
  Tensor q = ops::linear(x, L.query_proj->compute, Tensor());
  q = ops::reshape(norm(ops::reshape(q, {T * H * 2 * g.q_ranks, K}), L.query_norm), {T, H * 2 * g.q_ranks * K});
  // The keys are a parameter but the norm's input gradient has the activation dtype: the reshape gives
  // the norm an activation-typed view whose gradient is converted into the f32 master gradient.
  Tensor keys = norm(ops::reshape(L.keys->compute, L.keys->shape), L.keys_norm);
  Tensor scores = ops::memory_scores(q, keys, {H, g.n, g.rank, g.q_ranks, K});
  ops::TopkArgs ta;
  ta.knn = m.knn;
  ta.grid = m.tucker() ? ops::GridScore::tucker : ops::GridScore::additive;
  ops::Retrieval ret = ops::memory_topk(scores, L.u ? L.u->master : Tensor(), L.v ? L.v->master : Tensor(),
                                        L.cores ? L.cores->compute : Tensor(), ta);
  if (ctx.training && m.key_balance_reg_coef > 0)
    ctx.aux_losses.push_back({L.name + ".key_balance",
                              ops::memory_key_balance(scores, L.u ? L.u->master : Tensor(), L.v ? L.v->master : Tensor(),
                                                      ret.rows, m.key_balance_reg_coef)});
  Tensor weights = ret.scores;  // UltraMem: the per-core scores weigh their value chunks directly
  if (plus) weights = ops::reshape(ops::softmax_lastdim(ops::reshape(ret.scores, {T * H, m.knn})), {T, H * m.knn, 1});
  if (!L.perm.defined() && m.tucker())
    L.perm = Tensor::from_ints(shuffle_index(g.virtual_num, int64_t(i)), {g.virtual_num}, DType::i32, h.device());
  Tensor pre_in = L.pre_values_proj ? ops::linear(x, L.pre_values_proj->compute, Tensor()) : Tensor();
  ops::LookupArgs la;
  la.value_num = g.value_num;
  la.offset = g.offset;
  la.virtual_num = g.virtual_num;
  la.groups = g.groups;
  la.gelu_gate = m.use_glu_act;
  Tensor bag = ops::memory_lookup(ret.indices, weights, pool.values->compute, L.perm, pre_in,
                                  pool.pre_values ? pool.pre_values->compute : Tensor(), la);
  if (ctx.training) {
    if (!pool.used.defined()) pool.used = Tensor::zeros({g.pool_rows}, DType::i32, h.device());
    ops::mark_memory_rows(ret.indices, L.perm, la, pool.used);
  }
  Tensor out = plus ? ops::linear(ops::silu_mul(ops::linear(x, L.swilu->compute, Tensor()), bag), L.values_proj->compute,
                                  Tensor())
                    : ops::linear(bag, L.values_proj->compute, Tensor());
  if (ctx.training && L.cores && m.tucker_rank_penalty > 0)
    ctx.aux_losses.push_back({L.name + ".tucker_aux", ops::tucker_aux_loss(L.cores->compute, m.tucker_rank_penalty,
                                                                          m.tucker_margin)});
  if (ctx.collect_stats) {
    // Mean total score of each head's best and knn-th pick (UltraMem: summed over cores).
    const std::vector<double> sc = ret.scores.to_doubles();
    const int64_t cores = ret.scores.dim(2);
    double top1 = 0, topk = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t hd = 0; hd < H; ++hd)
        for (int64_t c = 0; c < cores; ++c) {
          top1 += sc[size_t(((t * H + hd) * m.knn) * cores + c)];
          topk += sc[size_t(((t * H + hd) * m.knn + m.knn - 1) * cores + c)];
        }
    ctx.stats[L.name + ".top1_score"] = top1 / double(T * H);
    ctx.stats[L.name + ".topk_score"] = topk / double(T * H);
    if (!L.svd.empty()) {
      nlohmann::json sv = nlohmann::json::array();
      for (const auto& s : L.svd) sv.push_back(s.sigma);
      ctx.stats[L.name + ".singular_values"] = sv;
    }
    if (i + 1 == layers_.size()) pool_stats(ctx);
  }
  return ops::reshape(out, {B, S, d});
}

void MemorySystem::pool_stats(StepContext& ctx) {
  for (size_t p = 0; p < pools_.size(); ++p) {
    Pool& pool = *pools_[p];
    if (!pool.used.defined()) continue;
    const std::string key = "memory.pool." + std::to_string(p);
    ctx.stats[key + ".used_fraction"] = double(ops::count_nonzero(pool.used)) / double(pool.used.numel());
    ctx.stats[key + ".window_steps"] = pool.window_steps;
  }
}

void MemorySystem::begin_step() {
  for (auto& pool : pools_) {
    // The usage window restarts every mem_log_interval steps.
    if (pool->used.defined() && pool->window_steps >= cfg_.mem.log_interval) {
      pool->used.zero_();
      pool->window_steps = 0;
    }
    ++pool->window_steps;
  }
  for (auto& layer : layers_) {
    if (!layer->cores) continue;
    layer->svd = ops::tucker_core_svd(layer->cores->master);
    const int64_t H = layer->cores->shape[1], r = layer->cores->shape[2];
    std::vector<double> prev_u = layer->u->master.to_doubles(), prev_v = layer->v->master.to_doubles();
    std::vector<double> u(size_t(H * r)), v(size_t(H * r));
    for (int64_t hd = 0; hd < H; ++hd) {
      const ops::SmallSvd& s = layer->svd[size_t(hd)];
      // Singular vectors are defined up to a common sign: keep the one closer to last step's so the
      // pre-selection does not flip to the worst rows.
      double pos = 0, neg = 0;
      for (int64_t k = 0; k < r; ++k) {
        const double uk = s.U[size_t(k * r)], vk = s.V[size_t(k * r)];
        const double pu = prev_u[size_t(hd * r + k)], pv = prev_v[size_t(hd * r + k)];
        pos += std::abs(uk - pu) + std::abs(vk - pv);
        neg += std::abs(-uk - pu) + std::abs(-vk - pv);
      }
      const double sign = neg < pos ? -1.0 : 1.0;
      for (int64_t k = 0; k < r; ++k) {
        u[size_t(hd * r + k)] = sign * s.U[size_t(k * r)];
        v[size_t(hd * r + k)] = sign * s.V[size_t(k * r)];
      }
    }
    layer->u->master.copy_from(Tensor::from_doubles(u, layer->u->shape, DType::f32));
    layer->v->master.copy_from(Tensor::from_doubles(v, layer->v->shape, DType::f32));
  }
}

double MemorySystem::flops_per_token() const {
  const MemoryConfig& m = cfg_.mem;
  const double d = double(cfg_.d_model), K = double(m.kdim), H = double(m.head);
  double f = 0;
  for (const auto& layer : layers_) {
    const MemoryGeometry& g = layer->geo;
    double macs = d * H * 2 * double(g.q_ranks) * K  // query_proj
                  + H * 2 * double(g.rank * g.n) * K  // row/column scores
                  + double(g.groups * m.vdim) * d     // values_proj
                  + d * double(m.pre_vdim)            // pre_values_proj
                  + (layer->swilu ? d * double(m.vdim) : 0.0);
    f += 6.0 * macs;
  }
  return f;
}

}  // namespace um::nn
