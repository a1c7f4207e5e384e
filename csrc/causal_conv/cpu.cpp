// causal_conv on the CPU, and the composite (at::fft) path that the CUDA backend falls back to
// for kernels too long for its fused shared-memory FFT. Accumulation is float32 for
// float32/bfloat16/float16 input, float64 for float64.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../shape_str.h"
#include "common.h"

namespace fft_tensor {

void check_causal_conv_args(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip,
                                   const char* op) {
  TORCH_CHECK(u.dim() == 3, op, ": expected u of shape (B, D, L), got a ", std::to_string(u.dim()), "-d tensor of shape ", shape_str(u.sizes()));
  const auto ut = u.scalar_type();
  TORCH_CHECK(ut == at::kFloat || ut == at::kBFloat16 || ut == at::kHalf || ut == at::kDouble, op,
              ": expected u of dtype float32, bfloat16, float16 or float64, got ", ut);
  TORCH_CHECK(k.dim() == 2, op, ": expected k of shape (D, Lk), got a ", std::to_string(k.dim()), "-d tensor of shape ", shape_str(k.sizes()));
  TORCH_CHECK(k.scalar_type() == at::kFloat || k.scalar_type() == at::kDouble, op,
              ": expected k of dtype float32 (or float64), got ", k.scalar_type());
  TORCH_CHECK(k.size(0) == u.size(1), op, ": expected k.shape[0] == u.shape[1] (D = ", std::to_string(u.size(1)), "), got k.shape ",
              shape_str(k.sizes()));
  TORCH_CHECK(k.size(1) >= 1, op, ": expected k with at least one tap (Lk >= 1), got k.shape ", shape_str(k.sizes()));
  TORCH_CHECK(u.size(2) >= 1, op, ": expected u with length L >= 1, got u.shape ", shape_str(u.sizes()));
  TORCH_CHECK(k.device() == u.device(), op, ": expected k on the same device as u (", u.device(), "), got ",
              k.device());
  TORCH_CHECK((ut == at::kDouble) == (k.scalar_type() == at::kDouble), op,
              ": expected u and k both float64 or neither, got u ", ut, " and k ", k.scalar_type());
  if (skip.has_value()) {
    const auto& s = *skip;
    TORCH_CHECK(s.dim() == 1 && s.size(0) == u.size(1), op, ": expected skip of shape (D,) = (", std::to_string(u.size(1)),
                ",), got ", shape_str(s.sizes()));
    TORCH_CHECK(s.scalar_type() == k.scalar_type(), op, ": expected skip of dtype ", k.scalar_type(), ", got ",
                s.scalar_type());
    TORCH_CHECK(s.device() == u.device(), op, ": expected skip on the same device as u (", u.device(), "), got ",
                s.device());
  }
}

void check_causal_conv_grad_y(const at::Tensor& grad_y, const at::Tensor& u) {
  TORCH_CHECK(grad_y.sizes() == u.sizes(), "causal_conv_backward: expected grad_y of shape ", shape_str(u.sizes()),
              ", got ", shape_str(grad_y.sizes()));
  TORCH_CHECK(grad_y.device() == u.device(), "causal_conv_backward: expected grad_y on ", u.device(), ", got ",
              grad_y.device());
}

at::Tensor effective_kernel(const at::Tensor& k, const c10::optional<at::Tensor>& skip, int64_t taps) {
  at::Tensor ke = k.narrow(1, 0, taps);
  if (skip.has_value()) {
    ke = ke.clone(at::MemoryFormat::Contiguous);
    ke.select(1, 0).add_(*skip);
  }
  return ke;
}
namespace {

at::ScalarType compute_dtype(const at::Tensor& u) { return u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

at::Tensor causal_conv_composite(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
  if (u.numel() == 0) return at::empty(u.sizes(), u.options());  // FFT libraries reject empty batches
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
  if (u.numel() == 0)  // no rows: zero gradients (FFT libraries reject empty batches)
    return {need_u ? at::zeros(u.sizes(), u.options()) : at::empty({0}, u.options()),
            need_k ? at::zeros({D, Lk}, k.options()) : at::empty({0}, k.options())};
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
  check_causal_conv_grad_y(grad_y, u);
  return causal_conv_backward_composite(grad_y, u, k, skip, need_u, need_k);
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) {
  m.impl("causal_conv", &causal_conv_cpu);
  m.impl("causal_conv_backward", &causal_conv_backward_cpu);
}

}  // namespace fft_tensor
