// A dot product for the CPU twins: 8 independent partial sums (elements i mod 8), which the compiler
// turns into one SIMD accumulator, then added pairwise, then the tail. One running sum cannot be
// vectorised without reassociating it (about 2 GMAC/s). The order depends on n only.
#pragma once
#include <cstdint>

namespace fft_tensor {

template <typename acc_t, typename a_t, typename b_t>
inline acc_t dot8(const a_t* a, const b_t* b, int64_t n) {
  constexpr int kLanes = 8;
  acc_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<acc_t>(a[i + k]) * static_cast<acc_t>(b[i + k]);
  }
  acc_t tail = 0;
  for (; i < n; ++i) tail += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

}  // namespace fft_tensor
