// Grids of LUT weights: the K values an index can select (K = 4, 8, 16, 32, 64, 256, 65536 for
// LUT2/3/4/5/6/8/16), sorted strictly ascending so that "the adjacent bucket" is idx ± 1.
// A weight is scale * grid[idx]; the grid's own scale does not matter (the per-group scale
// absorbs it), only its shape.
//
// Generators (each is exact and tested value by value in tests/test_lut_grid.cpp):
//  - prime:   the seeds' prime-harmonic grid. A core of 0 and ±1/p for p = 1, 2, 3, 5, 7, 11
//             (13 values; for K < 13 only the first (K-1)/2 reciprocals), then "bridge" values
//             until K entries: repeatedly insert the midpoint of the widest gap between adjacent
//             values (ties: the gap whose midpoint is nearest 0, then the positive one). Computed
//             in fp64, stored as fp32. K = 16 gives
//               -1 -3/4 -1/2 -1/3 -1/5 -1/7 -1/11 0 1/11 1/7 1/5 1/3 1/2 5/8 3/4 1.
//  - iq4nl:   llama.cpp's IQ4_NL levels as integers (-127 ... 113); K = 16 only. With a group of
//             32 and these exact values a LUT4 tensor is an IQ4_NL tensor (see quant/lut_export.h).
//  - nf4:     "normal float" (QLoRA/bitsandbytes): K/2 positive standard-normal quantiles at
//             probabilities linspace(offset, 1/2, K/2 + 1) without the last, K/2 - 1 negative ones
//             at linspace(offset, 1/2, K/2) without the last, and 0; divided by the largest.
//             offset = ((1 - 1/(2(K-1))) + (1 - 1/(2K))) / 2 (0.9677083 for K = 16, bitsandbytes'
//             constant). K = 16 is NF4; other K are the same construction (NF2, NF3, NF8, NF16).
//  - uniform: the integers -K/2 ... K/2 - 1 (K = 256 with a group of 32 is Q8_0's grid).
//  - learned: per tensor, Lloyd's algorithm on that tensor's weights (quant/lut_kmeans.h),
//             started from nf4.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace primal {

enum class GridKind { Prime, IQ4NL, NF4, Uniform, Learned };

// "prime", "iq4nl", "nf4", "uniform", "learned" (case-insensitive); nullopt for anything else.
std::optional<GridKind> grid_kind_from_name(std::string_view name);
const char* grid_name(GridKind k);
// "prime, iq4nl, nf4, uniform, learned": for error messages and --help.
const char* grid_names();

std::vector<float> prime_grid(int64_t K);    // 4 <= K <= 65536
std::vector<float> iq4nl_grid();             // 16 entries
std::vector<float> nf4_grid(int64_t K);      // 4 <= K <= 65536, even
std::vector<float> uniform_grid(int64_t K);  // 4 <= K <= 65536, even

// The generated grid of kind k with K entries. Throws Error for a kind that does not exist at
// that size (iq4nl has 16 entries), and for Learned (it needs the weights: quant/lut_kmeans.h).
std::vector<float> make_grid(GridKind k, int64_t K);

// Throws Error ("{what}: ...") unless the grid has exactly K entries, all finite, strictly
// ascending, and not all of one sign (a scale could not reach both signs of the weights).
void validate_grid(const float* grid, int64_t n, int64_t K, const std::string& what);

// The inverse of the standard normal CDF, to full double precision (nf4_grid uses it).
double normal_quantile(double p);

}  // namespace primal
