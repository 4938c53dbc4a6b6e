// Loss curves as a PNG image, with no image library: an RGB canvas, line drawing, a 5×7 digit font for
// the axis labels, and a minimal PNG encoder (zlib "stored" blocks, CRC-32 and Adler-32).
//
//   write_loss_png("out/loss_curve.png", {{train_steps, train_losses, {31, 119, 180}}, {...eval...}});
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qtune {

struct PlotSeries {
  std::vector<double> x, y;
  uint8_t r = 0, g = 0, b = 0;
};

// Writes a width×height plot of the series (x: steps, y: loss) with axes and min/max labels.
// Throws ErrorKind::Io naming the path.
void write_loss_png(const std::string& path, const std::vector<PlotSeries>& series, int width = 640,
                    int height = 400);

// The encoder alone: rgb has width·height·3 bytes, rows top to bottom.
std::string encode_png(const std::vector<uint8_t>& rgb, int width, int height);
uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);

}  // namespace qtune
