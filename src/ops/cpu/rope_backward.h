// RoPE for training. The rotation of a pair by the angle a is orthogonal, so its backward is the
// rotation by -a applied to the gradient:
//   forward  (a, b) -> (a cos - b sin, a sin + b cos)
//   backward (da, db) -> (da cos + db sin, -da sin + db cos)
// Layouts and frequencies as rope_forward (ops/cpu/rope.h).
#pragma once
#include <cstdint>

#include "ops/cpu/rope.h"

namespace primal::cpu {

// x: (T, n_heads, HS) rotated in place; token t at position pos0 + t. inverse = true rotates by
// -angle (the backward of the forward rotation).
template <class F>
void rope_rotate(F* x, int64_t T, int64_t n_heads, int64_t pos0, const RopeParams& p, bool inverse);

template <class F>
inline void rope_forward_train(F* x, int64_t T, int64_t n_heads, int64_t pos0, const RopeParams& p) {
  rope_rotate(x, T, n_heads, pos0, p, false);
}
// dx: (T, n_heads, HS), the gradient of the rotated values in, of the inputs out (in place).
template <class F>
inline void rope_backward(F* dx, int64_t T, int64_t n_heads, int64_t pos0, const RopeParams& p) {
  rope_rotate(dx, T, n_heads, pos0, p, true);
}

}  // namespace primal::cpu
