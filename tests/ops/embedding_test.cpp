// embedding_forward on the CPU: exact row copies (F32 table), BF16 rows widened exactly, bad ids.
#include "ops/embedding.h"

#include "op_test_util.h"

using namespace qtune;
using namespace qtune_test;

TEST(Embedding, GathersRows) {
  for (int64_t C : {24, 4096}) {  // below and above cpu::kParallelMinWork
    int64_t V = 50;
    Tensor table = randn({V, C});
    std::vector<int32_t> idv;
    for (int i = 0; i < 17; i++) idv.push_back((int32_t)(rng()() % V));
    Tensor ids = Tensor::from_i32(idv, {1, 17});
    Tensor out = Tensor::empty({1, 17, C}, DType::F32);
    embedding_forward(out, ids, table);
    auto td = to_f64(table);
    std::vector<double> want;
    for (int32_t id : idv)
      for (int64_t c = 0; c < C; c++) want.push_back(td[id * C + c]);
    EXPECT_EQ(rel_err(out, want), 0.0);

    Tensor tb = table.to_dtype(DType::BF16);
    embedding_forward(out, ids, tb);
    auto tbd = to_f64(tb);
    want.clear();
    for (int32_t id : idv)
      for (int64_t c = 0; c < C; c++) want.push_back(tbd[id * C + c]);
    EXPECT_EQ(rel_err(out, want), 0.0);
  }
}

TEST(Embedding, RejectsIdsOutsideVocabulary) {
  Tensor table = randn({10, 4}), out = Tensor::empty({2, 4}, DType::F32);
  Tensor ids = Tensor::from_i32({3, 10}, {2});
  expect_error([&] { embedding_forward(out, ids, table); }, ErrorKind::Shape,
               {"token id 10", "position 1", "[0, 10)"});
  Tensor bad_out = Tensor::empty({3, 4}, DType::F32);
  Tensor ok_ids = Tensor::from_i32({1, 2}, {2});
  expect_error([&] { embedding_forward(bad_out, ok_ids, table); }, ErrorKind::Shape, {"3 rows for 2 ids"});
}
