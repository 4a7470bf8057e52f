// Helpers shared by the CPU (.cpp) and CUDA (.cu) kernels of detlab's native ops.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define DETLAB_HD __host__ __device__ __forceinline__
#else
#define DETLAB_HD inline
#endif

namespace detlab {

// std::max / std::min semantics ((a < b) ? b : a), usable on host and device and for
// c10::Half / c10::BFloat16, which compare through their float conversion.
template <typename T>
DETLAB_HD T max_of(T a, T b) {
  return a < b ? b : a;
}
template <typename T>
DETLAB_HD T min_of(T a, T b) {
  return b < a ? b : a;
}

// std::isfinite on the host, CUDA's isfinite on the device (float and double).
template <typename T>
DETLAB_HD bool is_finite(T x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

}  // namespace detlab
