// rms_norm / add_rms_norm on CUDA, one launch. The residual stream of a conv LM's generation step is
// a few rows of D floats; ATen spends three launches on x + delta, the norm and the cast to the
// GEMM's dtype (about 6 us per norm in a ChunkLM step on an H200), this kernel one. Each row forms
// s = x + delta (rounded to x's dtype, as ATen's add does), writes it, sums s^2 and writes
// s * rsqrt(mean(s^2) + eps) * weight in out's dtype. The sum's order depends on D only, not on the
// number of rows, so a row gets the same bits in a 16-row step as in an 8K-row forward.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "common.h"

namespace fft_tensor {
namespace {

// Rows up to kMaxRegisterD: a block of T threads per row (T = D/4 rounded up to whole warps), each
// thread holding its kPerThread values in registers, so every load of the row is issued at once.
// A first version looped one warp over the row (two passes through global memory, one dependent
// load per 32 values): 6.8 us per 512-wide norm of 16 rows on an H200, slower than ATen's 2.1.
constexpr int kPerThread = 4;
constexpr int kMaxBlockThreads = 512;  // 128 registers a thread: no spills
constexpr int kMaxRegisterD = kMaxBlockThreads * kPerThread;
constexpr int kLoopWarps = 4;  // wider rows: one warp per row, looping

// 1 / sqrt(v): the hardware reciprocal square root for float (as ATen's rms_norm), exact-rounded for double
__device__ __forceinline__ float inv_sqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double inv_sqrt(double v) { return 1.0 / sqrt(v); }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// s = x (+ delta, rounded to x_t as ATen's add rounds it); returns s in acc_t and writes it to sum.
template <typename x_t, typename d_t, typename acc_t, bool kDelta>
__device__ __forceinline__ acc_t load_sum(const x_t* __restrict__ x, const d_t* __restrict__ delta,
                                          x_t* __restrict__ sum, int64_t i) {
  acc_t v = static_cast<acc_t>(x[i]);
  if constexpr (kDelta) {
    const x_t s = static_cast<x_t>(v + static_cast<acc_t>(delta[i]));
    sum[i] = s;
    v = static_cast<acc_t>(s);
  }
  return v;
}

template <typename x_t, typename d_t, typename o_t, typename acc_t, bool kDelta>
__global__ void __launch_bounds__(kMaxBlockThreads)
rms_norm_block_kernel(const x_t* __restrict__ x, const d_t* __restrict__ delta, const acc_t* __restrict__ weight,
                      x_t* __restrict__ sum, o_t* __restrict__ out, int D, acc_t eps) {
  __shared__ acc_t warp_sums[32];
  const int tid = threadIdx.x, T = blockDim.x, lane = tid & 31, warp = tid >> 5;
  const int64_t base = (int64_t)blockIdx.x * D;
  acc_t v[kPerThread];
  acc_t ss = 0;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int c = tid + j * T;
    v[j] = c < D ? load_sum<x_t, d_t, acc_t, kDelta>(x, delta, sum, base + c) : acc_t(0);
    ss += v[j] * v[j];
  }
  ss = warp_sum(ss);
  if (lane == 0) warp_sums[warp] = ss;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < T / 32; ++w) total += warp_sums[w];  // the same order in every thread and row
  const acc_t rstd = inv_sqrt(total / acc_t(D) + eps);
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int c = tid + j * T;
    if (c < D) out[base + c] = static_cast<o_t>(v[j] * rstd * weight[c]);
  }
}

template <typename x_t, typename d_t, typename o_t, typename acc_t, bool kDelta>
__global__ void __launch_bounds__(kLoopWarps * 32)
rms_norm_loop_kernel(const x_t* __restrict__ x, const d_t* __restrict__ delta, const acc_t* __restrict__ weight,
                     x_t* __restrict__ sum, o_t* __restrict__ out, int64_t rows, int D, acc_t eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kLoopWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  const int64_t base = row * D;
  acc_t ss = 0;
  for (int c = lane; c < D; c += 32) {
    const acc_t v = load_sum<x_t, d_t, acc_t, kDelta>(x, delta, sum, base + c);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const acc_t rstd = inv_sqrt(ss / acc_t(D) + eps);
  const x_t* src = kDelta ? sum : x;  // this lane's own writes above: no barrier needed
  for (int c = lane; c < D; c += 32)
    out[base + c] = static_cast<o_t>(static_cast<acc_t>(src[base + c]) * rstd * weight[c]);
}

template <typename x_t, typename d_t, bool kDelta>
void launch(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, at::Tensor& sum, at::Tensor& out,
            double eps) {
  using acc_t = std::conditional_t<std::is_same_v<x_t, double>, double, float>;
  const int64_t D = x.size(-1), rows = x.numel() / D;
  if (rows == 0) return;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "rms_norm_out", [&] {
    using o_t = scalar_t;
    if constexpr (std::is_same_v<o_t, double> == std::is_same_v<x_t, double>) {
      const x_t* xp = x.data_ptr<x_t>();
      const d_t* dp = kDelta ? delta.data_ptr<d_t>() : nullptr;
      x_t* sp = kDelta ? sum.data_ptr<x_t>() : nullptr;
      if (D <= kMaxRegisterD) {
        TORCH_CHECK(rows < (int64_t(1) << 31), "rms_norm: too many rows (", std::to_string(rows), ")");
        const int threads = (int)((D + kPerThread - 1) / kPerThread + 31) / 32 * 32;
        rms_norm_block_kernel<x_t, d_t, o_t, acc_t, kDelta><<<(unsigned)rows, threads, 0, stream>>>(
            xp, dp, weight.data_ptr<acc_t>(), sp, out.data_ptr<o_t>(), (int)D, static_cast<acc_t>(eps));
      } else {
        const int64_t blocks = (rows + kLoopWarps - 1) / kLoopWarps;
        TORCH_CHECK(blocks < (int64_t(1) << 31), "rms_norm: too many rows (", std::to_string(rows), ")");
        rms_norm_loop_kernel<x_t, d_t, o_t, acc_t, kDelta><<<(unsigned)blocks, kLoopWarps * 32, 0, stream>>>(
            xp, dp, weight.data_ptr<acc_t>(), sp, out.data_ptr<o_t>(), rows, (int)D, static_cast<acc_t>(eps));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// delta: undefined (rms_norm) or already converted to a dtype this file instantiates for x_t.
template <typename x_t>
void launch_for_x(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, at::Tensor& sum,
                  at::Tensor& out, double eps) {
  if (!delta.defined()) return launch<x_t, x_t, false>(x, delta, weight, sum, out, eps);
  if constexpr (std::is_same_v<x_t, float>) {
    if (delta.scalar_type() == at::kBFloat16) return launch<x_t, at::BFloat16, true>(x, delta, weight, sum, out, eps);
    if (delta.scalar_type() == at::kHalf) return launch<x_t, at::Half, true>(x, delta, weight, sum, out, eps);
  }
  launch<x_t, x_t, true>(x, delta, weight, sum, out, eps);
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
