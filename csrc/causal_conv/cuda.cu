// causal_conv on CUDA: a fused shared-memory FFT convolution.
//
// Every plan (common.h: conv_plan) is overlap-save over windows of N = 2^m points: window j of a
// row holds u[j*S - (taps-1) + n], n < N, and its outputs n in [taps-1, taps-1+S) are exact. One
// thread block owns one window of TWO batch rows of one channel, packed as z = u[b] + i*u[b+1]:
// the kernel spectrum of a real kernel is Hermitian, so the real and imaginary parts of
// IFFT(FFT(z) * K) are the two convolutions (one complex FFT per two real rows, no pre/post
// processing). The inverse is a second forward FFT of the conjugate, with 1/N folded into K.
// So a row is read once, transformed, multiplied, transformed back and written once; the only
// other traffic is K (D x (N/2+1) complex, reused from L2 by the blocks of one channel).
// The skip term is tap 0 of the effective kernel. grad_u is the same kernel run backwards in time;
// grad_k sums G * conj(U) over (row, window) items per (channel, group) block in shared memory,
// one FFT of u + i*sc*gy per window (sc: a power of two that keeps gy above u's rounding).
// Windows of 2x to 8x kMaxFusedFFT points run on a thread-block cluster of 2 to 8 blocks
// (Hopper+, cluster_fft.cuh): the same algorithm with the transform split across the cluster's
// shared memory. Longer windows, older GPUs and float64 go to the composite at::fft (cuFFT) path
// in cpu.cpp.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <tuple>
#include <map>

#include "cluster_fft.cuh"
#include "common.h"
#include "direct.cuh"
#include "direct_tiled.cuh"
#include "smem_fft.cuh"

namespace fft_tensor {
namespace {

using smem_fft::cadd;
using smem_fft::cmul;
using smem_fft::conjf2;
using smem_fft::kElemsPerThread;
using smem_fft::pad;

struct ConvShape {
  int64_t B, D, L;
  int N, logN, taps, seg, nseg, npairs;
};

ConvShape conv_shape(int64_t B, int64_t D, int64_t L, const ConvPlan& p) {
  int logN = 0;
  while ((int64_t(1) << logN) < p.fft_size) ++logN;
  return {B, D, L, (int)p.fft_size, logN, (int)p.taps, (int)p.segment, (int)p.segments, (int)((B + 1) / 2)};
}

template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }

// K[d, f] = FFT_N(k_eff[d, :taps])[f] / N for f <= N/2.  grid: D blocks.
__global__ void __launch_bounds__(1024) kernel_spectrum_kernel(const float* __restrict__ k, float2* __restrict__ K, int taps, int N,
                                       int logN) {
  extern __shared__ float2 smem[];
  const int d = blockIdx.x;
  for (int n = threadIdx.x; n < N; n += blockDim.x)
    smem[pad(n)] = make_float2(n < taps ? k[(int64_t)d * taps + n] : 0.f, 0.f);
  smem_fft::fft(smem, N, logN);
  const float scale = 1.f / (float)N;
  const int half = N / 2 + 1;
  for (int f = threadIdx.x; f < half; f += blockDim.x) {
    const float2 v = smem[pad(f)];
    K[(int64_t)d * half + f] = make_float2(v.x * scale, v.y * scale);
  }
}

// y = causal_conv(x, k) for one window of one row pair (kReverse: time runs backwards, which
// turns the convolution into the correlation grad_u[t] = sum_s k[s] gy[t+s]). The window is read
// from global memory by the first FFT pass and written by the last inverse pass (fused_conv).
// Rl: radix of the last forward pass (N = 16^(P-1) * Rl). kMaxThreads: the launch bound, N/16 or
// more; 1024 caps registers at 64 (spills 24-92 bytes per thread), 512 lets the compiler use 83-114
// (no spills, fewer resident blocks); see window_registers_128().
// grid: D * npairs * nseg blocks, window fastest, then pair, then channel (so blocks sharing K[d] are adjacent).
template <typename scalar_t, bool kReverse, int Rl, int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads) conv_window_kernel(const scalar_t* __restrict__ x, const float2* __restrict__ K,
                                   scalar_t* __restrict__ y, ConvShape s) {
  extern __shared__ float2 smem[];
  const int64_t blk = blockIdx.x;
  const int j = (int)(blk % s.nseg);
  const int64_t rest = blk / s.nseg;
  const int pair = (int)(rest % s.npairs);
  const int64_t d = rest / s.npairs;
  const int64_t b0 = 2 * pair, b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  const scalar_t* x0 = x + (b0 * s.D + d) * s.L;
  const scalar_t* x1 = has1 ? x + (b1 * s.D + d) * s.L : x0;
  scalar_t* y0 = y + (b0 * s.D + d) * s.L;
  scalar_t* y1 = has1 ? y + (b1 * s.D + d) * s.L : y0;
  const int64_t start = (int64_t)j * s.seg - (s.taps - 1);  // time of window sample 0
  const int N = s.N, half = N / 2, first = s.taps - 1;
  const float2* Kd = K + d * (half + 1);

  auto load = [&](int n) {
    const int64_t t = start + n;
    float v0 = 0.f, v1 = 0.f;
    if (t >= 0 && t < s.L) {
      const int64_t tt = kReverse ? s.L - 1 - t : t;
      v0 = to_float(x0[tt]);
      if (has1) v1 = to_float(x1[tt]);
    }
    return make_float2(v0, v1);
  };
  auto spectrum = [&](int f) { return f <= half ? Kd[f] : conjf2(Kd[N - f]); };
  auto store = [&](int n, float2 w) {  // w = conj of the result: real part = row 0, -imag = row 1
    const int64_t t = start + n;
    if (n < first || n >= first + s.seg || t >= s.L) return;
    const int64_t tt = kReverse ? s.L - 1 - t : t;
    y0[tt] = static_cast<scalar_t>(w.x);
    if (has1) y1[tt] = static_cast<scalar_t>(-w.y);
  };
  smem_fft::fused_conv<Rl>(smem, N, load, spectrum, store);
}

// partial[g, d, f] = sum over the (row, window) items of group g of G[f] * conj(U[f]), f <= N/2:
// the spectrum of the cross-correlation sum_t gy[t] u[t-s]. Each window of one row is packed as
// z = u + i*sc*gy (the gy window keeps only the outputs the window owns, so every (t, s) is counted
// once); with a = Z[f], c = conj(Z[N-f]): U = (a + c)/2, sc*G = (a - c)/(2i), so
// G conj(U) = -i/(4 sc) * (a - c) * conj(a + c), and one FFT serves both spectra.
// sc is a power of two bringing max|gy| of the window to max|u|: FFT rounding is relative to the
// larger part of z, and gradients of a mean loss are far smaller than activations, so without it
// the gy half would drown in the u half's rounding. Power of two: scaling and unscaling are exact.
// grid: D * groups blocks (group fastest); items (row b, window j) are dealt out round-robin.
template <typename scalar_t, int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads) conv_grad_k_kernel(const scalar_t* __restrict__ u,
                                                           const scalar_t* __restrict__ gy,
                                                           float2* __restrict__ partial, ConvShape s, int groups) {
  extern __shared__ float2 smem[];
  // Running sum in shared memory after the FFT buffer (registers are capped at 64 by the
  // 1024-thread launch bound); thread tid owns frequencies f = tid + i*T, i = 0, 1, ...
  __shared__ unsigned int window_max[2][2];  // [window parity][u, gy]: float bits, values >= 0
  const int N = s.N, T = blockDim.x, half = N / 2 + 1;
  float2* acc = smem + smem_fft::padded_size(N);
  const int group = (int)(blockIdx.x % groups);
  const int64_t d = blockIdx.x / groups;
  for (int f = threadIdx.x; f < half; f += T) acc[f] = make_float2(0.f, 0.f);
  if (threadIdx.x == 0) window_max[0][0] = window_max[0][1] = window_max[1][0] = window_max[1][1] = 0u;
  __syncthreads();

  const int64_t items = s.B * s.nseg;
  int parity = 0;
  for (int64_t it = group; it < items; it += groups, parity ^= 1) {
    const int64_t b = it / s.nseg;
    const int j = (int)(it % s.nseg);
    const int64_t off = (b * s.D + d) * s.L;
    const int64_t start = (int64_t)j * s.seg - (s.taps - 1);
    float max_u = 0.f, max_g = 0.f;
    for (int n = threadIdx.x; n < N; n += T) {
      const int64_t t = start + n;
      float vu = 0.f, vg = 0.f;
      if (t >= 0 && t < s.L) {
        vu = to_float(u[off + t]);
        if (n >= s.taps - 1 && n < s.taps - 1 + s.seg) vg = to_float(gy[off + t]);
      }
      max_u = fmaxf(max_u, fabsf(vu));
      max_g = fmaxf(max_g, fabsf(vg));
      smem[pad(n)] = make_float2(vu, vg);
    }
    atomicMax(&window_max[parity][0], __float_as_uint(max_u));  // order of non-negative floats = of their bits
    atomicMax(&window_max[parity][1], __float_as_uint(max_g));
    __syncthreads();
    const float mu = __uint_as_float(window_max[parity][0]), mg = __uint_as_float(window_max[parity][1]);
    const float sc = (mu > 0.f && mg > 0.f) ? exp2f(fminf(fmaxf(rintf(log2f(mu / mg)), -100.f), 100.f)) : 1.f;
    // The other parity's slot was last read before this window's barrier and is next written after
    // the barrier that ends this window, so it can be cleared now.
    if (threadIdx.x == 0) window_max[parity ^ 1][0] = window_max[parity ^ 1][1] = 0u;
    if (sc != 1.f)
      for (int n = threadIdx.x; n < N; n += T) smem[pad(n)].y *= sc;  // the elements this thread wrote
    smem_fft::fft(smem, N, s.logN);
    const float w = 0.25f / sc;
    for (int f = threadIdx.x; f < half; f += T) {
      const float2 a = smem[pad(f)], c = conjf2(smem[pad((N - f) & (N - 1))]);
      const float2 p = cmul(make_float2(a.x - c.x, a.y - c.y), conjf2(cadd(a, c)));
      acc[f] = make_float2(acc[f].x + w * p.y, acc[f].y - w * p.x);  // += -i/(4 sc) * p
    }
    __syncthreads();
  }
  float2* out = partial + ((int64_t)group * s.D + d) * half;
  for (int f = threadIdx.x; f < half; f += T) out[f] = acc[f];
}

// grad_k with rows in pairs, for windows of up to 8192 points: per (row pair, window) item two FFTs,
// Zu = FFT(u[b0] + i u[b1]) and Zg = FFT(gy[b0] + i gy[b1]) (gy kept only at the outputs the window
// owns), both through fft_to_registers, and acc[f] += Zg[f] conj(Zu[f]) for the bins each thread
// owns after the last pass (acc in registers; Zu waits in shared memory, own bins, no barrier).
// Summed over a pair, G_b conj(U_b) = (P[f] + conj(P[N-f]))/2 with P = Zg conj(Zu) (expand
// U_0 = (Zu[f] + conj Zu[N-f])/2, U_1 = (Zu[f] - conj Zu[N-f])/2i, same for G); that is linear, so
// it is applied once at the end. Each FFT mixes two rows of the same kind (u with u, gy with gy):
// no scaling between activations and gradients, unlike conv_grad_k_kernel's u + i*gy packing, and
// no block-wide reduction per item.
// Shared memory: the FFT buffer, then stash (N complex). grid: D * groups blocks (group fastest).
template <typename scalar_t, int Rl>
__global__ void __launch_bounds__(512) conv_grad_k_pair_kernel(const scalar_t* __restrict__ u,
                                                               const scalar_t* __restrict__ gy,
                                                               float2* __restrict__ partial, ConvShape s, int groups) {
  extern __shared__ float2 smem[];
  const int N = s.N, T = N / kElemsPerThread, half = N / 2, NR = N / Rl;
  float2* stash = smem + smem_fft::padded_size(N);
  auto own_bin = [&](int i) { return threadIdx.x + (i / Rl) * T + (i % Rl) * NR; };  // bin of x[i]
  const int group = (int)(blockIdx.x % groups);
  const int64_t d = blockIdx.x / groups;
  float2 acc[kElemsPerThread];
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) acc[i] = make_float2(0.f, 0.f);

  const int64_t items = (int64_t)s.npairs * s.nseg;
  const int first = s.taps - 1;
  for (int64_t it = group; it < items; it += groups) {
    const int64_t pair = it / s.nseg;
    const int j = (int)(it % s.nseg);
    const int64_t b0 = 2 * pair;
    const bool has1 = b0 + 1 < s.B;
    const int64_t off0 = (b0 * s.D + d) * s.L, off1 = has1 ? off0 + s.D * s.L : off0;
    const int64_t start = (int64_t)j * s.seg - first;
    float2 x[kElemsPerThread];
    smem_fft::fft_to_registers<Rl>(smem, x, N, [&](int n) {
      const int64_t t = start + n;
      float2 v = make_float2(0.f, 0.f);
      if (t >= 0 && t < s.L) {
        v.x = to_float(u[off0 + t]);
        if (has1) v.y = to_float(u[off1 + t]);
      }
      return v;
    });
#pragma unroll
    for (int i = 0; i < kElemsPerThread; ++i) stash[own_bin(i)] = x[i];
    __syncthreads();  // the last pass has read the FFT buffer before the next transform writes it
    smem_fft::fft_to_registers<Rl>(smem, x, N, [&](int n) {
      const int64_t t = start + n;
      float2 v = make_float2(0.f, 0.f);
      if (t < s.L && n >= first && n < first + s.seg) {
        v.x = to_float(gy[off0 + t]);
        if (has1) v.y = to_float(gy[off1 + t]);
      }
      return v;
    });
#pragma unroll
    for (int i = 0; i < kElemsPerThread; ++i) acc[i] = cadd(acc[i], cmul(x[i], conjf2(stash[own_bin(i)])));
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) stash[own_bin(i)] = acc[i];
  __syncthreads();
  float2* out = partial + ((int64_t)group * s.D + d) * (half + 1);
  for (int f = threadIdx.x; f <= half; f += T) {
    const float2 a = stash[f], c = conjf2(stash[(N - f) & (N - 1)]);
    out[f] = make_float2(0.5f * (a.x + c.x), 0.5f * (a.y + c.y));
  }
}

// ---------------------------------------------------------------------------------------------
// Windows of N = C * M points, M = kMaxFusedFFT, C = 2, 4 or 8 (cluster_fft.cuh): one cluster of C
// blocks per window, block r holding window points [r*M, (r+1)*M). Same algorithm and grid order
// as conv_window_kernel (one cluster where that kernel has one block); the window is read once
// and written once, the transform never leaves shared memory.
template <typename scalar_t, bool kReverse>
__global__ void __launch_bounds__(1024) conv_cluster_kernel(const scalar_t* __restrict__ x, const float2* __restrict__ K,
                                                            scalar_t* __restrict__ y, ConvShape s, int C, int logC) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ float2 smem[];
  const int rank = cluster_fft::cluster_rank();
  const int64_t item = blockIdx.x / C;
  const int j = (int)(item % s.nseg);
  const int64_t rest = item / s.nseg;
  const int pair = (int)(rest % s.npairs);
  const int64_t d = rest / s.npairs;
  const int64_t b0 = 2 * pair, b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  const scalar_t* x0 = x + (b0 * s.D + d) * s.L;
  const scalar_t* x1 = has1 ? x + (b1 * s.D + d) * s.L : x0;
  const int64_t start = (int64_t)j * s.seg - (s.taps - 1);
  const int N = s.N, M = N >> logC;

  for (int m = threadIdx.x; m < M; m += blockDim.x) {
    const int64_t t = start + (int64_t)rank * M + m;
    float v0 = 0.f, v1 = 0.f;
    if (t >= 0 && t < s.L) {
      const int64_t tt = kReverse ? s.L - 1 - t : t;
      v0 = to_float(x0[tt]);
      if (has1) v1 = to_float(x1[tt]);
    }
    smem[pad(m)] = make_float2(v0, v1);
  }
  cluster_fft::cluster_sync();
  cluster_fft::cross_block_dft<false>(smem, C, M, N);
  cluster_fft::cluster_sync();
  // M-point FFT (block rank then holds X[rank + C*k2] at k2), product, M-point inverse, in place
  const int half = N / 2;
  const float2* Kd = K + d * (half + 1);
  static_assert(kMaxFusedFFT == 16384, "the last radix below is that of 16384 = 16^3 * 4");
  smem_fft::fused_conv<4, true>(
      smem, M, [&](int m) { return smem[pad(m)]; },
      [&](int k2) {
        const int f = rank + C * k2;
        return f <= half ? Kd[f] : conjf2(Kd[N - f]);
      },
      [&](int m, float2 w) { smem[pad(m)] = w; });
  cluster_fft::cluster_sync();
  cluster_fft::cross_block_dft<true>(smem, C, M, N);
  cluster_fft::cluster_sync();  // this block now holds window points [rank*M, (rank+1)*M)

  scalar_t* y0 = y + (b0 * s.D + d) * s.L;
  scalar_t* y1 = has1 ? y + (b1 * s.D + d) * s.L : y0;
  const int first = s.taps - 1;
  for (int m = threadIdx.x; m < M; m += blockDim.x) {
    const int n = rank * M + m;
    const int64_t t = start + n;
    if (n < first || n >= first + s.seg || t >= s.L) continue;
    const int64_t tt = kReverse ? s.L - 1 - t : t;
    const float2 w = smem[pad(m)];
    y0[tt] = static_cast<scalar_t>(w.x);
    if (has1) y1[tt] = static_cast<scalar_t>(-w.y);
  }
#endif
}

// grad_k for cluster-sized windows: conv_grad_k_kernel's algorithm (z = u + i*sc*gy per (row,
// window) item, G conj(U) from Z[f] and Z[N-f]) with the window spread over a cluster. Z[N-f] lives
// in another block (read through distributed shared memory); the running sum lives in
// partial[group, d, f] (global, zero-initialised; each f is owned by one block, so no races).
template <typename scalar_t>
__global__ void __launch_bounds__(1024) conv_grad_k_cluster_kernel(const scalar_t* __restrict__ u,
                                                                   const scalar_t* __restrict__ gy,
                                                                   float2* __restrict__ partial, ConvShape s,
                                                                   int groups, int C, int logC) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  extern __shared__ float2 smem[];
  __shared__ unsigned int window_max[2][2];  // [item parity][u, gy]: float bits, values >= 0
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  const int N = s.N, M = N >> logC, logM = s.logN - logC, T = blockDim.x, half = N / 2;
  const int64_t cid = blockIdx.x / C;
  const int group = (int)(cid % groups);
  const int64_t d = cid / groups;
  float2* acc = partial + ((int64_t)group * s.D + d) * (half + 1);
  if (threadIdx.x == 0) window_max[0][0] = window_max[0][1] = window_max[1][0] = window_max[1][1] = 0u;
  __syncthreads();

  const int64_t items = s.B * s.nseg;
  int parity = 0;
  for (int64_t it = group; it < items; it += groups, parity ^= 1) {
    const int64_t b = it / s.nseg;
    const int j = (int)(it % s.nseg);
    const int64_t off = (b * s.D + d) * s.L;
    const int64_t start = (int64_t)j * s.seg - (s.taps - 1);
    float max_u = 0.f, max_g = 0.f;
    for (int m = threadIdx.x; m < M; m += T) {
      const int n = rank * M + m;
      const int64_t t = start + n;
      float vu = 0.f, vg = 0.f;
      if (t >= 0 && t < s.L) {
        vu = to_float(u[off + t]);
        if (n >= s.taps - 1 && n < s.taps - 1 + s.seg) vg = to_float(gy[off + t]);
      }
      max_u = fmaxf(max_u, fabsf(vu));
      max_g = fmaxf(max_g, fabsf(vg));
      smem[pad(m)] = make_float2(vu, vg);
    }
    atomicMax(&window_max[parity][0], __float_as_uint(max_u));
    atomicMax(&window_max[parity][1], __float_as_uint(max_g));
    cluster.sync();  // every block's maxima of this item are in
    float mu = 0.f, mg = 0.f;
    for (int r = 0; r < C; ++r) {
      const unsigned int* wm = cluster.map_shared_rank(&window_max[parity][0], r);
      mu = fmaxf(mu, __uint_as_float(wm[0]));
      mg = fmaxf(mg, __uint_as_float(wm[1]));
    }
    const float sc = (mu > 0.f && mg > 0.f) ? exp2f(fminf(fmaxf(rintf(log2f(mu / mg)), -100.f), 100.f)) : 1.f;
    // The other parity's slots were last read (by every block) before this item's first cross-block
    // step and are next written after it, so they can be cleared now.
    if (threadIdx.x == 0) window_max[parity ^ 1][0] = window_max[parity ^ 1][1] = 0u;
    if (sc != 1.f)
      for (int m = threadIdx.x; m < M; m += T) smem[pad(m)].y *= sc;  // the elements this thread wrote
    cluster.sync();
    cluster_fft::cross_block_dft<false>(smem, C, M, N);
    cluster.sync();
    smem_fft::fft(smem, M, logM);  // block rank holds Z[rank + C*k2] at k2
    cluster.sync();                // every block's spectrum is complete before partners read it
    const float w = 0.25f / sc;
    for (int k2 = threadIdx.x; k2 < M; k2 += T) {
      const int f = rank + C * k2;
      if (f > half) continue;
      const int g = (N - f) & (N - 1);
      const float2 a = smem[pad(k2)];
      const float2 c = conjf2(cluster.map_shared_rank(smem, g & (C - 1))[pad(g >> logC)]);
      const float2 p = cmul(make_float2(a.x - c.x, a.y - c.y), conjf2(cadd(a, c)));
      const float2 old = acc[f];
      acc[f] = make_float2(old.x + w * p.y, old.y - w * p.x);  // += -i/(4 sc) * p
    }
    cluster.sync();  // partners are done reading this block's spectrum before the next item overwrites it
  }
#endif
}

// The fused kernels serve float32, bfloat16 and float16 input (float64 takes the composite path);
// instantiating only these keeps compile time down.
template <typename F>
void dispatch_io_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, "causal_conv: the fused CUDA path does not take ", t);
  }
}

size_t smem_bytes(int N) { return (size_t)smem_fft::padded_size(N) * sizeof(float2); }

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

// (D, N/2+1) complex64 spectrum of the effective kernel, scaled by 1/N.
at::Tensor kernel_spectrum(const at::Tensor& k_eff, const ConvShape& s) {
  const int64_t D = k_eff.size(0);
  const at::Tensor kc = k_eff.to(at::kFloat).contiguous();
  at::Tensor K = at::empty({D, s.N / 2 + 1}, kc.options().dtype(at::kComplexFloat));
  const size_t bytes = smem_bytes(s.N);
  allow_smem(kernel_spectrum_kernel, bytes);
  kernel_spectrum_kernel<<<(unsigned)D, s.N / kElemsPerThread, bytes, at::cuda::getCurrentCUDAStream()>>>(
      kc.data_ptr<float>(), reinterpret_cast<float2*>(K.data_ptr()), s.taps, s.N, s.logN);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return K;
}

// The window kernels run under the 1024-thread launch bound (64 registers; ptxas spills 24-92
// bytes per thread) by default: measured 12% faster at 4K points than the 512-thread variants
// (83-114 registers, no spills, fewer resident blocks). FFT_TENSOR_CONV_WINDOW_REGS128=1 selects
// those for windows up to 8192 points, for comparison.
bool window_registers_128() {
  static const bool on = [] {
    const char* env = std::getenv("FFT_TENSOR_CONV_WINDOW_REGS128");
    return env && std::string(env) == "1";
  }();
  return on;
}

template <bool kReverse>
void launch_conv_windows(const at::Tensor& x, const at::Tensor& K, at::Tensor& y, const ConvShape& s) {
  const int64_t blocks = s.D * s.npairs * s.nseg;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many FFT windows (", std::to_string(blocks), ") for one launch");
  const size_t bytes = smem_bytes(s.N);
  const int last_radix = 1 << (s.logN - 4 * ((s.logN + 3) / 4 - 1));  // N = 16^(P-1) * last_radix
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto launch = [&](auto kernel) {
      allow_smem(kernel, bytes);
      kernel<<<(unsigned)blocks, s.N / kElemsPerThread, bytes, at::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), reinterpret_cast<const float2*>(K.data_ptr()), y.data_ptr<scalar_t>(), s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (s.N > 8192 || !window_registers_128()) {
      switch (last_radix) {  // 16384 = 16^3 * 4 is the only size past 8192
        case 2: return launch(conv_window_kernel<scalar_t, kReverse, 2, 1024>);
        case 4: return launch(conv_window_kernel<scalar_t, kReverse, 4, 1024>);
        case 8: return launch(conv_window_kernel<scalar_t, kReverse, 8, 1024>);
        default: return launch(conv_window_kernel<scalar_t, kReverse, 16, 1024>);
      }
    }
    switch (last_radix) {
      case 2: return launch(conv_window_kernel<scalar_t, kReverse, 2, 512>);
      case 4: return launch(conv_window_kernel<scalar_t, kReverse, 4, 512>);
      case 8: return launch(conv_window_kernel<scalar_t, kReverse, 8, 512>);
      default: return launch(conv_window_kernel<scalar_t, kReverse, 16, 512>);
    }
  });
}

size_t grad_k_smem_bytes(int N) { return smem_bytes(N) + (size_t)(N / 2 + 1) * sizeof(float2); }

// The fused path needs float32/bf16/fp16 input and an FFT that fits this GPU's shared memory
// (an H100 takes every fused size; an A100's 163 KB and sm_86/89's 99 KB do not take the largest).
bool use_fused(const at::Tensor& u, const ConvPlan& plan, bool with_grad_k) {
  if (u.scalar_type() == at::kDouble || plan.fft_size > kMaxFusedFFT) return false;
  const int N = (int)plan.fft_size;
  const size_t need = with_grad_k ? std::max(smem_bytes(N), grad_k_smem_bytes(N)) : smem_bytes(N);
  return need <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

// Blocks per channel for grad_k: enough (channel, group) blocks for a few waves, no more than the
// (row, window) items, so the partial sums stay small: groups * D * (N/2+1) complex values.
int grad_k_groups(const ConvShape& s) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int threads = s.N / kElemsPerThread;
  const int64_t by_threads = std::max(1, prop->maxThreadsPerMultiProcessor / std::max(threads, 32));
  const int64_t by_smem = std::max<int64_t>(1, (int64_t)prop->sharedMemPerMultiprocessor / (int64_t)grad_k_smem_bytes(s.N));
  const int64_t resident = (int64_t)prop->multiProcessorCount * std::min<int64_t>({by_threads, by_smem, 32});
  const int64_t want = (4 * resident + s.D - 1) / s.D;
  return (int)std::max<int64_t>(1, std::min<int64_t>(want, s.B * s.nseg));
}

// The row-pair grad_k kernel (windows up to 8192 points: its 512-thread bound) unless
// FFT_TENSOR_CONV_GRAD_K_PAIRS=0 (then conv_grad_k_kernel, one row per FFT, for comparison).
size_t grad_k_pair_smem_bytes(int N) { return smem_bytes(N) + (size_t)N * sizeof(float2); }

bool use_grad_k_pairs(const ConvShape& s) {
  static const bool enabled = [] {
    const char* env = std::getenv("FFT_TENSOR_CONV_GRAD_K_PAIRS");
    return !(env && std::string(env) == "0");
  }();
  return enabled && s.N <= 8192 &&
         grad_k_pair_smem_bytes(s.N) <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

// As grad_k_groups, for the pair kernel: items are (row pair, window).
int grad_k_pair_groups(const ConvShape& s) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int threads = s.N / kElemsPerThread;
  const int64_t by_threads = std::max(1, prop->maxThreadsPerMultiProcessor / std::max(threads, 32));
  const int64_t by_smem =
      std::max<int64_t>(1, (int64_t)prop->sharedMemPerMultiprocessor / (int64_t)grad_k_pair_smem_bytes(s.N));
  const int64_t resident = (int64_t)prop->multiProcessorCount * std::min<int64_t>({by_threads, by_smem, 32});
  const int64_t want = (4 * resident + s.D - 1) / s.D;
  return (int)std::max<int64_t>(1, std::min<int64_t>(want, (int64_t)s.npairs * s.nseg));
}

// ---------------------------------------------------------------------------------------------
// Cluster path (N = 2x, 4x or 8x kMaxFusedFFT, one window per cluster): Hopper and later, and only
// when the kernels in this build were compiled for sm_90+ (a PTX-only build for sm_80 would JIT an
// empty body). FFT_TENSOR_CONV_CLUSTERS=0 turns it off (then cuFFT, as on older GPUs).
int cluster_blocks(const ConvPlan& plan) { return (int)(plan.fft_size / kMaxFusedFFT); }

bool clusters_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("FFT_TENSOR_CONV_CLUSTERS");
    return !(env && std::string(env) == "0");
  }();
  return enabled;
}

template <typename Kernel>
bool cluster_launchable(Kernel kernel, size_t smem, int C) {
  cudaFuncAttributes attr;
  // Both: a PTX-only sm_80 build JIT-compiled on Hopper reports binaryVersion 90 but ptxVersion 80,
  // and its kernel body (guarded by __CUDA_ARCH__ >= 900) is empty.
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess || attr.binaryVersion < 90 || attr.ptxVersion < 90) {
    (void)cudaGetLastError();
    return false;
  }
  allow_smem(kernel, smem);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(C);
  cfg.blockDim = dim3(1024);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute cluster;
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = C;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return clusters > 0;
}

template <typename Kernel, typename... Args>
void launch_cluster(Kernel kernel, int64_t blocks, int C, size_t smem, Args... args) {
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many FFT windows (", std::to_string(blocks / C),
              ") for one launch");
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)blocks);
  cfg.blockDim = dim3(1024);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = at::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute cluster;
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = C;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

bool use_cluster(const at::Tensor& u, const ConvPlan& plan, bool with_grad_k) {
  if (u.scalar_type() == at::kDouble || plan.fft_size <= kMaxFusedFFT ||
      plan.fft_size > kMaxFusedFFT * cluster_fft::kMaxClusterBlocks || !clusters_enabled())
    return false;
  if (at::cuda::getCurrentDeviceProperties()->major < 9) return false;
  // The answer depends only on (device, C, grad_k): ask the driver once.
  static std::mutex mutex;
  static std::map<std::tuple<int, int, bool>, bool> known;
  const int C = cluster_blocks(plan);
  const auto key = std::make_tuple((int)at::cuda::current_device(), C, with_grad_k);
  std::lock_guard<std::mutex> lock(mutex);
  const auto hit = known.find(key);
  if (hit != known.end()) return hit->second;
  const size_t smem = smem_bytes((int)kMaxFusedFFT);
  bool ok = cluster_launchable(conv_cluster_kernel<float, false>, smem, C);
  if (with_grad_k) ok = ok && cluster_launchable(conv_grad_k_cluster_kernel<float>, smem, C);
  known[key] = ok;
  return ok;
}

int log2_int(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

// (D, N/2+1) spectrum of the effective kernel scaled by 1/N, through cuFFT (N is past one block's FFT).
// Rows go through cuFFT in chunks and the 1/N is applied in place: the spectrum itself is the only
// allocation of its size (with all rows at once, cuFFT's workspace and the scaled copy added two more,
// which put the forward's peak at 1.67x inputs plus outputs for bf16 at L=64K).
at::Tensor kernel_spectrum_cufft(const at::Tensor& k_eff, const ConvShape& s) {
  const at::Tensor kf = k_eff.to(at::kFloat);
  const int64_t D = kf.size(0), rows = std::max<int64_t>(1, (int64_t(32) << 20) / ((int64_t)s.N * 8));
  at::Tensor K = at::empty({D, s.N / 2 + 1}, kf.options().dtype(at::kComplexFloat));
  for (int64_t d = 0; d < D; d += rows) {
    const int64_t n = std::min(rows, D - d);
    at::Tensor out = K.narrow(0, d, n);
    at::fft_rfft_out(out, kf.narrow(0, d, n), s.N);
  }
  return K.mul_(1.0 / s.N);
}

template <bool kReverse>
void launch_conv_clusters(const at::Tensor& x, const at::Tensor& K, at::Tensor& y, const ConvShape& s, int C) {
  const size_t smem = smem_bytes((int)kMaxFusedFFT);
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = conv_cluster_kernel<scalar_t, kReverse>;
    allow_smem(kernel, smem);
    launch_cluster(kernel, s.D * s.npairs * s.nseg * C, C, smem, x.data_ptr<scalar_t>(),
                   reinterpret_cast<const float2*>(K.data_ptr()), y.data_ptr<scalar_t>(), s, C, log2_int(C));
  });
}

// sum over rows of G conj(U), (D, N/2+1), for cluster-sized windows; groups split a channel's
// (row, window) items when there are too few channels to fill the GPU.
at::Tensor grad_k_spectrum_clusters(const at::Tensor& u, const at::Tensor& gy, const ConvShape& s, int C) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t resident = std::max(1, prop->multiProcessorCount / C);  // one 1024-thread block per SM
  int groups = (int)std::max<int64_t>(1, std::min<int64_t>((2 * resident + s.D - 1) / s.D, s.B * s.nseg));
  // The partial sums are (groups, D, N/2+1) complex: keep them under half of u's size.
  while (groups > 1 && groups * s.D * (s.N / 2 + 1) * 8 > u.numel() * (int64_t)u.element_size() / 2) --groups;
  at::Tensor partial = at::zeros({groups, s.D, s.N / 2 + 1}, u.options().dtype(at::kComplexFloat));
  const size_t smem = smem_bytes((int)kMaxFusedFFT);
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = conv_grad_k_cluster_kernel<scalar_t>;
    allow_smem(kernel, smem);
    launch_cluster(kernel, s.D * groups * C, C, smem, u.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(),
                   reinterpret_cast<float2*>(partial.data_ptr()), s, groups, C, log2_int(C));
  });
  return groups == 1 ? partial[0] : partial.sum(0);
}

// ---------------------------------------------------------------------------------------------
// Direct path (direct.cuh): kernels of at most 32 taps, and of at most 128 taps on rows shorter than
// 1024 (streaming steps, where an FFT window would be mostly padding). Its cost grows with the taps
// while the FFT windows' does not: with 128 taps the fused windows measured 1.7-1.9x faster forward
// from 4K (0.152 vs 0.264 ms at 4K, B=8, D=768), while 32 taps are near the direct kernel's memory
// floor. FFT_TENSOR_CONV_DIRECT_MAX_TAPS=N (0..128) replaces the rule by "at most N taps" (0 = never
// direct); read on every call (one getenv) so tests can switch it.
constexpr int kDirectTaps = 32, kDirectTapsShortRows = 128;
constexpr int64_t kShortRow = 1024;

bool use_direct(const at::Tensor& u, const ConvPlan& plan) {
  if (u.scalar_type() == at::kDouble) return false;
  if (const char* env = std::getenv("FFT_TENSOR_CONV_DIRECT_MAX_TAPS"))
    return plan.taps <= std::max(0, std::min(std::atoi(env), direct::kMaxTaps));
  return plan.taps <= (u.size(2) < kShortRow ? kDirectTapsShortRows : kDirectTaps);
}

int64_t direct_tiles(int64_t L) { return (L + direct::kTile - 1) / direct::kTile; }

template <bool kReverse>
void launch_conv_direct(const at::Tensor& x, const at::Tensor& k_eff, at::Tensor& y, int taps) {
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2), tiles = direct_tiles(L);
  const int64_t blocks = B * D * tiles;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many tiles (", std::to_string(blocks), ") for one launch");
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    direct::conv_direct_kernel<scalar_t, kReverse><<<(unsigned)blocks, direct::kThreads, 0,
                                                      at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), k_eff.data_ptr<float>(), y.data_ptr<scalar_t>(), D, L, taps, tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// (D, taps) float32: sum over rows and times of gy[t] u[t - s].
at::Tensor direct_grad_k(const at::Tensor& u, const at::Tensor& gy, int taps) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2), tiles = direct_tiles(L);
  int lag_groups = 1;
  while (lag_groups * direct::kPerThread < taps) lag_groups *= 2;
  // Enough (channel, group) blocks for a few waves of 16 blocks per SM; each group's partial sum is
  // one (D, taps) slice, summed below in a fixed order.
  const int64_t want = 4 * 16 * (int64_t)at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int groups = (int)std::max<int64_t>(1, std::min<int64_t>((want + D - 1) / D, B * tiles));
  TORCH_CHECK(D * groups < (int64_t(1) << 31), "causal_conv_backward: too many blocks (", std::to_string(D * groups), ")");
  at::Tensor partial = at::empty({groups, D, taps}, u.options().dtype(at::kFloat));
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    direct::conv_direct_grad_k_kernel<scalar_t><<<(unsigned)(D * groups), direct::kThreads, 0,
                                                   at::cuda::getCurrentCUDAStream()>>>(
        u.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), partial.data_ptr<float>(), B, D, L, taps, lag_groups,
        tiles, groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return groups == 1 ? partial[0] : partial.sum(0);
}

// ---------------------------------------------------------------------------------------------
// Channels-contiguous inputs (direct_tiled.cuh): NOT YET RUN ON A GPU, so off unless
// FFT_TENSOR_CONV_CHANNELS_LAST=1 (read on every call, so tests can switch it).
bool channels_last_enabled() {
  const char* env = std::getenv("FFT_TENSOR_CONV_CHANNELS_LAST");
  return env && std::string(env) == "1";
}

// Layouts the tile loader reads coalesced: channels or time contiguous.
bool tile_layout(const at::Tensor& t) { return t.stride(1) == 1 || t.stride(2) == 1; }

// The tiled kernels pay off where the plain ones would first copy u: channels contiguous.
bool use_tiled(const at::Tensor& u) {
  return channels_last_enabled() && u.size(1) > 1 && u.stride(1) == 1 && u.size(0) <= 65535 &&
         (u.size(1) + direct_tiled::kLanes - 1) / direct_tiled::kLanes <= 65535;
}

direct_tiled::Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

template <bool kReverse>
void launch_conv_tiled(const at::Tensor& x, const at::Tensor& k_eff, at::Tensor& y, int taps) {
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
  const dim3 grid((unsigned)((L + direct_tiled::kTile - 1) / direct_tiled::kTile),
                  (unsigned)((D + direct_tiled::kLanes - 1) / direct_tiled::kLanes), (unsigned)B);
  const size_t smem = direct_tiled::forward_smem_bytes();
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = direct_tiled::conv_tiled_kernel<scalar_t, kReverse>;
    allow_smem(kernel, smem);
    kernel<<<grid, dim3(direct_tiled::kLanes, direct_tiled::kWarps), smem, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), strides_of(x), k_eff.data_ptr<float>(), y.data_ptr<scalar_t>(), D, L, taps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor tiled_grad_k(const at::Tensor& u, const at::Tensor& gy, int taps) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
  const int64_t tiles = (L + direct_tiled::kTile - 1) / direct_tiled::kTile;
  const int64_t channel_blocks = (D + direct_tiled::kLanes - 1) / direct_tiled::kLanes;
  const int64_t want = 8 * (int64_t)at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int groups = (int)std::max<int64_t>(1, std::min<int64_t>({(want + channel_blocks - 1) / channel_blocks,
                                                                   B * tiles, 65535}));
  at::Tensor partial = at::empty({groups, D, taps}, u.options().dtype(at::kFloat));
  const size_t smem = direct_tiled::grad_k_smem_bytes();
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = direct_tiled::conv_tiled_grad_k_kernel<scalar_t>;
    allow_smem(kernel, smem);
    kernel<<<dim3((unsigned)groups, (unsigned)channel_blocks), dim3(direct_tiled::kLanes, direct_tiled::kWarps), smem,
             at::cuda::getCurrentCUDAStream()>>>(u.data_ptr<scalar_t>(), strides_of(u), gy.data_ptr<scalar_t>(),
                                                 strides_of(gy), partial.data_ptr<float>(), B, D, L, taps, groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return groups == 1 ? partial[0] : partial.sum(0);
}

at::Tensor causal_conv_cuda(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  check_causal_conv_args(u, k, skip, "causal_conv");
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
  const ConvPlan plan = conv_plan(L, k.size(1));
  if (use_direct(u, plan) && u.numel() > 0 && use_tiled(u)) {
    at::Tensor y = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
    launch_conv_tiled<false>(u, effective_kernel(k, skip, plan.taps).to(at::kFloat).contiguous(), y, (int)plan.taps);
    return y;
  }
  if (use_direct(u, plan)) {
    const at::Tensor uc = u.contiguous();
    at::Tensor y = at::empty_like(uc);
    if (uc.numel() == 0) return y;
    launch_conv_direct<false>(uc, effective_kernel(k, skip, plan.taps).to(at::kFloat).contiguous(), y, (int)plan.taps);
    return y;
  }
  const bool fused = use_fused(u, plan, /*with_grad_k=*/false);
  if (!fused && !use_cluster(u, plan, /*with_grad_k=*/false)) return causal_conv_composite(u, k, skip);
  const ConvShape s = conv_shape(B, D, L, plan);
  const at::Tensor uc = u.contiguous();
  at::Tensor y = at::empty_like(uc);
  if (uc.numel() == 0) return y;
  const at::Tensor k_eff = effective_kernel(k, skip, plan.taps);
  if (fused) {
    launch_conv_windows<false>(uc, kernel_spectrum(k_eff, s), y, s);
  } else {
    launch_conv_clusters<false>(uc, kernel_spectrum_cufft(k_eff, s), y, s, cluster_blocks(plan));
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cuda(const at::Tensor& grad_y, const at::Tensor& u,
                                                             const at::Tensor& k,
                                                             const c10::optional<at::Tensor>& skip, bool need_u,
                                                             bool need_k) {
  check_causal_conv_args(u, k, skip, "causal_conv_backward");
  check_causal_conv_grad_y(grad_y, u);
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2), Lk = k.size(1);
  const ConvPlan plan = conv_plan(L, Lk);
  const bool direct = use_direct(u, plan);
  const bool fused = !direct && use_fused(u, plan, need_k);
  const bool clusters = !direct && !fused && use_cluster(u, plan, need_k);
  if (!direct && !fused && !clusters) return causal_conv_backward_composite(grad_y, u, k, skip, need_u, need_k);
  const ConvShape s = conv_shape(B, D, L, plan);
  if (direct && u.numel() > 0 && (use_tiled(u) || use_tiled(grad_y))) {
    // no layout copies: the tile loader reads u and grad_y in their own strides
    const at::Tensor gy_t = grad_y.to(u.scalar_type());
    const at::Tensor ut = tile_layout(u) ? u : u.contiguous();
    const at::Tensor gyt = tile_layout(gy_t) ? gy_t : gy_t.contiguous();
    at::Tensor grad_u = at::empty({0}, u.options());
    at::Tensor grad_k = at::empty({0}, k.options());
    if (need_u) {
      grad_u = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
      launch_conv_tiled<true>(gyt, effective_kernel(k, skip, plan.taps).to(at::kFloat).contiguous(), grad_u,
                              (int)plan.taps);
    }
    if (need_k) {
      grad_k = at::zeros({D, Lk}, k.options());
      grad_k.narrow(1, 0, plan.taps).copy_(tiled_grad_k(ut, gyt, (int)plan.taps));
    }
    return {grad_u, grad_k};
  }
  const at::Tensor gy = grad_y.to(u.scalar_type()).contiguous();
  at::Tensor grad_u = at::empty({0}, u.options());
  at::Tensor grad_k = at::empty({0}, k.options());
  if (u.numel() == 0) {  // no rows: nothing to launch
    if (need_u) grad_u = at::zeros(u.sizes(), u.options());
    if (need_k) grad_k = at::zeros({D, Lk}, k.options());
    return {grad_u, grad_k};
  }
  if (need_u) {
    grad_u = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
    const at::Tensor k_eff = effective_kernel(k, skip, plan.taps);
    if (direct) {
      launch_conv_direct<true>(gy, k_eff.to(at::kFloat).contiguous(), grad_u, (int)plan.taps);
    } else if (fused) {
      launch_conv_windows<true>(gy, kernel_spectrum(k_eff, s), grad_u, s);
    } else {
      launch_conv_clusters<true>(gy, kernel_spectrum_cufft(k_eff, s), grad_u, s, cluster_blocks(plan));
    }
  }
  if (need_k && direct) {
    grad_k = at::zeros({D, Lk}, k.options());
    grad_k.narrow(1, 0, plan.taps).copy_(direct_grad_k(u.contiguous(), gy, (int)plan.taps));
  } else if (need_k && clusters) {
    const at::Tensor corr =
        at::fft_irfft(grad_k_spectrum_clusters(u.contiguous(), gy, s, cluster_blocks(plan)), s.N).narrow(-1, 0, plan.taps);
    grad_k = at::zeros({D, Lk}, k.options());
    grad_k.narrow(1, 0, plan.taps).copy_(corr);
  } else if (need_k && use_grad_k_pairs(s)) {
    const at::Tensor uc = u.contiguous();
    const int groups = grad_k_pair_groups(s);
    TORCH_CHECK(D * groups < (int64_t(1) << 31), "causal_conv_backward: too many blocks (", std::to_string(D * groups), ")");
    at::Tensor partial = at::empty({groups, D, s.N / 2 + 1}, u.options().dtype(at::kComplexFloat));
    const size_t bytes_k = grad_k_pair_smem_bytes(s.N);
    const int last_radix = 1 << (s.logN - 4 * ((s.logN + 3) / 4 - 1));
    dispatch_io_type(uc.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      auto launch = [&](auto kernel) {
        allow_smem(kernel, bytes_k);
        kernel<<<(unsigned)(D * groups), s.N / kElemsPerThread, bytes_k, at::cuda::getCurrentCUDAStream()>>>(
            uc.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), reinterpret_cast<float2*>(partial.data_ptr()), s,
            groups);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      switch (last_radix) {
        case 2: return launch(conv_grad_k_pair_kernel<scalar_t, 2>);
        case 4: return launch(conv_grad_k_pair_kernel<scalar_t, 4>);
        case 8: return launch(conv_grad_k_pair_kernel<scalar_t, 8>);
        default: return launch(conv_grad_k_pair_kernel<scalar_t, 16>);
      }
    });
    const at::Tensor corr = at::fft_irfft(partial.sum(0), s.N).narrow(-1, 0, plan.taps);
    grad_k = at::zeros({D, Lk}, k.options());
    grad_k.narrow(1, 0, plan.taps).copy_(corr);
  } else if (need_k) {
    const at::Tensor uc = u.contiguous();
    const int groups = grad_k_groups(s);
    TORCH_CHECK(D * groups < (int64_t(1) << 31), "causal_conv_backward: too many blocks (", std::to_string(D * groups), ")");
    at::Tensor partial = at::empty({groups, D, s.N / 2 + 1}, u.options().dtype(at::kComplexFloat));
    const size_t bytes_k = grad_k_smem_bytes(s.N);
    dispatch_io_type(uc.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      auto kernel = s.N > 8192 ? conv_grad_k_kernel<scalar_t, 1024> : conv_grad_k_kernel<scalar_t, 512>;
      allow_smem(kernel, bytes_k);
      kernel<<<(unsigned)(D * groups), s.N / kElemsPerThread, bytes_k, at::cuda::getCurrentCUDAStream()>>>(
          uc.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), reinterpret_cast<float2*>(partial.data_ptr()), s,
          groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    // Deterministic reduction over groups, then one small inverse FFT per channel.
    const at::Tensor corr = at::fft_irfft(partial.sum(0), s.N).narrow(-1, 0, plan.taps);
    grad_k = at::zeros({D, Lk}, k.options());
    grad_k.narrow(1, 0, plan.taps).copy_(corr);
  }
  return {grad_u, grad_k};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CUDA, m) {
  m.impl("causal_conv", &causal_conv_cuda);
  m.impl("causal_conv_backward", &causal_conv_backward_cuda);
}

}  // namespace fft_tensor
