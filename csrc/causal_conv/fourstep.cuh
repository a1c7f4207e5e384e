// causal_conv for one-window FFTs longer than one block holds (N = N1 * N2 > 16384 points): the
// four-step FFT through a global workspace, three launches per chunk of rows.
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
// No pass reorders data: the spectrum is used in the order the transform leaves it.
// Traffic per row pair: the rows once in, N complex out and in twice (T), the rows once out, and
// Kp (shared by the pairs of a channel): about 5x the op's memory floor with N = 2L, where the
// one-block kernels move each row once. T holds one chunk of rows (cuda.cu: fourstep_chunk).
// Kp keeps bins k1 <= N1/2 only: the rest follow from K[f] = conj(K[N - f]) (k is real),
//   K[k1 + N1*k2] = conj(Kp[N1 - k1][N2 - 1 - k2]) for k1 > N1/2,
// and comes from the same two passes over the kernel taps, two channels per transform
// (TapPairRows, rows_spectrum_kernel instead of 2.).
// The inverse transforms are forward transforms of conjugates (as in fused_conv): step 2 stores
// conj(inverse row * W_N^(-m2 k1)), step 3's forward FFT over k1 gives conj(y), so y[b0] is its
// real part and y[b1] minus its imaginary part.
// Backward: gy's pairs through step 1 once serve both gradients. grad_u = the correlation
// IFFT(G conj(K)) (no time reversal); grad_k = Re IFFT(sum over the channel's pairs of G conj(U))
// with U from u's pairs through step 1 (rows_backward_kernel, then columns_taps_kernel).
//
// N = 3M points (M = N1*N2 a power of two; Shape::R = 3, cuda.cu's fourstep_groups), for rows whose
// L + taps - 1 fits 3/4 of the power-of-two window: by residues, as radix3.cuh's windows. With
// w = W_N and n < M,
//   X[3k + g] = sum_n W_M^(nk) a_g[n],  a_g[n] = w^(gn) (z[n] + W_3^g z[n + M] + W_3^(2g) z[n + 2M]),
// so step 1 (columns_forward3_kernel) forms a_0, a_1, a_2 from one read of the three thirds of the row
// and runs the M-point four-step's column step on each: T holds R*N1 rows of N2 per pair, group g's
// row k1 at g*N1 + k1, and group g's bin k = k1 + N1*k2 is X[3k + g]. Steps 2 run on every row as
// before (the twiddles W_M). Step 3 (columns_inverse3_kernel) inverts the three groups' columns, c_g,
// and recombines conj(y[n + jM]) = sum_g W_3^(gj) w^(gn) c_g[n] (the same 3-point DFT as step 1).
// Kp keeps group 0's rows k1 <= N1/2 (its mirror is itself: N - 3k = 3(M - k)) and all N1 rows of
// group 1; group 2 is group 1's mirror: N - (3k + 2) = 3(M - 1 - k) + 1, so
//   K[3k + 2] = conj(K1[M - 1 - k]),  M - 1 - k = (N1 - 1 - k1) + N1*(N2 - 1 - k2).
// The workspace element W: float2, or for bfloat16 rows' forward and grad_u alone a bfloat16 pair
// (cuda.cu: FFT_TENSOR_CONV_FOURSTEP_BF16), half the traffic of every pass through T. The arithmetic
// stays float32; each pass rounds what it stores to bfloat16 (relative 2^-9), two roundings per output,
// against the one of rounding y itself to bfloat16. grad_k (a float32 sum whatever u's dtype), and so
// the backward that computes it, keeps float2, as do the kernel spectrum and Kp.
#pragma once
#include <cuda_bf16.h>
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

// T's element as float2, and back (the conversions round to nearest even)
__device__ __forceinline__ float2 load_work(const float2& w) { return w; }
__device__ __forceinline__ float2 load_work(const __nv_bfloat162& w) { return __bfloat1622float2(w); }
__device__ __forceinline__ void store_work(float2& w, float2 v) { w = v; }
__device__ __forceinline__ void store_work(__nv_bfloat162& w, float2 v) { w = __float22bfloat162_rn(v); }

constexpr int kCols = 32;  // columns per block in the column passes: 32 consecutive samples per access
constexpr int ilog2(int n) { return n <= 1 ? 0 : 1 + ilog2(n / 2); }  // of a power of two: N's logN at compile time

// The column tile in shared memory: column c (kCols of them) starts at column_offset<N1>(c), columns
// padded_size(N1) apart plus one float2 per group of columns whose FFT threads share a half-warp
// (16 / (N1/16) columns; one column from N1 = 256). Both access patterns then reach 16 distinct 8-byte
// bank pairs per half-warp: the transposing global loads and stores (16 adjacent columns, same
// index: offsets c*padded + c/group differ mod 16) and the FFT passes (the threads of a group's
// columns; padded_size(N1) is 4 mod 16 at N1 = 64 and 8 at 128, which interleaves them). With an odd
// stride instead (the first layout) the FFT passes of N1 = 64 and 128 took 1.8x the shared-memory
// wavefronts (a model of both patterns; Nsight Compute at N1 = 64: 1.69M + 1.64M load + store
// conflicts in 8.65M wavefronts).
__host__ __device__ constexpr int column_group(int N1) { return N1 >= 256 ? 1 : 256 / N1; }
__host__ __device__ constexpr int column_tile_size(int N1) { return kCols * (smem_fft::padded_size(N1) + 1); }
template <int N1>
__device__ __forceinline__ int column_offset(int c) {
  return c * smem_fft::padded_size(N1) + c / column_group(N1);
}

// Thread roles in the column kernels, block (N1/16, kCols): for global memory thread tid takes column
// c = tid % kCols at indices i = r0 + j*N1/16, j < 16 (a warp covers 32 adjacent columns of one row:
// coalesced); in the FFT threadIdx.y is the column and threadIdx.x the thread within its FFT.
template <int N1>
struct ColumnTile {
  static constexpr int kStep = N1 / kElemsPerThread;
  float2* tile;
  float2* mine;  // element 0 of this thread's column slots
  int c, r0, n2;
  __device__ explicit ColumnTile(float2* smem) : tile(smem) {
    const int tid = threadIdx.x + threadIdx.y * kStep;
    c = tid % kCols;
    r0 = tid / kCols;  // < kStep
    n2 = blockIdx.x * kCols + c;
    mine = tile + column_offset<N1>(c) + pad(r0);
  }
  __device__ __forceinline__ int row(int j) const { return r0 + j * kStep; }  // of this thread's element j
  // pad(r0 + j*kStep) = pad(r0) + padded_offset(j*kStep), as r0 < kStep (smem_fft's padded_offset rule):
  // one register plus an immediate per element
  __device__ __forceinline__ float2& at(int j) { return mine[smem_fft::padded_offset(j * kStep)]; }
  // Element i = r0 + j*kStep of this thread's column from load(i, n2), then the N1-point FFT of every
  // column: on return the transformed tile is visible to all threads (smem_fft::fft's barriers).
  template <typename Load>
  __device__ __forceinline__ void load_and_transform(Load load) {
#pragma unroll
    for (int j = 0; j < kElemsPerThread; ++j) at(j) = load(row(j), n2);
    smem_fft::fft<N1>(tile + column_offset<N1>(threadIdx.y));
  }
};

struct Shape {
  int64_t B, D, L;
  int N1, N2, logN, npairs;  // logN: log2(N1*N2) (= M's with R = 3)
  int R;                     // 1: N = N1*N2 points; 3: N = 3*N1*N2 (by residues, above)
  int64_t pair0;  // first row pair of this chunk; pair p is (channel p / npairs, rows 2*(p % npairs) + {0, 1})
};

// W_N^e = exp(-2 pi i e / N); N = 2^logN <= 2^24, so e mod N and the argument e * 2 / N are exact in float.
__device__ __forceinline__ float2 twiddle(int64_t e, int logN) {
  const int r = (int)(e & ((int64_t(1) << logN) - 1));
  float s, c;
  sincospif(ldexpf(-(float)r, 1 - logN), &s, &c);
  return make_float2(c, s);
}

// W_{3M}^e = exp(-2 pi i e / (3M)), M = 2^logM, 0 <= e < M <= 2^20: 2e and 3M are exact in float, the
// quotient one rounding.
__device__ __forceinline__ float2 twiddle3(int e, int logM) {
  float s, c;
  sincospif(-2.f * (float)e / (float)(3 << logM), &s, &c);
  return make_float2(c, s);
}

// W^(e0 + j*de) for j = 0, 1, 2, ... in that order, from W^e0 and W^de (twiddle's W_N, or twiddle3's W_{3M}):
// one pair of sincospif calls, then a running product (at most 15 multiplications deep here, as smem_fft's
// twiddle_by_powers). It replaced a sincospif per element, the costliest part of the column and row kernels'
// stores.
struct TwiddleRun {
  float2 w, step;
  __device__ TwiddleRun(float2 w_e0, float2 w_de) : w(w_e0), step(w_de) {}
  __device__ TwiddleRun(int64_t e0, int64_t de, int logN) : TwiddleRun(twiddle(e0, logN), twiddle(de, logN)) {}
  __device__ __forceinline__ float2 next() {
    const float2 r = w;
    w = cmul(w, step);
    return r;
  }
};

// The 3-point DFT: (a + b + c, a + W_3 b + W_3^2 c, a + W_3^2 b + W_3 c), W_3 = -1/2 - i sin(pi/3).
struct Three {
  float2 v0, v1, v2;
};
__device__ __forceinline__ Three dft3(float2 a, float2 b, float2 c) {
  constexpr float kSin = 0.866025403784f;  // sin(pi/3)
  const float2 s = smem_fft::cadd(b, c), d = smem_fft::csub(b, c);
  const float2 m = make_float2(a.x - 0.5f * s.x, a.y - 0.5f * s.y);
  const float2 j = make_float2(kSin * d.y, -kSin * d.x);  // -i sin(pi/3) (b - c)
  return {smem_fft::cadd(a, s), smem_fft::cadd(m, j), smem_fft::csub(m, j)};
}

// Rows of Kp per channel: group 0's N1/2 + 1, then with R = 3 group 1's N1.
__host__ __device__ constexpr int kp_rows(int N1, int R) { return R == 1 ? N1 / 2 + 1 : 3 * N1 / 2 + 1; }

// The row pair g of a chunk as a function of n (zero outside [0, L)).
template <typename scalar_t>
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
    p0 = x + (b0 * s.D + d) * s.L;
    p1 = has1 ? x + (b1 * s.D + d) * s.L : p0;
  }
  // n < N <= 2^22: int index math (the column kernels' addresses then fold to one base plus immediates,
  // and the bound is one 32-bit compare: L <= N here)
  __device__ __forceinline__ float2 operator()(int n) const {
    float2 v = make_float2(0.f, 0.f);
    if (n < (int)s.L) {
      v.x = static_cast<float>(p0[n]);
      if (has1) v.y = static_cast<float>(p1[n]);
    }
    return v;
  }
};

// Row g of a chunk of channel pairs: z = k[d0] + i k[d1], the effective kernel taps of channels
// d0 = 2 (s.pair0 + g) and d0 + 1 (zero when D is odd and d0 is the last channel); rows_spectrum_kernel
// splits the two spectra.
struct TapPairRows {
  KernelTaps k;
  Shape s;
  int64_t d0;
  bool has1;
  __device__ __forceinline__ void begin(int64_t g) {
    d0 = 2 * (s.pair0 + g);
    has1 = d0 + 1 < s.D;
  }
  __device__ __forceinline__ float2 operator()(int n) const {
    if (n >= k.taps) return make_float2(0.f, 0.f);
    return make_float2(k(d0, n), has1 ? k(d0 + 1, n) : 0.f);
  }
};

// Step 1. grid (N2 / kCols, rows in the chunk), block (N1/16, kCols): threadIdx.y is the column,
// threadIdx.x the thread within that column's FFT (smem_fft's threadIdx.x). T: [g][k1][n2].
// N2 a template parameter: a thread's 16 loads and stores are one address plus immediates.
template <int N1, int N2, typename Rows, typename W>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_forward_kernel(Rows rows, W* __restrict__ T) {
  extern __shared__ float2 smem[];
  constexpr int logN = ilog2(N1 * N2);
  ColumnTile<N1> t(smem);
  const int64_t g = blockIdx.y;
  rows.begin(g);
  t.load_and_transform([&](int n1, int n2) { return rows(n1 * N2 + n2); });
  W* Tg = T + g * ((int64_t)N1 * N2) + t.n2;
  TwiddleRun w(t.n2 * t.r0, t.n2 * t.kStep, logN);  // W_N^(n2 k1), k1 = r0 + j*kStep
#pragma unroll
  for (int j = 0; j < kElemsPerThread; ++j) store_work(Tg[t.row(j) * N2], cmul(t.at(j), w.next()));
}

// Step 1 on N = 3M points (R = 3): the three groups' tiles side by side in shared memory (kTile apart),
// each element of the row read once. T: [g][group][k1][n2].
template <int N1, int N2, typename Rows, typename W>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_forward3_kernel(Rows rows, W* __restrict__ T) {
  extern __shared__ float2 smem[];
  constexpr int M = N1 * N2, logM = ilog2(M), kTile = column_tile_size(N1);
  ColumnTile<N1> t(smem);
  const int64_t g = blockIdx.y;
  rows.begin(g);
  TwiddleRun tw3(twiddle3(t.r0 * N2 + t.n2, logM), twiddle3(t.kStep * N2, logM));  // w^n, n = row(j)*N2 + n2
#pragma unroll
  for (int j = 0; j < kElemsPerThread; ++j) {
    const int n = t.row(j) * N2 + t.n2;
    const Three v = dft3(rows(n), rows(n + M), rows(n + 2 * M));
    const float2 w1 = tw3.next();
    float2* e = &t.at(j);
    e[0] = v.v0;
    e[kTile] = cmul(v.v1, w1);
    e[2 * kTile] = cmul(v.v2, cmul(w1, w1));
  }
#pragma unroll
  for (int r = 0; r < 3; ++r) smem_fft::fft<N1>(smem + r * kTile + column_offset<N1>(threadIdx.y));
  W* Tg = T + g * (3 * (int64_t)M) + t.n2;
  TwiddleRun w(t.n2 * t.r0, t.n2 * t.kStep, logM);  // W_M^(n2 k1)
#pragma unroll
  for (int j = 0; j < kElemsPerThread; ++j) {
    const float2 wj = w.next();
    const float2* e = &t.at(j);
    const int o = t.row(j) * N2;
    store_work(Tg[o], cmul(e[0], wj));
    store_work(Tg[M + o], cmul(e[kTile], wj));
    store_work(Tg[2 * M + o], cmul(e[2 * kTile], wj));
  }
}

// Row k1 of group grp of channel d's spectrum: for group 0 bin k2 is Kp[d][k1][k2], or
// conj(Kp[d][N1 - k1][N2 - 1 - k2]) past N1/2; for group 1 Kp[d][N1/2 + 1 + k1][k2]; for group 2
// conj(Kp[d][N1/2 + 1 + N1 - 1 - k1][N2 - 1 - k2]) (the header). kConj gives the conjugate spectrum (the
// time-reversed kernel: correlation, for grad_u).
template <int N2, bool kConj>
struct SpectrumRow {
  const float2* row;
  bool mirrored;
  __device__ SpectrumRow(const float2* Kp, int64_t d, int grp, int k1, int N1, int R) {
    int r;
    if (grp == 0) {
      mirrored = k1 > N1 / 2;
      r = mirrored ? N1 - k1 : k1;
    } else {
      mirrored = grp == 2;
      r = N1 / 2 + 1 + (mirrored ? N1 - 1 - k1 : k1);
    }
    row = Kp + (d * kp_rows(N1, R) + r) * (int64_t)N2;
  }
  __device__ __forceinline__ float2 operator()(int k2) const {
    return mirrored != kConj ? conjf2(row[mirrored ? N2 - 1 - k2 : k2]) : row[mirrored ? N2 - 1 - k2 : k2];
  }
};

// Step 2 for the data. grid (R*N1, pairs in the chunk), block N2/16. In place: every thread's loads
// of the row happen before fused_conv's first barrier, its stores after the last.
// kConjK: multiply by conj(K) (grad_u as a correlation, no time reversal).
template <int N2, bool kConjK, typename W>
__global__ void __launch_bounds__(N2 / kElemsPerThread, (min_blocks_per_sm<N2, 1024>()))
    rows_conv_kernel(W* __restrict__ T, const float2* __restrict__ Kp, Shape s) {
  extern __shared__ float2 smem[];
  const int N1 = s.N1, grp = blockIdx.x / N1, k1 = blockIdx.x - grp * N1;  // grid.x: R*N1 rows
  const int64_t g = blockIdx.y;
  const int64_t d = (s.pair0 + g) / s.npairs;
  W* row = T + (g * s.R * N1 + blockIdx.x) * (int64_t)N2;
  const SpectrumRow<N2, kConjK> K(Kp, d, grp, k1, N1, s.R);
  TwiddleRun tw((int64_t)threadIdx.x * k1, (int64_t)(N2 / kElemsPerThread) * k1, s.logN);  // W_N^(m2 k1)
  smem_fft::fused_conv<N2>(
      smem, [&](int n) { return load_work(row[n]); }, [&](int q, int c) { return K(q + c); },
      [&](int m2, float2 w) { store_work(row[m2], cmul(w, tw.next())); });
}

// Backward step 2 when grad_k is wanted. grid (R*N1, channels in the chunk), block N2/16; the chunk's
// pairs are whole channels. For each pair of channel d, with G and U the row-k1 spectra of gy and u
// (step 1 left them in Tg and Tu):
//   grad_u: Tg row <- inverse(G conj(K)) * W_N^(m2 k1), as rows_conv_kernel (kNeedU);
//   grad_k: Q += G conj(U).
// Then Q row <- inverse(Q / N) * W_N^(m2 k1): step 3 over Q gives sum_pairs corr(gy, u) of the
// packed rows, whose real part is the sum over both rows of each pair of corr(gy[b], u[b]) (the
// cross terms G[b0] conj(U[b1]) - G[b1] conj(U[b0]) are the spectrum of a real sequence times i).
// The running sum lives in shared memory after the FFT buffer (each bin is read and written by the
// thread that holds it, so it needs no barrier): in registers, beside the spectra of G and U, it
// spilled at the 128-register bound.
template <int N2, bool kNeedU>
__global__ void __launch_bounds__(N2 / kElemsPerThread, (min_blocks_per_sm<N2, 512>()))
    rows_backward_kernel(float2* __restrict__ Tg, const float2* __restrict__ Tu, const float2* __restrict__ Kp,
                         float2* __restrict__ Q, Shape s) {
  extern __shared__ float2 smem[];
  constexpr int Rl = smem_fft::last_radix(N2), N16 = N2 / kElemsPerThread, NR = N2 / Rl, kBfly = kElemsPerThread / Rl;
  const int N1 = s.N1, grp = blockIdx.x / N1, k1 = blockIdx.x - grp * N1, q = threadIdx.x;
  const int64_t dl = blockIdx.y, d = s.pair0 / s.npairs + dl, rows = (int64_t)s.R * N1;
  const SpectrumRow<N2, true> Kc(Kp, d, grp, k1, N1, s.R);
  const int logN = s.logN;
  float2* acc = smem + smem_fft::padded_size(N2) + q;  // bin q + b*N16 + r*NR at acc[b*N16 + r*NR]
#pragma unroll
  for (int b = 0; b < kBfly; ++b)
#pragma unroll
    for (int r = 0; r < Rl; ++r) acc[b * N16 + r * NR] = make_float2(0.f, 0.f);
  for (int j = 0; j < s.npairs; ++j) {
    const int64_t row = ((dl * s.npairs + j) * rows + blockIdx.x) * (int64_t)N2;
    float2* g_row = Tg + row;
    const float2* u_row = Tu + row;
    float2 xg[kElemsPerThread], xu[kElemsPerThread];
    __syncthreads();  // the previous inverse has read shared memory
    smem_fft::fft_to_registers<N2>(smem, xg, [&](int n) { return g_row[n]; });
    __syncthreads();
    smem_fft::fft_to_registers<N2>(smem, xu, [&](int n) { return u_row[n]; });
#pragma unroll
    for (int b = 0; b < kBfly; ++b)
#pragma unroll
      for (int r = 0; r < Rl; ++r) {
        const float2 p = cmul(xg[b * Rl + r], conjf2(xu[b * Rl + r]));
        const float2 a = acc[b * N16 + r * NR];
        acc[b * N16 + r * NR] = make_float2(a.x + p.x, a.y + p.y);
      }
    if constexpr (kNeedU) {
#pragma unroll
      for (int b = 0; b < kBfly; ++b)
#pragma unroll
        for (int r = 0; r < Rl; ++r) xg[b * Rl + r] = conjf2(cmul(xg[b * Rl + r], Kc(q + b * N16 + r * NR)));
      __syncthreads();
      TwiddleRun tw((int64_t)q * k1, (int64_t)N16 * k1, logN);  // W_N^(m2 k1)
      smem_fft::inverse_from_registers<N2>(smem, xg, [&](int m2, float2 w) { g_row[m2] = cmul(w, tw.next()); });
    }
  }
  const float scale = ldexpf(1.f, -logN) / (float)s.R;  // 1/N
  float2 x[kElemsPerThread];
#pragma unroll
  for (int b = 0; b < kBfly; ++b)
#pragma unroll
    for (int r = 0; r < Rl; ++r) {
      const float2 a = acc[b * N16 + r * NR];
      x[b * Rl + r] = make_float2(a.x * scale, -a.y * scale);  // conj(sum / N)
    }
  __syncthreads();
  float2* q_row = Q + (dl * rows + blockIdx.x) * (int64_t)N2;
  TwiddleRun tw((int64_t)q * k1, (int64_t)N16 * k1, logN);
  smem_fft::inverse_from_registers<N2>(smem, x, [&](int m2, float2 w) { q_row[m2] = cmul(w, tw.next()); });
}

// Step 2 for the kernel spectrum, two channels per transform (TapPairRows). grid (kp_rows(N1, R),
// channel pairs in the chunk), block N2/16, shared memory for two rows. With Z the spectrum of z = k[d0] +
// i k[d1], bin f = k1 + N1*k2 of channel d0 is (Z[f] + conj Z[N - f]) / 2 and of d1 (Z[f] - conj Z[N - f]) / 2i,
// and N - f = (N1 - k1) + N1*(N2 - 1 - k2) for k1 > 0 (row N1 - k1), N1*((N2 - k2) mod N2) for k1 = 0:
// block k1 transforms rows k1 and N1 - k1 (one row for k1 = 0 and N1/2) and writes
// Kp[d][k1][k2] = X_d[k1 + N1*k2] / N for both channels. Half the column transforms and workspace
// traffic of one channel per transform; the row transforms stay as many (N1 per pair against N1/2 + 1
// per channel). H200, D = 768 at 64K: 0.27 + 0.33 ms for the two passes (RESULTS.md, twenty-sixth
// session) against 0.63 ms one channel per transform (nineteenth; another run).
// With R = 3 the blocks past N1/2 take group 1's row k1 and its mirror, group 2's row N1 - 1 - k1:
// N - (3k + 1) = 3(M - 1 - k) + 2 (the header).
template <int N2>
__global__ void __launch_bounds__(N2 / kElemsPerThread)
    rows_spectrum_kernel(const float2* __restrict__ T, float2* __restrict__ Kp, Shape s) {
  extern __shared__ float2 smem[];
  const int N1 = s.N1, x = blockIdx.x;  // Kp's row: group 0's k1 = x, or (R = 3) group 1's k1 = x - N1/2 - 1
  const bool group0 = x <= N1 / 2;
  const int k1 = group0 ? x : x - (N1 / 2 + 1);
  // T rows: this one (group 0's k1, or group 1's N1 + k1) and its mirror (group 0's N1 - k1, or group 2's
  // 2 N1 + N1 - 1 - k1)
  const int ra = group0 ? k1 : N1 + k1, rb = group0 ? (N1 - k1) & (N1 - 1) : 3 * N1 - 1 - k1;
  const int64_t g = blockIdx.y, d0 = 2 * (s.pair0 + g);
  const bool has1 = d0 + 1 < s.D, two_rows = rb != ra;
  float2* a = smem;                                                // row ra, then its spectrum
  float2* b = two_rows ? smem + smem_fft::padded_size(N2) : smem;  // row rb
  const float2* Tg = T + g * (int64_t)s.R * N1 * N2;
  for (int n = threadIdx.x; n < N2; n += blockDim.x) {
    a[pad(n)] = Tg[(int64_t)ra * N2 + n];
    if (two_rows) b[pad(n)] = Tg[(int64_t)rb * N2 + n];
  }
  smem_fft::fft<N2>(a);  // barriers on both sides
  if (two_rows) smem_fft::fft<N2>(b);
  const float scale = ldexpf(0.5f, -s.logN) / (float)s.R;
  const int rows = kp_rows(N1, s.R);
  float2* K0 = Kp + (d0 * rows + x) * (int64_t)N2;
  float2* K1 = K0 + (int64_t)rows * N2;
  for (int k2 = threadIdx.x; k2 < N2; k2 += blockDim.x) {
    const float2 z_nf = group0 && k1 == 0 ? a[pad((N2 - k2) & (N2 - 1))] : b[pad(N2 - 1 - k2)];  // Z[N - f]
    const RealPairBins v = split_real_pair(a[pad(k2)], z_nf, scale);
    K0[k2] = v.x0;
    if (has1) K1[k2] = v.x1;
  }
}

// Step 3. grid (N2 / kCols, pairs in the chunk), block (N1/16, kCols): y = conj of the column FFT.
template <int N1, int N2, typename scalar_t, typename W>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_inverse_kernel(const W* __restrict__ T, scalar_t* __restrict__ y, Shape s) {
  extern __shared__ float2 smem[];
  ColumnTile<N1> t(smem);
  const int64_t g = blockIdx.y;
  const W* Tg = T + g * ((int64_t)N1 * N2);
  t.load_and_transform([&](int k1, int n2) { return load_work(Tg[k1 * N2 + n2]); });
  const int64_t pair = s.pair0 + g;
  const int64_t d = pair / s.npairs, b0 = 2 * (pair % s.npairs), b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  scalar_t* y0 = y + (b0 * s.D + d) * s.L;
  scalar_t* y1 = has1 ? y + (b1 * s.D + d) * s.L : y0;
#pragma unroll
  for (int j = 0; j < kElemsPerThread; ++j) {
    const int n = t.row(j) * N2 + t.n2;  // < N <= 2^22
    if (n >= (int)s.L) break;             // n grows with j (L < N)
    const float2 v = t.at(j);
    y0[n] = static_cast<scalar_t>(v.x);
    if (has1) y1[n] = static_cast<scalar_t>(-v.y);
  }
}

// Backward step 3 for grad_k. grid (N2 / kCols, channels in the chunk), block (N1/16, kCols):
// grad_k[d][n] = real part of the column FFT of Q (conj(x) has the same real part), n < taps.
template <int N1, int N2>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_taps_kernel(const float2* __restrict__ Q, float* __restrict__ grad_k, Shape s, int taps) {
  extern __shared__ float2 smem[];
  ColumnTile<N1> t(smem);
  const int64_t dl = blockIdx.y, d = s.pair0 / s.npairs + dl;
  const float2* Qd = Q + dl * ((int64_t)N1 * N2);
  t.load_and_transform([&](int k1, int n2) { return Qd[k1 * N2 + n2]; });
#pragma unroll
  for (int j = 0; j < kElemsPerThread; ++j) {
    const int n = t.row(j) * N2 + t.n2;
    if (n >= taps) break;
    grad_k[d * taps + n] = t.at(j).x;
  }
}

// Step 3 on N = 3M points (R = 3): each group's column tile from load(group, k1, n2), transformed (their
// loads first, then the three FFTs), then f(n, v) for every n = row(j)*N2 + n2 < limit with v the
// 3-point DFT of (c_0, w^n c_1, w^(2n) c_2): v.v0, v.v1, v.v2 are conj(y) at n, n + M and n + 2M.
template <int N1, int N2, typename Load, typename Store>
__device__ __forceinline__ void columns_inverse3(float2* smem, Load load, int64_t limit, Store store) {
  constexpr int M = N1 * N2, logM = ilog2(M), kTile = column_tile_size(N1);
  ColumnTile<N1> t(smem);
#pragma unroll
  for (int j = 0; j < kElemsPerThread; ++j) {
    float2* e = &t.at(j);
#pragma unroll
    for (int r = 0; r < 3; ++r) e[r * kTile] = load(r, t.row(j), t.n2);
  }
#pragma unroll
  for (int r = 0; r < 3; ++r) smem_fft::fft<N1>(smem + r * kTile + column_offset<N1>(threadIdx.y));
  TwiddleRun tw3(twiddle3(t.r0 * N2 + t.n2, logM), twiddle3(t.kStep * N2, logM));
#pragma unroll
  for (int j = 0; j < kElemsPerThread; ++j) {
    const int n = t.row(j) * N2 + t.n2;
    if (n >= limit) break;  // n grows with j
    const float2 w1 = tw3.next();
    const float2* e = &t.at(j);
    store(n, dft3(e[0], cmul(e[kTile], w1), cmul(e[2 * kTile], cmul(w1, w1))));
  }
}

// Step 3 with R = 3. grid (N2 / kCols, pairs in the chunk), block (N1/16, kCols), three tiles.
template <int N1, int N2, typename scalar_t, typename W>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_inverse3_kernel(const W* __restrict__ T, scalar_t* __restrict__ y, Shape s) {
  extern __shared__ float2 smem[];
  constexpr int M = N1 * N2;
  const int64_t g = blockIdx.y;
  const W* Tg = T + g * (3 * (int64_t)M);
  const int64_t pair = s.pair0 + g;
  const int64_t d = pair / s.npairs, b0 = 2 * (pair % s.npairs), b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  scalar_t* y0 = y + (b0 * s.D + d) * s.L;
  scalar_t* y1 = has1 ? y + (b1 * s.D + d) * s.L : y0;
  const int L = (int)s.L;  // < N <= 2^22
  columns_inverse3<N1, N2>(
      smem, [&](int r, int k1, int n2) { return load_work(Tg[r * M + k1 * N2 + n2]); }, L, [&](int n, const Three& v) {
        const float2 o[3] = {v.v0, v.v1, v.v2};
#pragma unroll
        for (int r = 0; r < 3; ++r) {
          const int m = n + r * M;
          if (m < L) {
            y0[m] = static_cast<scalar_t>(o[r].x);
            if (has1) y1[m] = static_cast<scalar_t>(-o[r].y);
          }
        }
      });
}

// Backward step 3 for grad_k with R = 3 (as columns_taps_kernel).
template <int N1, int N2>
__global__ void __launch_bounds__(N1 / kElemsPerThread * kCols)
    columns_taps3_kernel(const float2* __restrict__ Q, float* __restrict__ grad_k, Shape s, int taps) {
  extern __shared__ float2 smem[];
  constexpr int M = N1 * N2;
  const int64_t dl = blockIdx.y, d = s.pair0 / s.npairs + dl;
  const float2* Qd = Q + dl * (3 * (int64_t)M);
  float* gk = grad_k + d * taps;
  columns_inverse3<N1, N2>(
      smem, [&](int r, int k1, int n2) { return Qd[r * M + k1 * N2 + n2]; }, taps, [&](int n, const Three& v) {
        if (n < taps) gk[n] = v.v0.x;
        if (n + M < taps) gk[n + M] = v.v1.x;
        if (n + 2 * M < taps) gk[n + 2 * M] = v.v2.x;
      });
}

// The column kernels of a split: the power-of-two ones (R = 1) or the residue ones (R = 3); W the
// workspace element.
template <int N1, int N2, int R, typename Rows, typename W = float2>
constexpr auto columns_forward() {
  if constexpr (R == 1) return columns_forward_kernel<N1, N2, Rows, W>;
  else return columns_forward3_kernel<N1, N2, Rows, W>;
}
template <int N1, int N2, int R, typename scalar_t, typename W = float2>
constexpr auto columns_inverse() {
  if constexpr (R == 1) return columns_inverse_kernel<N1, N2, scalar_t, W>;
  else return columns_inverse3_kernel<N1, N2, scalar_t, W>;
}
template <int N1, int N2, int R>
constexpr auto columns_taps() {
  if constexpr (R == 1) return columns_taps_kernel<N1, N2>;
  else return columns_taps3_kernel<N1, N2>;
}

}  // namespace fourstep
}  // namespace
}  // namespace fft_tensor
