// RoPE inverse frequencies (see rope_freq.h). Llama 3 scaling keeps high frequencies (wavelength below
// original_max_position_embeddings / high_freq_factor), divides low frequencies (wavelength above
// original / low_freq_factor) by the factor, and blends linearly in between.
#include "model/rope_freq.h"

#include <cmath>

#include "core/error.h"

namespace qtune {

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  int D = cfg.head_dim;
  std::vector<float> inv(D / 2);
  // HF: 1.0 / (base ** (arange(0, D, 2).float() / D)) in f32.
  for (int i = 0; i < D / 2; i++) {
    float expo = (float)(2 * i) / (float)D;
    inv[i] = (float)(1.0 / std::pow((double)(float)cfg.rope_theta, (double)expo));
  }
  const RopeScaling& rs = cfg.rope_scaling;
  if (rs.type.empty() || rs.type == "default") return inv;
  if (rs.type == "linear") {
    for (float& f : inv) f = (float)(f / rs.factor);
    return inv;
  }
  if (rs.type == "llama3") {
    double old_ctx = rs.original_max_position_embeddings;
    double low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
    for (float& f : inv) {
      double wavelen = 2 * M_PI / f;
      double scaled = wavelen > low_wavelen ? f / rs.factor : f;
      if (wavelen >= high_wavelen && wavelen <= low_wavelen) {  // medium band: blend
        double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        scaled = (1 - smooth) * scaled / rs.factor + smooth * scaled;
      }
      f = (float)scaled;
    }
    return inv;
  }
  throw_error(ErrorKind::Unsupported, "rope_scaling type '", rs.type,
              "' is not supported (supported: default, linear, llama3)");
}

}  // namespace qtune
