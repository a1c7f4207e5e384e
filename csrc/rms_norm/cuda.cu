// rms_norm / add_rms_norm on CUDA: one warp per row, one launch. The residual stream of a conv LM's
// generation step is a few rows of D floats; ATen spends three launches on x + delta, the norm and
// the cast to the GEMM's dtype (about 6 us per norm in a ChunkLM step on an H200), this kernel one.
// Pass 1 forms s = x + delta (rounded to x's dtype, as ATen's add does), writes it and sums s^2;
// pass 2 writes s * rsqrt(mean(s^2) + eps) * weight in out's dtype, re-reading s from L1.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "common.h"

namespace fft_tensor {
namespace {

constexpr int kWarpsPerBlock = 4;

template <typename x_t, typename d_t, typename o_t, typename acc_t, bool kDelta>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
rms_norm_kernel(const x_t* __restrict__ x, const d_t* __restrict__ delta, const acc_t* __restrict__ weight,
                x_t* __restrict__ sum, o_t* __restrict__ out, int64_t rows, int D, acc_t eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  const x_t* xr = x + row * D;
  x_t* sr = sum + row * D;  // kDelta only
  acc_t ss = 0;
  for (int c = lane; c < D; c += 32) {
    acc_t v = static_cast<acc_t>(xr[c]);
    if constexpr (kDelta) {
      const x_t s = static_cast<x_t>(v + static_cast<acc_t>(delta[row * D + c]));
      sr[c] = s;
      v = static_cast<acc_t>(s);
    }
    ss += v * v;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  const acc_t rstd = acc_t(1) / sqrt(ss / acc_t(D) + eps);
  const x_t* src = kDelta ? sr : xr;  // this lane's own writes above: no barrier needed
  for (int c = lane; c < D; c += 32) out[row * D + c] = static_cast<o_t>(static_cast<acc_t>(src[c]) * rstd * weight[c]);
}

template <typename x_t, typename d_t, bool kDelta>
void launch(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, at::Tensor& sum, at::Tensor& out,
            double eps) {
  using acc_t = std::conditional_t<std::is_same_v<x_t, double>, double, float>;
  const int64_t D = x.size(-1), rows = x.numel() / D;
  if (rows == 0) return;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "rms_norm: too many rows (", std::to_string(rows), ")");
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "rms_norm_out", [&] {
    using o_t = scalar_t;
    if constexpr (std::is_same_v<o_t, double> == std::is_same_v<x_t, double>) {
      rms_norm_kernel<x_t, d_t, o_t, acc_t, kDelta><<<(unsigned)blocks, kWarpsPerBlock * 32, 0, stream>>>(
          x.data_ptr<x_t>(), kDelta ? delta.data_ptr<d_t>() : nullptr, weight.data_ptr<acc_t>(),
          kDelta ? sum.data_ptr<x_t>() : nullptr, out.data_ptr<o_t>(), rows, (int)D, static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// delta: undefined (rms_norm) or already converted to a dtype this file instantiates for x_t.
template <typename x_t>
void launch_for_x(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, at::Tensor& sum,
                  at::Tensor& out, double eps) {
  if (!delta.defined()) return launch<x_t, x_t, false>(x, delta, weight, sum, out, eps);
  switch (delta.scalar_type()) {
    case at::kBFloat16: return launch<x_t, at::BFloat16, true>(x, delta, weight, sum, out, eps);
    case at::kHalf: return launch<x_t, at::Half, true>(x, delta, weight, sum, out, eps);
    default: return launch<x_t, x_t, true>(x, delta, weight, sum, out, eps);
  }
}

void rms_norm_launch(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, at::Tensor& sum,
                     at::Tensor& out, double eps) {
  TORCH_CHECK(x.size(-1) <= INT32_MAX, "rms_norm: the last dimension (", std::to_string(x.size(-1)),
              ") must fit in 32 bits");
  switch (x.scalar_type()) {
    case at::kFloat: return launch_for_x<float>(x, delta, weight, sum, out, eps);
    case at::kBFloat16: return launch_for_x<at::BFloat16>(x, delta, weight, sum, out, eps);
    case at::kHalf: return launch_for_x<at::Half>(x, delta, weight, sum, out, eps);
    default: return launch_for_x<double>(x, delta, weight, sum, out, eps);
  }
}

at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps,
                         c10::optional<at::ScalarType> out_dtype) {
  const auto out_t = check_rms_norm_args("rms_norm", x, nullptr, weight, eps, out_dtype);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_t));
  at::Tensor none;
  rms_norm_launch(xc, at::Tensor(), wc, none, out, eps);
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cuda(const at::Tensor& x, const at::Tensor& delta,
                                                     const at::Tensor& weight, double eps,
                                                     c10::optional<at::ScalarType> out_dtype) {
  const auto out_t = check_rms_norm_args("add_rms_norm", x, &delta, weight, eps, out_dtype);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  // the kernel reads delta as x's dtype, or as bfloat16/float16 under a float32 x; other pairs are
  // widenings (float32 delta under float64 x), which are exact
  const auto dt = delta.scalar_type();
  const bool native = dt == x.scalar_type() || (x.scalar_type() == at::kFloat && (dt == at::kBFloat16 || dt == at::kHalf));
  const at::Tensor dc = native ? delta.contiguous() : delta.to(x.scalar_type()).contiguous();
  at::Tensor sum = at::empty(x.sizes(), x.options());
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_t));
  rms_norm_launch(xc, dc, wc, sum, out, eps);
  return {sum, out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CUDA, m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("add_rms_norm", &add_rms_norm_cuda);
}

}  // namespace fft_tensor
