// primal plot: training and evaluation loss and flips per step of a run, as SVG or PNG.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "train/plot.h"

namespace primal::cli {

void register_plot(CLI::App& app) {
  struct Args {
    std::string metrics, out, title;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("plot", "Plot a training run's metrics.jsonl (loss, eval loss, flips) as SVG or PNG");
  cmd->add_option("metrics", a->metrics, "DIR/metrics.jsonl of primal train")->required();
  cmd->add_option("out", a->out, "output file, .svg or .png")->required();
  cmd->add_option("--title", a->title, "chart title (SVG; default: the metrics path)");
  cmd->callback([a] {
    const auto ends = [&](const std::string& e) {
      return a->out.size() >= e.size() && a->out.compare(a->out.size() - e.size(), e.size(), e) == 0;
    };
    PRIMAL_CHECK(ends(".svg") || ends(".png"), "{}: the output must end in .svg or .png", a->out);
    const auto m = train::read_metrics(a->metrics);
    train::write_plot(m, a->title.empty() ? a->metrics : a->title, a->out);
    std::printf("%s: %zu training rows, %zu evaluations\n", a->out.c_str(), m.loss.size(), m.eval_loss.size());
  });
}

}  // namespace primal::cli
