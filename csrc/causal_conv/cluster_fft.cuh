// A complex FFT of N = C * M points (C = 2, 4 or 8 blocks of a thread-block cluster, M points in
// each block's shared memory) for the windows too long for one block: the four-step split
// N = C x M with the C-point step done across the cluster through distributed shared memory.
// Block r holds points [r*M, (r+1)*M) of the window (natural order).
//
// Forward:  X[k1 + C*k2] = sum_n2 W_M^(n2 k2) * [ W_N^(n2 k1) * sum_n1 z[n1*M + n2] W_C^(n1 k1) ]
//   1. cross_block_dft<C, kTwiddleBefore=false>: per column n2, the C-point DFT over the blocks,
//      times W_N^(n2 k1), result k1 written to block k1 at n2;
//   2. each block: M-point FFT in place (smem_fft::fft). Block k1 then holds X[k1 + C*k2] at k2.
// The same forward transform of a sequence held in that permuted order (Q[k1 + C*k2] in block k1
// at k2) comes out in natural order:
//   out[n2 + M*n1] = sum_k1 W_C^(k1 n1) W_N^(k1 n2) sum_k2 Q[k1 + C*k2] W_M^(k2 n2)
//   1. each block: M-point FFT over k2;  2. cross_block_dft<C, kTwiddleBefore=true>.
// So a convolution (forward, product, forward of the conjugate) never needs a reordering pass.
// Needs sm_90 (clusters); callers guard with __CUDA_ARCH__ and launch with a cluster of C blocks.
#pragma once
#include <cooperative_groups.h>

#include "smem_fft.cuh"

namespace fft_tensor {
namespace cluster_fft {

// Portable cluster size limit: 8 blocks.
constexpr int kMaxClusterBlocks = 8;

// Column n2 of the C-point step: x[r] = block r's value at n2 (zero for r >= kInputs, whose shared
// memory is not read), then the C-point DFT with the twiddles W_N^(n2 r) before it (inverse order)
// or after it (forward order). blocks: the C blocks' shared memory (cluster.map_shared_rank).
template <int C, bool kTwiddleBefore, int kInputs = C>
__device__ __forceinline__ void transform_column(float2* const (&blocks)[C], int n2, int N, float2 (&x)[C]) {
#pragma unroll
  for (int r = 0; r < C; ++r) x[r] = r < kInputs ? blocks[r][smem_fft::pad(n2)] : make_float2(0.f, 0.f);
  float s, c;
  sincospif(-2.f * (float)n2 / (float)N, &s, &c);  // exact argument: N is a power of two
  const float2 w = make_float2(c, s);
  if (kTwiddleBefore) smem_fft::twiddle_by_powers(x, w);
  smem_fft::dft<C>(x);
  if (!kTwiddleBefore) smem_fft::twiddle_by_powers(x, w);
}

// In place over the cluster: each block owns M/C columns; reads column n2 from all C blocks,
// transforms it and writes result k back to block k. Columns are independent, so no other
// thread touches them; the caller syncs the cluster before (data ready) and after (writes landed).
// kInputs < C: blocks kInputs.. hold zeros and are not read (their shared memory may be garbage).
template <int C, bool kTwiddleBefore, int kInputs = C>
__device__ __forceinline__ void cross_block_dft(float2* smem, int M, int N) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  float2* blocks[C];
#pragma unroll
  for (int r = 0; r < C; ++r) blocks[r] = cluster.map_shared_rank(smem, r);
  const int cols = M / C;
  for (int n2 = rank * cols + (int)threadIdx.x; n2 < (rank + 1) * cols; n2 += blockDim.x) {
    float2 x[C];
    transform_column<C, kTwiddleBefore, kInputs>(blocks, n2, N, x);
#pragma unroll
    for (int r = 0; r < C; ++r) blocks[r][smem_fft::pad(n2)] = x[r];
  }
#endif
}

// The same for a cluster size C known at run time (2, 4 or 8); kHalfInputs: only blocks < C/2 are read.
template <bool kTwiddleBefore, bool kHalfInputs = false>
__device__ __forceinline__ void cross_block_dft(float2* smem, int C, int M, int N) {
  switch (C) {
    case 2: return cross_block_dft<2, kTwiddleBefore, kHalfInputs ? 1 : 2>(smem, M, N);
    case 4: return cross_block_dft<4, kTwiddleBefore, kHalfInputs ? 2 : 4>(smem, M, N);
    default: return cross_block_dft<8, kTwiddleBefore, kHalfInputs ? 4 : 8>(smem, M, N);
  }
}

__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#endif
}

__device__ __forceinline__ int cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return (int)cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}

}  // namespace cluster_fft
}  // namespace fft_tensor
