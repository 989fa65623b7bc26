// Charts of a training run's metrics.jsonl: the training loss and the evaluation loss against
// the step (top), and the LUT flips per step (bottom). SVG is written as text; PNG is
// rasterized here (lines and a 5x7 bitmap font) and stored with uncompressed deflate blocks,
// so neither needs a library.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace primal::train {

struct MetricsSeries {
  std::vector<double> step, loss;            // training rows
  std::vector<double> flips_step, flips;     // training rows with "flips"
  std::vector<double> eval_step, eval_loss;  // evaluation rows
};

// Reads metrics.jsonl; throws naming the file and line for a row that is not a JSON object with
// a numeric "step", and for a file without any loss.
MetricsSeries read_metrics(const std::string& path);

std::string render_svg(const MetricsSeries& m, const std::string& title);
// RGB image (w x h x 3) of the same chart, and its PNG encoding.
std::vector<uint8_t> render_rgb(const MetricsSeries& m, const std::string& title, int w, int h);
std::vector<uint8_t> encode_png(const std::vector<uint8_t>& rgb, int w, int h);

// By extension: .svg or .png; the file is written under a temporary name and renamed.
void write_plot(const MetricsSeries& m, const std::string& title, const std::string& out);

}  // namespace primal::train
