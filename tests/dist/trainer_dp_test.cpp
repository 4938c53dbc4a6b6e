// run_finetune as 2 data-parallel CPU ranks (forked, StoreCommunicator over localhost) against one
// process with gradient accumulation 2, same data order and dropout masks: the per-step losses agree to
// float rounding (the sums are taken in another order), and only rank 0 writes the adapter. A rank killed
// mid-run makes the other stop with an error naming it within the heartbeat bound.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "dist_test_util.h"
#include "peft/lora_config.h"
#include "train/trainer.h"

namespace qtune {
namespace {

namespace fs = std::filesystem;

std::string tiny_data(const std::string& dir, int rows) {
  fs::create_directories(dir);
  const std::string p = dir + "/data.jsonl";
  std::ofstream f(p);
  for (int i = 0; i < rows; ++i)
    f << "{\"prompt\": \"Q: what is " << i << " times two?\\nA:\", \"completion\": \" It is " << 2 * i
      << ".\"}\n";
  return p;
}

TrainerArgs tiny_args(const std::string& dir) {
  TrainerArgs a;
  a.device = "cpu";
  a.model_dir = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
  a.data_path = tiny_data(dir, 24);
  a.out_dir = dir + "/out";
  a.lora.r = 4;
  a.lora.lora_alpha = 8;
  set_target_modules(a.lora, "q_proj,v_proj,down_proj");
  a.lora.lora_dropout = 0.1;  // the masks follow the global micro-batch position: same on both sides
  a.learning_rate = 3e-3;
  a.max_steps = 3;
  a.per_device_train_batch_size = 2;
  a.max_seq_length = 64;
  a.quiet = true;
  return a;
}

void set_rank_env(int rank, int world, int port) {
  setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
  setenv("RANK", std::to_string(rank).c_str(), 1);
  setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  setenv("OMP_NUM_THREADS", "1", 1);
}

TEST(DataParallelTrainer, TwoRanksEqualOneRankWithAccumulationTwo) {
  const std::string dir = testing::TempDir() + "qtune_dp_trainer";
  fs::remove_all(dir);
  const int port = test::fresh_port();
  auto codes = test::run_ranks(2, [&](int r) {
    set_rank_env(r, 2, port);
    TrainerArgs a = tiny_args(dir + "/dp");
    a.gradient_accumulation_steps = 1;
    TrainResult res = run_finetune(a);
    std::ofstream f(dir + "/dp/losses." + std::to_string(r));
    f.precision(17);
    for (double l : res.losses) f << l << "\n";
    return res.losses.size() == 3 ? 0 : 1;
  });
  ASSERT_EQ(codes, (std::vector<int>{0, 0}));
  // The one-process run in a child too: this test process never runs OpenMP itself, so later forks stay safe.
  ASSERT_EQ(test::run_ranks(1,
                            [&](int) {
                              setenv("OMP_NUM_THREADS", "1", 1);
                              TrainerArgs a = tiny_args(dir + "/one");
                              a.gradient_accumulation_steps = 2;
                              TrainResult res = run_finetune(a);
                              std::ofstream f(dir + "/one/losses");
                              f.precision(17);
                              for (double l : res.losses) f << l << "\n";
                              return res.losses.size() == 3 ? 0 : 1;
                            }),
            std::vector<int>{0});
  std::vector<double> one(3);
  std::ifstream fo(dir + "/one/losses");
  for (double& l : one) fo >> l;
  for (int r = 0; r < 2; ++r) {
    std::ifstream f(dir + "/dp/losses." + std::to_string(r));
    for (size_t i = 0; i < 3; ++i) {
      double l = 0;
      f >> l;
      EXPECT_NEAR(l, one[i], 1e-5 * one[i]) << "rank " << r << " step " << i + 1;
    }
  }
  EXPECT_NE(one[0], one[2]);
  EXPECT_TRUE(fs::exists(dir + "/dp/out/adapter_model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/dp/out/training_log.csv"));
}

TEST(DataParallelTrainer, KilledRankStopsTheOtherWithItsName) {
  const std::string dir = testing::TempDir() + "qtune_dp_kill";
  fs::remove_all(dir);
  const int port = test::fresh_port();
  auto codes = test::run_ranks(2, [&](int r) {
    set_rank_env(r, 2, port);
    setenv("QTUNE_HEARTBEAT_TIMEOUT", "2", 1);
    TrainerArgs a = tiny_args(dir);
    a.max_steps = 100000;
    if (r == 1)
      std::thread([] {
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        raise(SIGKILL);  // dies mid-run, whatever it is doing
      }).detach();
    const auto t0 = std::chrono::steady_clock::now();
    try {
      run_finetune(a);
      return 1;
    } catch (const Error& e) {
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "rank %d stopped after %.1f s: %s\n", r, took, e.what());
      return std::string(e.what()).find("rank 1") != std::string::npos && took < 60 ? 0 : 2;
    }
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 128 + SIGKILL}));
}

}  // namespace
}  // namespace qtune
