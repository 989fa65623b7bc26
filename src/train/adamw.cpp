#include "train/adamw.h"

#include <cmath>

#include "core/error.h"

namespace primal::train {

AdamW::AdamW(const AdamConfig& cfg, TrainModel& m, Grads<float>& g) : cfg_(cfg) {
  PRIMAL_CHECK(cfg.lr >= 0 && cfg.scale_lr >= 0, "adamw: negative learning rate");
  PRIMAL_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1 && cfg.beta2 >= 0 && cfg.beta2 < 1, "adamw: betas outside [0, 1)");
  PRIMAL_CHECK(cfg.clip >= 0, "adamw: negative clip");
  auto add = [&](std::string name, ParamKind kind, std::vector<float>& p, std::vector<float>& grad,
                 const Matrix* mat, int64_t layer) {
    if (p.empty() || grad.empty()) return;
    PRIMAL_CHECK(p.size() == grad.size(), "adamw: {} has {} values and {} gradients", name, p.size(), grad.size());
    FloatParam fp;
    fp.name = std::move(name);
    fp.kind = kind;
    fp.p = p.data();
    fp.g = grad.data();
    fp.n = p.size();
    fp.matrix = mat;
    fp.layer = layer;
    fp.m.assign(fp.n, 0.0f);
    fp.v.assign(fp.n, 0.0f);
    params_.push_back(std::move(fp));
  };
  auto add_matrix = [&](Matrix& mt, MatGrad<float>& mg, ParamKind dense_kind, int64_t layer) {
    if (mt.is_lut()) add(mt.name + ".scale", ParamKind::Scale, mt.lut->scale, mg.dscale, &mt, layer);
    else add(mt.name, dense_kind, mt.dense, mg.dW, &mt, layer);
  };
  add_matrix(m.tok_embd, g.tok_embd, ParamKind::Embed, -1);
  for (size_t p = 0; p < m.layers.size(); ++p) {
    TrainLayer& l = m.layers[p];
    LayerGrad<float>& lg = g.layers[p];
    const std::string b = "blk." + std::to_string(p) + ".";
    const int64_t li = int64_t(p);
    add(b + "attn_norm.weight", ParamKind::Norm, l.attn_norm, lg.attn_norm, nullptr, li);
    add(b + "attn_q.bias", ParamKind::Bias, l.bq, lg.bq, nullptr, li);
    add(b + "attn_k.bias", ParamKind::Bias, l.bk, lg.bk, nullptr, li);
    add(b + "attn_v.bias", ParamKind::Bias, l.bv, lg.bv, nullptr, li);
    add(b + "ffn_norm.weight", ParamKind::Norm, l.ffn_norm, lg.ffn_norm, nullptr, li);
    const auto mats = l.matrices();
    const auto gm = lg.matrices();
    for (size_t k = 0; k < mats.size(); ++k) add_matrix(*mats[k], *gm[k], ParamKind::Dense, li);
  }
  add("output_norm.weight", ParamKind::Norm, m.output_norm, g.output_norm, nullptr, -1);
  if (!m.hp.tied_embeddings) add_matrix(m.output, g.output, ParamKind::Head, -1);
}

double AdamW::grad_norm(const std::function<bool(const FloatParam&)>& trainable) const {
  double ss = 0;
  for (const FloatParam& fp : params_) {
    if (!trainable(fp)) continue;
    double s = 0;
    for (size_t i = 0; i < fp.n; ++i) s += double(fp.g[i]) * double(fp.g[i]);
    ss += s;
  }
  return std::sqrt(ss);
}

double AdamW::step(double sched, const std::function<bool(const FloatParam&)>& trainable) {
  const double norm = grad_norm(trainable);
  const double c = (cfg_.clip > 0 && norm > cfg_.clip) ? cfg_.clip / norm : 1.0;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2;
  for (FloatParam& fp : params_) {
    if (!trainable(fp)) continue;
    ++fp.t;
    const double bc1 = 1 - std::pow(b1, double(fp.t)), bc2 = 1 - std::pow(b2, double(fp.t));
    const bool scale = fp.kind == ParamKind::Scale;
    const double lr = (scale ? cfg_.scale_lr : cfg_.lr) * sched;
    const double wd = scale ? cfg_.scale_decay : (fp.kind == ParamKind::Embed || fp.kind == ParamKind::Head || fp.kind == ParamKind::Dense)
                                                     ? cfg_.weight_decay
                                                     : 0.0;
#pragma omp parallel for schedule(static) if (fp.n > 65536)
    for (size_t i = 0; i < fp.n; ++i) {
      const double g = double(fp.g[i]) * c;
      const double m = b1 * double(fp.m[i]) + (1 - b1) * g;
      const double v = b2 * double(fp.v[i]) + (1 - b2) * g * g;
      fp.m[i] = float(m);
      fp.v[i] = float(v);
      const double u = (m / bc1) / (std::sqrt(v / bc2) + cfg_.eps);
      const double p = double(fp.p[i]);
      fp.p[i] = float(scale ? p - lr * std::fabs(p) * u - lr * wd * p : p - lr * (u + wd * p));
    }
  }
  return norm;
}

}  // namespace primal::train
