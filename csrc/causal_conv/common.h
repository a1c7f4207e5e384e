// causal_conv: argument checks and the algorithm policy, shared by the CPU and CUDA backends.
// fft_tensor/ops.py mirrors both (fake kernel checks, causal_conv_fft_size).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>
#include <vector>

namespace fft_tensor {

// Largest FFT the fused CUDA kernel keeps in shared memory (complex64: 128 KiB).
constexpr int64_t kMaxFusedFFT = 16384;
constexpr int64_t kMinFFT = 64;

inline int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// v as a decimal of ASCII digits only (no sign or spaces, which strtoll would take), saturating once past
// cap (so no overflow); -1 if v holds any other character. The switches' parser (cuda.cu's env_int)
// and min_window below read their integers with it.
inline int64_t parse_ascii_digits(const char* v, int64_t cap) {
  int64_t x = 0;
  for (const char* c = v; *c != '\0'; ++c) {
    if (*c < '0' || *c > '9') return -1;
    if (x <= cap) x = 10 * x + (*c - '0');
  }
  return x;
}

// Smallest overlap-save window, in points: 1024, or FFT_TENSOR_CONV_MIN_WINDOW (a power of two in
// [64, 16384]), read on every call so a benchmark or a test can switch it. An experiment hook: at
// L = 1024 with 128 taps the default transforms two windows of 1024 points per row, 2048 points for
// 1024 outputs, where three of 512 would transform 1536 (RESULTS.md, thirteenth session). Windows
// under 1024 points with several windows per row have run on the CPU only. fft_tensor/ops.py mirrors it.
inline int64_t min_window() {
  const char* env = std::getenv("FFT_TENSOR_CONV_MIN_WINDOW");
  if (env == nullptr || *env == '\0') return 1024;
  const int64_t v = parse_ascii_digits(env, kMaxFusedFFT);  // as the Python mirror accepts
  TORCH_CHECK(v >= kMinFFT && v <= kMaxFusedFFT && (v & (v - 1)) == 0,
              "FFT_TENSOR_CONV_MIN_WINDOW: expected a power of two in [64, 16384] (or unset), got '", env, "'");
  return v;
}

// FFT_TENSOR_CONV_DIRECT_MAX_TAPS: -1 when unset or empty (each backend's own rule: cpu.cpp's
// use_cpu_direct, cuda.cu's use_direct), else N in [0, kMaxDirectTaps]: kernels of at most N taps take
// the direct paths, longer ones the FFT (0 = always the FFT). Read on every call, like min_window().
constexpr int64_t kMaxDirectTaps = 128;

inline int64_t direct_max_taps() {
  const char* env = std::getenv("FFT_TENSOR_CONV_DIRECT_MAX_TAPS");
  if (env == nullptr || *env == '\0') return -1;
  const int64_t v = parse_ascii_digits(env, kMaxDirectTaps);  // -1 for anything but digits
  // integers through std::to_string: streaming an int64_t into TORCH_CHECK's message segfaults in
  // nvcc-built code on the device (cuda.cu includes this file)
  TORCH_CHECK(v >= 0 && v <= kMaxDirectTaps, "FFT_TENSOR_CONV_DIRECT_MAX_TAPS: expected an integer in [0, ",
              std::to_string(kMaxDirectTaps), "] (or unset), got '", env, "'");
  return v;
}

// The FFT length used for a row of length L and a kernel of Lk taps (taps past L are ignored):
//  * overlap-save blocks of N = next_pow2(4 Lk) (at least min_window(), at most kMaxFusedFFT), each giving
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
  int64_t os = std::max<int64_t>(next_pow2(4 * taps), min_window());
  if (os > kMaxFusedFFT && 2 * taps <= kMaxFusedFFT) os = kMaxFusedFFT;
  if (full <= os || os > kMaxFusedFFT) return {full, taps, L, 1};
  const int64_t seg = os - taps + 1;
  return {os, taps, seg, (L + seg - 1) / seg};
}

// The layout of y and grad_u: u's own layout when u is dense with time contiguous (a packed (B, D, L)
// tensor, or the LMs' feature-major activations: one GEMM's (D, B * L) output viewed as (B, D, L) with
// strides (L, B * L, 1), which the next GEMM reads back in place), else packed (B, D, L). "u's layout"
// is spelled out, not left to empty_like: dense strides in u's dim order by decreasing stride (ties:
// the lower dim outer), so size-1 dims get the same strides here and in the fake kernels
// (fft_tensor/ops.py:_causal_conv_output_like), whatever u carried in them.
inline bool keeps_layout(const at::Tensor& u) {
  return u.is_non_overlapping_and_dense() && (u.size(2) <= 1 || u.stride(2) == 1);
}

inline std::vector<int64_t> output_strides(const at::Tensor& u) {
  std::array<int64_t, 3> order{0, 1, 2};  // outermost first
  if (keeps_layout(u))
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return u.stride(a) > u.stride(b); });
  std::vector<int64_t> strides(3);
  int64_t next = 1;
  for (int i = 2; i >= 0; --i) {
    strides[order[i]] = next;
    next *= std::max<int64_t>(u.size(order[i]), 1);
  }
  return strides;
}

inline at::Tensor empty_like_output(const at::Tensor& u) {
  return at::empty_strided(u.sizes(), output_strides(u), u.options());
}

// y (packed by a path that computes on packed rows) in the layout above: a copy only when that layout
// is not y's.
inline at::Tensor in_output_layout(const at::Tensor& y, const at::Tensor& u) {
  if (!y.defined() || y.sizes() != u.sizes()) return y;
  const std::vector<int64_t> strides = output_strides(u);
  if (y.strides() == c10::IntArrayRef(strides)) return y;
  return at::empty_strided(u.sizes(), strides, u.options()).copy_(y);
}

void check_causal_conv_args(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip,
                                   const char* op);

// The skip term is a tap at lag 0: fold it into the kernel (exact, and one convolution instead of two passes).
void check_causal_conv_grad_y(const at::Tensor& grad_y, const at::Tensor& u);

at::Tensor effective_kernel(const at::Tensor& k, const c10::optional<at::Tensor>& skip, int64_t taps);

// Composite implementations on at::fft (pocketfft on CPU, cuFFT on CUDA); cpu.cpp.
at::Tensor causal_conv_composite(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip);
std::tuple<at::Tensor, at::Tensor> causal_conv_backward_composite(const at::Tensor& grad_y, const at::Tensor& u,
                                                                  const at::Tensor& k,
                                                                  const c10::optional<at::Tensor>& skip, bool need_u,
                                                                  bool need_k);

}  // namespace fft_tensor
