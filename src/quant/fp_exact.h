// Include first in every file of src/quant that does fp32 arithmetic on weights.
//
// Bytes identical to ggml's need every multiply and add rounded separately, as ggml-base
// (compiled without -march flags, so without FMA) does. C++ compilers may fuse a*b + c into one
// FMA when the target has it (GCC by default in C++ for -march=native, Clang within an
// expression): measured on the reference model with -march=native, 7% of Q4_K blocks then
// differ from llama-quantize's. So forbid contraction in these files whatever the flags.
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
