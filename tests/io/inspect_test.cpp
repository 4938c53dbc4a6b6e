// `qtune inspect` report: totals agree with transformers' index metadata (total_parameters, total_size),
// the NF4 estimate matches a hand count, tensors are listed sorted, and the config line appears (or its
// error, or its absence).
#include "io/inspect.h"

#include <filesystem>

#include "io_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

// The report line that mentions `key` ("" when none).
std::string line_with(const std::string& report, const std::string& key) {
  size_t p = report.find(key);
  if (p == std::string::npos) return "";
  size_t b = report.rfind('\n', p), e = report.find('\n', p);
  return report.substr(b == std::string::npos ? 0 : b + 1, e - (b == std::string::npos ? 0 : b + 1));
}

const std::string kTiny = QTUNE_FIXTURES "/io/tiny_llama";

TEST(Inspect, SummaryOfShardedCheckpoint) {
  WeightSummary s = summarize_weights(WeightStore::open(kTiny));
  // model.safetensors.index.json (written by transformers) says total_parameters 6736, total_size 13472.
  EXPECT_EQ(s.num_tensors, 21);
  EXPECT_EQ(s.num_params, 6736);
  EXPECT_EQ(s.bytes_stored, 13472u);
  EXPECT_EQ(s.bytes_by_dtype.at("BF16"), 13472u);
  EXPECT_EQ(s.bytes_bf16, 13472u);
  // Linear weights per layer: q 16x16, k 8x16, v 8x16, o 16x16, gate/up 32x16, down 16x32 = 2304 params.
  EXPECT_EQ(s.num_quantizable_params, 2 * 2304);
  // NF4 bytes per layer: n/2 + 4*ceil(n/64): q 144, k 72, v 72, o 144, gate/up/down 288 each = 1296;
  // the other 6736 - 4608 parameters stay bf16.
  EXPECT_EQ(s.bytes_nf4, 2u * 1296 + 2u * (6736 - 4608));
  EXPECT_LT(s.bytes_nf4_dq, s.bytes_nf4);
}

TEST(Inspect, ReportListsSortedTensorsAndConfig) {
  std::string r = inspect_report(kTiny);
  EXPECT_HAS(r, "tensors: 21");
  EXPECT_HAS(r, "files: 2");
  EXPECT_HAS(r, "parameters: 6,736 (6.7 K)");
  EXPECT_HAS(r, "BF16  13,472 (13.16 KiB)");
  std::string k = line_with(r, "model.layers.1.self_attn.k_proj.weight");
  EXPECT_HAS(k, " BF16 ");
  EXPECT_HAS(k, " [8, 16] ");
  EXPECT_HAS(k, " 128");
  EXPECT_HAS(
      r,
      "config: LlamaForCausalLM (llama): 2 layers, hidden 16, intermediate 32, heads 4 (kv 2, head_dim 4)");
  size_t a = r.find("lm_head.weight"), b = r.find("model.embed_tokens.weight"),
         c = r.find("model.norm.weight");
  ASSERT_NE(c, std::string::npos);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
}

TEST(Inspect, SingleFileWithoutOrWithBrokenConfig) {
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"w", Tensor::from_f32({1, 2, 3, 4, 5, 6}, {2, 3})}});
  std::string r = inspect_report(dir.file("model.safetensors"));
  EXPECT_HAS(r, "tensors: 1");
  EXPECT_EQ(line_with(r, "  w "), "  w     F32   [2, 3]  6");
  EXPECT_HAS(r, "F32   24 (24 B)");
  EXPECT_HAS(r, "config: none");
  write_bytes(dir.file("config.json"), "{\"model_type\": \"llama\",");
  r = inspect_report(dir.path());
  EXPECT_HAS(r, "config: error: ");
  EXPECT_HAS(r, "config.json: malformed JSON");
  EXPECT_EQ(format_bytes(3u << 30), "3.00 GiB");
}

}  // namespace
