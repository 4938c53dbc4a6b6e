// run_finetune as 2 data-parallel CPU ranks (forked, StoreCommunicator over localhost) against one
// process with gradient accumulation 2, same data order and dropout masks: the per-step losses agree to
// float rounding (the sums are taken in another order), and only rank 0 writes the adapter. A rank killed
// mid-run makes the other stop with an error naming it within the heartbeat bound (also under --fsdp).
// --fsdp (sharded base weights and optimizer states) and the overlapped gradient all-reduce change no
// loss; --fsdp checkpoints resume exactly.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "core/error.h"
#include "dist_test_util.h"
#include "io/safetensors.h"
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

// Runs `ranks` ranks (1: one process) of tiny_args(dir) changed by edit; every rank writes its per-step
// losses to dir/losses.<rank> and rank r's TrainResult is handed to check (its return: the exit code).
std::vector<int> run_trainer(const std::string& dir, int ranks, const std::function<void(TrainerArgs&)>& edit,
                             const std::function<int(int, const TrainResult&)>& check = nullptr) {
  const int port = test::fresh_port();
  const TrainerArgs base = tiny_args(dir);  // the data file, written once before the ranks read it
  return test::run_ranks(ranks, [&](int r) {
    if (ranks > 1)
      set_rank_env(r, ranks, port);
    else
      setenv("OMP_NUM_THREADS", "1", 1);
    TrainerArgs a = base;
    edit(a);
    TrainResult res = run_finetune(a);
    std::ofstream f(dir + "/losses." + std::to_string(r));
    f.precision(17);
    for (double l : res.losses) f << l << "\n";
    return check ? check(r, res) : 0;
  });
}

std::vector<double> read_losses(const std::string& dir, int rank, size_t n) {
  std::vector<double> v(n, -1);
  std::ifstream f(dir + "/losses." + std::to_string(rank));
  for (double& l : v) f >> l;
  return v;
}

// --fsdp on 2 ranks (QLoRA: NF4 + double quant base, sharded with its optimizer states) against plain data
// parallelism without the overlapped all-reduce and one process with accumulation 2: the same per-step
// losses; each rank holds about half the base weights; --fsdp with overlap off too.
TEST(DataParallelTrainer, FsdpEqualsDataParallelAndOneRank) {
  const std::string dir = testing::TempDir() + "qtune_fsdp_trainer";
  fs::remove_all(dir);
  auto qlora = [](TrainerArgs& a) {
    a.load.load_in_4bit = true;
    a.load.double_quant = true;
  };
  auto half = [](int, const TrainResult& res) {
    const double share = (double)res.fsdp_shard_bytes / (double)res.fsdp_full_bytes;
    std::fprintf(stderr, "fsdp: %ld of %ld base bytes resident (%.4f), gather buffers %ld\n",
                 (long)res.fsdp_shard_bytes, (long)res.fsdp_full_bytes, share, (long)res.fsdp_buffer_bytes);
    return res.fsdp_full_bytes > 0 && share > 0.49 && share < 0.52 && res.losses.size() == 3 ? 0 : 1;
  };
  ASSERT_EQ(run_trainer(
                dir + "/fsdp", 2,
                [&](TrainerArgs& a) {
                  qlora(a);
                  a.fsdp = true;
                },
                half),
            (std::vector<int>{0, 0}));
  ASSERT_EQ(run_trainer(dir + "/fsdp_no_overlap", 2,
                        [&](TrainerArgs& a) {
                          qlora(a);
                          a.fsdp = true;
                          a.overlap_grad_reduce = false;
                        }),
            (std::vector<int>{0, 0}));
  ASSERT_EQ(run_trainer(dir + "/dp_no_overlap", 2,
                        [&](TrainerArgs& a) {
                          qlora(a);
                          a.overlap_grad_reduce = false;
                        }),
            (std::vector<int>{0, 0}));
  ASSERT_EQ(run_trainer(dir + "/one", 1,
                        [&](TrainerArgs& a) {
                          qlora(a);
                          a.gradient_accumulation_steps = 2;
                        }),
            std::vector<int>{0});
  const std::vector<double> one = read_losses(dir + "/one", 0, 3);
  EXPECT_NE(one[0], one[2]);
  for (const char* run : {"fsdp", "fsdp_no_overlap", "dp_no_overlap"})
    for (int r = 0; r < 2; ++r) {
      const std::vector<double> l = read_losses(dir + "/" + run, r, 3);
      for (size_t i = 0; i < 3; ++i)
        EXPECT_NEAR(l[i], one[i], 1e-5 * one[i]) << run << " rank " << r << " step " << i + 1;
    }
  // Sharding and overlap change no value: the 2-rank runs agree exactly.
  EXPECT_EQ(read_losses(dir + "/fsdp", 0, 3), read_losses(dir + "/dp_no_overlap", 0, 3));
  EXPECT_EQ(read_losses(dir + "/fsdp_no_overlap", 1, 3), read_losses(dir + "/dp_no_overlap", 1, 3));
  EXPECT_TRUE(fs::exists(dir + "/fsdp/out/adapter_model.safetensors"));
}

// --fsdp checkpoints: rank 0 writes one optimizer.safetensors with every rank's states (the file an
// unsharded run writes); a run stopped after step 2 and resumed ends exactly like the uninterrupted one,
// and the checkpoint also resumes in one process.
TEST(DataParallelTrainer, FsdpResumeIsExact) {
  const std::string dir = testing::TempDir() + "qtune_fsdp_resume";
  fs::remove_all(dir);
  auto base = [](TrainerArgs& a) {
    a.fsdp = true;
    a.max_steps = 4;
    a.save_steps = 2;
  };
  ASSERT_EQ(run_trainer(dir + "/whole", 2, base), (std::vector<int>{0, 0}));
  ASSERT_EQ(run_trainer(dir + "/cut", 2,
                        [&](TrainerArgs& a) {
                          base(a);
                          a.stop_after_steps = 2;
                        }),
            (std::vector<int>{0, 0}));
  // Every trainable tensor has its states in the merged file: 8 layers x 3 modules x (A, B).
  auto f = SafetensorsFile::open(dir + "/cut/out/checkpoint-2/optimizer.safetensors");
  auto whole_opt = SafetensorsFile::open(dir + "/whole/out/checkpoint-2/optimizer.safetensors");
  EXPECT_EQ(f->tensors().size(), 8u * 3 * 2 * 2);  // state1, state2 each
  for (const TensorInfo& t : whole_opt->tensors())
    EXPECT_EQ(f->get(t.name).to_f32_vector(), whole_opt->get(t.name).to_f32_vector()) << t.name;
  fs::create_directories(dir + "/cut1");
  fs::copy(dir + "/cut/out", dir + "/cut1/out", fs::copy_options::recursive);
  ASSERT_EQ(run_trainer(dir + "/cut", 2,
                        [&](TrainerArgs& a) {
                          base(a);
                          a.resume = true;
                        }),
            (std::vector<int>{0, 0}));
  const std::vector<double> whole = read_losses(dir + "/whole", 0, 4);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(read_losses(dir + "/cut", r, 4), whole) << "rank " << r;
  // One process, accumulation 2, from the sharded checkpoint: the same steps 3 and 4.
  ASSERT_EQ(run_trainer(dir + "/cut1", 1,
                        [&](TrainerArgs& a) {
                          a.max_steps = 4;
                          a.save_steps = 2;
                          a.gradient_accumulation_steps = 2;
                          a.resume = true;
                        }),
            std::vector<int>{0});
  const std::vector<double> one = read_losses(dir + "/cut1", 0, 4);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(one[i], whole[i], 1e-5 * whole[i]) << "step " << i + 1;
}

void kill_one_rank(const std::string& dir, bool fsdp) {
  fs::remove_all(dir);
  const int port = test::fresh_port();
  auto codes = test::run_ranks(2, [&](int r) {
    set_rank_env(r, 2, port);
    setenv("QTUNE_HEARTBEAT_TIMEOUT", "2", 1);
    TrainerArgs a = tiny_args(dir);
    a.fsdp = fsdp;
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

TEST(DataParallelTrainer, KilledRankStopsTheOtherWithItsName) {
  kill_one_rank(testing::TempDir() + "qtune_dp_kill", false);
}

TEST(DataParallelTrainer, KilledRankStopsTheOtherWithItsNameFsdp) {
  kill_one_rank(testing::TempDir() + "qtune_fsdp_kill", true);
}

}  // namespace
}  // namespace qtune
