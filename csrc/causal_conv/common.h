// causal_conv: argument checks and the algorithm policy, shared by the CPU and CUDA backends.
// fft_tensor/ops.py mirrors both (fake kernel checks, causal_conv_fft_size).
#pragma once
#include <ATen/ATen.h>

#include "../shape_str.h"

namespace fft_tensor {

// Largest FFT the fused CUDA kernel keeps in shared memory (complex64: 128 KiB).
constexpr int64_t kMaxFusedFFT = 16384;
constexpr int64_t kMinFFT = 64;

inline int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// The FFT length used for a row of length L and a kernel of Lk taps (taps past L are ignored):
//  * overlap-save blocks of N = next_pow2(4 Lk) (at least 1024, at most kMaxFusedFFT), each giving
//    N - Lk + 1 outputs, when that is smaller than one FFT over the whole row (short kernels);
//  * otherwise one FFT over the whole row, N = next_pow2(L + Lk - 1) (fused on CUDA up to
//    kMaxFusedFFT, cuFFT beyond; pocketfft on the CPU).
struct ConvPlan {
  int64_t fft_size;  // N
  int64_t taps;      // effective Lk = min(Lk, L)
  int64_t segment;   // outputs per FFT block (== L when one block covers the row)
  int64_t segments;  // blocks per row
};

inline ConvPlan conv_plan(int64_t L, int64_t Lk) {
  const int64_t taps = std::min(Lk, L);
  const int64_t full = std::max<int64_t>(next_pow2(L + taps - 1), kMinFFT);
  int64_t os = std::max<int64_t>(next_pow2(4 * taps), 1024);
  if (os > kMaxFusedFFT && 2 * taps <= kMaxFusedFFT) os = kMaxFusedFFT;
  if (full <= os || os > kMaxFusedFFT) return {full, taps, L, 1};
  const int64_t seg = os - taps + 1;
  return {os, taps, seg, (L + seg - 1) / seg};
}

inline void check_causal_conv_args(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip,
                                   const char* op) {
  TORCH_CHECK(u.dim() == 3, op, ": expected u of shape (B, D, L), got a ", u.dim(), "-d tensor of shape ", shape_str(u.sizes()));
  const auto ut = u.scalar_type();
  TORCH_CHECK(ut == at::kFloat || ut == at::kBFloat16 || ut == at::kHalf || ut == at::kDouble, op,
              ": expected u of dtype float32, bfloat16, float16 or float64, got ", ut);
  TORCH_CHECK(k.dim() == 2, op, ": expected k of shape (D, Lk), got a ", k.dim(), "-d tensor of shape ", shape_str(k.sizes()));
  TORCH_CHECK(k.scalar_type() == at::kFloat || k.scalar_type() == at::kDouble, op,
              ": expected k of dtype float32 (or float64), got ", k.scalar_type());
  TORCH_CHECK(k.size(0) == u.size(1), op, ": expected k.shape[0] == u.shape[1] (D = ", u.size(1), "), got k.shape ",
              shape_str(k.sizes()));
  TORCH_CHECK(k.size(1) >= 1, op, ": expected k with at least one tap (Lk >= 1), got k.shape ", shape_str(k.sizes()));
  TORCH_CHECK(u.size(2) >= 1, op, ": expected u with length L >= 1, got u.shape ", shape_str(u.sizes()));
  TORCH_CHECK(k.device() == u.device(), op, ": expected k on the same device as u (", u.device(), "), got ",
              k.device());
  TORCH_CHECK((ut == at::kDouble) == (k.scalar_type() == at::kDouble), op,
              ": expected u and k both float64 or neither, got u ", ut, " and k ", k.scalar_type());
  if (skip.has_value()) {
    const auto& s = *skip;
    TORCH_CHECK(s.dim() == 1 && s.size(0) == u.size(1), op, ": expected skip of shape (D,) = (", u.size(1),
                ",), got ", shape_str(s.sizes()));
    TORCH_CHECK(s.scalar_type() == k.scalar_type(), op, ": expected skip of dtype ", k.scalar_type(), ", got ",
                s.scalar_type());
    TORCH_CHECK(s.device() == u.device(), op, ": expected skip on the same device as u (", u.device(), "), got ",
                s.device());
  }
}

// The skip term is a tap at lag 0: fold it into the kernel (exact, and one convolution instead of two passes).
inline at::Tensor effective_kernel(const at::Tensor& k, const c10::optional<at::Tensor>& skip, int64_t taps) {
  at::Tensor ke = k.narrow(1, 0, taps);
  if (skip.has_value()) {
    ke = ke.clone(at::MemoryFormat::Contiguous);
    ke.select(1, 0).add_(*skip);
  }
  return ke;
}

// Composite implementations on at::fft (pocketfft on CPU, cuFFT on CUDA); cpu.cpp.
at::Tensor causal_conv_composite(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip);
std::tuple<at::Tensor, at::Tensor> causal_conv_backward_composite(const at::Tensor& grad_y, const at::Tensor& u,
                                                                  const at::Tensor& k,
                                                                  const c10::optional<at::Tensor>& skip, bool need_u,
                                                                  bool need_k);

}  // namespace fft_tensor
