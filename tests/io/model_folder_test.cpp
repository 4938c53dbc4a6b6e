// io/model_folder.h: shard planning as huggingface_hub splits a state dict, and max_shard_size strings.
#include "io/model_folder.h"

#include <gtest/gtest.h>

#include "core/error.h"

using namespace qtune;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(ModelFolder, ShardPlanAndSizes) {
  // huggingface_hub's rule: close the open shard when the next group would pass the limit; a group over
  // the limit gets its own shard, listed before the open one.
  std::vector<std::vector<size_t>> want = {{0, 1}, {3}, {2, 4}, {5}};
  EXPECT_EQ(plan_shards({4, 5, 6, 20, 3, 9}, 10), want);
  EXPECT_EQ(plan_shards({}, 10).size(), 1u);
  EXPECT_EQ(parse_shard_size("5GB"), 5000000000LL);
  EXPECT_EQ(parse_shard_size("100MiB"), 100LL << 20);
  EXPECT_EQ(parse_shard_size("10kb"), 10000);
  EXPECT_EQ(parse_shard_size("123"), 123);
  EXPECT_NE(error_of([] { parse_shard_size("5 parsecs"); }).find("5 parsecs"), std::string::npos);
  EXPECT_NE(error_of([] { parse_shard_size("0GB"); }).find("0GB"), std::string::npos);
}
