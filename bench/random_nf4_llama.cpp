// Writes a Llama-3-shaped model folder whose decoder Linears are random NF4 + double-quant weights in
// bitsandbytes' serialization, made directly in 4 bits: a 70B model never exists in 16 bits (140 GB), so
// the QLoRA memory benchmark (bench/qlora_memory.sh) can load it from a 40 GB folder on the device.
// Codes are uniform over the 16 NF4 levels (what quantizing Gaussian weights gives: NF4's levels are the
// normal's quantiles); block absmax ~ U(0.04, 0.06) (the max of 64 draws of N(0, 0.02)). Embeddings and
// lm_head are BF16 ~ U(-0.035, 0.035) (std 0.02), norms 1. One shard per layer, plus one for the rest.
//   random_nf4_llama --shape llama3-70b|llama3-8b --out DIR [--seed S]
// Build: cmake --build build --target random_nf4_llama.
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "io/model_folder.h"
#include "model/load_options.h"
#include "model/quant_load.h"
#include "quant/bnb_format.h"
#include "quant/codebook.h"
#include "quant/double_quant.h"

using namespace qtune;

namespace {

uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float uniform(uint64_t key) {  // [0, 1)
  return (float)(mix(key) >> 40) * (1.0f / 16777216.0f);
}

uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

struct LlamaShape {
  int64_t hidden, inter, layers, heads, kv_heads, vocab;
};

// A random NF4 + double-quant weight [rows, cols] as bitsandbytes serializes it.
ShardTensors random_nf4(const std::string& name, int64_t rows, int64_t cols, uint64_t seed) {
  const int64_t n = rows * cols, blocks = (n + 63) / 64;
  Quant4Tensor q;
  q.quant_type = QuantType::NF4;
  q.blocksize = 64;
  q.shape = {rows, cols};
  q.dtype = DType::BF16;
  q.packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8);
  uint64_t* p = (uint64_t*)q.packed.raw();
  const int64_t words = (n / 2) / 8;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < words; i++) p[i] = mix(seed * 0x100000001B3ull + (uint64_t)i);
  uint8_t* tail = q.packed.data<uint8_t>();
  for (int64_t i = words * 8; i < (n + 1) / 2; i++) tail[i] = (uint8_t)mix(seed + 7 * (uint64_t)i);
  std::vector<float> absmax(blocks);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; b++) absmax[b] = 0.04f + 0.02f * uniform(~seed + (uint64_t)b);
  NestedAbsmax nested = double_quantize_absmax(absmax.data(), blocks);
  q.nested = true;
  q.absmax = Tensor::empty({blocks}, DType::U8);
  std::memcpy(q.absmax.raw(), nested.q.data(), blocks);
  q.nested_absmax = Tensor::empty({(int64_t)nested.absmax.size()}, DType::F32);
  std::memcpy(q.nested_absmax.raw(), nested.absmax.data(), nested.absmax.size() * 4);
  q.nested_code = Tensor::empty({256}, DType::F32);
  const std::vector<float> code = create_dynamic_map(true);
  std::memcpy(q.nested_code.raw(), code.data(), 256 * 4);
  q.offset = nested.offset;
  q.nested_blocksize = kNestedBlocksize;
  return bnb_4bit_entries(q, name);
}

Tensor random_bf16(int64_t rows, int64_t cols, uint64_t seed) {
  Tensor t = Tensor::empty({rows, cols}, DType::BF16);
  uint16_t* d = (uint16_t*)t.raw();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows * cols; i++)
    d[i] = bf16_bits(0.07f * (uniform(seed ^ mix((uint64_t)i)) - 0.5f));
  return t;
}

Tensor ones_bf16(int64_t n) {
  Tensor t = Tensor::empty({n}, DType::BF16);
  uint16_t* d = (uint16_t*)t.raw();
  for (int64_t i = 0; i < n; i++) d[i] = 0x3F80;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape_name = "llama3-70b", out;
  uint64_t seed = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--shape")
      shape_name = v;
    else if (k == "--out")
      out = v;
    else if (k == "--seed")
      seed = std::stoull(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (out.empty()) {
    std::fprintf(stderr, "usage: random_nf4_llama --shape llama3-70b|llama3-8b --out DIR [--seed S]\n");
    return 2;
  }
  LlamaShape s;
  if (shape_name == "llama3-70b")
    s = {8192, 28672, 80, 64, 8, 128256};
  else if (shape_name == "llama3-8b")
    s = {4096, 14336, 32, 32, 8, 128256};
  else {
    std::fprintf(stderr, "unknown shape %s\n", shape_name.c_str());
    return 2;
  }
  try {
    const int64_t C = s.hidden, F = s.inter, D = C / s.heads, KV = s.kv_heads * D;
    std::filesystem::create_directories(out);
    const int64_t bytes = write_weight_shards(out, (int)s.layers + 1, [&](int i) {
      ShardTensors t;
      if (i == s.layers) {
        t.push_back({"model.embed_tokens.weight", random_bf16(s.vocab, C, seed ^ 1)});
        t.push_back({"lm_head.weight", random_bf16(s.vocab, C, seed ^ 2)});
        t.push_back({"model.norm.weight", ones_bf16(C)});
        return t;
      }
      const std::string p = "model.layers." + std::to_string(i) + ".";
      const uint64_t k = seed * 1000 + (uint64_t)i * 10;
      auto add = [&](const std::string& name, int64_t rows, int64_t cols, uint64_t key) {
        for (auto& e : random_nf4(p + name, rows, cols, key)) t.push_back(std::move(e));
      };
      add("self_attn.q_proj.weight", C, C, k + 1);
      add("self_attn.k_proj.weight", KV, C, k + 2);
      add("self_attn.v_proj.weight", KV, C, k + 3);
      add("self_attn.o_proj.weight", C, C, k + 4);
      add("mlp.gate_proj.weight", F, C, k + 5);
      add("mlp.up_proj.weight", F, C, k + 6);
      add("mlp.down_proj.weight", C, F, k + 7);
      t.push_back({p + "input_layernorm.weight", ones_bf16(C)});
      t.push_back({p + "post_attention_layernorm.weight", ones_bf16(C)});
      std::fprintf(stderr, "\rlayer %d/%ld", i + 1, (long)s.layers);
      return t;
    });
    LoadOptions q;
    q.load_in_4bit = true;
    q.quant_type = QuantType::NF4;
    q.double_quant = true;
    q.compute_dtype = DType::BF16;
    nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                          {"model_type", "llama"},
                          {"hidden_size", C},
                          {"intermediate_size", F},
                          {"num_hidden_layers", s.layers},
                          {"num_attention_heads", s.heads},
                          {"num_key_value_heads", s.kv_heads},
                          {"head_dim", D},
                          {"vocab_size", s.vocab},
                          {"rope_theta", 500000.0},
                          {"max_position_embeddings", 131072},
                          {"rms_norm_eps", 1e-5},
                          {"hidden_act", "silu"},
                          {"bos_token_id", 128000},
                          {"eos_token_id", 128001},
                          {"tie_word_embeddings", false},
                          {"torch_dtype", "bfloat16"},
                          {"quantization_config", quantization_config_json(q)}};
    write_text_file(out + "/config.json", cfg.dump(2) + "\n");
    std::fprintf(stderr, "\nwrote %s (%s, random NF4 + double quant): %.2f GB\n", out.c_str(),
                 shape_name.c_str(), bytes / 1e9);
  } catch (const Error& e) {
    std::fprintf(stderr, "random_nf4_llama: %s\n", e.what());
    return 1;
  }
  return 0;
}
