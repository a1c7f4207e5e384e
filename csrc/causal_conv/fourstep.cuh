// causal_conv for one-window FFTs longer than one block holds (N = N1 * N2 > 16384 points): the
// four-step FFT through a global workspace, three launches per chunk of row pairs.
//
// A row pair z = u[b0] + i*u[b1] (fft_kernels.cuh) of N points, index n = N2*n1 + n2, bin
// f = k1 + N1*k2:
//   X[k1 + N1*k2] = sum_n2 W_N2^(n2 k2) * [ W_N^(n2 k1) * sum_n1 z[N2*n1 + n2] W_N1^(n1 k1) ]
//   1. columns_forward_kernel: for a tile of kCols adjacent columns n2, the N1-point FFT of each
//      column (read straight from the rows: 32 consecutive samples per global access), times
//      W_N^(n2 k1), stored as T[k1][n2] (rows of N2 complex).
//   2. rows_conv_kernel: per row k1, the N2-point FFT (smem_fft::fused_conv), the product with the
//      kernel spectrum stored in the same order (Kp[d][k1][k2] = K[k1 + N1*k2] / N), the inverse
//      N2-point transform, times W_N^(m2 k1), back into T in place.
//   3. columns_inverse_kernel: per column m2 the N1-point inverse over k1, giving
//      y[N2*m1 + m2]; only the outputs t < L are written.
// So no pass ever reorders data: the spectrum is used in the order the transform leaves it.
// Traffic per row pair: the rows once in, N complex out and in twice (T), the rows once out, and
// Kp (shared by the pairs of a channel). T holds one chunk of pairs (FFT_TENSOR_CONV_FOURSTEP_MB),
// so the workspace stays small and, at the default size, in L2 between the three launches.
// Kp keeps bins k1 <= N1/2 only: the rest follow from K[f] = conj(K[N - f]) (k is real),
//   K[k1 + N1*k2] = conj(Kp[N1 - k1][N2 - 1 - k2]) for k1 > N1/2,
// and comes from the same two passes over the kernel taps (rows_spectrum_kernel instead of 2.).
// The inverse transforms are forward transforms of conjugates (as in fused_conv): kernel 2 stores
// conj(inverse row * W_N^(-m2 k1)), kernel 3's forward FFT over k1 gives conj(y), so y[b0] is its
// real part and y[b1] minus its imaginary part.
#pragma once
#include <cuda_runtime.h>

#include "fft_kernels.cuh"  // KernelTaps, min_blocks_per_sm
#include "smem_fft.cuh"

namespace fft_tensor {
namespace {
namespace fourstep {

using smem_fft::cmul;
using smem_fft::conjf2;
using smem_fft::kElemsPerThread;
using smem_fft::pad;

constexpr int kCols = 32;  // columns per block in the column passes: 32 consecutive samples per access

// Shared-memory stride of one column: odd in float2, so kCols lanes reading one row of the tile
// (column c at c * stride) hit distinct banks.
__host__ __device__ constexpr int column_stride(int N1) { return smem_fft::padded_size(N1) + 1; }

struct Shape {
  int64_t B, D, L;
  int N1, N2, logN, npairs;
  int64_t pair0;  // first row pair of this chunk; pair p is (channel p / npairs, rows 2*(p % npairs) + {0, 1})
};

// W_N^e = exp(-2 pi i e / N) (conj: its conjugate); N = 2^logN <= 2^24, so e mod N and the argument
// e * 2 / N are exact in float.
template <bool kConj>
__device__ __forceinline__ float2 twiddle(int64_t e, int logN) {
  const int r = (int)(e & ((int64_t(1) << logN) - 1));
  float s, c;
  sincospif(ldexpf(-(float)r, 1 - logN), &s, &c);
  return make_float2(c, kConj ? -s : s);
}

// The row pair g of a chunk as a function of n (zero outside [0, L)); kReverse reads time backwards.
template <typename scalar_t, bool kReverse>
struct PairRows {
  const scalar_t* x;
  Shape s;
  const scalar_t* p0;
  const scalar_t* p1;
  bool has1;
  __device__ __forceinline__ void begin(int64_t g) {
    const int64_t pair = s.pair0 + g;
    const int64_t d = pair / s.npairs, b0 = 2 * (pair % s.npairs), b1 = b0 + 1;
    has1 = b1 < s.B;
    p0 = x + (b0 * s.D + d) * s.L + (kReverse ? s.L - 1 : 0);
    p1 = has1 ? x + (b1 * s.D + d) * s.L + (kReverse ? s.L - 1 : 0) : p0;
  }
  __device__ __forceinline__ float2 operator()(int64_t n) const {
    float2 v = make_float2(0.f, 0.f);
    if (n < s.L) {
      const int64_t i = kReverse ? -n : n;
      v.x = static_cast<float>(p0[i]);
      if (has1) v.y = static_cast<float>(p1[i]);
    }
    return v;
  }
};

// Row g of a chunk of channels: the effective kernel taps of channel s.pair0 + g (imaginary part 0).
struct TapRows {
  KernelTaps k;
  Shape s;
  int64_t d;
  __device__ __forceinline__ void begin(int64_t g) { d = s.pair0 + g; }
  __device__ __forceinline__ float2 operator()(int64_t n) const {
    return make_float2(n < k.taps ? k(d, (int)n) : 0.f, 0.f);
  }
};

// Step 1. grid (N2 / kCols, rows in the chunk), block (N1/16, kCols): threadIdx.y is the column,
// threadIdx.x the thread within that column's FFT (smem_fft's threadIdx.x). T: [g][k1][n2].
template <int N1, typename Rows>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_forward_kernel(Rows rows, float2* __restrict__ T, int N2, int logN) {
  extern __shared__ float2 tile[];
  constexpr int S1 = column_stride(N1), kStep = N1 / kElemsPerThread;  // kThreads / kCols
  const int tid = threadIdx.x + threadIdx.y * kStep;
  const int c = tid % kCols, r0 = tid / kCols;
  const int64_t g = blockIdx.y;
  const int n2 = blockIdx.x * kCols + c;
  rows.begin(g);
#pragma unroll 4
  for (int n1 = r0; n1 < N1; n1 += kStep) tile[c * S1 + pad(n1)] = rows((int64_t)n1 * N2 + n2);
  smem_fft::fft<N1>(tile + threadIdx.y * S1);  // barriers on both sides
  float2* Tg = T + g * ((int64_t)N1 * N2);
#pragma unroll 4
  for (int k1 = r0; k1 < N1; k1 += kStep)
    Tg[(int64_t)k1 * N2 + n2] = cmul(tile[c * S1 + pad(k1)], twiddle<false>((int64_t)n2 * k1, logN));
}

// Step 2 for the data. grid (N1, pairs in the chunk), block N2/16. In place: every thread's loads
// of the row happen before fused_conv's first barrier, its stores after the last.
template <int N2>
__global__ void __launch_bounds__(N2 / kElemsPerThread, (min_blocks_per_sm<N2, 1024>()))
    rows_conv_kernel(float2* __restrict__ T, const float2* __restrict__ Kp, Shape s) {
  extern __shared__ float2 smem[];
  const int k1 = blockIdx.x, N1 = s.N1;
  const int64_t g = blockIdx.y;
  const int64_t d = (s.pair0 + g) / s.npairs;
  float2* row = T + (g * N1 + k1) * (int64_t)N2;
  const bool mirrored = k1 > N1 / 2;
  const float2* Krow = Kp + (d * (N1 / 2 + 1) + (mirrored ? N1 - k1 : k1)) * (int64_t)N2;
  const int logN = s.logN;
  smem_fft::fused_conv<N2>(
      smem, [&](int n) { return row[n]; },
      [&](int q, int c) { return mirrored ? conjf2(Krow[N2 - 1 - (q + c)]) : Krow[q + c]; },
      [&](int m2, float2 w) { row[m2] = cmul(w, twiddle<false>((int64_t)m2 * k1, logN)); });
}

// Step 2 for the kernel spectrum. grid (N1/2 + 1, channels in the chunk), block N2/16:
// Kp[d][k1][k2] = X[k1 + N1*k2] / N for the channel's taps transformed by step 1.
template <int N2>
__global__ void __launch_bounds__(N2 / kElemsPerThread)
    rows_spectrum_kernel(const float2* __restrict__ T, float2* __restrict__ Kp, Shape s) {
  extern __shared__ float2 smem[];
  constexpr int Rl = smem_fft::last_radix(N2), N16 = N2 / kElemsPerThread, NR = N2 / Rl, kBfly = kElemsPerThread / Rl;
  const int k1 = blockIdx.x, N1 = s.N1;
  const int64_t g = blockIdx.y, d = s.pair0 + g;
  const float2* row = T + (g * N1 + k1) * (int64_t)N2;
  float2 x[kElemsPerThread];
  smem_fft::fft_to_registers<N2>(smem, x, [&](int n) { return row[n]; });
  const float scale = ldexpf(1.f, -s.logN);
  float2* out = Kp + (d * (N1 / 2 + 1) + k1) * (int64_t)N2 + threadIdx.x;
#pragma unroll
  for (int b = 0; b < kBfly; ++b)
#pragma unroll
    for (int r = 0; r < Rl; ++r) {
      const float2 v = x[b * Rl + r];
      out[b * N16 + r * NR] = make_float2(v.x * scale, v.y * scale);
    }
}

// Step 3. grid (N2 / kCols, pairs in the chunk), block (N1/16, kCols): y = conj of the column FFT.
template <int N1, typename scalar_t, bool kReverse>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_inverse_kernel(const float2* __restrict__ T, scalar_t* __restrict__ y, Shape s) {
  extern __shared__ float2 tile[];
  constexpr int S1 = column_stride(N1), kStep = N1 / kElemsPerThread;
  const int N2 = s.N2;
  const int tid = threadIdx.x + threadIdx.y * kStep;
  const int c = tid % kCols, r0 = tid / kCols;
  const int64_t g = blockIdx.y;
  const int n2 = blockIdx.x * kCols + c;
  const float2* Tg = T + g * ((int64_t)N1 * N2);
#pragma unroll 4
  for (int k1 = r0; k1 < N1; k1 += kStep) tile[c * S1 + pad(k1)] = Tg[(int64_t)k1 * N2 + n2];
  smem_fft::fft<N1>(tile + threadIdx.y * S1);
  const int64_t pair = s.pair0 + g;
  const int64_t d = pair / s.npairs, b0 = 2 * (pair % s.npairs), b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  scalar_t* y0 = y + (b0 * s.D + d) * s.L + (kReverse ? s.L - 1 : 0);
  scalar_t* y1 = has1 ? y + (b1 * s.D + d) * s.L + (kReverse ? s.L - 1 : 0) : y0;
#pragma unroll 4
  for (int m1 = r0; m1 < N1; m1 += kStep) {
    const int64_t n = (int64_t)m1 * N2 + n2;
    if (n >= s.L) break;  // n grows with m1
    const float2 v = tile[c * S1 + pad(m1)];
    const int64_t i = kReverse ? -n : n;
    y0[i] = static_cast<scalar_t>(v.x);
    if (has1) y1[i] = static_cast<scalar_t>(-v.y);
  }
}

}  // namespace fourstep
}  // namespace
}  // namespace fft_tensor
