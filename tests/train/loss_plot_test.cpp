// The loss-curve PNG (train/loss_plot.h): a valid PNG stream (signature, chunk CRCs, zlib stored blocks
// with a correct Adler-32) that decodes back to the canvas, and a plot with the series' colour on it.
#include "train/loss_plot.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

using namespace qtune;

namespace {

uint32_t be32(const std::string& s, size_t at) {
  return ((uint32_t)(uint8_t)s[at] << 24) | ((uint32_t)(uint8_t)s[at + 1] << 16) |
         ((uint32_t)(uint8_t)s[at + 2] << 8) | (uint8_t)s[at + 3];
}

// Walks the chunks (checking each CRC) and inflates the stored blocks of IDAT.
std::string decode_idat(const std::string& png, uint32_t* w, uint32_t* h) {
  EXPECT_EQ(png.compare(0, 8, "\x89PNG\r\n\x1a\n"), 0);
  std::string z;
  for (size_t p = 8; p < png.size();) {
    const uint32_t len = be32(png, p);
    const std::string type = png.substr(p + 4, 4);
    EXPECT_EQ(crc32((const uint8_t*)png.data() + p + 4, len + 4), be32(png, p + 8 + len)) << type;
    if (type == "IHDR") *w = be32(png, p + 8), *h = be32(png, p + 12);
    if (type == "IDAT") z += png.substr(p + 8, len);
    p += 12 + len;
  }
  std::string raw;
  size_t q = 2;
  for (;;) {
    const bool final = z[q] & 1;
    const uint32_t len = (uint8_t)z[q + 1] | ((uint8_t)z[q + 2] << 8);
    const uint32_t nlen = (uint8_t)z[q + 3] | ((uint8_t)z[q + 4] << 8);
    EXPECT_EQ(len ^ 0xFFFF, nlen);
    raw += z.substr(q + 5, len);
    q += 5 + len;
    if (final) break;
  }
  uint32_t a = 1, b = 0;
  for (unsigned char c : raw) a = (a + c) % 65521, b = (b + a) % 65521;
  EXPECT_EQ(be32(z, q), (b << 16) | a);
  return raw;
}

}  // namespace

TEST(LossPlot, Crc32KnownValue) {
  EXPECT_EQ(crc32((const uint8_t*)"123456789", 9), 0xCBF43926u);
}

TEST(LossPlot, EncodeRoundTrips) {
  const int w = 300, h = 250;  // > 64 KiB of pixels: several stored blocks
  std::vector<uint8_t> rgb(w * h * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = (uint8_t)(i * 2654435761u >> 13);
  uint32_t W = 0, H = 0;
  std::string raw = decode_idat(encode_png(rgb, w, h), &W, &H);
  EXPECT_EQ(W, (uint32_t)w);
  EXPECT_EQ(H, (uint32_t)h);
  ASSERT_EQ(raw.size(), (size_t)h * (w * 3 + 1));
  for (int y = 0; y < h; ++y) {
    EXPECT_EQ(raw[y * (w * 3 + 1)], 0);
    ASSERT_EQ(std::memcmp(&raw[y * (w * 3 + 1) + 1], &rgb[y * w * 3], w * 3), 0) << y;
  }
}

TEST(LossPlot, PlotHasTheCurve) {
  const std::string path = testing::TempDir() + "qtune_loss.png";
  write_loss_png(path, {{{1, 2, 3, 4}, {3.0, 2.5, 2.2, 2.0}, 200, 10, 20}}, 320, 200);
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  uint32_t W = 0, H = 0;
  std::string raw = decode_idat(ss.str(), &W, &H);
  int colored = 0;
  for (size_t y = 0; y < H; ++y)
    for (size_t x = 0; x < W; ++x) {
      const char* p = &raw[y * (W * 3 + 1) + 1 + x * 3];
      colored += (uint8_t)p[0] == 200 && (uint8_t)p[1] == 10 && (uint8_t)p[2] == 20;
    }
  EXPECT_GT(colored, 200);  // a 2-px line across ~220 px
}
