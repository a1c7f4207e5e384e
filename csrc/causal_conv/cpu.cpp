// causal_conv on the CPU, and the composite (at::fft) path that the CUDA backend falls back to
// for kernels too long for its fused shared-memory FFT. Accumulation is float32 for
// float32/bfloat16/float16 input, float64 for float64.
#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>
#include <torch/library.h>

#include "../shape_str.h"
#include "common.h"
#include "cpu_direct.h"

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
  // a complex grad_y would lose its imaginary part in the conversion, an integer one is no gradient
  TORCH_CHECK(at::isFloatingType(grad_y.scalar_type()), "causal_conv_backward: expected grad_y of a floating dtype, got ",
              grad_y.scalar_type());
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

// The FFT workspace of one row (padded input, spectrum, product, inverse) is several times the row
// itself; transforming every row at once made the peak 4-10x inputs plus outputs at L >= 16K. Rows go
// in chunks of (batch index, channel range) whose workspace fits budget_bytes (at least one row per
// chunk); at the benchmark shapes a chunk is still hundreds of rows, enough to fill a GPU.
template <typename F>
void for_each_row_chunk(const at::Tensor& u, int64_t row_workspace_bytes, int64_t budget_bytes, F&& f) {
  const int64_t B = u.size(0), D = u.size(1);
  const int64_t rows = std::max<int64_t>(1, budget_bytes / std::max<int64_t>(1, row_workspace_bytes));
  if (rows >= B * D) return f(at::indexing::Slice(), at::indexing::Slice());  // all rows in one go
  const int64_t batches = std::max<int64_t>(1, rows / D), channels = std::min(rows, D);
  if (batches > 1)
    for (int64_t b = 0; b < B; b += batches) f(at::indexing::Slice(b, std::min(B, b + batches)), at::indexing::Slice());
  else
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; d += channels)
        f(at::indexing::Slice(b, b + 1), at::indexing::Slice(d, std::min(D, d + channels)));
}

// Workspace allowed beyond inputs, outputs and the per-channel spectra: together at most half of
// inputs plus outputs (the 1.5x), with a margin for the allocator's rounding.
// Never less than 64 MiB, so that small batches (whose kernel spectra alone can exceed the half) still
// go in chunks of dozens of rows rather than one FFT call per row.
int64_t chunk_budget(int64_t io_bytes, int64_t fixed_bytes) {
  return std::max<int64_t>((io_bytes / 2 - fixed_bytes) * 3 / 4, int64_t(64) << 20);
}

// Bytes of FFT workspace per row of N points: the real input at the compute dtype, its spectrum,
// the product and the inverse.
int64_t row_workspace(int64_t N, int64_t segments, at::ScalarType ct) {
  const int64_t real = ct == at::kDouble ? 8 : 4;
  return segments * (N * real * 2 + (N / 2 + 1) * 2 * real * 2);
}

}  // namespace

at::Tensor causal_conv_composite(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  using at::indexing::Slice;
  const int64_t L = u.size(2);
  if (u.numel() == 0) return empty_like_output(u);  // FFT libraries reject empty batches
  const ConvPlan plan = conv_plan(L, k.size(1));
  // On the CPU the overlap-save windows cost a padded, unfolded copy of the rows and a reshape of the
  // result, so they are taken only where they transform at least a quarter fewer points than one FFT
  // of the row (at L = 1K with 128 taps two windows of 1024 points transform as many as one of 2048,
  // and measured 0.4-0.6x torch.fft's single FFT; from 2K rows with 128 taps they transform 25-40%
  // fewer). The CUDA fallback keeps the plan. Either way the result is the same linear convolution.
  const int64_t full = std::max<int64_t>(next_pow2(L + plan.taps - 1), kMinFFT);
  const bool windows = plan.segments > 1 && !(u.is_cpu() && 4 * plan.segments * plan.fft_size > 3 * full);
  const int64_t N = windows ? plan.fft_size : full;  // one block per row: the plan's N is full
  const int64_t segments = windows ? plan.segments : 1;
  const auto ct = compute_dtype(u);
  const at::Tensor K = at::fft_rfft(effective_kernel(k, skip, plan.taps).to(ct), N);  // D x (N/2+1)
  at::Tensor y = empty_like_output(u);  // chunks written straight into the output layout
  const int64_t io_bytes = 2 * u.numel() * u.element_size() + k.numel() * k.element_size();
  for_each_row_chunk(u, row_workspace(N, segments, ct), chunk_budget(io_bytes, K.nbytes()), [&](Slice bs, Slice ds) {
    const at::Tensor uc = u.index({bs, ds}).to(ct);
    const at::Tensor Kc = K.index({ds});
    const int64_t b = uc.size(0), d = uc.size(1);
    at::Tensor yc;
    if (!windows) {
      yc = at::fft_irfft(at::fft_rfft(uc, N) * Kc, N).narrow(-1, 0, L);
    } else {
      // Overlap-save: block j holds u[j*S - (taps-1), j*S - (taps-1) + N); its outputs
      // [taps-1, N) are exact (no circular wrap) and are u positions [j*S, j*S + S).
      const int64_t S = plan.segment, front = plan.taps - 1;
      const int64_t back = (plan.segments - 1) * S + N - front - L;
      const at::Tensor blocks = at::constant_pad_nd(uc, {front, back}).unfold(-1, N, S);  // b x d x nseg x N
      yc = at::fft_irfft(at::fft_rfft(blocks, N) * Kc.unsqueeze(1), N)
               .narrow(-1, front, S)
               .reshape({b, d, plan.segments * S})
               .narrow(-1, 0, L);
    }
    y.index({bs, ds}).copy_(yc);
  });
  return y;
}

// grad_u[t] = sum_s k[s] gy[t+s]          (correlation: spectrum GY * conj(K))
// grad_k[s] = sum_{b,t} gy[t] u[t-s]      (spectrum sum_b GY * conj(U)), taps past L get 0.
// One FFT of N >= L + taps - 1 makes both circular correlations exact on the indices kept.
// conj_physical, not the lazy conj(): AOTAutograd runs with the Conjugate key excluded.
std::tuple<at::Tensor, at::Tensor> causal_conv_backward_composite(const at::Tensor& grad_y, const at::Tensor& u,
                                                                  const at::Tensor& k,
                                                                  const c10::optional<at::Tensor>& skip, bool need_u,
                                                                  bool need_k) {
  using at::indexing::Slice;
  const int64_t D = u.size(1), L = u.size(2), Lk = k.size(1);
  if (u.numel() == 0)  // no rows: zero gradients (FFT libraries reject empty batches)
    return {need_u ? empty_like_output(u).zero_() : at::empty({0}, u.options()),
            need_k ? at::zeros({D, Lk}, k.options()) : at::empty({0}, k.options())};
  const ConvPlan plan = conv_plan(L, Lk);
  const int64_t N = std::max<int64_t>(next_pow2(L + plan.taps - 1), kMinFFT);
  const auto ct = compute_dtype(u);
  const at::Tensor Kconj =
      need_u ? at::fft_rfft(effective_kernel(k, skip, plan.taps).to(ct), N).conj_physical() : at::Tensor();
  at::Tensor grad_u = need_u ? empty_like_output(u) : at::empty({0}, u.options());
  at::Tensor spectrum_sum = need_k ? at::zeros({D, N / 2 + 1}, u.options().dtype(c10::toComplexType(ct)))
                                   : at::Tensor();  // sum_b GY * conj(U)
  const int64_t io_bytes = (2 + need_u) * u.numel() * u.element_size() + (1 + need_k) * k.numel() * k.element_size();
  const int64_t fixed_bytes = (need_u ? Kconj.nbytes() : 0) + (need_k ? spectrum_sum.nbytes() : 0);
  for_each_row_chunk(u, row_workspace(N, need_k ? 2 : 1, ct), chunk_budget(io_bytes, fixed_bytes), [&](Slice bs, Slice ds) {
    const at::Tensor GY = at::fft_rfft(grad_y.index({bs, ds}).to(ct), N);
    if (need_k) spectrum_sum.index({ds}).add_((GY * at::fft_rfft(u.index({bs, ds}).to(ct), N).conj_physical()).sum(0));
    if (need_u) grad_u.index({bs, ds}).copy_(at::fft_irfft(GY * Kconj.index({ds}), N).narrow(-1, 0, L));
  });
  at::Tensor grad_k = at::empty({0}, k.options());
  if (need_k) {
    grad_k = at::zeros({D, Lk}, k.options());
    grad_k.narrow(1, 0, plan.taps).copy_(at::fft_irfft(spectrum_sum, N).narrow(-1, 0, plan.taps));
  }
  return {grad_u, grad_k};
}

namespace {

// The CPU's direct path (cpu_direct.h) against pocketfft: kernels of at most kCpuDirectTaps taps.
// Measured on the 2-core build machine (B = 4, D = 64, L 256-16K, two threads, RESULTS.md, twenty-eighth
// session, one run): the direct sum is faster at every L up to 128 taps, forward 1.6-2.5x and
// forward+backward 2.0-2.6x with 128 taps, 2.7-12x and 2.8-14x up to 32. 128 is also
// FFT_TENSOR_CONV_DIRECT_MAX_TAPS's upper end (kMaxDirectTaps); past it the FFT's cost stays flat while
// the sum's grows with the taps. Every dtype, float64 (gradcheck) included. The switch replaces the rule
// by "at most N taps" (0 = always the FFT).
constexpr int64_t kCpuDirectTaps = kMaxDirectTaps;

bool use_cpu_direct(const at::Tensor& u, const at::Tensor& k) {
  // a bad FFT_TENSOR_CONV_MIN_WINDOW or FFT_TENSOR_CONV_CPU_LANES is an error on every call (as on CUDA),
  // not only on the calls that reach the FFT or the lanes kernels
  (void)min_window();
  (void)cpu_direct::lanes_width();
  const int64_t taps = std::min(k.size(1), u.size(2)), cutoff = direct_max_taps();
  return taps <= (cutoff >= 0 ? cutoff : kCpuDirectTaps);
}

at::Tensor causal_conv_direct_cpu(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  at::Tensor y = empty_like_output(u);
  if (u.numel() == 0) return y;
  const int64_t taps = std::min(k.size(1), u.size(2));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "causal_conv_direct_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor ke = effective_kernel(k, skip, taps).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    cpu_direct::convolve_rows<scalar_t, scalar_t, acc_t>(u, ke, y, /*ahead=*/false);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_direct_cpu(const at::Tensor& grad_y, const at::Tensor& u,
                                                                   const at::Tensor& k,
                                                                   const c10::optional<at::Tensor>& skip,
                                                                   bool need_u, bool need_k) {
  const int64_t D = u.size(1), Lk = k.size(1), taps = std::min(Lk, u.size(2));
  at::Tensor grad_u = need_u ? empty_like_output(u) : at::empty({0}, u.options());
  at::Tensor grad_k = need_k ? at::zeros({D, Lk}, k.options()) : at::empty({0}, k.options());
  if (u.numel() == 0) {
    if (need_u) grad_u.zero_();
    return {grad_u, grad_k};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "causal_conv_backward_direct_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    // grad_y comes in u's dtype from autograd; a direct call of the op may pass another, which is read
    // at the accumulation dtype, as the FFT path reads it
    const bool same = grad_y.scalar_type() == u.scalar_type();
    const at::Tensor g = same ? grad_y : grad_y.to(acc_type);
    if (need_u) {
      const at::Tensor ke = effective_kernel(k, skip, taps).to(acc_type).contiguous();
      if (same)
        cpu_direct::convolve_rows<scalar_t, scalar_t, acc_t>(g, ke, grad_u, /*ahead=*/true);
      else
        cpu_direct::convolve_rows<acc_t, scalar_t, acc_t>(g, ke, grad_u, /*ahead=*/true);
    }
    if (need_k)
      grad_k.narrow(1, 0, taps).copy_(same ? cpu_direct::correlate_rows<scalar_t, scalar_t, acc_t>(g, u, taps)
                                           : cpu_direct::correlate_rows<acc_t, scalar_t, acc_t>(g, u, taps));
  });
  return {grad_u, grad_k};
}

at::Tensor causal_conv_cpu(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  check_causal_conv_args(u, k, skip, "causal_conv");
  if (use_cpu_direct(u, k)) return causal_conv_direct_cpu(u, k, skip);
  return in_output_layout(causal_conv_composite(u, k, skip), u);
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cpu(const at::Tensor& grad_y, const at::Tensor& u,
                                                            const at::Tensor& k, const c10::optional<at::Tensor>& skip,
                                                            bool need_u, bool need_k) {
  check_causal_conv_args(u, k, skip, "causal_conv_backward");
  check_causal_conv_grad_y(grad_y, u);
  if (use_cpu_direct(u, k)) return causal_conv_backward_direct_cpu(grad_y, u, k, skip, need_u, need_k);
  const auto [grad_u, grad_k] = causal_conv_backward_composite(grad_y, u, k, skip, need_u, need_k);
  return {in_output_layout(grad_u, u), grad_k};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) {
  m.impl("causal_conv", &causal_conv_cpu);
  m.impl("causal_conv_backward", &causal_conv_backward_cpu);
}

}  // namespace fft_tensor
