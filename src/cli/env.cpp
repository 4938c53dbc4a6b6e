// `qtune env`: what this machine offers qtune (GPU, driver and runtime versions, CPU features, BLAS,
// threads) and which backends are usable, with a hint for each missing piece. Setup problems are the
// most common complaint about GPU libraries, so this must never crash: it reports what it cannot find.
#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "cli/commands.h"

#ifdef QTUNE_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>
#endif

namespace qtune::cli {

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      return p == std::string::npos ? line : line.substr(p + 2);
    }
  return "unknown";
}

std::string cpu_features() {
  std::string s;
#if defined(__x86_64__)
  __builtin_cpu_init();
  const struct {
    const char* name;
    bool on;
  } features[] = {{"sse4.2", (bool)__builtin_cpu_supports("sse4.2")},
                  {"avx", (bool)__builtin_cpu_supports("avx")},
                  {"avx2", (bool)__builtin_cpu_supports("avx2")},
                  {"fma", (bool)__builtin_cpu_supports("fma")},
                  {"avx512f", (bool)__builtin_cpu_supports("avx512f")},
                  {"avx512bw", (bool)__builtin_cpu_supports("avx512bw")},
                  {"avx512vnni", (bool)__builtin_cpu_supports("avx512vnni")},
                  {"avx512bf16", (bool)__builtin_cpu_supports("avx512bf16")}};
  for (const auto& f : features)
    if (f.on) s += std::string(s.empty() ? "" : " ") + f.name;
#else
  s = "(not x86-64)";
#endif
  return s.empty() ? "none detected" : s;
}

void print_cuda() {
#ifdef QTUNE_HAVE_CUDA
  std::printf("CUDA backend:  built (CUDA toolkit %d.%d, target sm_%s)\n", CUDART_VERSION / 1000,
              (CUDART_VERSION % 1000) / 10, QTUNE_CUDA_ARCH_STR);
  int driver = 0, runtime = 0;
  cudaError_t de = cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf("CUDA runtime:  %d.%d\n", runtime / 1000, (runtime % 1000) / 10);
  if (de != cudaSuccess || driver == 0) {
    std::printf("CUDA driver:   not found\n");
    std::printf(
        "  hint: install the NVIDIA driver (nvidia-smi should list your GPU); the CPU backend still works\n");
    cudaGetLastError();
    return;
  }
  std::printf("CUDA driver:   supports CUDA %d.%d\n", driver / 1000, (driver % 1000) / 10);
  if (driver < runtime)
    std::printf(
        "  hint: the driver is older than the CUDA runtime qtune was built with; update the driver\n");
  int n = 0;
  cudaError_t ce = cudaGetDeviceCount(&n);
  if (ce != cudaSuccess || n == 0) {
    std::printf("GPUs:          none usable (%s)\n",
                ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices");
    std::printf("  hint: check nvidia-smi, CUDA_VISIBLE_DEVICES and container GPU access (--gpus all)\n");
    cudaGetLastError();
    return;
  }
  size_t lt = cublasLtGetVersion();
  std::printf("cuBLASLt:      %zu\n", lt);
  for (int i = 0; i < n; i++) {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, i);
    size_t free_b = 0, total_b = 0;
    cudaSetDevice(i);
    cudaMemGetInfo(&free_b, &total_b);
    std::printf("GPU %d:         %s, compute capability %d.%d, %d SMs, %.1f GiB (%.1f GiB free)\n", i, p.name,
                p.major, p.minor, p.multiProcessorCount, total_b / 1073741824.0, free_b / 1073741824.0);
    int cc = p.major * 10 + p.minor;
    bool bf16 = cc >= 80;
    std::printf("  kernels:     bf16 forward %s; int8 tensor-core GEMM %s; %s\n",
                bf16 ? "yes" : "no (needs sm_80+)", cc >= 75 ? "yes" : "no",
                cc == 90 ? "Hopper (sm_90) paths" : "generic paths");
    if (cc / 10 != 9)
      std::printf("  hint: this binary targets sm_%s; rebuild with -DQTUNE_CUDA_ARCH=%d for this GPU\n",
                  QTUNE_CUDA_ARCH_STR, cc);
  }
#else
  std::printf("CUDA backend:  not built\n");
  std::printf("  hint: install the CUDA toolkit (nvcc) and rebuild; cmake enables CUDA when nvcc is found\n");
#endif
}

int run_env() {
  std::printf("qtune 0.1.0\n");
  std::printf("CPU:           %s, %d logical cores\n", cpu_model().c_str(), omp_get_num_procs());
  std::printf("CPU features:  %s\n", cpu_features().c_str());
  std::printf("OpenMP:        %d threads (set OMP_NUM_THREADS to change)\n", omp_get_max_threads());
  std::printf("BLAS:          %s\n", openblas_get_config());
  std::printf("CPU backend:   usable (f32 forward, OpenBLAS GEMMs)\n");
  print_cuda();
  return 0;
}

}  // namespace

void add_env_command(CLI::App& app, Runner& run) {
  auto* cmd = app.add_subcommand("env", "Show GPU, driver, CUDA, CPU and BLAS details and usable backends");
  cmd->callback([&run] { run = run_env; });
}

}  // namespace qtune::cli
