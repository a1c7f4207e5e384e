// causal_conv_update on CUDA: one streaming step of causal_conv in a single launch (the generation
// step of a conv LM: T = 1 or a few new inputs per row against a state of the last S inputs).
// Cost O(T * Lk) per row whatever the context length; u and state are read in their own strides.
//
// conv_update_window_kernel (T >= 2, when a row's taps and the Lk - 1 + T inputs they reach fit 8 KB): one
// warp per row stages the row's taps and that input window in shared memory with one parallel load,
// then lanes split the outputs and taps (P lanes per output, P = 32 / T rounded to a power of two,
// partial sums added by shuffles), and the state is rewritten from the window. The 16-byte chunk
// step of a ChunkLM (T = 16) took 11 us per layer with the loop below: one dependent global load
// and warp reduction per output, and a state shift of dependent load/store rounds.
// conv_update_kernel (any size): one warp per row, lane j sums the taps s = j, j + 32, ... of each
// output and the warp adds the partial sums; then the warp shifts the state by T in place. All of a
// row's reads of the old state happen before its writes (__syncwarp), and the shift goes in ascending
// chunks of 32 whose reads (index T + i) lie above every index written so far, so no row needs a
// copy of its state.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "common.h"

namespace fft_tensor {
namespace {

constexpr int kWarpsPerBlock = 8;

struct Strides3 {
  int64_t b, d, t;
};

// y, or y * silu(gate) when gate is given, each step rounded to scalar_t as ATen's silu and mul round
// them (both compute in float, or double for double, and round once).
template <typename scalar_t>
__device__ __forceinline__ scalar_t gated(scalar_t y, const scalar_t* __restrict__ gate, Strides3 gs, int64_t b,
                                          int64_t d, int t) {
  if (gate == nullptr) return y;
  using op_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const op_t g = static_cast<op_t>(gate[b * gs.b + d * gs.d + (int64_t)t * gs.t]);
  const scalar_t sg = static_cast<scalar_t>(g / (op_t(1) + exp(-g)));
  return static_cast<scalar_t>(static_cast<op_t>(y) * static_cast<op_t>(sg));
}

template <typename scalar_t, typename acc_t>
__global__ void conv_update_kernel(const scalar_t* __restrict__ u, Strides3 us, acc_t* __restrict__ state,
                                   Strides3 ss, const acc_t* __restrict__ k, int64_t k_row, int64_t k_tap,
                                   const acc_t* __restrict__ skip, int64_t skip_stride,
                                   const scalar_t* __restrict__ gate, Strides3 gs, scalar_t* __restrict__ y,
                                   int64_t rows, int64_t D, int T, int S, int Lk) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  const int64_t b = row / D, d = row % D;
  const scalar_t* ur = u + b * us.b + d * us.d;
  acc_t* sr = state + b * ss.b + d * ss.d;
  const acc_t* kr = k + d * k_row;
  // x[i], i < S + T: the row's past inputs (state) then its new ones (u)
  auto x = [&](int i) -> acc_t { return i < S ? sr[i * ss.t] : static_cast<acc_t>(ur[(int64_t)(i - S) * us.t]); };
  for (int t = 0; t < T; ++t) {
    acc_t acc = 0;
    for (int s = lane; s < Lk; s += 32) acc += kr[s * k_tap] * x(S + t - s);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) {
      if (skip != nullptr) acc += skip[d * skip_stride] * x(S + t);
      y[row * T + t] = gated(static_cast<scalar_t>(acc), gate, gs, b, d, t);
    }
  }
  __syncwarp();
  for (int i0 = 0; i0 < S; i0 += 32) {
    const int i = i0 + lane;
    const acc_t v = i < S ? x(T + i) : acc_t(0);
    __syncwarp();
    if (i < S) sr[i * ss.t] = v;
    __syncwarp();
  }
}

// Shared-memory bytes per warp of the window kernel: the taps (Lk) and inputs x[S-Lk+1 .. S+T).
constexpr int64_t kWindowBytesPerWarp = 8192;
constexpr int kWindowWarps = 4;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWindowWarps * 32)
conv_update_window_kernel(const scalar_t* __restrict__ u, Strides3 us, acc_t* __restrict__ state, Strides3 ss,
                          const acc_t* __restrict__ k, int64_t k_row, int64_t k_tap, const acc_t* __restrict__ skip,
                          int64_t skip_stride, const scalar_t* __restrict__ gate, Strides3 gs,
                          scalar_t* __restrict__ y, int64_t rows, int64_t D, int T, int S, int Lk, int P) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * kWindowWarps + warp;
  if (row >= rows) return;  // whole warps leave together; warps never share memory
  const int W = Lk - 1 + T, a = S - (Lk - 1);  // window: x[a + j], j < W (a >= 0: S >= Lk - 1)
  acc_t* ks = reinterpret_cast<acc_t*>(smem_raw) + (int64_t)warp * (kWindowBytesPerWarp / sizeof(acc_t));
  acc_t* xw = ks + Lk;
  const int64_t b = row / D, d = row % D;
  const scalar_t* ur = u + b * us.b + d * us.d;
  acc_t* sr = state + b * ss.b + d * ss.d;
  const acc_t* kr = k + d * k_row;
  for (int s = lane; s < Lk; s += 32) ks[s] = kr[s * k_tap];
  for (int j = lane; j < W; j += 32) {
    const int i = a + j;  // x[i]: the state, then u
    xw[j] = i < S ? sr[(int64_t)i * ss.t] : static_cast<acc_t>(ur[(int64_t)(i - S) * us.t]);
  }
  __syncwarp();
  // outputs: lane group g = lane / P takes t = t0 + g, its P lanes the taps s = sub, sub + P, ...
  const int per_pass = 32 / P, g = lane / P, sub = lane % P;
  const acc_t skip_d = skip != nullptr ? skip[d * skip_stride] : acc_t(0);
  for (int t0 = 0; t0 < T; t0 += per_pass) {
    const int t = t0 + g;
    acc_t acc = 0;
    if (t < T) {
      const acc_t* xt = xw + (Lk - 1 + t);  // x[S + t - s] = xt[-s]
      for (int s = sub; s < Lk; s += P) acc += ks[s] * xt[-s];
    }
    for (int off = P / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (sub == 0 && t < T) y[row * T + t] = gated(static_cast<scalar_t>(acc + skip_d * xw[Lk - 1 + t]), gate, gs, b, d, t);
  }
  // new state[i] = x[T + i]: below the window (i + T < a) from the old state, ascending chunks as in
  // conv_update_kernel (only when S > Lk - 1 + T), then the rest from the window, after every read
  const int below = max(0, a - T);
  for (int i0 = 0; i0 < below; i0 += 32) {
    const int i = i0 + lane;
    const acc_t v = i < below ? sr[(int64_t)(T + i) * ss.t] : acc_t(0);
    __syncwarp();
    if (i < below) sr[(int64_t)i * ss.t] = v;
    __syncwarp();
  }
  for (int i = below + lane; i < S; i += 32) sr[(int64_t)i * ss.t] = xw[T + i - a];
}

at::Tensor causal_conv_update_cuda(const at::Tensor& u, at::Tensor& state, const at::Tensor& k,
                                   const c10::optional<at::Tensor>& skip, const c10::optional<at::Tensor>& gate) {
  check_causal_conv_update_args(u, state, k, skip, gate);
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t B = u.size(0), D = u.size(1), T = u.size(2), S = state.size(2), Lk = k.size(1);
  TORCH_CHECK(T <= INT32_MAX && S <= INT32_MAX - T && Lk <= INT32_MAX, "causal_conv_update: T + S (",
              std::to_string(T + S), ") must fit in 32 bits");
  at::Tensor y = at::empty({B, D, T}, u.options());
  const int64_t rows = B * D;
  if (rows == 0) return y;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv_update: too many rows (", std::to_string(rows), ")");
  const Strides3 us{u.stride(0), u.stride(1), u.stride(2)}, ss{state.stride(0), state.stride(1), state.stride(2)};
  const Strides3 gs = gate.has_value() ? Strides3{gate->stride(0), gate->stride(1), gate->stride(2)} : Strides3{0, 0, 0};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "causal_conv_update", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    // one new input (a SpectralLM byte step): the loop kernel measured faster (3.3 against 3.7 us per
    // 512-channel layer on an H200); a ChunkLM chunk (T = 16): the window kernel (4.8 against 11.3 us)
    if (T >= 2 && (2 * Lk - 1 + T) * (int64_t)sizeof(acc_t) <= kWindowBytesPerWarp) {
      int P = 32;  // lanes per output: 32 / T rounded down to a power of two, at least 1
      while (P > 1 && P * T > 32) P >>= 1;
      const int64_t wblocks = (rows + kWindowWarps - 1) / kWindowWarps;
      TORCH_CHECK(wblocks < (int64_t(1) << 31), "causal_conv_update: too many rows (", std::to_string(rows), ")");
      conv_update_window_kernel<scalar_t, acc_t><<<(unsigned)wblocks, kWindowWarps * 32,
                                                   kWindowWarps * kWindowBytesPerWarp, stream>>>(
          u.data_ptr<scalar_t>(), us, state.data_ptr<acc_t>(), ss, k.data_ptr<acc_t>(), k.stride(0), k.stride(1),
          skip.has_value() ? skip->data_ptr<acc_t>() : nullptr, skip.has_value() ? skip->stride(0) : 0,
          gate.has_value() ? gate->data_ptr<scalar_t>() : nullptr, gs,
          y.data_ptr<scalar_t>(), rows, D, (int)T, (int)S, (int)Lk, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    conv_update_kernel<scalar_t, acc_t><<<(unsigned)blocks, kWarpsPerBlock * 32, 0, stream>>>(
        u.data_ptr<scalar_t>(), us, state.data_ptr<acc_t>(), ss, k.data_ptr<acc_t>(), k.stride(0), k.stride(1),
        skip.has_value() ? skip->data_ptr<acc_t>() : nullptr, skip.has_value() ? skip->stride(0) : 0,
          gate.has_value() ? gate->data_ptr<scalar_t>() : nullptr, gs,
        y.data_ptr<scalar_t>(), rows, D, (int)T, (int)S, (int)Lk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CUDA, m) { m.impl("causal_conv_update", &causal_conv_update_cuda); }

}  // namespace fft_tensor
