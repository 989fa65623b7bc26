// SwiGLU (Llama MLP): out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)).
#pragma once
#include <cstdint>

namespace primal::cpu {

// out, gate, up: (N) = (T * F) elements; out may alias gate or up.
void swiglu_forward(float* out, const float* gate, const float* up, int64_t N);

// out[i] = a[i] + b[i]; (N) elements; out may alias a or b. The residual connection.
void residual_forward(float* out, const float* a, const float* b, int64_t N);

}  // namespace primal::cpu
