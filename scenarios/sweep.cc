#include "scenarios/sweep.h"

#include <cmath>
#include <cstdio>
#include <map>

namespace ponder::scenarios {

SweepTable ClassCurves(const std::vector<int64_t>& depths,
                       const std::vector<ReplayReport>& reports) {
  SweepTable t;
  t.depths = depths;
  std::map<std::string, std::vector<double>> by_name;
  for (size_t i = 0; i < reports.size(); ++i) {
    for (const auto& [name, s] : reports[i].classes) {
      auto& v = by_name[name];
      v.resize(reports.size(), NAN);
      v[i] = s.accuracy();
    }
  }
  for (auto& [name, v] : by_name) t.curves.push_back({name, v});
  return t;
}

namespace {

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

std::string RenderSvg(const SweepTable& table, const std::string& title) {
  const double w = 760, h = 440, left = 70, right = 230, top = 50, bottom = 60;
  const double pw = w - left - right, ph = h - top - bottom;
  const double lo = std::log2(static_cast<double>(table.depths.front()));
  const double hi = std::log2(static_cast<double>(table.depths.back()));
  auto x_of = [&](int64_t d) {
    return left + (hi > lo ? (std::log2(static_cast<double>(d)) - lo) / (hi - lo) : 0.5) * pw;
  };
  auto y_of = [&](double a) { return top + (1.0 - a) * ph; };
  static const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::string svg;
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                "font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%%\" "
                "height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"28\" "
                "font-size=\"16\">%s</text>\n",
                w, h, left, Escape(title).c_str());
  svg += buf;
  for (int i = 0; i <= 10; i += 2) {  // horizontal grid, accuracy 0..1
    const double y = y_of(i / 10.0);
    std::snprintf(buf, sizeof(buf),
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n",
                  left, y, left + pw, y, left - 8, y + 4, i / 10.0);
    svg += buf;
  }
  for (int64_t d : table.depths) {
    std::snprintf(buf, sizeof(buf),
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%lld</text>\n",
                  x_of(d), top, x_of(d), top + ph, x_of(d), top + ph + 20, (long long)d);
    svg += buf;
  }
  std::snprintf(buf, sizeof(buf),
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">core iterations per token "
                "(r)</text>\n<text x=\"18\" y=\"%.1f\" transform=\"rotate(-90 18 %.1f)\" "
                "text-anchor=\"middle\">accuracy</text>\n",
                left + pw / 2, h - 15, top + ph / 2, top + ph / 2);
  svg += buf;
  for (size_t c = 0; c < table.curves.size(); ++c) {
    const auto& curve = table.curves[c];
    const char* color = kColors[c % 10];
    std::string points;
    for (size_t i = 0; i < table.depths.size() && i < curve.accuracy.size(); ++i) {
      if (std::isnan(curve.accuracy[i])) continue;
      std::snprintf(buf, sizeof(buf), "%.1f,%.1f ", x_of(table.depths[i]), y_of(curve.accuracy[i]));
      points += buf;
      std::snprintf(buf, sizeof(buf), "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                    x_of(table.depths[i]), y_of(curve.accuracy[i]), color);
      svg += buf;
    }
    svg += "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"" + std::string(color) +
           "\" points=\"" + points + "\"/>\n";
    const double ly = top + 10 + 20.0 * c;
    std::snprintf(buf, sizeof(buf),
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                  "stroke-width=\"3\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                  left + pw + 15, ly, left + pw + 35, ly, color, left + pw + 42, ly + 4,
                  Escape(curve.name).c_str());
    svg += buf;
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace ponder::scenarios
