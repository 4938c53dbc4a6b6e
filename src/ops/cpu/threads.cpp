// CPU thread count: OpenMP's (one thread per core unless OMP_NUM_THREADS says otherwise). OpenBLAS gets
// one thread per call: GEMMs are split across the OpenMP threads by cpu/matmul.cpp, so the two pools
// never compete for the cores (the Debian OpenBLAS is the pthread build, whose own pool would spin
// against OpenMP's).
#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

int num_threads() {
  return std::max(1, omp_get_max_threads());
}

void set_num_threads(int n) {
  omp_set_num_threads(std::max(1, n));
}

}  // namespace cpu
}  // namespace qtune
