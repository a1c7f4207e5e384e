// causal_conv CUDA kernels of the FFT paths (device code; the host dispatch is in cuda.cu, the only
// file that includes this one, inside its anonymous namespace): the fused window kernel (forward and
// grad_u), the two grad_k kernels, the thread-block-cluster kernels and the kernel spectrum.
// The algorithm is described at the top of cuda.cu.
#pragma once
#include <cooperative_groups.h>

#include "cluster_fft.cuh"
#include "common.h"
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

}  // namespace
}  // namespace fft_tensor
