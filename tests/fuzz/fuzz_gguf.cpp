// libFuzzer target for the GGUF parser: any input must parse or throw primal::Error; a parsed
// file's tensors must be readable (and dequantizable where supported) without leaving the buffer.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"
#include "quant/dequant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = primal::GgufFile::from_buffer(data, size, "fuzz");
    std::vector<float> row;
    for (const auto& t : f->tensors()) {
      if (!primal::can_dequantize(t.type)) continue;
      const int64_t n = t.ne.empty() ? 1 : t.ne[0];
      if (n > (1 << 20)) continue;
      row.resize(size_t(n));
      const size_t rb = t.nbytes / size_t(t.nrows());
      primal::dequantize_row(t.type, t.data + (t.nrows() - 1) * rb, row.data(), n);  // last row
    }
  } catch (const primal::Error&) {
  }
  return 0;
}
