// Loss-curve PNG (see loss_plot.h).
#include "train/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/error.h"

namespace qtune {
namespace {

void put_u32(std::string& s, uint32_t v) {
  for (int k = 3; k >= 0; --k) s.push_back((char)((v >> (8 * k)) & 0xFF));
}

void chunk(std::string& png, const char* type, const std::string& data) {
  put_u32(png, (uint32_t)data.size());
  std::string td = std::string(type, 4) + data;
  png += td;
  put_u32(png, crc32((const uint8_t*)td.data(), td.size()));
}

// 5×7 glyphs for "0123456789.-e", one byte per row (low 5 bits, MSB left).
const uint8_t kGlyphs[13][7] = {
    {14, 17, 19, 21, 25, 17, 14}, {4, 12, 4, 4, 4, 4, 14},  {14, 17, 1, 2, 4, 8, 31},
    {31, 2, 4, 2, 1, 17, 14},     {2, 6, 10, 18, 31, 2, 2}, {31, 16, 30, 1, 1, 17, 14},
    {6, 8, 16, 30, 17, 17, 14},   {31, 1, 2, 4, 8, 8, 8},   {14, 17, 17, 14, 17, 17, 14},
    {14, 17, 17, 15, 1, 2, 12},   {0, 0, 0, 0, 0, 12, 12},  {0, 0, 0, 31, 0, 0, 0},
    {0, 0, 14, 17, 31, 16, 14}};

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px((size_t)w_ * h_ * 3, 255) {}
  void set(int x, int y, uint8_t r, uint8_t g, uint8_t b) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    uint8_t* p = &px[((size_t)y * w + x) * 3];
    p[0] = r, p[1] = g, p[2] = b;
  }
  void line(double x0, double y0, double x1, double y1, uint8_t r, uint8_t g, uint8_t b) {
    const int n = (int)std::ceil(std::max(std::fabs(x1 - x0), std::fabs(y1 - y0))) + 1;
    for (int i = 0; i <= n; ++i) {
      const double t = (double)i / n;
      const int x = (int)std::lround(x0 + t * (x1 - x0)), y = (int)std::lround(y0 + t * (y1 - y0));
      set(x, y, r, g, b);
      set(x, y + 1, r, g, b);  // 2 px thick
    }
  }
  void text(int x, int y, const std::string& s) {  // top-left at (x, y), 2× scale
    for (char c : s) {
      int gi = c >= '0' && c <= '9' ? c - '0' : c == '.' ? 10 : c == '-' ? 11 : c == 'e' ? 12 : -1;
      if (gi >= 0)
        for (int row = 0; row < 7; ++row)
          for (int col = 0; col < 5; ++col)
            if (kGlyphs[gi][row] & (1 << (4 - col)))
              for (int d = 0; d < 4; ++d) set(x + 2 * col + d % 2, y + 2 * row + d / 2, 0, 0, 0);
      x += 12;
    }
  }
};

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, std::fabs(v) >= 1000 || (v != 0 && std::fabs(v) < 0.01) ? "%.2e" : "%.3g",
                v);
  return buf;
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

std::string encode_png(const std::vector<uint8_t>& rgb, int width, int height) {
  std::string raw;  // filter byte 0 + the row
  raw.reserve((size_t)height * (width * 3 + 1));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.append((const char*)&rgb[(size_t)y * width * 3], (size_t)width * 3);
  }
  std::string z = "\x78\x01";  // zlib header: deflate, 32K window, no preset dictionary
  uint32_t a = 1, b = 0;       // Adler-32
  for (unsigned char c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  for (size_t off = 0; off < raw.size() || off == 0; off += 65535) {  // stored blocks of ≤ 65535 bytes
    const size_t len = std::min<size_t>(65535, raw.size() - off);
    z.push_back(off + len >= raw.size() ? 1 : 0);
    z.push_back((char)(len & 0xFF));
    z.push_back((char)(len >> 8));
    z.push_back((char)(~len & 0xFF));
    z.push_back((char)((~len >> 8) & 0xFF));
    z.append(raw, off, len);
    if (off + len >= raw.size()) break;
  }
  put_u32(z, (b << 16) | a);
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  put_u32(ihdr, (uint32_t)width);
  put_u32(ihdr, (uint32_t)height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, no interlace
  chunk(png, "IHDR", ihdr);
  chunk(png, "IDAT", z);
  chunk(png, "IEND", "");
  return png;
}

void write_loss_png(const std::string& path, const std::vector<PlotSeries>& series, int width, int height) {
  Canvas c(width, height);
  const int left = 80, right = width - 20, top = 20, bottom = height - 40;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const PlotSeries& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  for (int x = left; x <= right; ++x) c.set(x, bottom, 0, 0, 0);  // axes
  for (int y = top; y <= bottom; ++y) c.set(left, y, 0, 0, 0);
  for (int k = 0; k <= 4; ++k) {  // y ticks with labels, x ticks at the ends
    const int y = bottom - (bottom - top) * k / 4;
    for (int x = left - 5; x < left; ++x) c.set(x, y, 0, 0, 0);
    for (int x = left + 1; x <= right; x += 4) c.set(x, y, 210, 210, 210);
    c.text(4, y - 7, fmt(y0 + (y1 - y0) * k / 4));
  }
  c.text(left, bottom + 10, fmt(x0));
  const std::string xr = fmt(x1);
  c.text(right - 12 * (int)xr.size(), bottom + 10, xr);
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (right - left); };
  auto py = [&](double y) { return bottom - (y - y0) / (y1 - y0) * (bottom - top); };
  for (const PlotSeries& s : series) {
    for (size_t i = 0; i + 1 < s.x.size(); ++i)
      if (std::isfinite(s.y[i]) && std::isfinite(s.y[i + 1]))
        c.line(px(s.x[i]), py(s.y[i]), px(s.x[i + 1]), py(s.y[i + 1]), s.r, s.g, s.b);
    if (s.x.size() == 1) c.line(px(s.x[0]) - 2, py(s.y[0]), px(s.x[0]) + 2, py(s.y[0]), s.r, s.g, s.b);
  }
  const std::string png = encode_png(c.px, width, height);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(png.data(), (std::streamsize)png.size());
    if (!f) throw_error(ErrorKind::Io, "cannot write ", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw_error(ErrorKind::Io, "cannot rename ", tmp, " to ", path);
}

}  // namespace qtune
