#include "train/votes.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"
#include "train/rng.h"

namespace primal::train {
namespace {

// Purposes of the random streams.
constexpr uint64_t kRound = 1, kNoise = 2, kFlip = 3;

inline int32_t sat(int64_t v, int64_t vmax) { return int32_t(std::clamp<int64_t>(v, -vmax, vmax)); }

// The fp64 sums of f(g[i]) over a row (one per member of the returned pair, f returning both
// terms), in the order a GPU warp forms them (ops/cuda/votes.cu): lane j sums i = j, j + 32,
// j + 64, ... in order, then the 32 partial sums meet in a butterfly, partial j taking
// partial j + partial (j xor d) for d = 16, 8, 4, 2, 1. Written down once so the CPU and the GPU
// trainer cast identical votes, and the GPU reads a row with 32 lanes instead of one thread.
template <class F>
std::pair<double, double> warp_order_sums(const float* g, int64_t I, F f) {
  double a[32] = {}, b[32] = {};
  for (int64_t i = 0; i < I; ++i) {
    const auto [x, y] = f(g[i]);
    a[i & 31] += x;
    b[i & 31] += y;
  }
  for (int d = 16; d > 0; d /= 2) {
    double na[32], nb[32];
    for (int j = 0; j < 32; ++j) na[j] = a[j] + a[j ^ d], nb[j] = b[j] + b[j ^ d];
    std::copy(na, na + 32, a);
    std::copy(nb, nb + 32, b);
  }
  return {a[0], b[0]};
}

}  // namespace

const char* rule_name(Rule r) { return r == Rule::Seed ? "seed" : "momentum"; }

void VoteConfig::validate() const {
  PRIMAL_CHECK(vote_bits == 8 || vote_bits == 16, "votes: --vote-bits must be 8 or 16 (got {})", vote_bits);
  PRIMAL_CHECK(sensitivity >= 0 && std::isfinite(sensitivity), "votes: invalid sensitivity {}", sensitivity);
  PRIMAL_CHECK(consensus >= 1 && consensus <= vmax(), "votes: consensus {} outside 1..{}", consensus, vmax());
  PRIMAL_CHECK(flip_lr >= 0 && std::isfinite(flip_lr), "votes: invalid flip probability scale {}", flip_lr);
  PRIMAL_CHECK(noise >= 0 && noise <= vmax(), "votes: noise {} outside 0..{}", noise, vmax());
  PRIMAL_CHECK(cooldown >= 0 && cooldown <= 255, "votes: cooldown {} outside 0..255", cooldown);
  PRIMAL_CHECK(flip_cap >= 0 && flip_cap <= 1, "votes: flip cap {} outside [0, 1]", flip_cap);
  PRIMAL_CHECK(lr >= 0 && std::isfinite(lr), "votes: invalid lut learning rate {}", lr);
  PRIMAL_CHECK(beta2 > 0 && beta2 < 1, "votes: beta2 {} outside (0, 1)", beta2);
  PRIMAL_CHECK(eps > 0, "votes: eps must be positive");
}

VoteEngine::VoteEngine(const VoteConfig& cfg, const std::vector<Matrix*>& mats) : cfg_(cfg) {
  cfg_.validate();
  gov_.sensitivity = cfg_.sensitivity;
  for (Matrix* m : mats) {
    PRIMAL_CHECK(m && m->is_lut(), "votes: {} is not a LUT matrix", m ? m->name : "(null)");
    LutVotes s;
    s.m = m;
    s.id = int64_t(st_.size());
    const size_t n = size_t(m->O * m->I);
    if (cfg_.vote_bits == 8) s.v8.assign(n, 0);
    else s.v16.assign(n, 0);
    if (cfg_.cooldown > 0) s.cool.assign(n, 0);
    if (cfg_.rule == Rule::Momentum && cfg_.second_moment) {
      s.row_sq.assign(size_t(m->O), 0.0f);
      s.col_sq.assign(size_t(m->I), 0.0f);
      const int64_t R = lut_tile_rows(m->I);
      s.col_part.assign(size_t((m->O + R - 1) / R * m->I), 0.0f);
    }
    index_[m] = st_.size();
    st_.push_back(std::move(s));
  }
  refresh();
}

LutVotes* VoteEngine::find(const Matrix* m) {
  const auto it = index_.find(m);
  return it == index_.end() ? nullptr : &st_[it->second];
}

void VoteEngine::refresh() {
  for (LutVotes& s : st_) update_col_norm(s);
}

void VoteEngine::update_col_norm(LutVotes& s) {
  if (s.col_sq.empty()) return;
  const int64_t I = s.m->I;
  s.col_norm.assign(size_t(I), 1.0f);
  if (s.events == 0) return;
  double mean = 0;
  for (float c : s.col_sq) mean += double(c);
  mean /= double(I);
  if (!(mean > 0)) return;
  // The bias corrections of chat and of its mean cancel in the ratio.
  for (int64_t i = 0; i < I; ++i) s.col_norm[size_t(i)] = float(double(s.col_sq[size_t(i)]) / mean);
}

void VoteEngine::begin_step(int64_t step, double sched) {
  step_ = step;
  sched_ = sched;
  for (LutVotes& s : st_) s.events_this_step = 0;
}

void VoteEngine::tile(const Matrix& m, int64_t o0, int64_t rows, const float* dW) {
  LutVotes* s = find(&m);
  PRIMAL_CHECK(s, "votes: no vote buffer for {}", m.name);
  float* part = nullptr;
  if (cfg_.rule == Rule::Momentum && cfg_.second_moment) {
    // The column sums are kept per tile of the linear layer (matrix.h), summed in tile order.
    const int64_t R = lut_tile_rows(m.I);
    PRIMAL_CHECK(o0 % R == 0 && (rows == R || o0 + rows == m.O), "votes: {}: rows {}..{} are not a tile of {} rows",
                 m.name, o0, o0 + rows, R);
    part = s->col_part.data() + (o0 / R) * m.I;
    std::fill(part, part + m.I, 0.0f);
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (cfg_.rule == Rule::Seed) cast_seed(*s, o0 + r, dW + r * m.I);
    else cast_momentum(*s, o0 + r, dW + r * m.I, part);
  }
}

void VoteEngine::cast_seed(LutVotes& s, int64_t o, const float* g) {
  const LutWeight& L = *s.m->lut;
  const int64_t I = L.I;
  const auto [sum, sum2] = warp_order_sums(g, I, [](float x) {
    const double a = std::fabs(double(x));
    return std::pair<double, double>(a, a * a);
  });
  const double mean = sum / double(I), var = std::max(0.0, sum2 / double(I) - mean * mean);
  const double thr = mean + gov_.sensitivity * std::sqrt(var);
  const int64_t vmax = cfg_.vmax();
  for (int64_t i = 0; i < I; ++i) {
    if (!(std::fabs(double(g[i])) > thr)) continue;
    const float sc = L.scale[size_t(o * L.groups() + i / L.G)];
    if (sc == 0.0f) continue;
    const int dir = ((g[i] > 0) == (sc > 0)) ? -1 : 1;  // -sign(g s)
    const int64_t k = o * I + i;
    s.set_vote(k, sat(int64_t(s.vote(k)) + dir, vmax));
  }
}

void VoteEngine::cast_momentum(LutVotes& s, int64_t o, const float* g, float* part) {
  const LutWeight& L = *s.m->lut;
  const int64_t I = L.I, K = L.K(), U = cfg_.units(), vmax = cfg_.vmax();
  const double lr = cfg_.lr * sched_ * gov_.lr_mult;
  const bool sm = cfg_.second_moment;
  double rhat = 1;
  if (sm) {
    const double g2 =
        warp_order_sums(g, I, [](float x) { return std::pair<double, double>(double(x) * double(x), 0.0); }).first;
    const double b2 = cfg_.beta2;
    const float r = float(b2 * double(s.row_sq[size_t(o)]) + (1 - b2) * g2 / double(I));
    s.row_sq[size_t(o)] = r;
    rhat = double(r) / (1 - std::pow(b2, double(s.events + 1)));
    const float inv_o = 1.0f / float(s.m->O);
    for (int64_t i = 0; i < I; ++i) part[i] += g[i] * g[i] * inv_o;
  }
  Rng rng(cfg_.seed, uint64_t(step_), uint64_t(s.id), kRound << 32 | uint64_t(s.events_this_step), uint64_t(o));
  const float* grid = L.grid.data();
  for (int64_t i = 0; i < I; ++i) {
    const float sc = L.scale[size_t(o * L.groups() + i / L.G)];
    const double denom = sm ? std::sqrt(rhat * double(s.col_norm[size_t(i)])) + cfg_.eps : 1.0;
    const double dw = -lr * double(g[i]) / denom;  // desired change of W, weight units
    const float u01 = rng.uniform();                // drawn for every weight: streams stay aligned
    if (sc == 0.0f || dw == 0.0) continue;
    const double di = dw / double(sc);              // change in index-value units (grid units)
    const int64_t idx = L.get(o, i);
    double gap;
    if (di > 0) gap = idx < K - 1 ? grid[idx + 1] - grid[idx] : grid[K - 1] - grid[K - 2];
    else gap = idx > 0 ? grid[idx] - grid[idx - 1] : grid[1] - grid[0];
    double x = di / gap * double(U);
    x = std::clamp(x, -double(2 * vmax), double(2 * vmax));
    const double fl = std::floor(x);
    const int64_t add = int64_t(fl) + (double(u01) < x - fl ? 1 : 0);
    const int64_t k = o * I + i;
    s.set_vote(k, sat(int64_t(s.vote(k)) + add, vmax));
  }
}

void VoteEngine::done(const Matrix& m) {
  LutVotes* s = find(&m);
  PRIMAL_CHECK(s, "votes: no vote buffer for {}", m.name);
  if (cfg_.rule == Rule::Momentum && cfg_.second_moment && !s->col_part.empty()) {
    const int64_t I = m.I, n_tiles = int64_t(s->col_part.size()) / I;
    const double b2 = cfg_.beta2;
    for (int64_t i = 0; i < I; ++i) {
      double c = 0;
      for (int64_t k = 0; k < n_tiles; ++k) c += double(s->col_part[size_t(k * I + i)]);
      s->col_sq[size_t(i)] = float(b2 * double(s->col_sq[size_t(i)]) + (1 - b2) * c);
    }
    ++s->events;
    update_col_norm(*s);
  }
  ++s->events_this_step;
}

StepStats VoteEngine::apply(const std::function<bool(const Matrix&)>& trainable) {
  StepStats st;
  for (LutVotes& s : st_) {
    if (!trainable(*s.m)) continue;
    st.weights += s.m->O * s.m->I;
    st.flips += cfg_.rule == Rule::Seed ? apply_seed(s) : apply_momentum(s);
  }
  if (cfg_.flip_cap > 0 && st.rate() > cfg_.flip_cap) {
    gov_.lr_mult *= 0.8;
    gov_.sensitivity += 0.02;
    ++gov_.reactions;
  }
  return st;
}

int64_t VoteEngine::apply_seed(LutVotes& s) {
  LutWeight& L = *s.m->lut;
  const int64_t O = L.O, I = L.I, K = L.K(), vmax = cfg_.vmax();
  // Pass 1: jitter, and the row sums of |v| and v^2 for the tensor's z-scores.
  std::vector<double> rs(static_cast<size_t>(O)), rs2(static_cast<size_t>(O));
#pragma omp parallel for schedule(static) if (O * I >= (1 << 18))
  for (int64_t o = 0; o < O; ++o) {
    Rng rng(cfg_.seed, uint64_t(step_), uint64_t(s.id), kNoise, uint64_t(o));
    double a = 0, a2 = 0;
    for (int64_t i = 0; i < I; ++i) {
      const int64_t k = o * I + i;
      int64_t v = s.vote(k);
      if (cfg_.noise > 0) {
        v = sat(v + rng.range(-cfg_.noise, cfg_.noise), vmax);
        s.set_vote(k, int32_t(v));
      }
      a += double(std::abs(v));
      a2 += double(v) * double(v);
    }
    rs[size_t(o)] = a;
    rs2[size_t(o)] = a2;
  }
  double sum = 0, sum2 = 0;
  for (int64_t o = 0; o < O; ++o) sum += rs[size_t(o)], sum2 += rs2[size_t(o)];
  const double n = double(O * I), mean = sum / n, sd = std::sqrt(std::max(0.0, sum2 / n - mean * mean));
  const double pscale = cfg_.flip_lr * sched_ * gov_.lr_mult;
  // Pass 2: decisions.
  int64_t flips = 0;
#pragma omp parallel for schedule(static) reduction(+ : flips) if (O * I >= (1 << 18))
  for (int64_t o = 0; o < O; ++o) {
    Rng rng(cfg_.seed, uint64_t(step_), uint64_t(s.id), kFlip, uint64_t(o));
    for (int64_t i = 0; i < I; ++i) {
      const int64_t k = o * I + i;
      if (!s.cool.empty() && s.cool[size_t(k)] > 0) {
        --s.cool[size_t(k)];
        continue;
      }
      const int32_t v = s.vote(k);
      if (std::abs(v) < cfg_.consensus) continue;
      const double z = sd > 0 ? (double(std::abs(v)) - mean) / sd : 0.0;
      const double p = std::min(1.0, pscale / (1.0 + std::exp(-z)));
      if (!(double(rng.uniform()) < p)) continue;
      const int64_t cur = L.get(o, i), next = cur + (v > 0 ? 1 : -1);
      s.set_vote(k, 0);
      if (next < 0 || next >= K) continue;  // a vote against the end of the grid is dropped
      L.set(o, i, uint32_t(next));
      if (!s.cool.empty()) s.cool[size_t(k)] = uint8_t(cfg_.cooldown);
      ++flips;
    }
  }
  return flips;
}

int64_t VoteEngine::apply_momentum(LutVotes& s) {
  LutWeight& L = *s.m->lut;
  const int64_t O = L.O, I = L.I, K = L.K(), U = cfg_.units(), vmax = cfg_.vmax();
  int64_t flips = 0;
#pragma omp parallel for schedule(static) reduction(+ : flips) if (O * I >= (1 << 18))
  for (int64_t o = 0; o < O; ++o) {
    Rng rng(cfg_.seed, uint64_t(step_), uint64_t(s.id), kNoise, uint64_t(o));
    for (int64_t i = 0; i < I; ++i) {
      const int64_t k = o * I + i;
      int64_t v = s.vote(k);
      if (cfg_.noise > 0) v = sat(v + rng.range(-cfg_.noise, cfg_.noise), vmax);
      if (!s.cool.empty() && s.cool[size_t(k)] > 0) {
        --s.cool[size_t(k)];
        s.set_vote(k, int32_t(v));
        continue;
      }
      const int64_t q = v / U;  // truncates toward zero
      if (q != 0) {
        const int64_t cur = L.get(o, i), next = std::clamp<int64_t>(cur + q, 0, K - 1), moved = next - cur;
        v -= moved * U;
        if (moved != q) v = std::clamp<int64_t>(v, -(U - 1), U - 1);  // held at the end of the grid
        if (moved != 0) {
          L.set(o, i, uint32_t(next));
          if (!s.cool.empty()) s.cool[size_t(k)] = uint8_t(cfg_.cooldown);
          ++flips;
        }
      }
      s.set_vote(k, int32_t(v));
    }
  }
  return flips;
}

}  // namespace primal::train
