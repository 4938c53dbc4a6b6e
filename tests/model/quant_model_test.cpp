// Quantized models against transformers + bitsandbytes (fixtures tests/fixtures/quant_model, made by
// tools/make_quant_model_fixtures.py from the tiny models in tests/fixtures/model): the saved folders load
// without options and give bitsandbytes' logits; quantizing the dense source while loading gives the same;
// qtune's quantization of the source weights equals the bitsandbytes-written tensors byte for byte; the
// KV-cached single-token path (fused 4-bit GEMV / one-row int8) agrees with the many-token path.
#include <cstring>
#include <filesystem>

#include "io/json_util.h"
#include "model/llama_model.h"
#include "model/quant_linear.h"
#include "model/quant_load.h"
#include "model_test_util.h"
#include "quant/bnb_format.h"

using namespace qtune;
using namespace qtune_test;

namespace {

std::string qfixture(const std::string& name) {
  return std::string(QTUNE_FIXTURES) + "/quant_model/" + name;
}

Tensor qexpected(const std::string& name, const std::string& tensor) {
  return SafetensorsFile::open(qfixture(name) + "/logits.safetensors")->get(tensor).clone();
}

struct Case {
  const char* name;  // fixture folder
  const char* src;   // tests/fixtures/model source
  double tol;        // relative norm error of the logits vs transformers + bitsandbytes
  int quantized;     // Linear modules transformers quantized (of 14 in the decoder, and lm_head)
};

// f32 compute: only summation order differs. bf16 compute: bitsandbytes' torch bf16 matmul rounds
// differently inside (qtune accumulates in f32, rounding x, W, bias and the result as bf16 would).
// int8: the int32 products are exact; the f32 rescaling and outlier sums differ in order.
const Case kCases[] = {{"mistral_nf4_dq", "mistral", 1e-5, 14},
                       {"mistral_fp4_bf16", "mistral", 1e-3, 14},
                       {"llama_int8", "llama", 1e-4, 14},
                       {"qwen2_int8", "qwen2", 1e-4, 14},
                       // packed bytes stored as BF16 (bnb_4bit_quant_storage); layer 1's attention and every
                       // down_proj kept dense by llm_int8_skip_modules (a prefix key and a suffix key)
                       {"mistral_nf4_bf16_storage_skip", "mistral", 1e-5, 8},
                       // llm_int8_skip_modules ["o_proj"] replaces the default, so lm_head is quantized too
                       {"mistral_fp4_dq_lm_head", "mistral", 1e-5, 13}};

double logits_err(const LlamaModel& m, const std::string& name) {
  Tensor ids = qexpected(name, "ids");      // I32 [1, T]
  Tensor want = qexpected(name, "logits");  // F32 [1, T, V]
  return rel_err(m.forward(ids).to_f32_vector(), want.to_f32_vector());
}

}  // namespace

TEST(QuantModel, BitsandbytesFoldersLoadWithoutOptionsAndMatchLogits) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    LlamaModel m = LlamaModel::load(qfixture(c.name));
    bool present = false;
    const LoadOptions opts = read_quantization_config(qfixture(c.name), &present);
    std::vector<const Linear*> linears = {&m.lm_head()};
    for (const LlamaLayer& L : m.layers())
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) linears.push_back(l);
    int quantized = 0;
    for (const Linear* l : linears) {
      const bool skip = skip_quantization(opts, l->name);
      quantized += !skip;
      EXPECT_EQ((bool)l->q4, opts.load_in_4bit && !skip) << l->name;
      EXPECT_EQ((bool)l->q8, opts.load_in_8bit && !skip) << l->name;
      EXPECT_EQ(l->weight.defined(), skip) << l->name;
    }
    EXPECT_EQ(quantized, c.quantized);
    EXPECT_TRUE(m.unused_tensors().empty()) << m.unused_tensors()[0];
    const double err = logits_err(m, c.name);
    EXPECT_LT(err, c.tol);
    std::printf("[ %s ] logits rel err vs transformers+bnb %.3g (tol %.0e)\n", c.name, err, c.tol);
  }
}

TEST(QuantModel, QuantizeWhileLoadingMatchesTheSavedFolder) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    bool present = false;
    LoadOptions opts = read_quantization_config(qfixture(c.name), &present);
    ASSERT_TRUE(present);
    LlamaModel m = LlamaModel::load(fixture(c.src), Device::CPU, opts);
    EXPECT_LT(logits_err(m, c.name), c.tol);
  }
}

TEST(QuantModel, QtuneQuantizationEqualsBitsandbytesBytes) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    bool present = false;
    LoadOptions opts = read_quantization_config(qfixture(c.name), &present);
    WeightStore src = WeightStore::open(fixture(c.src));
    WeightStore bnb = WeightStore::open(qfixture(c.name));
    int checked = 0;
    for (const std::string& n : src.names()) {
      if (n.find("_proj.weight") == std::string::npos && n != "lm_head.weight") continue;
      const std::string prefix = n.substr(0, n.size() - 7);  // the module name
      if (skip_quantization(opts, prefix)) {                 // kept dense: the source tensor as it is
        ASSERT_EQ(bnb.info(n).dtype, DType::F32) << n;
        EXPECT_EQ(std::memcmp(bnb.get(n).raw(), src.get(n).raw(), src.get(n).nbytes()), 0) << n;
        continue;
      }
      std::vector<std::pair<std::string, Tensor>> ours;
      if (opts.load_in_4bit) {
        ours = bnb_4bit_entries(quantize_4bit(src.get(n), opts.quant_type, 64, opts.double_quant), n);
      } else {
        auto l = quantize_linear_8bit(src.get(n), opts.llm_int8_threshold);
        ours = {{n, l->w.q}, {prefix + ".SCB", l->w.scale}};
      }
      for (const auto& kv : ours) {
        ASSERT_TRUE(bnb.has(kv.first)) << kv.first;
        Tensor theirs = bnb.get(kv.first);
        if (kv.first == n && theirs.dtype() == DType::BF16) {  // bnb_4bit_quant_storage: [bytes / 2, 1]
          ASSERT_EQ(theirs.shape(), (Shape{kv.second.size(0) / 2, 1})) << kv.first;
        } else {
          ASSERT_EQ(theirs.dtype(), kv.second.dtype()) << kv.first;
          ASSERT_EQ(theirs.shape(), kv.second.shape()) << kv.first;
        }
        EXPECT_EQ(std::memcmp(theirs.raw(), kv.second.raw(), theirs.nbytes()), 0) << kv.first;
      }
      checked++;
    }
    EXPECT_EQ(checked, c.quantized);
  }
}

TEST(QuantModel, SingleTokenDecodeMatchesFullForward) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    LlamaModel m = LlamaModel::load(qfixture(c.name));
    Tensor ids = qexpected(c.name, "ids");  // [1, T]
    const int64_t T = ids.size(1), V = m.config().vocab_size;
    std::vector<float> full = m.forward(ids).to_f32_vector();  // [T·V]
    KVCache cache = m.make_cache(1, T);
    std::vector<float> got, want(full.end() - 3 * V, full.end());
    m.forward(ids.reshape({T}).slice0(0, T - 3).reshape({1, T - 3}), cache, 0);
    for (int64_t t = T - 3; t < T; t++) {  // one token at a time: the GEMV paths
      Tensor one = ids.reshape({T}).slice0(t, 1).reshape({1, 1});
      std::vector<float> l = m.forward(one, cache, t).to_f32_vector();
      got.insert(got.end(), l.begin(), l.end());
    }
    // 4-bit: the same weights, only the summation differs (bf16 compute rounds it, so looser). LLM.int8
    // picks outlier columns over the rows of one call, so one token at a time may decompose differently.
    const std::string n = c.name;
    const double tol = n.find("int8") != std::string::npos   ? 3e-2
                       : n.find("bf16") != std::string::npos ? 1e-3
                                                             : 1e-5;
    EXPECT_LT(rel_err(got, want), tol);
  }
}

// llm_int8_skip_modules / --skip-modules keys decide as transformers' should_convert_module does (the
// fixture holds its answers: suffix keys, prefix keys at a module boundary, regex keys).
TEST(QuantModel, SkipModulesMatchTransformers) {
  const std::string path = qfixture("skip_modules.json");
  const nlohmann::json cases = nlohmann::json::parse(read_text_file(path, ErrorKind::Io));
  ASSERT_GE(cases.size(), 100u);
  for (const auto& c : cases) {
    LoadOptions opts;
    opts.skip_modules = c["keys"].get<std::vector<std::string>>();
    const std::string name = c["name"].get<std::string>();
    EXPECT_EQ(skip_quantization(opts, name), c["skip"].get<bool>()) << c.dump();
  }
}

TEST(QuantModel, SkipModulesBadRegexNamesTheKey) {
  LoadOptions opts;
  opts.skip_modules = {"lm_head", "layers.(1"};
  try {
    skip_quantization(opts, "model.layers.1.mlp.up_proj");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.(1"), std::string::npos) << e.what();
  }
}
