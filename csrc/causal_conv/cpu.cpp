// causal_conv on the CPU, and the composite (at::fft) path that the CUDA backend falls back to
// for kernels too long for its fused shared-memory FFT. Accumulation is float32 for
// float32/bfloat16/float16 input, float64 for float64.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common.h"

namespace fft_tensor {
namespace {

at::ScalarType compute_dtype(const at::Tensor& u) { return u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

at::Tensor causal_conv_composite(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
  const ConvPlan plan = conv_plan(L, k.size(1));
  const int64_t N = plan.fft_size;
  const auto ct = compute_dtype(u);
  const at::Tensor ke = effective_kernel(k, skip, plan.taps).to(ct);
  const at::Tensor uc = u.to(ct);
  const at::Tensor K = at::fft_rfft(ke, N);  // D x (N/2+1)
  at::Tensor y;
  if (plan.segments == 1) {
    y = at::fft_irfft(at::fft_rfft(uc, N) * K, N).narrow(-1, 0, L);
  } else {
    // Overlap-save: block j holds u[j*S - (taps-1), j*S - (taps-1) + N); its outputs
    // [taps-1, N) are exact (no circular wrap) and are u positions [j*S, j*S + S).
    const int64_t S = plan.segment, front = plan.taps - 1;
    const int64_t back = (plan.segments - 1) * S + N - front - L;
    const at::Tensor blocks = at::constant_pad_nd(uc, {front, back}).unfold(-1, N, S);  // B x D x nseg x N
    y = at::fft_irfft(at::fft_rfft(blocks, N) * K.unsqueeze(1), N)
            .narrow(-1, front, S)
            .reshape({B, D, plan.segments * S})
            .narrow(-1, 0, L);
  }
  return y.to(u.scalar_type()).contiguous();
}

// grad_u[t] = sum_s k[s] gy[t+s]          (correlation: spectrum GY * conj(K))
// grad_k[s] = sum_{b,t} gy[t] u[t-s]      (spectrum sum_b GY * conj(U)), taps past L get 0.
// One FFT of N >= L + taps - 1 makes both circular correlations exact on the indices kept.
// conj_physical, not the lazy conj(): AOTAutograd runs with the Conjugate key excluded.
std::tuple<at::Tensor, at::Tensor> causal_conv_backward_composite(const at::Tensor& grad_y, const at::Tensor& u,
                                                                  const at::Tensor& k,
                                                                  const c10::optional<at::Tensor>& skip, bool need_u,
                                                                  bool need_k) {
  const int64_t D = u.size(1), L = u.size(2), Lk = k.size(1);
  const ConvPlan plan = conv_plan(L, Lk);
  const int64_t N = std::max<int64_t>(next_pow2(L + plan.taps - 1), kMinFFT);
  const auto ct = compute_dtype(u);
  const at::Tensor GY = at::fft_rfft(grad_y.to(ct), N);
  at::Tensor grad_k = at::empty({0}, k.options());
  if (need_k) {
    const at::Tensor U = at::fft_rfft(u.to(ct), N);
    grad_k = at::zeros({D, Lk}, k.options());
    grad_k.narrow(1, 0, plan.taps).copy_(at::fft_irfft((GY * U.conj_physical()).sum(0), N).narrow(-1, 0, plan.taps));
  }
  at::Tensor grad_u = at::empty({0}, u.options());
  if (need_u) {
    const at::Tensor K = at::fft_rfft(effective_kernel(k, skip, plan.taps).to(ct), N);
    grad_u = at::fft_irfft(GY * K.conj_physical(), N).narrow(-1, 0, L).to(u.scalar_type()).contiguous();
  }
  return {grad_u, grad_k};
}

namespace {

at::Tensor causal_conv_cpu(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  check_causal_conv_args(u, k, skip, "causal_conv");
  return causal_conv_composite(u, k, skip);
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cpu(const at::Tensor& grad_y, const at::Tensor& u,
                                                            const at::Tensor& k, const c10::optional<at::Tensor>& skip,
                                                            bool need_u, bool need_k) {
  check_causal_conv_args(u, k, skip, "causal_conv_backward");
  TORCH_CHECK(grad_y.sizes() == u.sizes(), "causal_conv_backward: expected grad_y of shape ", shape_str(u.sizes()), ", got ",
              shape_str(grad_y.sizes()));
  return causal_conv_backward_composite(grad_y, u, k, skip, need_u, need_k);
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) {
  m.impl("causal_conv", &causal_conv_cpu);
  m.impl("causal_conv_backward", &causal_conv_backward_cpu);
}

}  // namespace fft_tensor
