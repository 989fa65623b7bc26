#include "train/plot.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"

namespace primal::train {

MetricsSeries read_metrics(const std::string& path) {
  std::ifstream in(path);
  PRIMAL_CHECK(in, "{}: cannot open: {}", path, std::strerror(errno));
  MetricsSeries m;
  std::string line;
  int64_t no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      fail("{}: line {}: not valid JSON", path, no);
    }
    PRIMAL_CHECK(j.is_object() && j.contains("step") && j["step"].is_number(), "{}: line {}: no numeric \"step\"",
                 path, no);
    const double step = j["step"].get<double>();
    auto num = [&](const char* k) { return j.contains(k) && j[k].is_number(); };
    if (num("loss")) m.step.push_back(step), m.loss.push_back(j["loss"].get<double>());
    if (num("flips")) m.flips_step.push_back(step), m.flips.push_back(j["flips"].get<double>());
    if (num("eval_loss")) m.eval_step.push_back(step), m.eval_loss.push_back(j["eval_loss"].get<double>());
  }
  PRIMAL_CHECK(!m.loss.empty() || !m.eval_loss.empty(), "{}: no rows with \"loss\" or \"eval_loss\"", path);
  return m;
}

namespace {

constexpr int kW = 900, kH = 640;
constexpr int kLeft = 80, kRight = 24;
struct Panel {
  int top, bottom;
  double x0, x1, y0, y1;
  double px(double x) const { return kLeft + (x - x0) / (x1 - x0) * (kW - kLeft - kRight); }
  double py(double y) const { return bottom - (y - y0) / (y1 - y0) * (bottom - top); }
};

// Ticks at 1, 2 or 5 times a power of ten, about n of them over [lo, hi].
std::vector<double> ticks(double lo, double hi, int n) {
  std::vector<double> t;
  const double raw = (hi - lo) / n;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / p < 1.5 ? p : raw / p < 3.5 ? 2 * p : raw / p < 7.5 ? 5 * p : 10 * p;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0 : v);
  return t;
}

std::string label(double v) { return fmt::format("{:.4g}", v); }

void range(const std::vector<double>& v, double& lo, double& hi) {
  for (double x : v)
    if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
}

struct Layout {
  Panel loss, flips;
  bool has_flips;
};

Layout layout(const MetricsSeries& m) {
  Layout L;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  range(m.step, x0, x1);
  range(m.eval_step, x0, x1);
  range(m.loss, y0, y1);
  range(m.eval_loss, y0, y1);
  if (!(x1 > x0)) x1 = x0 + 1;
  if (!(y1 > y0)) y0 -= 0.5, y1 += 0.5;
  const double pad = (y1 - y0) * 0.05;
  L.has_flips = !m.flips.empty();
  L.loss = Panel{40, L.has_flips ? 380 : 590, x0, x1, y0 - pad, y1 + pad};
  double f0 = 0, f1 = -std::numeric_limits<double>::infinity();
  range(m.flips, f0, f1);
  if (!(f1 > f0)) f1 = f0 + 1;
  L.flips = Panel{446, 590, x0, x1, 0, f1 * 1.05};
  return L;
}

const char* kTrain = "#1f77b4";
const char* kEval = "#ff7f0e";
const char* kFlips = "#2ca02c";

}  // namespace

std::string render_svg(const MetricsSeries& m, const std::string& title) {
  const Layout L = layout(m);
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      kW, kH, kW, kH);
  std::string esc;
  for (char c : title) esc += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  s += fmt::format("<text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n", kLeft, esc);
  auto panel = [&](const Panel& p, const std::string& ylabel) {
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n", kLeft,
                     p.top, kW - kLeft - kRight, p.bottom - p.top);
    for (double y : ticks(p.y0, p.y1, 5))
      s += fmt::format("<line x1=\"{0}\" x2=\"{1}\" y1=\"{2:.1f}\" y2=\"{2:.1f}\" stroke=\"#ddd\"/>"
                       "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
                       kLeft, kW - kRight, p.py(y), kLeft - 6, p.py(y) + 4, label(y));
    for (double x : ticks(p.x0, p.x1, 8))
      s += fmt::format("<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"{1}\" y2=\"{2}\" stroke=\"#eee\"/>"
                       "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
                       p.px(x), p.top, p.bottom, p.bottom + 16, label(x));
    s += fmt::format("<text x=\"16\" y=\"{:.1f}\" transform=\"rotate(-90 16 {:.1f})\" text-anchor=\"middle\">{}</text>\n",
                     (p.top + p.bottom) / 2.0, (p.top + p.bottom) / 2.0, ylabel);
  };
  auto line = [&](const Panel& p, const std::vector<double>& x, const std::vector<double>& y, const char* color,
                  bool dots) {
    if (x.empty()) return;
    s += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"", color);
    for (size_t k = 0; k < x.size(); ++k) s += fmt::format("{}{:.1f},{:.1f}", k ? " " : "", p.px(x[k]), p.py(y[k]));
    s += "\"/>\n";
    if (dots)
      for (size_t k = 0; k < x.size(); ++k)
        s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", p.px(x[k]), p.py(y[k]), color);
  };
  panel(L.loss, "loss");
  line(L.loss, m.step, m.loss, kTrain, false);
  line(L.loss, m.eval_step, m.eval_loss, kEval, true);
  s += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">train loss</text><text x=\"{}\" y=\"{}\" fill=\"{}\">eval "
                   "loss</text>\n",
                   kW - kRight - 170, L.loss.top + 18, kTrain, kW - kRight - 80, L.loss.top + 18, kEval);
  if (L.has_flips) {
    panel(L.flips, "flips/step");
    line(L.flips, m.flips_step, m.flips, kFlips, false);
  }
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n", (kLeft + kW - kRight) / 2, kH - 12);
  s += "</svg>\n";
  return s;
}

namespace {

// 5x7 glyphs, one byte a row, bit 4 the leftmost pixel: the characters the chart's labels use.
struct Glyph {
  char c;
  uint8_t rows[7];
};
constexpr Glyph kFont[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},                {'-', {0, 0, 0, 0x1F, 0, 0, 0}},
    {'+', {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}},       {'/', {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}},
    {'a', {0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},       {'e', {0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
    {'f', {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}}, {'i', {0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E}},
    {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'n', {0, 0, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E}},       {'p', {0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
    {'r', {0, 0, 0x16, 0x19, 0x10, 0x10, 0x10}},       {'s', {0, 0, 0x0F, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}}, {'v', {0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04}},
};

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px(size_t(w_) * size_t(h_) * 3, 255) {}
  void set(int x, int y, const uint8_t c[3]) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    std::memcpy(&px[(size_t(y) * size_t(w) + size_t(x)) * 3], c, 3);
  }
  void line(double x0, double y0, double x1, double y1, const uint8_t c[3], int thick = 1) {
    const int n = int(std::max(std::fabs(x1 - x0), std::fabs(y1 - y0))) + 1;
    for (int k = 0; k <= n; ++k) {
      const double t = double(k) / n;
      const int x = int(std::lround(x0 + (x1 - x0) * t)), y = int(std::lround(y0 + (y1 - y0) * t));
      for (int dx = 0; dx < thick; ++dx)
        for (int dy = 0; dy < thick; ++dy) set(x + dx, y + dy, c);
    }
  }
  // Text at 2x scale; align: 0 left, 1 center, 2 right of x.
  void text(int x, int y, const std::string& s, const uint8_t c[3], int align = 0) {
    const int wpx = int(s.size()) * 12;
    x -= align == 1 ? wpx / 2 : align == 2 ? wpx : 0;
    for (size_t k = 0; k < s.size(); ++k) {
      const Glyph* g = nullptr;
      for (const Glyph& f : kFont)
        if (f.c == s[k]) g = &f;
      if (!g) continue;  // characters outside the font are left blank
      for (int r = 0; r < 7; ++r)
        for (int col = 0; col < 5; ++col)
          if (g->rows[r] & (0x10 >> col))
            for (int d = 0; d < 4; ++d) set(x + int(k) * 12 + col * 2 + d % 2, y + r * 2 + d / 2, c);
    }
  }
};

void hex(const char* s, uint8_t c[3]) {
  for (int k = 0; k < 3; ++k) c[k] = uint8_t(std::stoi(std::string(s + 1 + 2 * k, 2), nullptr, 16));
}

}  // namespace

std::vector<uint8_t> render_rgb(const MetricsSeries& m, const std::string& title, int w, int h) {
  PRIMAL_CHECK(w == kW && h == kH, "plot: the raster chart is {} x {}", kW, kH);
  (void)title;  // the bitmap font has no full alphabet: the title is left to the SVG
  const Layout L = layout(m);
  Canvas cv(w, h);
  uint8_t ink[3] = {68, 68, 68}, grid[3] = {225, 225, 225}, ct[3], ce[3], cf[3];
  hex(kTrain, ct);
  hex(kEval, ce);
  hex(kFlips, cf);
  auto panel = [&](const Panel& p, const std::string& ylabel) {
    for (double y : ticks(p.y0, p.y1, 5)) {
      cv.line(kLeft, p.py(y), kW - kRight, p.py(y), grid);
      cv.text(kLeft - 6, int(p.py(y)) - 7, label(y), ink, 2);
    }
    for (double x : ticks(p.x0, p.x1, 8)) {
      cv.line(p.px(x), p.top, p.px(x), p.bottom, grid);
      cv.text(int(p.px(x)), p.bottom + 6, label(x), ink, 1);
    }
    cv.line(kLeft, p.top, kW - kRight, p.top, ink);
    cv.line(kLeft, p.bottom, kW - kRight, p.bottom, ink);
    cv.line(kLeft, p.top, kLeft, p.bottom, ink);
    cv.line(kW - kRight, p.top, kW - kRight, p.bottom, ink);
    cv.text(kLeft, p.top - 18, ylabel, ink);
  };
  auto series = [&](const Panel& p, const std::vector<double>& x, const std::vector<double>& y, const uint8_t c[3],
                    bool dots) {
    for (size_t k = 1; k < x.size(); ++k) cv.line(p.px(x[k - 1]), p.py(y[k - 1]), p.px(x[k]), p.py(y[k]), c, 2);
    if (dots)
      for (size_t k = 0; k < x.size(); ++k)
        for (int dx = -2; dx <= 2; ++dx)
          for (int dy = -2; dy <= 2; ++dy) cv.set(int(p.px(x[k])) + dx, int(p.py(y[k])) + dy, c);
  };
  panel(L.loss, "loss");
  series(L.loss, m.step, m.loss, ct, false);
  series(L.loss, m.eval_step, m.eval_loss, ce, true);
  cv.text(kW - kRight - 250, L.loss.top - 18, "train loss", ct);
  cv.text(kW - kRight - 110, L.loss.top - 18, "eval loss", ce);
  if (L.has_flips) {
    panel(L.flips, "flips/step");
    series(L.flips, m.flips_step, m.flips, cf, false);
  }
  cv.text((kLeft + kW - kRight) / 2, kH - 22, "step", ink, 1);
  return cv.px;
}

namespace {

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void be32(std::vector<uint8_t>& o, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) o.push_back(uint8_t(v >> s));
}

void chunk(std::vector<uint8_t>& o, const char* type, const std::vector<uint8_t>& data) {
  be32(o, uint32_t(data.size()));
  const size_t start = o.size();
  o.insert(o.end(), type, type + 4);
  o.insert(o.end(), data.begin(), data.end());
  be32(o, crc32(o.data() + start, o.size() - start));
}

}  // namespace

std::vector<uint8_t> encode_png(const std::vector<uint8_t>& rgb, int w, int h) {
  PRIMAL_CHECK(rgb.size() == size_t(w) * size_t(h) * 3, "png: {} bytes for {} x {} RGB", rgb.size(), w, h);
  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> ihdr;
  be32(ihdr, uint32_t(w));
  be32(ihdr, uint32_t(h));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB, deflate, no filter, no interlace
  chunk(out, "IHDR", ihdr);
  // Scanlines with filter type 0, in a zlib stream of stored (uncompressed) deflate blocks.
  std::vector<uint8_t> raw;
  raw.reserve(size_t(h) * (size_t(w) * 3 + 1));
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + std::ptrdiff_t(size_t(y) * size_t(w) * 3),
               rgb.begin() + std::ptrdiff_t(size_t(y + 1) * size_t(w) * 3));
  }
  std::vector<uint8_t> z = {0x78, 0x01};
  for (size_t p = 0; p < raw.size() || p == 0; p += 65535) {
    const size_t n = std::min<size_t>(65535, raw.size() - p);
    const bool last = p + n >= raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(uint8_t(n & 0xFF));
    z.push_back(uint8_t(n >> 8));
    z.push_back(uint8_t(~n & 0xFF));
    z.push_back(uint8_t((~n >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + std::ptrdiff_t(p), raw.begin() + std::ptrdiff_t(p + n));
    if (last) break;
  }
  uint32_t a = 1, b = 0;  // Adler-32 of the uncompressed data
  for (uint8_t c : raw) a = (a + c) % 65521, b = (b + a) % 65521;
  be32(z, b << 16 | a);
  chunk(out, "IDAT", z);
  chunk(out, "IEND", {});
  return out;
}

void write_plot(const MetricsSeries& m, const std::string& title, const std::string& out) {
  auto ends = [&](const char* e) {
    const std::string s(e);
    return out.size() >= s.size() && out.compare(out.size() - s.size(), s.size(), s) == 0;
  };
  std::string bytes;
  if (ends(".svg")) {
    bytes = render_svg(m, title);
  } else if (ends(".png")) {
    const auto png = encode_png(render_rgb(m, title, kW, kH), kW, kH);
    bytes.assign(png.begin(), png.end());
  } else {
    fail("{}: the output must end in .svg or .png", out);
  }
  write_file_atomic(out, bytes);
}

}  // namespace primal::train
