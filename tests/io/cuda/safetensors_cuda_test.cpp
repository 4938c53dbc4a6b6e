// safetensors and CUDA: writing device tensors (copied to the host by the writer) and moving borrowed,
// mmap'd tensors to the device and back. Skipped without a GPU.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "core/allocator.h"
#include "io/safetensors.h"

using namespace qtune;

namespace {

TEST(SafetensorsCuda, WriteDeviceTensorsAndReadBackToDevice) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  std::string tmpl = (std::filesystem::temp_directory_path() / "qtune_io_cuda_XXXXXX").string();
  ASSERT_NE(mkdtemp(&tmpl[0]), nullptr);
  std::string path = tmpl + "/dev.safetensors";
  std::vector<float> v = {1.0f, -2.5f, 3.75f, 0.0f, 1e-3f, -7.0f};
  Tensor host = Tensor::from_f32(v, {2, 3});
  Tensor dev_f32 = host.to(Device::CUDA);
  Tensor dev_bf16 = host.to_dtype(DType::BF16).to(Device::CUDA);
  write_safetensors(path, {{"f32", dev_f32}, {"bf16", dev_bf16}, {"cpu", host}});

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->get("f32").to_f32_vector(), v);
  EXPECT_EQ(f->get("cpu").to_f32_vector(), v);
  EXPECT_EQ(f->get("bf16").to_f32_vector(), host.to_dtype(DType::BF16).to_f32_vector());
  // A borrowed (mmap'd) tensor copied to the device and back keeps its bytes.
  Tensor round = f->get("bf16").to(Device::CUDA).to(Device::CPU);
  EXPECT_EQ(round.to_f32_vector(), f->get("bf16").to_f32_vector());
  std::filesystem::remove_all(tmpl);
}

}  // namespace
