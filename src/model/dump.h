// Debug dumps of the forward pass's named intermediates (see DumpFn in forward.h), for
// layer-by-layer diffs against another implementation:
//   - one NAME.npy file per intermediate (float32, C order: numpy.load reads it as is);
//   - one summary line per intermediate: name, shape, sum, mean |x|, first values (like
//     llama.cpp's eval-callback).
#pragma once
#include <cstdio>
#include <string>

#include "model/forward.h"

namespace primal {

// Writes DIR/NAME.npy for every intermediate (DIR is created; a name seen again overwrites).
DumpFn npy_dumper(const std::string& dir);
// Prints one summary line per intermediate to `out`.
DumpFn summary_dumper(std::FILE* out);
// Both of the above (either may be null).
DumpFn both(DumpFn a, DumpFn b);

// The bytes of a .npy file (format 1.0) for a float32 array of the given shape.
std::string npy_bytes(const float* data, const std::vector<int64_t>& shape);

}  // namespace primal
