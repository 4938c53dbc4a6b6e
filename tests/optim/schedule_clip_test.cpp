// LR schedules against transformers' get_scheduler values (schedules.json, exact to 1e-12 relative),
// clip_grad_norm against torch.nn.utils.clip_grad_norm_, and transformers' weight-decay grouping.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "optim/clip.h"
#include "optim/param_groups.h"
#include "optim/schedule.h"

using namespace qtune;

TEST(Schedule, MatchesTransformers) {
  auto j =
      parse_json_text(read_text_file(std::string(QTUNE_FIXTURES) + "/optim/schedules.json", ErrorKind::Io),
                      "schedules.json", ErrorKind::Format);
  int cases = 0;
  double worst = 0;
  for (const auto& c : j["cases"]) {
    LrSchedule s;
    s.kind = schedule_kind_from_name(c["kind"].get<std::string>());
    s.base_lr = c["base_lr"].get<double>();
    s.total_steps = c["total"].get<int64_t>();
    s.warmup_steps = warmup_steps_from_ratio(c["warmup_ratio"].get<double>(), s.total_steps);
    EXPECT_EQ(s.warmup_steps, c["warmup_steps"].get<int64_t>());
    const auto& lrs = c["lrs"];
    for (size_t t = 0; t < lrs.size(); ++t) {
      double want = std::stod(lrs[t].get<std::string>());
      double got = s.lr((int64_t)t);
      double err = std::fabs(got - want) / std::max(std::fabs(want), 1e-300);
      if (want == 0) err = std::fabs(got);
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-12) << c["kind"] << " total " << s.total_steps << " step " << t << " got " << got
                            << " want " << want;
    }
    ++cases;
  }
  std::printf("schedules: %d cases, worst relative error %.2e\n", cases, worst);
  EXPECT_EQ(cases, 12);
  EXPECT_EQ(warmup_steps_from_ratio(0.03, 1000), 30);
  EXPECT_EQ(warmup_steps_from_ratio(0.031, 1000), 31);
  EXPECT_EQ(warmup_steps_from_ratio(5, 1000), 5);
  std::string msg;
  try {
    schedule_kind_from_name("polynomial");
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("cosine"), std::string::npos) << msg;
}

TEST(ClipGradNorm, MatchesTorch) {
  auto f = SafetensorsFile::open(std::string(QTUNE_FIXTURES) + "/optim/optim_golden.safetensors");
  for (const char* tag : {"clip", "noclip"}) {
    std::vector<ParamGroup> groups(2);
    int k = 0;
    for (const char* n : {"w_big", "w_odd", "b_small"}) {
      Tensor g = f->get(std::string("grads.") + n).slice0(0, 1).clone();
      float* x = g.data<float>();
      for (int64_t i = 0; i < g.numel(); ++i) x[i] = x[i] * 3.0f;
      Tensor p = f->get(std::string("init.") + n);
      groups[k++ % 2].params.push_back({n, p, g.reshape(p.shape())});
    }
    float total = clip_grad_norm(groups, std::string(tag) == "clip" ? 0.05 : 100.0);
    float want = f->get(std::string(tag) + ".total").data<float>()[0];
    EXPECT_NEAR(total, want, 2e-7 * want) << tag;
    for (auto& g : groups)
      for (auto& p : g.params) {
        std::vector<float> a = p.grad.to_f32_vector();
        std::vector<float> b = f->get(std::string(tag) + "." + p.name + ".grad").to_f32_vector();
        double num = 0, den = 0;
        for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
        EXPECT_LT(std::sqrt(num / den), 1e-6) << tag << " " << p.name;
      }
    std::printf("clip %s: total norm %.9g (torch %.9g)\n", tag, total, want);
  }
}

TEST(ParamGroups, DecayExcludesNormsAndBiases) {
  EXPECT_TRUE(decays("model.layers.0.self_attn.q_proj.lora_A.weight"));
  EXPECT_TRUE(decays("model.layers.0.mlp.down_proj.weight"));
  EXPECT_TRUE(decays("model.embed_tokens.weight"));
  EXPECT_TRUE(decays("lm_head.weight"));
  EXPECT_FALSE(decays("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(decays("model.layers.0.post_attention_layernorm.weight"));
  EXPECT_FALSE(decays("model.norm.weight"));
  EXPECT_FALSE(decays("model.layers.3.self_attn.q_norm.weight"));
  EXPECT_FALSE(decays("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(decays("norm"));
  EXPECT_TRUE(decays("model.normal_thing.weight"));
  std::vector<ParamRef> ps = {{"a.weight", Tensor::zeros({1}, DType::F32), {}},
                              {"a.bias", Tensor::zeros({1}, DType::F32), {}},
                              {"model.norm.weight", Tensor::zeros({1}, DType::F32), {}}};
  auto groups = group_by_weight_decay(ps, 0.1);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].params.size(), 1u);
  EXPECT_EQ(groups[0].weight_decay, 0.1);
  EXPECT_EQ(groups[1].params.size(), 2u);
  EXPECT_EQ(groups[1].weight_decay, 0.0);
}
