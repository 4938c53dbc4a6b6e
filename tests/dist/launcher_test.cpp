// DistConfig from the environment and launch_local with dummy shell children: every rank gets its
// environment, a failing rank stops the rest within the grace bound and is named, stubborn ranks are killed.
#include "dist/launcher.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>

#include "core/error.h"
#include "dist/dist_config.h"

namespace qtune {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(DistConfig, FromEnvironment) {
  std::map<std::string, std::string> env;
  DistConfig c = dist_config_from_env(&env);
  EXPECT_EQ(c.world_size, 1);
  EXPECT_FALSE(c.distributed());
  env = {{"WORLD_SIZE", "4"},
         {"RANK", "3"},
         {"LOCAL_RANK", "1"},
         {"MASTER_ADDR", "node7"},
         {"MASTER_PORT", "1234"}};
  c = dist_config_from_env(&env);
  EXPECT_EQ(c.world_size, 4);
  EXPECT_EQ(c.rank, 3);
  EXPECT_EQ(c.local_rank, 1);
  EXPECT_EQ(c.master_addr, "node7");
  EXPECT_EQ(c.master_port, 1234);
  env["RANK"] = "4";
  EXPECT_THROW(dist_config_from_env(&env), Error);
  env["RANK"] = "x";
  try {
    dist_config_from_env(&env);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("RANK"), std::string::npos);
  }
}

TEST(DistConfig, PlanRanks) {
  LaunchPlan p{4, 2, 1, "10.0.0.1", 29400};
  DistConfig c = rank_config(p, 2);
  EXPECT_EQ(c.world_size, 8);
  EXPECT_EQ(c.rank, 6);
  EXPECT_EQ(c.local_rank, 2);
  auto env = dist_env(c);
  EXPECT_EQ(env["RANK"], "6");
  EXPECT_EQ(env["NCCL_NVLS_ENABLE"], "0");
  p.node_rank = 2;
  EXPECT_THROW(check_launch_plan(p), Error);
  p = {0, 1, 0, "a", 1};
  EXPECT_THROW(check_launch_plan(p), Error);
}

TEST(Launcher, EveryRankGetsItsEnvironment) {
  LaunchPlan p{3, 2, 1, "127.0.0.1", 29999};
  LaunchResult r = launch_local(
      p, {"/bin/sh", "-c",
          "test \"$WORLD_SIZE\" = 6 && test \"$RANK\" = $((3 + LOCAL_RANK)) && test \"$MASTER_PORT\" = 29999 "
          "&& test \"$NCCL_NVLS_ENABLE\" = 0"});
  EXPECT_EQ(r.exit_code, 0) << r.message;
}

TEST(Launcher, FailingRankStopsTheOthersAndIsNamed) {
  LaunchPlan p{3, 1, 0, "127.0.0.1", 29999};
  LaunchOptions o;
  o.grace_s = 2;
  o.quiet = true;
  const auto t0 = Clock::now();
  LaunchResult r = launch_local(
      p, {"/bin/sh", "-c", "if [ \"$RANK\" = 1 ]; then sleep 0.2; exit 3; fi; exec sleep 30"}, o);
  EXPECT_LT(since(t0), 3.0);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.failed_rank, 1);
  EXPECT_NE(r.message.find("rank 1"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("exited with status 3"), std::string::npos) << r.message;
}

TEST(Launcher, RankIgnoringSigtermIsKilledAfterGrace) {
  LaunchPlan p{2, 1, 0, "127.0.0.1", 29999};
  LaunchOptions o;
  o.grace_s = 0.5;
  o.quiet = true;
  const auto t0 = Clock::now();
  LaunchResult r = launch_local(
      p,
      {"/bin/sh", "-c",
       "trap '' TERM; if [ \"$RANK\" = 0 ]; then sleep 0.2; kill -9 $$; fi; sleep 30 & wait; sleep 30"},
      o);
  EXPECT_LT(since(t0), 3.0);
  EXPECT_EQ(r.failed_rank, 0);
  EXPECT_NE(r.message.find("killed by signal 9"), std::string::npos) << r.message;
}

TEST(Launcher, MissingProgramFails) {
  LaunchPlan p{2, 1, 0, "127.0.0.1", 29999};
  LaunchOptions o;
  o.quiet = true;
  LaunchResult r = launch_local(p, {"/nonexistent/qtune-child"}, o);
  EXPECT_EQ(r.exit_code, 127);
}

}  // namespace
}  // namespace qtune
