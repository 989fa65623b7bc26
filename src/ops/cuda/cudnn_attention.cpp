// cuDNN's fused attention through its backend API (cudnn_attention.h), the library loaded at run
// time. The operation graphs follow the pattern cuDNN's SDPA engines recognise (the one its
// frontend builds for causal attention with stats): forward S = Q K^T, S * scale, causal mask
// (row index >= column index, else -inf), softmax (max, exp, sum; stats = max + log sum), P V;
// backward D = rowsum(dO * O), S as above less the stats, P = exp, dV = P^T dO (summed over a
// GQA group), dP = dO V^T, dS = P (dP - D) * scale, dK = dS^T Q (summed), dQ = dS K (fp32, then
// bf16).
#include "ops/cuda/cudnn_attention.h"

#include <cudnn.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace primal::cuda {
namespace {

// The backend entry points, resolved from libcudnn.so.9.
struct Api {
  cudnnStatus_t (*create)(cudnnHandle_t*) = nullptr;
  cudnnStatus_t (*set_stream)(cudnnHandle_t, cudaStream_t) = nullptr;
  cudnnStatus_t (*create_desc)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t*) = nullptr;
  cudnnStatus_t (*destroy_desc)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*set_attr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                            int64_t, const void*) = nullptr;
  cudnnStatus_t (*get_attr)(cudnnBackendDescriptor_t const, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                            int64_t, int64_t*, void*) = nullptr;
  cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t) = nullptr;
  void (*last_error)(char*, size_t) = nullptr;
  size_t (*version)() = nullptr;
  cudnnHandle_t handle = nullptr;
  bool ok = false;
  bool verbose = false;
  bool forced = false;  // PRIMAL_CUDNN=on
};

template <class F>
bool resolve(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* off = std::getenv("PRIMAL_CUDNN");
    if (off && *off == '0') return;
    a.verbose = off && std::string(off) == "verbose";
    a.forced = off && std::string(off) == "on";
    const char* path = std::getenv("PRIMAL_CUDNN_LIB");
    void* lib = dlopen(path && *path ? path : "libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      if (a.verbose) std::fprintf(stderr, "cudnn attention: %s\n", dlerror());
      return;
    }
    const bool all = resolve(lib, "cudnnCreate", a.create) && resolve(lib, "cudnnSetStream", a.set_stream) &&
                     resolve(lib, "cudnnBackendCreateDescriptor", a.create_desc) &&
                     resolve(lib, "cudnnBackendDestroyDescriptor", a.destroy_desc) &&
                     resolve(lib, "cudnnBackendSetAttribute", a.set_attr) &&
                     resolve(lib, "cudnnBackendGetAttribute", a.get_attr) &&
                     resolve(lib, "cudnnBackendFinalize", a.finalize) &&
                     resolve(lib, "cudnnBackendExecute", a.execute) && resolve(lib, "cudnnGetVersion", a.version);
    resolve(lib, "cudnnGetLastErrorString", a.last_error);  // (optional: diagnostics)
    // The backend's SDPA graphs as built here need cuDNN 9 (the -inf mask value, no dQ memset).
    if (!all || a.version() < 90600 || a.create(&a.handle) != CUDNN_STATUS_SUCCESS) {
      if (a.verbose) std::fprintf(stderr, "cudnn attention: libcudnn.so.9 unusable (version %zu)\n", all ? a.version() : 0);
      return;
    }
    a.ok = true;
  });
  return a;
}

// A failed backend call: false up the builder (logged with PRIMAL_CUDNN=verbose).
bool check(cudnnStatus_t st, const char* what) {
  if (st == CUDNN_STATUS_SUCCESS) return true;
  Api& a = api();
  if (a.verbose) {
    char msg[512] = "";
    if (a.last_error) a.last_error(msg, sizeof msg);
    std::fprintf(stderr, "cudnn attention: %s -> status %d %s\n", what, int(st), msg);
  }
  return false;
}

// A backend descriptor owned by a shared pointer (graphs keep their tensors and operations alive).
using Desc = std::shared_ptr<std::remove_pointer_t<cudnnBackendDescriptor_t>>;
Desc make_desc(cudnnBackendDescriptorType_t type) {
  cudnnBackendDescriptor_t d = nullptr;
  if (!check(api().create_desc(type, &d), "create descriptor")) return nullptr;
  return Desc(d, [](cudnnBackendDescriptor_t p) { api().destroy_desc(p); });
}

struct Tensor {
  int64_t uid = 0;
  Desc desc;
  std::vector<int64_t> dims, strides;
};

// One operation graph under construction; each step returns false on the first backend error.
class Builder {
 public:
  bool good = true;

  Tensor tensor(std::vector<int64_t> dims, std::vector<int64_t> strides, cudnnDataType_t dt, bool virt,
                bool by_value = false) {
    Tensor t;
    t.uid = next_uid_++;
    t.dims = std::move(dims), t.strides = std::move(strides);
    if (!good) return t;
    t.desc = make_desc(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16, n = int64_t(t.dims.size());
    good = t.desc && set(t.desc, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &t.uid) &&
           set(t.desc, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt) &&
           set(t.desc, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align) &&
           set(t.desc, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, n, t.dims.data()) &&
           set(t.desc, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, n, t.strides.data()) &&
           set(t.desc, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt) &&
           (!by_value || set(t.desc, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value)) &&
           check(api().finalize(t.desc.get()), "tensor");
    keep(t.desc);
    return t;
  }
  // A virtual tensor shaped like x (its dims and strides) of type dt.
  Tensor like(const Tensor& x, cudnnDataType_t dt = CUDNN_DATA_FLOAT) { return tensor(x.dims, x.strides, dt, true); }
  // A scalar passed by value (its host value given at execution).
  Tensor scalar() { return tensor({1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, false, true); }

  void pointwise(cudnnPointwiseMode_t mode, const Tensor& x, const Tensor* b, const Tensor* t, const Tensor& y,
                 cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    if (!good) return;
    Desc pw = make_desc(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    good = pw && set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode) &&
           set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec) &&
           (axis < 0 || set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis)) &&
           check(api().finalize(pw.get()), "pointwise descriptor");
    Desc op = good ? make_desc(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR) : nullptr;
    good = good && op && set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw) &&
           set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x.desc) &&
           (!b || set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b->desc)) &&
           (!t || set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t->desc)) &&
           set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y.desc) && check(api().finalize(op.get()), "pointwise");
    keep(pw), keep_op(op);
  }
  void reduction(cudnnReduceTensorOp_t mode, const Tensor& x, const Tensor& y) {
    if (!good) return;
    Desc rd = make_desc(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    const cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    good = rd && set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode) &&
           set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec) &&
           check(api().finalize(rd.get()), "reduction descriptor");
    Desc op = good ? make_desc(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR) : nullptr;
    good = good && op && set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x.desc) &&
           set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y.desc) &&
           set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd) && check(api().finalize(op.get()), "reduction");
    keep(rd), keep_op(op);
  }
  void matmul(const Tensor& a, const Tensor& b, const Tensor& c) {
    if (!good) return;
    Desc mm = make_desc(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    good = mm && set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec) &&
           check(api().finalize(mm.get()), "matmul descriptor");
    Desc op = good ? make_desc(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR) : nullptr;
    good = good && op && set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a.desc) &&
           set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b.desc) &&
           set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c.desc) &&
           set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm) && check(api().finalize(op.get()), "matmul");
    keep(mm), keep_op(op);
  }
  void reshape(const Tensor& x, const Tensor& y) {
    if (!good) return;
    Desc op = make_desc(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    good = op && set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x.desc) &&
           set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y.desc) && check(api().finalize(op.get()), "reshape");
    keep_op(op);
  }

  // The operation graph, the heuristic's engine configurations in order, the first that finalizes
  // into a plan: its workspace bytes, or -1.
  int64_t plan(Desc& out) {
    if (!good) return -1;
    Api& a = api();
    Desc graph = make_desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    std::vector<cudnnBackendDescriptor_t> raw;
    for (const Desc& d : ops_) raw.push_back(d.get());
    if (!graph || !set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(raw.size()),
                       raw.data()) ||
        !set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &a.handle) ||
        !check(a.finalize(graph.get()), "operation graph"))
      return -1;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      Desc heur = make_desc(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
      cudnnBackendDescriptor_t g = graph.get();
      if (!heur || !set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g) ||
          !set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode) ||
          !check(a.finalize(heur.get()), "heuristics"))
        continue;
      int64_t count = 0;
      if (!check(a.get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                            nullptr),
                 "heuristics count") ||
          count <= 0)
        continue;
      std::vector<Desc> cfgs;
      std::vector<cudnnBackendDescriptor_t> raw_cfgs;
      for (int64_t i = 0; i < count; ++i) {
        cfgs.push_back(make_desc(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
        if (!cfgs.back()) return -1;
        raw_cfgs.push_back(cfgs.back().get());
      }
      int64_t got = 0;
      if (!check(a.get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                            raw_cfgs.data()),
                 "heuristics results"))
        continue;
      for (int64_t i = 0; i < got; ++i) {
        Desc p = make_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        cudnnBackendDescriptor_t c = raw_cfgs[size_t(i)];
        if (!p || !set(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &a.handle) ||
            !set(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c) ||
            !check(a.finalize(p.get()), "execution plan"))
          continue;
        int64_t ws = 0, n = 0;
        if (!check(a.get_attr(p.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws),
                   "workspace size"))
          continue;
        if (a.verbose) std::fprintf(stderr, "cudnn attention: plan %lld of %lld (mode %d), workspace %lld bytes\n",
                                    (long long)i, (long long)got, int(mode), (long long)ws);
        out = p;
        kept_.push_back(graph);
        return ws;
      }
    }
    return -1;
  }

 private:
  bool set(const Desc& d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n,
           const void* v) {
    return check(api().set_attr(d.get(), name, type, n, v), "set attribute");
  }
  bool set_desc(const Desc& d, cudnnBackendAttributeName_t name, const Desc& v) {
    cudnnBackendDescriptor_t raw = v.get();
    return set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
  }
  void keep(const Desc& d) { if (d) kept_.push_back(d); }
  void keep_op(const Desc& d) { if (d && good) ops_.push_back(d); }

  int64_t next_uid_ = 1;

 public:
  std::vector<Desc> kept_, ops_;  // every descriptor of the graph (kept with its plan)
};

// A built graph: its plan, workspace, the uids of its device tensors and by-value scalars.
struct Plan {
  Desc plan;
  std::vector<Desc> keep;       // the graph's descriptors
  int64_t ws = -1;              // the plan's own workspace bytes (-1: no plan)
  int64_t extra = 0;            // bytes of the graph's own fp32 tensors ahead of it (backward)
  std::vector<int64_t> own_offsets;  // their offsets in the workspace (uids after the caller's)
  std::vector<int64_t> uids;    // device tensors, in the order execute() passes them
  std::vector<int64_t> scalar_uids;
  std::vector<float> scalars;
};

constexpr int64_t kAlign = 256;
int64_t round_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// The (B, heads, T, D) view of a token-major matrix (B, T, heads, D) with rows ld apart: strides
// (T ld, D, ld, 1); transposed, the (B, heads, D, T) view (K^T, V^T).
Tensor bshd(Builder& g, int64_t B, int64_t heads, int64_t T, int64_t D, int64_t ld, bool transposed = false,
            cudnnDataType_t dt = CUDNN_DATA_BFLOAT16, bool virt = false) {
  if (transposed) return g.tensor({B, heads, D, T}, {T * ld, D, 1, ld}, dt, virt);
  return g.tensor({B, heads, T, D}, {T * ld, D, ld, 1}, dt, virt);
}
// A per-row value (B, H, T, 1) fp32: the stats, their parts, D.
Tensor per_row(Builder& g, int64_t B, int64_t H, int64_t T, bool virt) {
  return g.tensor({B, H, T, 1}, {H * T, T, 1, 1}, CUDNN_DATA_FLOAT, virt);
}
// The plan of a built graph, which keeps the graph's descriptors.
void finish(Builder& g, Plan& p) {
  p.ws = g.plan(p.plan);
  p.keep = g.kept_, p.keep.insert(p.keep.end(), g.ops_.begin(), g.ops_.end());
}

// The causal mask of scores s (row = query, column = key): keeps row >= column, else -inf.
Tensor causal(Builder& g, const Tensor& s, const Tensor& neg_inf) {
  const Tensor row = g.like(s, CUDNN_DATA_INT32), col = g.like(s, CUDNN_DATA_INT32);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, CUDNN_DATA_FLOAT, 2);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, CUDNN_DATA_FLOAT, 3);
  const Tensor keep = g.like(s, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row, &col, nullptr, keep, CUDNN_DATA_BOOLEAN);
  const Tensor y = g.like(s);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, &neg_inf, &keep, y);
  return y;
}

// S = Q K^T (B, H, T, T) times the scale (the scores before the mask).
Tensor scaled_scores(Builder& g, const Tensor& q, const Tensor& kt, const Tensor& scale, const std::vector<int64_t>& sd,
                     const std::vector<int64_t>& ss) {
  const Tensor s = g.tensor(sd, ss, CUDNN_DATA_FLOAT, true);
  g.matmul(q, kt, s);
  const Tensor s1 = g.like(s);
  g.pointwise(CUDNN_POINTWISE_MUL, s, &scale, nullptr, s1);
  return s1;
}

Plan build_forward(const CudnnAttnShape& sh) {
  const int64_t B = sh.B, T = sh.T, H = sh.NH, KH = sh.KVH, D = sh.HS;
  Builder g;
  Plan p;
  const Tensor q = bshd(g, B, H, T, D, sh.ldq), kt = bshd(g, B, KH, T, D, sh.ldk, true);
  const Tensor v = bshd(g, B, KH, T, D, sh.ldk), o = bshd(g, B, H, T, D, H * D), stats = per_row(g, B, H, T, false);
  const Tensor scale = g.scalar(), neg_inf = g.scalar();
  const std::vector<int64_t> sd = {B, H, T, T}, ss = {H * T * T, T * T, T, 1};
  const Tensor s = scaled_scores(g, q, kt, scale, sd, ss);
  const Tensor s2 = causal(g, s, neg_inf);
  const Tensor mx = per_row(g, B, H, T, true);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, s2, mx);
  const Tensor s3 = g.like(s);
  g.pointwise(CUDNN_POINTWISE_SUB, s2, &mx, nullptr, s3);
  const Tensor e = g.like(s);
  g.pointwise(CUDNN_POINTWISE_EXP, s3, nullptr, nullptr, e);
  const Tensor sum = per_row(g, B, H, T, true);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
  const Tensor lg = per_row(g, B, H, T, true);
  g.pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, nullptr, lg);
  g.pointwise(CUDNN_POINTWISE_ADD, mx, &lg, nullptr, stats);
  const Tensor pr = g.like(s, CUDNN_DATA_BFLOAT16);
  g.pointwise(CUDNN_POINTWISE_DIV, e, &sum, nullptr, pr);
  g.matmul(pr, v, o);
  finish(g, p);
  p.uids = {q.uid, kt.uid, v.uid, o.uid, stats.uid};
  p.scalar_uids = {scale.uid, neg_inf.uid};
  p.scalars = {float(1.0 / std::sqrt(double(D))), -std::numeric_limits<float>::infinity()};
  return p;
}

Plan build_backward(const CudnnAttnShape& sh) {
  const int64_t B = sh.B, T = sh.T, H = sh.NH, KH = sh.KVH, D = sh.HS;
  Builder g;
  Plan p;
  const Tensor q = bshd(g, B, H, T, D, sh.ldq), kt = bshd(g, B, KH, T, D, sh.ldk, true);
  const Tensor vt = bshd(g, B, KH, T, D, sh.ldk, true), o = bshd(g, B, H, T, D, H * D);
  const Tensor dout = bshd(g, B, H, T, D, H * D), stats = per_row(g, B, H, T, false);
  const Tensor dq = bshd(g, B, H, T, D, sh.ldd), dk = bshd(g, B, KH, T, D, sh.ldd), dv = bshd(g, B, KH, T, D, sh.ldd);
  const Tensor scale = g.scalar(), neg_inf = g.scalar(), one = g.scalar();
  const std::vector<int64_t> sd = {B, H, T, T}, ss = {H * T * T, T * T, T, 1};
  const std::vector<int64_t> fd = {B, H, T, D}, fs = {H * T * D, T * D, D, 1};  // per query head
  // D = rowsum(dO * O) (softmax_sum: a tensor of the graph's own, in the workspace).
  const Tensor doo = g.tensor(fd, {H * T * D, T * D, H * D, 1}, CUDNN_DATA_FLOAT, true);
  g.pointwise(CUDNN_POINTWISE_MUL, dout, &o, nullptr, doo);
  const Tensor dsum0 = per_row(g, B, H, T, true);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, doo, dsum0);
  const Tensor dsum = per_row(g, B, H, T, false);
  g.pointwise(CUDNN_POINTWISE_MUL, dsum0, &one, nullptr, dsum);
  // P = exp(S scale - stats), masked.
  const Tensor s = scaled_scores(g, q, kt, scale, sd, ss);
  const Tensor s2 = g.like(s);
  g.pointwise(CUDNN_POINTWISE_SUB, s, &stats, nullptr, s2);
  const Tensor s3 = causal(g, s2, neg_inf);
  const Tensor pe = g.like(s);
  g.pointwise(CUDNN_POINTWISE_EXP, s3, nullptr, nullptr, pe);
  // dV = P^T dO, summed over each KV head's group.
  const Tensor pt = g.tensor({B, H, T, T}, {H * T * T, T * T, 1, T}, CUDNN_DATA_BFLOAT16, true);
  g.reshape(pe, pt);
  const bool gqa = H != KH;
  if (gqa) {
    const Tensor dvf = g.tensor(fd, fs, CUDNN_DATA_BFLOAT16, true);
    g.matmul(pt, dout, dvf);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dvf, dv);
  } else {
    g.matmul(pt, dout, dv);
  }
  // dS = P (dO V^T - D) scale.
  const Tensor dp = g.tensor(sd, ss, CUDNN_DATA_FLOAT, true);
  g.matmul(dout, vt, dp);
  const Tensor dp1 = g.like(s);
  g.pointwise(CUDNN_POINTWISE_SUB, dp, &dsum, nullptr, dp1);
  const Tensor ds0 = g.like(s);
  g.pointwise(CUDNN_POINTWISE_MUL, dp1, &pe, nullptr, ds0);
  const Tensor ds = g.like(s);
  g.pointwise(CUDNN_POINTWISE_MUL, ds0, &scale, nullptr, ds);
  // dK = dS^T Q, summed over the group.
  const Tensor dst = g.tensor({B, H, T, T}, {H * T * T, T * T, 1, T}, CUDNN_DATA_BFLOAT16, true);
  g.reshape(ds, dst);
  if (gqa) {
    const Tensor dkf = g.tensor(fd, fs, CUDNN_DATA_BFLOAT16, true);
    g.matmul(dst, q, dkf);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dkf, dk);
  } else {
    g.matmul(dst, q, dk);
  }
  // dQ = dS K, accumulated in fp32 (a tensor of the graph's own), then bf16.
  const Tensor kk = bshd(g, B, KH, T, D, sh.ldk, false, CUDNN_DATA_BFLOAT16, true);
  g.reshape(kt, kk);
  const Tensor dqa = g.tensor(fd, fs, CUDNN_DATA_FLOAT, false);
  g.matmul(ds, kk, dqa);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dqa, nullptr, nullptr, dq);
  finish(g, p);
  p.extra = round_up(B * H * T * D * 4) + round_up(B * H * T * 4);
  p.own_offsets = {0, round_up(B * H * T * D * 4)};
  p.uids = {q.uid, kt.uid, vt.uid, o.uid, dout.uid, stats.uid, dq.uid, dk.uid, dv.uid, dqa.uid, dsum.uid};
  p.scalar_uids = {scale.uid, neg_inf.uid, one.uid};
  p.scalars = {float(1.0 / std::sqrt(double(D))), -std::numeric_limits<float>::infinity(), 1.0f};
  return p;
}

using Key = std::tuple<bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int>;

// The plan of a shape (built on first use, kept; -1 workspace where cuDNN has none).
Plan& plan_for(bool backward, const CudnnAttnShape& sh) {
  static std::map<Key, Plan> plans;
  static std::mutex mu;
  int dev = 0;
  cudaGetDevice(&dev);
  const Key key{backward, sh.B, sh.T, sh.NH, sh.KVH, sh.HS, sh.ldq, sh.ldk, backward ? sh.ldd : 0, dev};
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, backward ? build_backward(sh) : build_forward(sh)).first;
  return it->second;
}

bool shape_ok(const CudnnAttnShape& sh, bool backward) {
  return sh.B > 0 && sh.T > 0 && sh.KVH > 0 && sh.NH % sh.KVH == 0 && sh.HS % 8 == 0 && sh.HS <= 128 &&
         sh.ldq >= sh.NH * sh.HS && sh.ldk >= sh.KVH * sh.HS && sh.ldq % 8 == 0 && sh.ldk % 8 == 0 &&
         (!backward || (sh.ldd % 8 == 0 && sh.ldd >= sh.KVH * sh.HS));
}

int64_t workspace(bool backward, const CudnnAttnShape& sh) {
  if (!api().ok || !shape_ok(sh, backward)) return -1;
  const Plan& p = plan_for(backward, sh);
  return p.ws < 0 ? -1 : p.extra + round_up(p.ws);
}

bool run(const Plan& p, const std::vector<const void*>& ptrs, void* ws, cudaStream_t s) {
  Api& a = api();
  std::vector<int64_t> uids = p.uids;
  std::vector<void*> data;
  for (const void* q : ptrs) data.push_back(const_cast<void*>(q));
  // The graph's own fp32 tensors (backward: dQ's accumulator, then D) at the workspace's start.
  for (int64_t off : p.own_offsets) data.push_back(static_cast<char*>(ws) + off);
  for (size_t i = 0; i < p.scalar_uids.size(); ++i) {
    uids.push_back(p.scalar_uids[i]);
    data.push_back(const_cast<float*>(&p.scalars[i]));
  }
  void* plan_ws = static_cast<char*>(ws) + p.extra;
  Desc vp = make_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  if (!vp || data.size() != uids.size()) return false;
  const bool ok =
      check(a.set_attr(vp.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(uids.size()),
                       uids.data()),
            "variant pack ids") &&
      check(a.set_attr(vp.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, int64_t(data.size()),
                       data.data()),
            "variant pack pointers") &&
      check(a.set_attr(vp.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &plan_ws),
            "variant pack workspace") &&
      check(a.finalize(vp.get()), "variant pack") && check(a.set_stream(a.handle, s), "set stream") &&
      check(a.execute(a.handle, p.plan.get(), vp.get()), "execute");
  return ok;
}

}  // namespace

bool cudnn_attention_loaded() { return api().ok; }
bool cudnn_attention_forced() { return api().ok && api().forced; }

int64_t cudnn_attention_forward_workspace(const CudnnAttnShape& sh) { return workspace(false, sh); }
int64_t cudnn_attention_backward_workspace(const CudnnAttnShape& sh) { return workspace(true, sh); }

bool cudnn_attention_forward(uint16_t* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                             const CudnnAttnShape& sh, void* ws, size_t ws_bytes, cudaStream_t s) {
  const int64_t need = workspace(false, sh);
  if (need < 0 || int64_t(ws_bytes) < need || (need > 0 && !ws)) return false;
  return run(plan_for(false, sh), {q, k, v, out, lse}, ws, s);
}

bool cudnn_attention_backward(uint16_t* dq, uint16_t* dk, uint16_t* dv, const uint16_t* dout, const uint16_t* out,
                              const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* lse,
                              const CudnnAttnShape& sh, void* ws, size_t ws_bytes, cudaStream_t s) {
  const int64_t need = workspace(true, sh);
  if (need < 0 || int64_t(ws_bytes) < need || !ws) return false;
  return run(plan_for(true, sh), {q, k, v, out, dout, lse, dq, dk, dv}, ws, s);
}

}  // namespace primal::cuda
