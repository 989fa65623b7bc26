// SwiGLU for training: out = silu(gate) * up, silu(g) = g sigmoid(g).
//   dup   = dout * silu(gate)
//   dgate = dout * up * silu'(gate),  silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g)))
#pragma once
#include <cstdint>

namespace primal::cpu {

// out, gate, up: (N); out may alias neither input (the backward needs both).
template <class F>
void swiglu_forward_train(F* out, const F* gate, const F* up, int64_t N);

// dgate, dup: (N) overwritten; dout, gate, up: (N). dgate/dup may alias dout.
template <class F>
void swiglu_backward(F* dgate, F* dup, const F* dout, const F* gate, const F* up, int64_t N);

}  // namespace primal::cpu
