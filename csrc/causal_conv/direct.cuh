// Direct (time-domain) causal convolution for short kernels, taps <= kMaxTaps: below that a
// 1024-point FFT window costs more than the taps themselves (the language models' kernels are 128
// taps). Every thread keeps kPerThread consecutive outputs and a ring of the kPerThread input
// samples they currently need in registers, so each tap costs one shared-memory load of the new
// sample, one broadcast load of the tap and kPerThread FMAs. Accumulation in float32.
//
// Shared memory is indexed through skew() (one float of padding per 32): threads read at a stride
// of kPerThread floats, which would otherwise put a warp on 2 banks.
#pragma once
#include <cuda_runtime.h>

namespace fft_tensor {
namespace direct {

constexpr int kMaxTaps = 128;    // taps (rounded up to kPerThread) must fit the halo
constexpr int kThreads = 64;
constexpr int kPerThread = 16;
constexpr int kTile = kThreads * kPerThread;  // outputs per block
constexpr int kHalo = kMaxTaps;               // samples before the tile held in shared memory

__host__ __device__ constexpr int skew(int i) { return i + (i >> 5); }
constexpr int kBuf = skew(kTile + kHalo) + 1;

template <typename T>
__device__ __forceinline__ float load_float(const T* p) { return static_cast<float>(*p); }

// Window sample i of a row is time t0 - kHalo + i (0 outside [0, L)); kReverse reads time backwards.
template <typename scalar_t, bool kReverse>
__device__ __forceinline__ void load_window(float* buf, const scalar_t* row, int64_t L, int64_t t0) {
  for (int i = threadIdx.x; i < kTile + kHalo; i += blockDim.x) {
    const int64_t t = t0 - kHalo + i;
    float v = 0.f;
    if (t >= 0 && t < L) v = load_float(row + (kReverse ? L - 1 - t : t));
    buf[skew(i)] = v;
  }
}

// y[t] = sum_{s < taps} k[s] x[t - s] for one tile of kTile outputs of one row.
// grid: B*D*tiles blocks, tile fastest. k: (D, taps) float32 contiguous (skip folded into tap 0).
// kReverse runs time backwards: grad_u[t] = sum_s k[s] gy[t + s].
template <typename scalar_t, bool kReverse>
__global__ void __launch_bounds__(kThreads) conv_direct_kernel(const scalar_t* __restrict__ x,
                                                               const float* __restrict__ k,
                                                               scalar_t* __restrict__ y, int64_t D, int64_t L,
                                                               int taps, int64_t tiles) {
  __shared__ float buf[kBuf];
  __shared__ float ks[kMaxTaps];
  const int64_t tile = blockIdx.x % tiles;
  const int64_t row = blockIdx.x / tiles;
  const int64_t d = row % D;
  const int64_t t0 = tile * kTile;
  load_window<scalar_t, kReverse>(buf, x + row * L, L, t0);
  for (int s = threadIdx.x; s < kMaxTaps; s += blockDim.x) ks[s] = s < taps ? k[d * taps + s] : 0.f;
  __syncthreads();

  // Output r of this thread is window sample ob + r; at tap s it needs sample ob + r - s, kept in
  // ring[(r - s) mod kPerThread]. Taps past `taps` are zero, so rounding the loop up is exact.
  constexpr int R = kPerThread;
  const int ob = kHalo + threadIdx.x * R;
  float acc[R], ring[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc[r] = 0.f;
    ring[r] = buf[skew(ob + r)];
  }
  for (int s0 = 0; s0 < taps; s0 += R) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const float kv = ks[s0 + j];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = fmaf(kv, ring[(r - j + R) % R], acc[r]);
      ring[(R - 1 - j) % R] = buf[skew(ob - (s0 + j) - 1)];  // sample for tap s+1 replaces the one tap s was last to use
    }
  }
  __syncthreads();  // every thread is done reading the window: reuse it to stage the outputs
#pragma unroll
  for (int r = 0; r < R; ++r) buf[skew(threadIdx.x * R + r)] = acc[r];
  __syncthreads();
  scalar_t* yr = y + row * L;
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    const int64_t t = t0 + i;
    if (t < L) yr[kReverse ? L - 1 - t : t] = static_cast<scalar_t>(buf[skew(i)]);
  }
}

// partial[g, d, s] = sum over the (row b, tile) items of group g of sum_t gy[b,d,t] u[b,d,t-s].
// grid: D * groups blocks (group fastest). The block's threads split as lag_groups x spans: thread
// (span p, lag group lg) covers lags [lg*R, lg*R + R) over times [p*len, (p+1)*len) of the tile,
// with the R samples u[t - s] it needs in a register ring (one new sample per time step).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) conv_direct_grad_k_kernel(const scalar_t* __restrict__ u,
                                                                      const scalar_t* __restrict__ gy,
                                                                      float* __restrict__ partial, int64_t B,
                                                                      int64_t D, int64_t L, int taps,
                                                                      int lag_groups, int64_t tiles, int groups) {
  __shared__ float ubuf[kBuf];
  __shared__ float gbuf[skew(kTile) + 1];
  __shared__ float red[kThreads * kPerThread];
  constexpr int R = kPerThread;
  const int group = (int)(blockIdx.x % groups);
  const int64_t d = blockIdx.x / groups;
  const int spans = kThreads / lag_groups;
  const int len = kTile / spans;
  const int lg = threadIdx.x % lag_groups, p = threadIdx.x / lag_groups;
  float acc[R];
#pragma unroll
  for (int j = 0; j < R; ++j) acc[j] = 0.f;

  for (int64_t it = group; it < B * tiles; it += groups) {
    const int64_t b = it / tiles, t0 = (it % tiles) * kTile;
    const int64_t off = (b * D + d) * L;
    __syncthreads();  // the previous item's reads are done
    load_window<scalar_t, false>(ubuf, u + off, L, t0);
    for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
      const int64_t t = t0 + i;
      gbuf[skew(i)] = t < L ? load_float(gy + off + t) : 0.f;
    }
    __syncthreads();
    // time step i (tile time p*len + i) needs u at window sample base + i - j for lag lg*R + j,
    // kept in ring[(i - j) mod R]; base = kHalo + p*len - lg*R.
    const int base = kHalo + p * len - lg * R;
    float ring[R];
#pragma unroll
    for (int j = 1; j < R; ++j) ring[(R - j) % R] = ubuf[skew(base - j)];
    for (int i0 = 0; i0 < len; i0 += R) {
#pragma unroll
      for (int i = 0; i < R; ++i) {
        ring[i] = ubuf[skew(base + i0 + i)];
        const float g = gbuf[skew(p * len + i0 + i)];
#pragma unroll
        for (int j = 0; j < R; ++j) acc[j] = fmaf(g, ring[(i - j + R) % R], acc[j]);
      }
    }
  }
  // Sum the spans of each lag in a fixed order (deterministic), then one store per lag.
#pragma unroll
  for (int j = 0; j < R; ++j) red[p * (lag_groups * R) + lg * R + j] = acc[j];
  __syncthreads();
  float* out = partial + ((int64_t)group * D + d) * taps;
  for (int s = threadIdx.x; s < taps; s += blockDim.x) {
    float sum = 0.f;
    for (int q = 0; q < spans; ++q) sum += red[q * (lag_groups * R) + s];
    out[s] = sum;
  }
}

}  // namespace direct
}  // namespace fft_tensor
