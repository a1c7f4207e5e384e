// Direct causal convolution on (time x 32 channels) tiles, for inputs whose channels are the
// contiguous dimension: u of shape (B, D, L) that is a transposed view of a (B, L, D) activation,
// the layout a model's projections produce. Reading such a u through direct.cuh needs a transposing
// copy first (the language model spent 13% of its GPU time on those copies); here a tile loader
// reads either layout coalesced (lanes along channels when stride(D) == 1, along time when
// stride(L) == 1) into shared memory as [time][channel], and the compute is the same register ring
// as direct.cuh with lanes = channels. Outputs are written contiguous (B, D, L).
//
// Off unless FFT_TENSOR_CONV_CHANNELS_LAST=1: its CUDA tests pass on the GPU (test_causal_conv.py,
// test_cuda_channels_last_direct), but in the LM's step it measured about what the FFT windows took
// (24.5 / 22.3 against 24.6 / 23.2 ms at 1K / 4K, H100, RESULTS.md third session), and the LM's 128-tap
// convolutions have since moved to the tensor-core kernels (direct_mma.cuh).
#pragma once
#include <cuda_runtime.h>

#include "direct.cuh"

namespace fft_tensor {
namespace direct_tiled {

constexpr int kLanes = 32;                   // channels per block
constexpr int kWarps = 8;
constexpr int kPerThread = 32;               // outputs (forward) per thread
constexpr int kTile = kWarps * kPerThread;   // time steps per block
constexpr int kHalo = direct::kMaxTaps;      // samples before the tile
constexpr int kLagsPerWarp = 16;             // grad_k: lags per thread; 8 warps cover 128 lags
constexpr int kPitch = kLanes + 1;           // [time][channel] rows padded: the time-major loads are conflict-free

// (sb, sd, st): element strides of a (B, D, L) tensor.
struct Strides {
  int64_t b, d, t;
};

// tile[i][c] = x[b, d0 + c, t0 - halo + i] for i < rows (0 outside [0, L) and past D); kReverse reads
// time backwards (t -> L-1-t). All threads of the block take part.
template <typename scalar_t, bool kReverse>
__device__ __forceinline__ void load_tile(float* tile, const scalar_t* x, Strides s, int64_t b, int64_t d0, int64_t D,
                                          int64_t L, int64_t t0, int halo, int rows) {
  const int tid = threadIdx.y * kLanes + threadIdx.x;
  constexpr int kThreads = kLanes * kWarps;
  const scalar_t* base = x + b * s.b;
  if (s.d == 1) {  // channels contiguous: lanes along channels
    const int c = threadIdx.x;
    for (int i = threadIdx.y; i < rows; i += kWarps) {
      const int64_t t = t0 - halo + i;
      float v = 0.f;
      if (d0 + c < D && t >= 0 && t < L) v = direct::load_float(base + (d0 + c) * s.d + (kReverse ? L - 1 - t : t) * s.t);
      tile[i * kPitch + c] = v;
    }
  } else {  // time contiguous (or anything else): lanes along time
    for (int e = tid; e < rows * kLanes; e += kThreads) {
      const int c = e / rows, i = e % rows;
      const int64_t t = t0 - halo + i;
      float v = 0.f;
      if (d0 + c < D && t >= 0 && t < L) v = direct::load_float(base + (d0 + c) * s.d + (kReverse ? L - 1 - t : t) * s.t);
      tile[i * kPitch + c] = v;
    }
  }
}

// y[b, d, t] = sum_{s < taps} k[d, s] x[b, d, t - s]; y contiguous (B, D, L). kReverse: time runs
// backwards (grad_u). grid: (tiles, ceil(D / 32), B); block (32, 8); dynamic shared memory
// forward_smem_bytes(). k: (D, taps) float32 contiguous.
inline size_t forward_smem_bytes() { return (size_t)((kTile + kHalo) * kPitch + kHalo * kLanes) * sizeof(float); }

template <typename scalar_t, bool kReverse>
__global__ void __launch_bounds__(kLanes * kWarps) conv_tiled_kernel(const scalar_t* __restrict__ x, Strides xs,
                                                                     const float* __restrict__ k,
                                                                     scalar_t* __restrict__ y, int64_t D, int64_t L,
                                                                     int taps) {
  extern __shared__ float smem[];
  float* tile = smem;                               // [kTile + kHalo][kPitch]
  float* ks = smem + (kTile + kHalo) * kPitch;      // [kHalo][kLanes]: tap s of channel c
  const int c = threadIdx.x, w = threadIdx.y;
  const int64_t t0 = (int64_t)blockIdx.x * kTile, d0 = (int64_t)blockIdx.y * kLanes, b = blockIdx.z;
  load_tile<scalar_t, kReverse>(tile, x, xs, b, d0, D, L, t0, kHalo, kTile + kHalo);
  for (int s = w; s < kHalo; s += kWarps) ks[s * kLanes + c] = (s < taps && d0 + c < D) ? k[(d0 + c) * taps + s] : 0.f;
  __syncthreads();

  // Output r of this thread is tile row ob + r; at tap s it needs row ob + r - s, kept in
  // ring[(r - s) mod R] (direct.cuh's ring, lanes = channels instead of time).
  constexpr int R = kPerThread;
  const int ob = kHalo + w * R;
  float acc[R], ring[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc[r] = 0.f;
    ring[r] = tile[(ob + r) * kPitch + c];
  }
  for (int s0 = 0; s0 < taps; s0 += R) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const float kv = s0 + j < kHalo ? ks[(s0 + j) * kLanes + c] : 0.f;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = fmaf(kv, ring[(r - j + R) % R], acc[r]);
      const int row = ob - (s0 + j) - 1;
      ring[(R - 1 - j) % R] = row >= 0 ? tile[row * kPitch + c] : 0.f;
    }
  }
  __syncthreads();  // the tile is read: stage the outputs in it as [time][channel]
#pragma unroll
  for (int r = 0; r < R; ++r) tile[(w * R + r) * kPitch + c] = acc[r];
  __syncthreads();
  // lanes along time for the contiguous store: element e = (channel, time) of the tile
  const int tid = w * kLanes + c;
  for (int e = tid; e < kTile * kLanes; e += kLanes * kWarps) {
    const int cc = e / kTile, i = e % kTile;
    const int64_t t = t0 + i;
    if (d0 + cc < D && t < L) y[(b * D + d0 + cc) * L + (kReverse ? L - 1 - t : t)] = static_cast<scalar_t>(tile[i * kPitch + cc]);
  }
}

// partial[g, d, s] = sum over the (row b, tile) items of group g of sum_t gy[b,d,t] u[b,d,t-s].
// grid: (groups, ceil(D / 32)); block (32, 8): warp w covers lags [16w, 16w + 16) of channel lane c.
inline size_t grad_k_smem_bytes() { return (size_t)((kTile + kHalo) * kPitch + kTile * kPitch) * sizeof(float); }

template <typename scalar_t>
__global__ void __launch_bounds__(kLanes * kWarps) conv_tiled_grad_k_kernel(const scalar_t* __restrict__ u, Strides us,
                                                                            const scalar_t* __restrict__ gy, Strides gs,
                                                                            float* __restrict__ partial, int64_t B,
                                                                            int64_t D, int64_t L, int taps,
                                                                            int groups) {
  extern __shared__ float smem[];
  float* ut = smem;                              // [kTile + kHalo][kPitch]: u
  float* gt = smem + (kTile + kHalo) * kPitch;   // [kTile][kPitch]: gy
  constexpr int R = kLagsPerWarp;
  const int c = threadIdx.x, w = threadIdx.y;
  const int group = blockIdx.x;
  const int64_t d0 = (int64_t)blockIdx.y * kLanes;
  const int64_t tiles = (L + kTile - 1) / kTile;
  float acc[R];
#pragma unroll
  for (int j = 0; j < R; ++j) acc[j] = 0.f;
  const bool active = w * R < taps;  // warps past the last lag only help with the loads

  for (int64_t it = group; it < B * tiles; it += groups) {
    const int64_t b = it / tiles, t0 = (it % tiles) * kTile;
    __syncthreads();  // the previous item's reads are done
    load_tile<scalar_t, false>(ut, u, us, b, d0, D, L, t0, kHalo, kTile + kHalo);
    load_tile<scalar_t, false>(gt, gy, gs, b, d0, D, L, t0, 0, kTile);
    __syncthreads();
    if (!active) continue;
    // time step i needs u at tile row base + i - j for lag 16w + j, kept in ring[(i - j) mod R]
    const int base = kHalo - w * R;
    float ring[R];
#pragma unroll
    for (int j = 1; j < R; ++j) ring[(R - j) % R] = ut[(base - j) * kPitch + c];
    for (int i0 = 0; i0 < kTile; i0 += R) {
#pragma unroll
      for (int i = 0; i < R; ++i) {
        ring[i] = ut[(base + i0 + i) * kPitch + c];
        const float g = gt[(i0 + i) * kPitch + c];
#pragma unroll
        for (int j = 0; j < R; ++j) acc[j] = fmaf(g, ring[(i - j + R) % R], acc[j]);
      }
    }
  }
  if (d0 + c < D) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int s = w * R + j;
      if (s < taps) partial[((int64_t)group * D + d0 + c) * taps + s] = acc[j];
    }
  }
}

}  // namespace direct_tiled
}  // namespace fft_tensor
