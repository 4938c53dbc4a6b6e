// linear_forward and matmul on the CPU against float64 references; shape errors; the thread default.
#include "ops/matmul.h"

#include <omp.h>

#include <cstdlib>
#include <thread>

#include "op_test_util.h"
#include "ops/cpu/cpu_ops.h"

using namespace qtune;
using namespace qtune_test;

static std::vector<double> ref_linear(const Tensor& x, const Tensor& w, const Tensor* b) {
  int64_t O = w.size(0), I = w.size(1), N = x.numel() / I;
  auto xd = to_f64(x), wd = to_f64(w);
  std::vector<double> bd = b ? to_f64(*b) : std::vector<double>(O, 0.0);
  std::vector<double> y(N * O);
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) {
      double s = bd[o];
      for (int64_t i = 0; i < I; i++) s += xd[n * I + i] * wd[o * I + i];
      y[n * O + o] = s;
    }
  return y;
}

TEST(Linear, MatchesFloat64ReferenceOverShapes) {
  // Decode (N = 1), odd sizes, and sizes that split over rows and over columns.
  struct Case {
    int64_t n, i, o;
    bool bias;
  };
  for (Case c : {Case{1, 64, 96, false}, Case{1, 256, 1000, true}, Case{37, 70, 129, true},
                 Case{300, 64, 20, false}, Case{128, 256, 384, true}}) {
    Tensor x = randn({c.n, c.i}), w = randn({c.o, c.i}, 0.1f), b = randn({c.o});
    Tensor y = Tensor::empty({c.n, c.o}, DType::F32);
    linear_forward(y, x, w, c.bias ? &b : nullptr);
    double err = rel_err(y, ref_linear(x, w, c.bias ? &b : nullptr));
    EXPECT_LT(err, 1e-5) << c.n << "x" << c.i << "->" << c.o;
  }
}

TEST(Linear, AcceptsLeadingDims) {
  Tensor x = randn({2, 5, 32}), w = randn({48, 32});
  Tensor y = Tensor::empty({2, 5, 48}, DType::F32);
  linear_forward(y, x, w);
  EXPECT_LT(rel_err(y, ref_linear(x, w, nullptr)), 1e-5);
}

TEST(Linear, ShapeErrorsNameTheArgument) {
  Tensor x = randn({4, 32}), w = randn({16, 31}), y = Tensor::empty({4, 16}, DType::F32);
  expect_error([&] { linear_forward(y, x, w); }, ErrorKind::Shape, {"linear_forward", "'x'", "last dim 31"});
  Tensor w2 = randn({16, 32}), b = randn({15});
  expect_error([&] { linear_forward(y, x, w2, &b); }, ErrorKind::Shape, {"'bias'", "[16]", "F32[15]"});
  Tensor wb = w2.to_dtype(DType::BF16);
  expect_error([&] { linear_forward(y, x, wb); }, ErrorKind::Shape, {"'w' must be F32", "BF16"});
}

TEST(Linear, MultiWeightsEqualOneCallEach) {
  // q/k/v-like weights sharing one input: each output as its own linear_forward computes it.
  Tensor x = randn({3, 40}), wq = randn({48, 40}, 0.1f), wk = randn({16, 40}, 0.1f),
         wv = randn({16, 40}, 0.1f);
  Tensor q = Tensor::empty({3, 48}, DType::F32), k = Tensor::empty({3, 16}, DType::F32),
         v = Tensor::empty({3, 16}, DType::F32);
  linear_forward_multi({&q, &k, &v}, x, {&wq, &wk, &wv});
  EXPECT_LT(rel_err(q, ref_linear(x, wq, nullptr)), 1e-5);
  EXPECT_LT(rel_err(k, ref_linear(x, wk, nullptr)), 1e-5);
  EXPECT_LT(rel_err(v, ref_linear(x, wv, nullptr)), 1e-5);
  expect_error(
      [&] {
        linear_forward_multi({&q, &k}, x, {&wq});
      },
      ErrorKind::Shape, {"linear_forward_multi", "2 outputs and 1 weights"});
  expect_error(
      [&] {
        linear_forward_multi({&q, &k}, x, {&wq, &wq});
      },
      ErrorKind::Shape, {"linear_forward", "'out'"});
}

TEST(Matmul, AllTransposesWithAlphaBeta) {
  for (int64_t M : {45, 1})       // M = 1 takes the GEMV path
    for (int64_t N : {70, 3000})  // 1 x 3000 x 700 (4.2 M flops) splits over threads
      for (int64_t K : {33, 700})
        for (int ta = 0; ta < 2; ta++)
          for (int tb = 0; tb < 2; tb++) {
            Tensor a = ta ? randn({K, M}) : randn({M, K});
            Tensor b = tb ? randn({N, K}) : randn({K, N});
            Tensor c = randn({M, N});
            auto ad = to_f64(a), bd = to_f64(b), cd = to_f64(c);
            std::vector<double> want(M * N);
            for (int64_t m = 0; m < M; m++)
              for (int64_t n = 0; n < N; n++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                  s += (ta ? ad[k * M + m] : ad[m * K + k]) * (tb ? bd[n * K + k] : bd[k * N + n]);
                want[m * N + n] = 0.5 * s + 2.0 * cd[m * N + n];
              }
            matmul(c, a, b, ta, tb, 0.5f, 2.0f);
            EXPECT_LT(rel_err(c, want), 1e-5)
                << M << "x" << N << "x" << K << " trans_a " << ta << " trans_b " << tb;
          }
  Tensor a = randn({3, 4}), b = randn({5, 6}), c = randn({3, 6});
  expect_error([&] { matmul(c, a, b, false, false); }, ErrorKind::Shape, {"matmul", "inner dims differ"});
}

TEST(Threads, DefaultIsOnePerCore) {
  if (std::getenv("OMP_NUM_THREADS")) GTEST_SKIP() << "OMP_NUM_THREADS is set";
  EXPECT_EQ(cpu::num_threads(), omp_get_num_procs());
  EXPECT_EQ((unsigned)cpu::num_threads(), std::thread::hardware_concurrency());
}

TEST(Threads, OneThreadAndAllThreadsAgree) {
  Tensor x = randn({64, 128}), w = randn({256, 128});
  Tensor y1 = Tensor::empty({64, 256}, DType::F32), yn = Tensor::empty({64, 256}, DType::F32);
  int nt = cpu::num_threads();
  cpu::set_num_threads(1);
  linear_forward(y1, x, w);
  cpu::set_num_threads(nt);
  linear_forward(yn, x, w);
  EXPECT_LT(rel_err(yn, to_f64(y1)), 1e-6);
}
