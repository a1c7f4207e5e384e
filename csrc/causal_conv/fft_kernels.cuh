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

// The effective kernel as the spectrum kernels read it: tap n of channel d is k[d, n] for n < taps,
// plus skip[d] at n = 0 (effective_kernel's sum, same float32 rounding), read from k and skip in
// their own strides, so a call makes no effective-kernel tensor (a clone, an add and a memcpy fewer).
struct KernelTaps {
  const float* k;
  int64_t k_stride;
  const float* skip;  // nullptr: no skip term
  int64_t skip_stride;
  int taps;
  __device__ __forceinline__ float operator()(int64_t d, int n) const {
    if (n >= taps) return 0.f;
    const float v = k[d * k_stride + n];
    return (n == 0 && skip != nullptr) ? v + skip[d * skip_stride] : v;
  }
};

template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }

// Launch bound of a kernel of N/16 threads whose registers are capped at 65536 / kThreadsPerSM
// (1024: 64 registers, 512: 128), whatever N (registers are allocated per warp: blocks under 32
// threads count as 32).
template <int N, int kThreadsPerSM>
constexpr int min_blocks_per_sm() {
  constexpr int b = kThreadsPerSM / (N / kElemsPerThread < 32 ? 32 : N / kElemsPerThread);
  return b < 1 ? 1 : b > 32 ? 32 : b;
}

// A window of one row pair: row b0 at time start + n in the real part, row b1 in the imaginary part
// (zero when the batch is odd and b0 is the last row), zero outside [0, L). kReverse reads time
// backwards. Pointers are offset once per block so each of a thread's 16 loads is one base register
// plus an immediate offset and one range test.
template <typename scalar_t, bool kReverse>
struct WindowRows {
  const scalar_t* p0;
  const scalar_t* p1;
  int lo, hi;  // valid n: lo <= n < hi
  bool has1;
  __device__ WindowRows(const scalar_t* x0, const scalar_t* x1, bool has1_, int64_t start, int64_t L, int N)
      : has1(has1_) {
    lo = (int)(start < 0 ? -start : 0);
    hi = (int)(L - start < N ? L - start : N);
    const int64_t first = kReverse ? L - 1 - start : start;  // element n lives at first +- n
    p0 = x0 + first;
    p1 = x1 + first;
  }
  __device__ __forceinline__ float2 operator()(int n) const {
    float2 v = make_float2(0.f, 0.f);
    if ((unsigned)(n - lo) < (unsigned)(hi - lo)) {
      const int i = kReverse ? -n : n;
      v.x = to_float(p0[i]);
      if (has1) v.y = to_float(p1[i]);
    }
    return v;
  }
};

// y = causal_conv(x, k) for one window of one row pair (kReverse: time runs backwards, which
// turns the convolution into the correlation grad_u[t] = sum_s k[s] gy[t+s]). The window is read
// from global memory by the first FFT pass and written by the last inverse pass (fused_conv).
// Registers capped at 64 (the 1024-threads-per-SM bound): measured 12% faster at 4K points than a
// 128-register bound (fewer resident blocks), third session.
// grid: D * npairs * nseg blocks of N/16 threads, window fastest, then pair, then channel (so blocks
// sharing K[d] are adjacent). kAfterSpectrum: launched right after kernel_spectrum_kernel as its
// programmatic dependent, possibly while it runs (launch_conv_windows): the load and forward transform
// of the row pair overlap the spectrum's tail, then it waits for K and reads it through L2.
// kHalf: a one-window plan whose row fills at most half the window (L <= N/2: Lk = L and the like).
// The window then starts at t = 0, not -(taps - 1): N >= L + taps - 1, so the circular convolution
// still wraps only zeros into outputs t < L; samples n >= N/2 are zeros and outputs n >= N/2 are not
// wanted, so the first forward pass and the last inverse pass skip them (smem_fft's kHalf).
template <typename scalar_t, bool kReverse, int N, bool kAfterSpectrum, bool kHalf = false>
__global__ void __launch_bounds__(N / kElemsPerThread, (min_blocks_per_sm<N, 1024>()))
    conv_window_kernel(const scalar_t* __restrict__ x, const float2* __restrict__ K, scalar_t* __restrict__ y,
                       ConvShape s) {
  extern __shared__ float2 smem[];
  const int64_t blk = blockIdx.x;
  const int j = (int)(blk % s.nseg);
  const int64_t rest = blk / s.nseg;
  const int pair = (int)(rest % s.npairs);
  const int64_t d = rest / s.npairs;
  const int64_t b0 = 2 * pair, b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  const int64_t off0 = (b0 * s.D + d) * s.L, off1 = has1 ? (b1 * s.D + d) * s.L : off0;
  const int64_t start = kHalf ? 0 : (int64_t)j * s.seg - (s.taps - 1);  // time of window sample 0
  const WindowRows<scalar_t, kReverse> rows(x + off0, x + off1, has1, start, s.L, N);
  const float2* Kd = K + d * (N / 2 + 1);
  // outputs the window owns: first <= n < last (and t < L)
  const int first = kHalf ? 0 : s.taps - 1;
  const int last = (int)(s.L - start < first + s.seg ? s.L - start : first + s.seg);
  scalar_t* y0 = y + off0 + (kReverse ? s.L - 1 - start : start);
  scalar_t* y1 = y + off1 + (kReverse ? s.L - 1 - start : start);
  smem_fft::fused_conv<N, false, kAfterSpectrum, kHalf>(
      smem, rows, [&](int q, int c) { return smem_fft::hermitian_bin<N, kAfterSpectrum>(Kd, q, c); },
      [&](int n, float2 w) {  // w = conj of the result: real part = row 0, -imag = row 1
        if ((unsigned)(n - first) >= (unsigned)(last - first)) return;
        const int i = kReverse ? -n : n;
        y0[i] = static_cast<scalar_t>(w.x);
        if (has1) y1[i] = static_cast<scalar_t>(-w.y);
      });
}

// The real-window kernels: one row of a one-window plan of 2N real points per thread block (N = 16384:
// rows the pair kernel cannot hold, two rows of 32K points being 256 KB). The N-point complex FFT of
// z[n] = x[2n] + i*x[2n+1] gives Z, and bins f and f + N of the row's 2N-point spectrum are
//   2 X[f] = P + t M, 2 X[f + N] = P - t M, with P = Z[f] + conj(Z[N-f]), M = -i (Z[f] - conj(Z[N-f])),
// t = W_2N^f. Z[N-f] sits with another thread, so the spectrum goes through shared memory once. Back:
//   Z'[f] = (Y[f] + Y[f+N]) / 2 + i W_2N^-f (Y[f] - Y[f+N]) / 2
// is the N-point spectrum of y[2n] + i*y[2n+1] for any Y with a real inverse. Kr, the kernel's
// spectrum (bins 0..N), is scaled by 1/(4N) (the halves above and the inverse's 1/N), and the inverse
// is the forward FFT of the conjugate (fused_conv's convention). A row is read once and written once.

// Z (the N-point spectrum of z) in shared memory, natural order, visible to every thread: calls
// bin(f, t, X1, X2) for every f < N, with t = W_2N^f, X1 = 2 X[f], X2 = 2 X[f + N]. One thread visits both
// bins of a pair {f, N - f} (their X follow from the same two values of Z: P and M of bin N - f are the
// conjugates of bin f's, and W_2N^(N-f) = -conj(W_2N^f), so X1(N - f) = conj(X2(f)), X2(N - f) = conj(X1(f)))
// after reading both, so bin may overwrite smem[pad(f)] with no barrier; thread 0 also takes the
// self-paired bins 0 and N/2. Thread q takes f = q + j*N/16 for j < 8 (f < N/2) and their partners:
// the same bins on every call, so per-bin state in global memory needs no barrier either. No register
// arrays: at 1024 threads (64 registers) the in-register version of this step spilled.
template <int N, typename Bin>
__device__ __forceinline__ void real_spectrum_pairs(const float2* smem, Bin bin) {
  constexpr int N16 = N / kElemsPerThread;
  const int q = threadIdx.x;
#pragma unroll 2
  for (int j = 0; j < kElemsPerThread / 2; ++j) {
    const int f = q + j * N16, g = (N - f) & (N - 1);
    const float2 af = smem[pad(f)], c = conjf2(smem[pad(g)]);
    float sn, cs;
    sincospif(-(float)f / (float)N, &sn, &cs);  // W_2N^f; exact argument (N a power of two)
    const float2 t = make_float2(cs, sn);
    const float2 P = cadd(af, c), Dd = smem_fft::csub(af, c);
    const float2 tM = cmul(t, make_float2(Dd.y, -Dd.x));  // t * (-i) * (Z[f] - conj(Z[N-f]))
    const float2 X1 = cadd(P, tM), X2 = smem_fft::csub(P, tM);
    if (f == 0) {
      bin(0, t, X1, X2);  // bins 0 and N, from Z[0] alone
      const float2 ah = smem[pad(N / 2)], ch = conjf2(ah);
      const float2 Ph = cadd(ah, ch), Dh = smem_fft::csub(ah, ch);
      const float2 th = make_float2(0.f, -1.f);  // W_2N^(N/2) = -i
      const float2 tMh = cmul(th, make_float2(Dh.y, -Dh.x));
      bin(N / 2, th, cadd(Ph, tMh), smem_fft::csub(Ph, tMh));
    } else {
      bin(f, t, X1, X2);
      bin(g, make_float2(-t.x, t.y), conjf2(X2), conjf2(X1));
    }
  }
}

// exp(-2 pi i m / 32) for a compile-time m (after unrolling: immediates).
__device__ __forceinline__ float2 root32(int m) {
  constexpr float kCos32[32] = {1.000000000f, 0.980785280f, 0.923879533f, 0.831469612f, 0.707106781f, 0.555570233f, 0.382683432f, 0.195090322f, 0.000000000f, -0.195090322f, -0.382683432f, -0.555570233f, -0.707106781f, -0.831469612f, -0.923879533f, -0.980785280f, -1.000000000f, -0.980785280f, -0.923879533f, -0.831469612f, -0.707106781f, -0.555570233f, -0.382683432f, -0.195090322f, -0.000000000f, 0.195090322f, 0.382683432f, 0.555570233f, 0.707106781f, 0.831469612f, 0.923879533f, 0.980785280f};
  return make_float2(kCos32[m & 31], -kCos32[(m + 24) & 31]);  // sin(2 pi m/32) = cos(2 pi (m - 8)/32)
}

// The register variant of the same step (kRegs kernels): after fft_to_registers (x[b*Rl + r] = Z[f],
// f = q + b*N16 + r*NR) and registers_to_smem, bin(i, f, t, X1, X2) for each of this thread's 16 bins,
// x[i] being bin f's Z: the partner Z[N - f] comes from shared memory, the thread's own from x, so bin
// may overwrite x[i] (read first). These are exactly the bins the first pass of inverse_from_registers
// takes from x, so the merged spectrum never goes back to shared memory and the inverse's last pass
// writes global memory directly: two shared-memory round trips fewer per transform back than the pair
// step, at the price of x live across the step (spills at the 64-register bound; which one is faster
// is for the device to say: FFT_TENSOR_CONV_REAL_WINDOW_REGS). Bins 0 and N/2 pair with themselves:
// the same formulas hold ((N - f) mod N). The caller's barrier must separate these shared-memory reads
// from its next writes.
template <int N, typename Bin>
__device__ __forceinline__ void real_spectrum_own(const float2* smem, const float2 (&x)[kElemsPerThread], Bin bin) {
  constexpr int Rl = smem_fft::last_radix(N), N16 = N / kElemsPerThread, NR = N / Rl, kBfly = kElemsPerThread / Rl;
  const int q = threadIdx.x;
  float sn, cs;
  sincospif(-(float)q / (float)N, &sn, &cs);  // W_2N^q; exact argument (N a power of two)
  const float2 wq = make_float2(cs, sn);
#pragma unroll
  for (int b = 0; b < kBfly; ++b) {
#pragma unroll
    for (int r = 0; r < Rl; ++r) {
      const int f = q + b * N16 + r * NR;
      // W_2N^f = W_2N^q * exp(-i pi (b*N16 + r*NR) / N) = W_2N^q * root32(b + r*16/Rl): an immediate
      const float2 t = (b == 0 && r == 0) ? wq : cmul(wq, root32(b + r * (16 / Rl)));
      const float2 af = x[b * Rl + r], c = conjf2(smem[pad((N - f) & (N - 1))]);
      const float2 P = cadd(af, c), Dd = smem_fft::csub(af, c);
      const float2 tM = cmul(t, make_float2(Dd.y, -Dd.x));  // t * (-i) * (Z[f] - conj(Z[N-f]))
      bin(b * Rl + r, f, t, cadd(P, tM), smem_fft::csub(P, tM));
    }
    asm volatile("" ::: "memory");  // one butterfly's loads in flight at a time: fewer live registers
  }
}

// The spectra of two real rows packed in one transform, z = x0 + i x1, from its bins Z[f] and Z[N - f]:
//   X0[f] = (Z[f] + conj Z[N - f]) / 2,  X1[f] = (Z[f] - conj Z[N - f]) / 2i,
// each times 2 * scale (the kernel spectra pass scale = 0.5 / N: X / N). The kernel-spectrum kernels
// (kernel_spectrum_kernel, kernel_spectrum_cluster_kernel, fourstep::rows_spectrum_kernel) split with it.
struct RealPairBins {
  float2 x0, x1;
};
__device__ __forceinline__ RealPairBins split_real_pair(float2 z_f, float2 z_nf, float scale) {
  const float2 c = conjf2(z_nf);
  return {make_float2(scale * (z_f.x + c.x), scale * (z_f.y + c.y)),
          make_float2(scale * (z_f.y - c.y), scale * (c.x - z_f.x))};  // (z_f - c) / i
}

// conj(Z'[f]) from Y1 = 2 Y[f] / (4N) and Y2 = 2 Y[f + N] / (4N) (the products with Kr): what the inverse
// (a forward FFT) takes.
__device__ __forceinline__ float2 real_merge_conj(float2 t, float2 Y1, float2 Y2) {
  const float2 Dt = cmul(conjf2(t), smem_fft::csub(Y1, Y2));
  return make_float2(Y1.x + Y2.x - Dt.y, -(Y1.y + Y2.y + Dt.x));
}

// fft_to_registers' bins (f = q + b*N/16 + r*N/Rl at v[b*Rl + r]) to shared memory, then a barrier.
template <int N>
__device__ __forceinline__ void registers_to_smem(float2* smem, const float2 (&v)[kElemsPerThread]) {
  constexpr int Rl = smem_fft::last_radix(N), N16 = N / kElemsPerThread, NR = N / Rl, kBfly = kElemsPerThread / Rl;
#pragma unroll
  for (int b = 0; b < kBfly; ++b)
#pragma unroll
    for (int r = 0; r < Rl; ++r) smem[pad(threadIdx.x + b * N16 + r * NR)] = v[b * Rl + r];
  __syncthreads();
}

// y = causal_conv(x, k) for one row per block; kReverse: time runs backwards (the correlation
// grad_u[t] = sum_s k[s] gy[t+s], when grad_k is not wanted). grid: B * D blocks, batch fastest (block
// d * B + b takes row b * D + d), N/16 threads; Kr: (D, N + 1). The B blocks of a channel are adjacent so
// its 128 KB of Kr comes from DRAM once and from L2 for the other rows: in row order, channels D blocks
// apart, Kr (D x 128 KB, more than L2) was read from DRAM once per row, as many bytes as the rows. The
// merged spectrum is written in place and transformed by smem_fft::fft (one more shared-memory pass than
// inverse_from_registers, and no register array held across the step).
// kHalf: L <= N (the row fills at most half the 2N-point window, as with Lk = L): the window starts at
// t = 0 (conv_window_kernel's kHalf), so z[n] = 0 for n >= N/2 and only z'[n], n < N/2, is wanted.
template <typename scalar_t, bool kReverse, int N, bool kRegs, bool kHalf = false>
__global__ void __launch_bounds__(N / kElemsPerThread, 1)
    conv_real_window_kernel(const scalar_t* __restrict__ x, const float2* __restrict__ Kr, scalar_t* __restrict__ y,
                            ConvShape s) {
  extern __shared__ float2 smem[];
  constexpr int N16 = N / kElemsPerThread;
  const int64_t d = blockIdx.x / s.B, row = (blockIdx.x % s.B) * s.D + d;
  // sample m of the window is time start + m, start = -(taps - 1) (0 with kHalf); valid: lo <= m < hi
  // (times 0..L-1), which are also the outputs the window owns (one window covers the row)
  const int64_t start = kHalf ? 0 : -(int64_t)(s.taps - 1);
  const int lo = (int)-start, hi = (int)(s.L - start);
  const int64_t first = kReverse ? s.L - 1 - start : start;  // sample m lives at first +- m
  const scalar_t* xr = x + row * s.L + first;
  scalar_t* yr = y + row * s.L + first;
  auto sample = [&](int m) {
    return (unsigned)(m - lo) < (unsigned)(hi - lo) ? to_float(xr[kReverse ? -m : m]) : 0.f;
  };
  const float2* K = Kr + d * (N + 1);
  auto store = [&](int n, float2 w) {  // w = conj(z'[n]): y at samples 2n and 2n + 1
    const int m0 = 2 * n, m1 = m0 + 1;
    if ((unsigned)(m0 - lo) < (unsigned)(hi - lo)) yr[kReverse ? -m0 : m0] = static_cast<scalar_t>(w.x);
    if ((unsigned)(m1 - lo) < (unsigned)(hi - lo)) yr[kReverse ? -m1 : m1] = static_cast<scalar_t>(-w.y);
  };
  if constexpr (kRegs) {
    float2 v[kElemsPerThread];
    smem_fft::fft_to_registers<N, false, kHalf>(smem, v,
                                                [&](int n) { return make_float2(sample(2 * n), sample(2 * n + 1)); });
    __syncthreads();  // every thread has read the last pass's input
    registers_to_smem<N>(smem, v);
    real_spectrum_own<N>(smem, v, [&](int i, int f, float2 t, float2 X1, float2 X2) {
      v[i] = real_merge_conj(t, cmul(X1, K[f]), cmul(X2, conjf2(K[N - f])));  // K[f + N] = conj(K[N - f])
    });
    __syncthreads();  // every partner has been read before the inverse writes shared memory
    smem_fft::inverse_from_registers<N, false, kHalf>(smem, v, store);
    return;
  }
  {
    float2 v[kElemsPerThread];
    smem_fft::fft_to_registers<N, false, kHalf>(smem, v,
                                                [&](int n) { return make_float2(sample(2 * n), sample(2 * n + 1)); });
    __syncthreads();  // every thread has read the last pass's input
    registers_to_smem<N>(smem, v);
  }
  real_spectrum_pairs<N>(smem, [&](int f, float2 t, float2 X1, float2 X2) {
    smem[pad(f)] = real_merge_conj(t, cmul(X1, K[f]), cmul(X2, conjf2(K[N - f])));  // K[f + N] = conj(K[N - f])
  });
  smem_fft::fft<N>(smem);  // barriers on both sides: smem[pad(n)] = conj(z'[n])
#pragma unroll 4
  for (int i = 0; i < (kHalf ? kElemsPerThread / 2 : kElemsPerThread); ++i) {
    const int n = threadIdx.x + i * N16;
    store(n, smem[pad(n)]);
  }
}

// K[d, f] = FFT_N(k_eff[d, :taps])[f] / N for f <= N/2, two channels per block: the FFT of
// z = k[d0] + i k[d1] (zero for a missing last channel) split by Hermitian symmetry,
//   K0[f] = (Z[f] + conj Z[N - f]) / 2,  K1[f] = (Z[f] - conj Z[N - f]) / 2i,
// as the window kernels pack their rows (it took one block and one FFT per channel before: per row as
// long as a convolution's row pair). kHalf: taps <= N/2 (every plan: N >= 4 taps with many windows,
// N >= L + taps - 1 >= 2 taps - 1 with one), so the first pass skips z's zero half. grid: ceil(D/2)
// blocks of N/16 threads. The window kernel after it may start at once (programmatic dependent launch;
// it waits for K itself). H200, D = 768, N = 8192: 0.036 -> 0.017 ms (RESULTS.md, twenty-sixth session).
template <int N, bool kHalf>
__global__ void __launch_bounds__(N / kElemsPerThread) kernel_spectrum_kernel(KernelTaps k, int64_t D,
                                                                              float2* __restrict__ K) {
  extern __shared__ float2 smem[];
  smem_fft::pdl_launch_dependents();
  const int64_t d0 = 2 * (int64_t)blockIdx.x, d1 = d0 + 1;
  const bool has1 = d1 < D;
  float2 v[kElemsPerThread];
  smem_fft::fft_to_registers<N, false, kHalf>(
      smem, v, [&](int n) { return make_float2(k(d0, n), has1 ? k(d1, n) : 0.f); });
  __syncthreads();  // every thread has read the last pass's input
  registers_to_smem<N>(smem, v);
  constexpr int half = N / 2 + 1;
  constexpr float scale = 0.5f / (float)N;
  float2* K0 = K + d0 * half;
  float2* K1 = K + d1 * half;
  for (int f = threadIdx.x; f < half; f += blockDim.x) {
    const RealPairBins x = split_real_pair(smem[pad(f)], smem[pad((N - f) & (N - 1))], scale);
    K0[f] = x.x0;
    if (has1) K1[f] = x.x1;
  }
}

// Kr for the real-window kernels: bins 0..N of the 2N-point spectrum of a channel's effective kernel,
// scaled by 1/(4N) (X1 = 2 X[f], hence 1/(8N) below), by the row kernels' own transform and split. One
// channel per block (grid: the channels of a launch; the host offsets taps to its first channel).
// taps <= N always (one window holds the row: L + taps - 1 <= 2N with taps <= L), so z[n] = k[2n] +
// i k[2n + 1] is zero from n = N/2 and the first pass skips that half. Replaces cuFFT's rfft of the taps
// padded to 2N points and a separate scaling pass (three passes over D x 2N values). With the grad_k
// kernel below: H200, B = 8, D = 768, L = Lk = 16K, fp32 forward 1.19 -> 1.03 ms, forward+backward 3.78
// -> 3.24 ms (RESULTS.md, twenty-sixth session; this kernel 0.07 ms).
template <int N>
__global__ void __launch_bounds__(N / kElemsPerThread, 1)
    real_window_spectrum_kernel(KernelTaps taps, float2* __restrict__ Kr) {
  extern __shared__ float2 smem[];
  const int64_t d = blockIdx.x;
  float2* K = Kr + d * (N + 1);
  float2 v[kElemsPerThread];
  smem_fft::fft_to_registers<N, false, true>(
      smem, v, [&](int n) { return make_float2(taps(d, 2 * n), taps(d, 2 * n + 1)); });
  __syncthreads();  // every thread has read the last pass's input
  registers_to_smem<N>(smem, v);
  constexpr float scale = 1.f / (8.f * (float)N);
  real_spectrum_own<N>(smem, v, [&](int, int f, float2, float2 X1, float2 X2) {
    K[f] = make_float2(scale * X1.x, scale * X1.y);
    if (f == 0) K[N] = make_float2(scale * X2.x, scale * X2.y);
  });
}

// grad_k from the backward kernel's sums C[f] = 4 sum_b G[f] conj(U[f]) (bins 0..N of 2N-point spectra):
// grad_k[d, s] = irfft_2N(C / 4)[s] for s < taps (<= N), by the row kernels' merge (Y1 = C[f] / (8N),
// Y2 = C[f + N] / (8N) = conj(C[N - f]) / (8N): the spectrum of a real signal) and inverse, written
// straight into grad_k's first taps of each row (the rest of the row is the caller's). One channel per
// block. Replaces cuFFT's irfft to 2N points, a scaling pass and two copies of the taps.
template <int N>
__global__ void __launch_bounds__(N / kElemsPerThread, 1)
    real_window_grad_k_kernel(const float2* __restrict__ C, float* __restrict__ grad_k, int64_t grad_k_stride,
                              int taps) {
  extern __shared__ float2 smem[];
  constexpr int N16 = N / kElemsPerThread;
  const float2* Cd = C + (int64_t)blockIdx.x * (N + 1);
  float* g = grad_k + (int64_t)blockIdx.x * grad_k_stride;
  constexpr float scale = 1.f / (8.f * (float)N);
#pragma unroll 4
  for (int i = 0; i < kElemsPerThread; ++i) {
    const int f = threadIdx.x + i * N16;
    float sn, cs;
    sincospif(-(float)f / (float)N, &sn, &cs);  // W_2N^f; exact argument (N a power of two)
    const float2 c1 = Cd[f], c2 = conjf2(Cd[N - f]);
    smem[pad(f)] = real_merge_conj(make_float2(cs, sn), make_float2(scale * c1.x, scale * c1.y),
                                   make_float2(scale * c2.x, scale * c2.y));
  }
  smem_fft::fft<N>(smem);  // barriers on both sides: smem[pad(n)] = conj(z'[n]), z'[n] = g[2n] + i g[2n + 1]
#pragma unroll 4
  for (int i = 0; i < kElemsPerThread / 2; ++i) {  // n < N/2 covers every tap (2n < N, taps <= N)
    const int n = threadIdx.x + i * N16;
    const float2 w = smem[pad(n)];
    if (2 * n < taps) g[2 * n] = w.x;
    if (2 * n + 1 < taps) g[2 * n + 1] = -w.y;
  }
}

// The backward with grad_k, one channel per block over its B rows (grid: one block per channel of a
// chunk of channels d0, d0 + 1, ...; Kr, C and U_scratch hold the chunk's channels; N/16 threads). For
// row b, with the rows read from t = 0 (sample m = time m, zero from L: the 2N-point circular
// correlations do not wrap, as 2N >= L + taps - 1):
//   U = the spectrum of u[b]: bins f < u_smem_bins in the shared memory after the FFT buffer (on Hopper
//       the 227 KB a block may have leave room for 11648 of the N + 1 bins beside the 136 KB buffer), the
//       rest in U_scratch (this channel's N + 1 - u_smem_bins bins, global memory); each bin is written
//       and read back by the thread that owns it, so neither needs a barrier;
//   G = the spectrum of gy[b]; C[f] += G[f] conj(U[f]) for f = 0..N (times 4: X1 and X2 are doubled),
//       the first row writing instead of adding; grad_k = irfft(C / 4)[:taps] afterwards
//       (real_window_grad_k_kernel);
//   kNeedU: grad_u[b] = the inverse of G conj(K) (correlation with k, no time reversal).
// Three N-point FFTs per row (with kNeedU) against the four-step path's three passes over N complex
// values of the row pair in global memory. The sums stay in L2 while a block works on its channel.
// Per row a block moves Kr (read), C (read and written) and U through L2, 128 KB each pass: five
// passes of 128 KB against the row's own 3 x 24-48 KB, and 132 blocks' Kr, C and U (384 KB each) are
// about the H100's whole L2; U's bins in shared memory take 71% of U's two passes off.
// kRegs: the spectrum steps on each thread's own bins in registers (real_spectrum_own) and grad_u's
// inverse from registers straight to global memory; else the pair step through shared memory.
// kHalf: L <= N, so the rows' transforms skip their zero half and grad_u's inverse its unwanted one.
template <typename scalar_t, int N, bool kNeedU, bool kRegs, bool kHalf = false>
__global__ void __launch_bounds__(N / kElemsPerThread, 1)
    conv_real_window_backward_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ u,
                                     const float2* __restrict__ Kr, scalar_t* __restrict__ grad_u,
                                     float2* __restrict__ C, float2* __restrict__ U_scratch, ConvShape s,
                                     int64_t d0, int u_smem_bins) {
  extern __shared__ float2 smem[];
  constexpr int N16 = N / kElemsPerThread;
  const int64_t d = d0 + blockIdx.x;
  const int L = (int)s.L;
  const float2* K = Kr + (int64_t)blockIdx.x * (N + 1);
  float2* Cd = C + (int64_t)blockIdx.x * (N + 1);
  float2* Us = smem + smem_fft::padded_size(N);  // U's bins f < u_smem_bins
  float2* Ud = U_scratch + (int64_t)blockIdx.x * (N + 1 - u_smem_bins);  // bin f >= u_smem_bins at Ud[f - u_smem_bins]
  auto put_u = [&](int f, float2 v) {
    if (f < u_smem_bins) Us[f] = v;
    else Ud[f - u_smem_bins] = v;
  };
  auto get_u = [&](int f) { return f < u_smem_bins ? Us[f] : Ud[f - u_smem_bins]; };
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t off = (b * s.D + d) * s.L;
    const scalar_t* ur = u + off;
    const scalar_t* gr = gy + off;
    scalar_t* yr = kNeedU ? grad_u + off : nullptr;
    auto load_u = [&](int n) {
      return make_float2(2 * n < L ? to_float(ur[2 * n]) : 0.f, 2 * n + 1 < L ? to_float(ur[2 * n + 1]) : 0.f);
    };
    auto load_gy = [&](int n) {
      return make_float2(2 * n < L ? to_float(gr[2 * n]) : 0.f, 2 * n + 1 < L ? to_float(gr[2 * n + 1]) : 0.f);
    };
    auto store_u = [&](int f, float2, float2 X1, float2 X2) {
      put_u(f, X1);
      if (f == 0) put_u(N, X2);
    };
    const bool first_row = b == 0;
    auto sum_c = [&](int f, float2 X1, float2 X2) {  // C[f] += G[f] conj(U[f]), bin N with bin 0
      const float2 p = cmul(X1, conjf2(get_u(f)));
      Cd[f] = first_row ? p : cadd(Cd[f], p);
      if (f == 0) {
        const float2 pN = cmul(X2, conjf2(get_u(N)));
        Cd[N] = first_row ? pN : cadd(Cd[N], pN);
      }
    };
    // G conj(K) merged (conj(K[f + N]) = K[N - f]): what grad_u's inverse takes
    auto merged = [&](int f, float2 t, float2 X1, float2 X2) {
      return real_merge_conj(t, cmul(X1, conjf2(K[f])), cmul(X2, K[N - f]));
    };
    auto store_grad_u = [&](int n, float2 w) {  // w = conj(z'[n]): grad_u at samples 2n and 2n + 1
      const int m0 = 2 * n, m1 = m0 + 1;
      if (m0 < L) yr[m0] = static_cast<scalar_t>(w.x);
      if (m1 < L) yr[m1] = static_cast<scalar_t>(-w.y);
    };
    if constexpr (kRegs) {
      {
        float2 v[kElemsPerThread];
        __syncthreads();  // the previous row's last reads of shared memory are done
        smem_fft::fft_to_registers<N, false, kHalf>(smem, v, load_u);
        __syncthreads();
        registers_to_smem<N>(smem, v);
        real_spectrum_own<N>(smem, v, [&](int, int f, float2 t, float2 X1, float2 X2) { store_u(f, t, X1, X2); });
      }
      float2 v[kElemsPerThread];
      __syncthreads();  // every partner has been read before the next FFT writes shared memory
      smem_fft::fft_to_registers<N, false, kHalf>(smem, v, load_gy);
      __syncthreads();
      registers_to_smem<N>(smem, v);
      real_spectrum_own<N>(smem, v, [&](int i, int f, float2 t, float2 X1, float2 X2) {
        sum_c(f, X1, X2);
        if constexpr (kNeedU) v[i] = merged(f, t, X1, X2);
      });
      if constexpr (kNeedU) {
        __syncthreads();  // every partner has been read before the inverse writes shared memory
        smem_fft::inverse_from_registers<N, false, kHalf>(smem, v, store_grad_u);
      }
      continue;
    }
    {
      float2 v[kElemsPerThread];
      __syncthreads();  // the previous row's last reads of shared memory are done
      smem_fft::fft_to_registers<N, false, kHalf>(smem, v, load_u);
      __syncthreads();
      registers_to_smem<N>(smem, v);
    }
    real_spectrum_pairs<N>(smem, store_u);
    {
      float2 v[kElemsPerThread];
      __syncthreads();  // every pair has been read before the next FFT writes shared memory
      smem_fft::fft_to_registers<N, false, kHalf>(smem, v, load_gy);
      __syncthreads();
      registers_to_smem<N>(smem, v);
    }
    real_spectrum_pairs<N>(smem, [&](int f, float2 t, float2 X1, float2 X2) {
      sum_c(f, X1, X2);
      if constexpr (kNeedU) smem[pad(f)] = merged(f, t, X1, X2);
    });
    if constexpr (kNeedU) {
      smem_fft::fft<N>(smem);  // barriers on both sides: smem[pad(n)] = conj(z'[n])
#pragma unroll 4
      for (int i = 0; i < (kHalf ? kElemsPerThread / 2 : kElemsPerThread); ++i) {
        const int n = threadIdx.x + i * N16;
        store_grad_u(n, smem[pad(n)]);
      }
    }
  }
}

// The pieces of grad_k that the 16384-point kernel and the cluster kernel share (u + i*sc*gy per item).
// Loads elements n = n0 + m (m = threadIdx.x, + blockDim.x, ... < count) of item `item` = (row b,
// window j) of channel d as smem[pad(m)] = (u, gy), gy only at the outputs the window owns; folds
// this thread's max |u| and max |gy| into window_max[0..1] (float bits: the order of non-negative
// floats is the order of their bits). kThreads: blockDim.x when known at compile time (0: read it).
template <int kThreads, typename scalar_t>
__device__ __forceinline__ void load_u_gy_window(float2* smem, const scalar_t* __restrict__ u,
                                                 const scalar_t* __restrict__ gy, const ConvShape& s, int64_t d,
                                                 int64_t item, int n0, int count, unsigned int* window_max) {
  const int64_t b = item / s.nseg;
  const int j = (int)(item % s.nseg);
  const int64_t off = (b * s.D + d) * s.L;
  const int64_t start = (int64_t)j * s.seg - (s.taps - 1);
  float max_u = 0.f, max_g = 0.f;
  const int stride = kThreads > 0 ? kThreads : (int)blockDim.x;
  for (int m = threadIdx.x; m < count; m += stride) {
    const int n = n0 + m;
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
  atomicMax(&window_max[0], __float_as_uint(max_u));
  atomicMax(&window_max[1], __float_as_uint(max_g));
}

// sc: the power of two that brings the window's max |gy| (mg) to its max |u| (mu); 1 if either is 0.
__device__ __forceinline__ float gy_scale(float mu, float mg) {
  return (mu > 0.f && mg > 0.f) ? exp2f(fminf(fmaxf(rintf(log2f(mu / mg)), -100.f), 100.f)) : 1.f;
}

// This thread's max |u| and max |gy| folded over its warp, then into slot[0..1] (float bits: the order of
// non-negative floats is the order of their bits) by one atomic per warp. Every lane must call it (blocks
// are whole warps, no early exit); the caller's barrier makes slot visible.
__device__ __forceinline__ void fold_warp_maxima(float mu, float mg, unsigned int* slot) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    mu = fmaxf(mu, __shfl_xor_sync(0xffffffffu, mu, o));
    mg = fmaxf(mg, __shfl_xor_sync(0xffffffffu, mg, o));
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMax(&slot[0], __float_as_uint(mu));
    atomicMax(&slot[1], __float_as_uint(mg));
  }
}

// acc + G conj(U) at bin f from a = Z[f], c = conj(Z[N-f]) of z = u + i*sc*gy: -i/(4 sc) (a - c) conj(a + c).
__device__ __forceinline__ float2 add_g_conj_u(float2 acc, float2 a, float2 c, float sc) {
  const float w = 0.25f / sc;
  const float2 p = cmul(make_float2(a.x - c.x, a.y - c.y), conjf2(cadd(a, c)));
  return make_float2(acc.x + w * p.y, acc.y - w * p.x);
}

// The bin that x[i] of this thread holds after fft_to_registers' last pass (of radix Rl).
template <int N>
__device__ __forceinline__ int own_bin(int i) {
  constexpr int T = N / kElemsPerThread, Rl = smem_fft::last_radix(N), NR = N / Rl;
  return threadIdx.x + (i / Rl) * T + (i % Rl) * NR;
}

// partial[g, d, f] = sum over the (row, window) items of group g of G[f] * conj(U[f]), f <= N/2:
// the spectrum of the cross-correlation sum_t gy[t] u[t-s]. Each window of one row is packed as
// z = u + i*sc*gy (the gy window keeps only the outputs the window owns, so every (t, s) is counted
// once); with a = Z[f], c = conj(Z[N-f]): U = (a + c)/2, sc*G = (a - c)/(2i), so
// G conj(U) = -i/(4 sc) * (a - c) * conj(a + c), and one FFT serves both spectra.
// sc is a power of two bringing max|gy| of the window to max|u|: FFT rounding is relative to the
// larger part of z, and gradients of a mean loss are far smaller than activations, so without it
// the gy half would drown in the u half's rounding. Power of two: scaling and unscaling are exact.
// Used where the row-pair kernel does not fit (16384-point windows).
// grid: D * groups blocks (group fastest); items (row b, window j) are dealt out round-robin.
// kHalf: a one-window plan whose rows fill at most half the window (half_window). u and gy then both
// start at t = 0 (conv_grad_k_pair_kernel's kHalf: N >= L + taps - 1, so the correlation wraps only
// zeros), and z is read by the first FFT pass straight from global memory (fft_to_registers: no staging
// copy in shared memory and no scaling pass over it; the first pass skips the zero half). sc needs the
// row's maxima first: a first read of this thread's elements (warp maxima, then one shared atomic per
// warp), which the transform's loads then find in L2. The spectrum goes back to shared memory (each
// thread's own bins) for the pairs Z[f], Z[N - f].
template <typename scalar_t, int N, bool kHalf = false>
__global__ void __launch_bounds__(N / kElemsPerThread, (min_blocks_per_sm<N, 1024>()))
    conv_grad_k_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ gy, float2* __restrict__ partial,
                       ConvShape s, int groups) {
  extern __shared__ float2 smem[];
  // Running sum in shared memory after the FFT buffer (registers are capped at 64 by the
  // 1024-thread launch bound); thread tid owns frequencies f = tid + i*T, i = 0, 1, ...
  __shared__ unsigned int window_max[2][2];  // [window parity][u, gy]: float bits, values >= 0
  constexpr int T = N / kElemsPerThread, half = N / 2 + 1;
  float2* acc = smem + smem_fft::padded_size(N);
  const int group = (int)(blockIdx.x % groups);
  const int64_t d = blockIdx.x / groups;
  for (int f = threadIdx.x; f < half; f += T) acc[f] = make_float2(0.f, 0.f);
  if (threadIdx.x == 0) window_max[0][0] = window_max[0][1] = window_max[1][0] = window_max[1][1] = 0u;
  __syncthreads();

  const int64_t items = s.B * s.nseg;
  int parity = 0;
  for (int64_t it = group; it < items; it += groups, parity ^= 1) {
    float sc;
    if constexpr (kHalf) {  // one window (items = rows), n = t < L <= N/2
      const int64_t off = (it * s.D + d) * s.L;
      const scalar_t* __restrict__ ur = u + off;
      const scalar_t* __restrict__ gr = gy + off;
      const int L = (int)s.L;
      float mu = 0.f, mg = 0.f;
#pragma unroll
      for (int r = 0; r < 8; ++r) {  // the elements fft_to_registers<kHalf> loads in this thread
        const int n = threadIdx.x + r * (N / 16);
        if (n < L) {
          mu = fmaxf(mu, fabsf(to_float(ur[n])));
          mg = fmaxf(mg, fabsf(to_float(gr[n])));
        }
      }
      fold_warp_maxima(mu, mg, window_max[parity]);
      __syncthreads();
      sc = gy_scale(__uint_as_float(window_max[parity][0]), __uint_as_float(window_max[parity][1]));
      if (threadIdx.x == 0) window_max[parity ^ 1][0] = window_max[parity ^ 1][1] = 0u;  // as below
      float2 x[kElemsPerThread];
      smem_fft::fft_to_registers<N, false, true>(smem, x, [&](int n) {
        return n < L ? make_float2(to_float(ur[n]), sc * to_float(gr[n])) : make_float2(0.f, 0.f);
      });
      __syncthreads();  // the last pass has read the FFT buffer
#pragma unroll
      for (int i = 0; i < kElemsPerThread; ++i) smem[pad(own_bin<N>(i))] = x[i];
      __syncthreads();
    } else {
      load_u_gy_window<T>(smem, u, gy, s, d, it, 0, N, window_max[parity]);
      __syncthreads();
      sc = gy_scale(__uint_as_float(window_max[parity][0]), __uint_as_float(window_max[parity][1]));
      // The other parity's slot was last read before this window's barrier and is next written after
      // the barrier that ends this window, so it can be cleared now.
      if (threadIdx.x == 0) window_max[parity ^ 1][0] = window_max[parity ^ 1][1] = 0u;
      if (sc != 1.f)
        for (int n = threadIdx.x; n < N; n += T) smem[pad(n)].y *= sc;  // the elements this thread wrote
      smem_fft::fft<N>(smem);
    }
    for (int f = threadIdx.x; f < half; f += T)
      acc[f] = add_g_conj_u(acc[f], smem[pad(f)], conjf2(smem[pad((N - f) & (N - 1))]), sc);
    __syncthreads();
  }
  float2* out = partial + ((int64_t)group * s.D + d) * half;
  for (int f = threadIdx.x; f < half; f += T) out[f] = acc[f];
}

// The end of the row-pair grad_k kernels: acc holds this thread's bins of P = sum Zg conj(Zu) (x[i]'s
// order); out[f] = (P[f] + conj(P[N - f])) / 2, f <= N/2, the sum over both rows of each pair of
// G_b conj(U_b). stash: N complex of shared memory, free for this.
template <int N>
__device__ __forceinline__ void store_pair_partial(float2* stash, const float2 (&acc)[kElemsPerThread],
                                                   float2* __restrict__ out) {
  constexpr int T = N / kElemsPerThread;
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) stash[own_bin<N>(i)] = acc[i];
  __syncthreads();
  for (int f = threadIdx.x; f <= N / 2; f += T) {
    const float2 a = stash[f], c = conjf2(stash[(N - f) & (N - 1)]);
    out[f] = make_float2(0.5f * (a.x + c.x), 0.5f * (a.y + c.y));
  }
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
// Shared memory: the FFT buffer, then stash (N complex). Registers capped at 128 (512 threads per
// SM: acc holds 16 more complex values than the window kernel). grid: D * groups blocks (group fastest).
// kHalf: one window per row that fills at most its first half (conv_window_kernel's kHalf): the windows
// of u and gy both start at t = 0 (the correlation is shift-invariant and N >= L + taps - 1, so nothing
// wraps) and both transforms skip their zero half.
template <typename scalar_t, int N, bool kHalf = false>
__global__ void __launch_bounds__(N / kElemsPerThread, (min_blocks_per_sm<N, 512>()))
    conv_grad_k_pair_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ gy,
                            float2* __restrict__ partial, ConvShape s, int groups) {
  extern __shared__ float2 smem[];
  constexpr int half = N / 2;
  float2* stash = smem + smem_fft::padded_size(N);
  const int group = (int)(blockIdx.x % groups);
  const int64_t d = blockIdx.x / groups;
  float2 acc[kElemsPerThread];
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) acc[i] = make_float2(0.f, 0.f);

  const int64_t items = (int64_t)s.npairs * s.nseg;
  const int first = kHalf ? 0 : s.taps - 1;
  for (int64_t it = group; it < items; it += groups) {
    const int64_t pair = it / s.nseg;
    const int j = (int)(it % s.nseg);
    const int64_t b0 = 2 * pair;
    const bool has1 = b0 + 1 < s.B;
    const int64_t off0 = (b0 * s.D + d) * s.L, off1 = has1 ? off0 + s.D * s.L : off0;
    const int64_t start = (int64_t)j * s.seg - first;
    float2 x[kElemsPerThread];
    smem_fft::fft_to_registers<N, false, kHalf>(smem, x,
                                                WindowRows<scalar_t, false>(u + off0, u + off1, has1, start, s.L, N));
#pragma unroll
    for (int i = 0; i < kElemsPerThread; ++i) stash[own_bin<N>(i)] = x[i];
    __syncthreads();  // the last pass has read the FFT buffer before the next transform writes it
    // gy only at the outputs this window owns: first <= n < first + seg (and t < L)
    WindowRows<scalar_t, false> grads(gy + off0, gy + off1, has1, start, s.L, N);
    grads.lo = first;
    if (first + s.seg < grads.hi) grads.hi = first + s.seg;
    smem_fft::fft_to_registers<N, false, kHalf>(smem, x, grads);
#pragma unroll
    for (int i = 0; i < kElemsPerThread; ++i) acc[i] = cadd(acc[i], cmul(x[i], conjf2(stash[own_bin<N>(i)])));
    __syncthreads();
  }

  store_pair_partial<N>(stash, acc, partial + ((int64_t)group * s.D + d) * (half + 1));
}

// Both gradients of a one-window plan (nseg == 1), row pairs as in conv_grad_k_pair_kernel, three FFTs
// per pair where that kernel and the window kernel run backwards take four: Zu = FFT(u[b0] + i u[b1])
// and Zg = FFT(gy[b0] + i gy[b1]) give acc += Zg conj(Zu) (grad_k), and Zg conj(K) inverted gives
// grad_u as the correlation grad_u[t] = sum_s k[s] gy[t + s] (conj(K) is the spectrum of the reversed
// real taps, so the product keeps the pair packing; no time reversal). Both windows start at t = 0, and
// N >= L + taps - 1 keeps every sum free of wrapped samples: the correlation for t < L reads gy at
// t + s < N, and grad_k's u[t - s] wraps to n >= N - taps + 1 >= L, where u is zero. K is the forward's
// spectrum (kernel_spectrum: bins 0..N/2, scaled 1/N). kHalf: L <= N/2, so both transforms skip their
// zero half and grad_u's inverse its unwanted one. grid: D * groups blocks (group fastest), pairs dealt
// out round-robin; shared memory as conv_grad_k_pair_kernel, registers at the same 128 cap (ptxas, sm_90:
// 8-28 bytes of spill per thread, where that kernel has none).
template <typename scalar_t, int N, bool kHalf>
__global__ void __launch_bounds__(N / kElemsPerThread, (min_blocks_per_sm<N, 512>()))
    conv_backward_pair_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ gy,
                              const float2* __restrict__ K, scalar_t* __restrict__ grad_u,
                              float2* __restrict__ partial, ConvShape s, int groups) {
  extern __shared__ float2 smem[];
  constexpr int T = N / kElemsPerThread, half = N / 2, Rl = smem_fft::last_radix(N), NR = N / Rl,
                kBfly = kElemsPerThread / Rl;
  float2* stash = smem + smem_fft::padded_size(N);
  const int q = threadIdx.x;
  const int group = (int)(blockIdx.x % groups);
  const int64_t d = blockIdx.x / groups;
  const float2* Kd = K + d * (half + 1);
  float2 acc[kElemsPerThread];
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) acc[i] = make_float2(0.f, 0.f);

  for (int64_t pair = group; pair < s.npairs; pair += groups) {
    const int64_t b0 = 2 * pair;
    const bool has1 = b0 + 1 < s.B;
    const int64_t off0 = (b0 * s.D + d) * s.L, off1 = has1 ? off0 + s.D * s.L : off0;
    float2 x[kElemsPerThread];
    smem_fft::fft_to_registers<N, false, kHalf>(smem, x, WindowRows<scalar_t, false>(u + off0, u + off1, has1, 0, s.L, N));
#pragma unroll
    for (int i = 0; i < kElemsPerThread; ++i) stash[own_bin<N>(i)] = x[i];
    __syncthreads();  // the last pass has read the FFT buffer before the next transform writes it
    smem_fft::fft_to_registers<N, false, kHalf>(smem, x,
                                                WindowRows<scalar_t, false>(gy + off0, gy + off1, has1, 0, s.L, N));
#pragma unroll
    for (int b = 0; b < kBfly; ++b)
#pragma unroll
      for (int r = 0; r < Rl; ++r) {
        const int i = b * Rl + r;
        acc[i] = cadd(acc[i], cmul(x[i], conjf2(stash[own_bin<N>(i)])));
        // the inverse takes conj(Zg conj(K)) = conj(Zg) K (fused_conv's convention)
        x[i] = cmul(conjf2(x[i]), smem_fft::hermitian_bin<N>(Kd, q, b * T + r * NR));
      }
    __syncthreads();  // every thread has read the last pass before the inverse writes shared memory
    scalar_t* g0 = grad_u + off0;
    scalar_t* g1 = grad_u + off1;
    const int L = (int)s.L;
    smem_fft::inverse_from_registers<N, false, kHalf>(smem, x, [&](int n, float2 w) {  // w = conj(result)
      if (n >= L) return;
      g0[n] = static_cast<scalar_t>(w.x);
      if (has1) g1[n] = static_cast<scalar_t>(-w.y);
    });
    __syncthreads();  // the inverse's last reads are done before the next transform writes
  }
  store_pair_partial<N>(stash, acc, partial + ((int64_t)group * s.D + d) * (half + 1));
}

// grad_k[d, s] = irfft_N(P[d])[s] for s < taps, 0 for taps <= s < Lk, where P[d] is the sum over
// groups of partial[g, d, 0..N/2] (in group order: deterministic). Replaces a reduction, cuFFT's
// c2r and two copies. Channels in pairs: Z = P0 + i*P1 (each extended to N bins by Hermitian
// symmetry, the imaginary parts of bins 0 and N/2 dropped as irfft does) goes through one
// transform (the inverse as the forward DFT of the conjugate): the real part is channel d0's
// result, the imaginary part channel d1's. grid: ceil(D/2) blocks of N/16 threads.
template <int N>
__global__ void __launch_bounds__(N / kElemsPerThread) grad_k_taps_kernel(const float2* __restrict__ partial,
                                                                          float* __restrict__ grad_k, int64_t D,
                                                                          int groups, int taps, int64_t Lk) {
  extern __shared__ float2 smem[];
  constexpr int half = N / 2;
  const int64_t d0 = 2 * (int64_t)blockIdx.x, d1 = d0 + 1 < D ? d0 + 1 : d0;
  const int64_t group_stride = D * (half + 1);
  for (int f = threadIdx.x; f <= half; f += blockDim.x) {
    float2 p0 = make_float2(0.f, 0.f), p1 = p0;
    for (int g = 0; g < groups; ++g) {
      p0 = cadd(p0, partial[g * group_stride + d0 * (half + 1) + f]);
      p1 = cadd(p1, partial[g * group_stride + d1 * (half + 1) + f]);
    }
    if (f == 0 || f == half) p0.y = p1.y = 0.f;
    // conj(Z[f]) with Z[f] = P0 + i P1, and conj(Z[N-f]) with Z[N-f] = conj(P0) + i conj(P1)
    smem[pad(f)] = make_float2(p0.x - p1.y, -(p0.y + p1.x));
    if (f != 0 && f != half) smem[pad(N - f)] = make_float2(p0.x + p1.y, p0.y - p1.x);
  }
  smem_fft::fft<N>(smem);  // x = conj(result) * N
  constexpr float scale = 1.f / (float)N;
  for (int64_t t = threadIdx.x; t < Lk; t += blockDim.x) {
    float v0 = 0.f, v1 = 0.f;
    if (t < taps) {
      const float2 x = smem[pad((int)t)];
      v0 = x.x * scale;
      v1 = -x.y * scale;
    }
    grad_k[d0 * Lk + t] = v0;
    if (d1 != d0) grad_k[d1 * Lk + t] = v1;
  }
}

// ---------------------------------------------------------------------------------------------
// The cluster kernels' row pair: rows b0 and b1 at time t as (re, im) = (u[b0], u[b1]) (im 0 for an
// unpaired last row), zero outside [0, L); kReverse reads time backwards (grad_u).
template <bool kReverse, typename scalar_t>
__device__ __forceinline__ float2 load_row_pair(const scalar_t* x0, const scalar_t* x1, bool has1, int64_t t,
                                                int64_t L) {
  float v0 = 0.f, v1 = 0.f;
  if (t >= 0 && t < L) {
    const int64_t tt = kReverse ? L - 1 - t : t;
    v0 = to_float(x0[tt]);
    if (has1) v1 = to_float(x1[tt]);
  }
  return make_float2(v0, v1);
}

// ... and their outputs at time t < L from w = conj(result): y[b0] = w.x, y[b1] = -w.y.
template <bool kReverse, typename scalar_t>
__device__ __forceinline__ void store_row_pair(scalar_t* y0, scalar_t* y1, bool has1, int64_t t, int64_t L, float2 w) {
  const int64_t tt = kReverse ? L - 1 - t : t;
  y0[tt] = static_cast<scalar_t>(w.x);
  if (has1) y1[tt] = static_cast<scalar_t>(-w.y);
}

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

  for (int m = threadIdx.x; m < M; m += blockDim.x)
    smem[pad(m)] = load_row_pair<kReverse>(x0, x1, has1, start + (int64_t)rank * M + m, s.L);
  cluster_fft::cluster_sync();
  cluster_fft::cross_block_dft<false>(smem, C, M, N);
  cluster_fft::cluster_sync();
  // M-point FFT (block rank then holds X[rank + C*k2] at k2), product, M-point inverse, in place
  const int half = N / 2;
  const float2* Kd = K + d * (half + 1);
  smem_fft::fused_conv<(int)kMaxFusedFFT, true>(
      smem, [&](int m) { return smem[pad(m)]; },
      [&](int q, int c) {
        const int f = rank + C * (q + c);
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
    store_row_pair<kReverse>(y0, y1, has1, t, s.L, smem[pad(m)]);
  }
#endif
}

// The cluster path when the row fills at most half the window (L <= N/2, one window per row; the
// usual case: N = next_pow2(L + taps - 1) with taps close to L). The window is then z = [row, zeros]
// from t = 0 (N >= L + taps - 1 keeps the circular convolution exact on [0, L)) instead of starting
// taps - 1 before the row, and two of conv_cluster_kernel's four cross-block steps shrink:
//  * forward: the C-point DFT of a column has only C/2 nonzero inputs z[n1*M + n2], n1 < C/2, so
//    block k1 reads them from global memory itself and applies its own DFT row W_C^(n1 k1) and
//    twiddle W_N^(n2 k1) while loading: no exchange and no cluster barrier before the transform;
//  * inverse: only outputs n < N/2 are wanted, so each column's C values are read from the cluster
//    and its C/2 outputs written straight to global memory (no write back to shared memory, no
//    separate store loop).
// Two cluster barriers instead of four. Each block reads the row's C/2 segments of M points (the
// cluster reads the row C times over, from L2 after the first).
// kExchange (FFT_TENSOR_CONV_CLUSTER_PADDED=exchange; tested and sanitized on the GPU): the blocks that hold
// the row (rank < C/2) load their own part, and the forward's cross-block step reads only those C/2
// blocks: the row crosses L2 once, for one more cluster barrier and half the general kernel's
// forward exchange. Meant for 8-block clusters, where the loads above measured slower than the
// general kernel.
template <int C, typename scalar_t, bool kReverse>
__device__ __forceinline__ void padded_window_outputs(float2* smem, scalar_t* y0, scalar_t* y1, bool has1,
                                                      int64_t L, int N) {
  namespace cg = cooperative_groups;
  constexpr int M = (int)kMaxFusedFFT, cols = M / C;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  float2* blocks[C];
#pragma unroll
  for (int r = 0; r < C; ++r) blocks[r] = cluster.map_shared_rank(smem, r);
  for (int n2 = rank * cols + (int)threadIdx.x; n2 < (rank + 1) * cols; n2 += blockDim.x) {
    float2 v[C];
    cluster_fft::transform_column<C, /*kTwiddleBefore=*/true>(blocks, n2, N, v);  // cross_block_dft<true>'s
#pragma unroll
    for (int n1 = 0; n1 < C / 2; ++n1) {
      const int64_t t = (int64_t)n1 * M + n2;
      if (t >= L) break;
      store_row_pair<kReverse>(y0, y1, has1, t, L, v[n1]);
    }
  }
}

template <typename scalar_t, bool kReverse, bool kExchange>
__global__ void __launch_bounds__(1024) conv_cluster_padded_kernel(const scalar_t* __restrict__ x,
                                                                   const float2* __restrict__ K,
                                                                   scalar_t* __restrict__ y, ConvShape s, int C) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int M = (int)kMaxFusedFFT;
  extern __shared__ float2 smem[];
  const int rank = cluster_fft::cluster_rank();
  const int64_t item = blockIdx.x / C;  // one window per row pair
  const int pair = (int)(item % s.npairs);
  const int64_t d = item / s.npairs;
  const int64_t b0 = 2 * pair, b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  const scalar_t* x0 = x + (b0 * s.D + d) * s.L;
  const scalar_t* x1 = has1 ? x + (b1 * s.D + d) * s.L : x0;
  const int N = s.N;
  const int64_t L = s.L;
  // block rank's input at m: W_N^(m rank) * sum_{n1 < C/2} z[n1*M + m] W_C^(n1 rank)
  auto load = [&](int m) {
    float2 acc = make_float2(0.f, 0.f);
    for (int n1 = 0; n1 < C / 2; ++n1) {
      const int64_t t = (int64_t)n1 * M + m;
      if (t >= L) break;
      const float2 v = load_row_pair<kReverse>(x0, x1, has1, t, L);
      if (n1 == 0) {
        acc = v;
      } else {
        float sn, cs;
        sincospif(-2.f * (float)((n1 * rank) & (C - 1)) / (float)C, &sn, &cs);
        acc = cadd(acc, cmul(v, make_float2(cs, sn)));
      }
    }
    float sn, cs;
    sincospif(-2.f * (float)(m * rank) / (float)N, &sn, &cs);  // m * rank < 2^17: exact in float
    return cmul(acc, make_float2(cs, sn));
  };
  if constexpr (kExchange) {
    if (rank < C / 2) {
      for (int m = threadIdx.x; m < M; m += blockDim.x)
        smem[pad(m)] = load_row_pair<kReverse>(x0, x1, has1, (int64_t)rank * M + m, L);
    }
    cluster_fft::cluster_sync();
    cluster_fft::cross_block_dft<false, /*kHalfInputs=*/true>(smem, C, M, N);
    cluster_fft::cluster_sync();
  } else {
    // Staged through shared memory rather than fed to the transform's first pass directly: loading
    // there, with its twiddles, spilled registers at the 64-register bound of 1024 threads.
    for (int m = threadIdx.x; m < M; m += blockDim.x) smem[pad(m)] = load(m);
    __syncthreads();
  }
  const int half = N / 2;
  const float2* Kd = K + d * (half + 1);
  smem_fft::fused_conv<M, true>(
      smem, [&](int m) { return smem[pad(m)]; },
      [&](int q, int c) {
        const int f = rank + C * (q + c);
        return f <= half ? Kd[f] : conjf2(Kd[N - f]);
      },
      [&](int m, float2 w) { smem[pad(m)] = w; });
  cluster_fft::cluster_sync();  // every block's inverse M-point transforms are in its shared memory
  scalar_t* y0 = y + (b0 * s.D + d) * s.L;
  scalar_t* y1 = has1 ? y + (b1 * s.D + d) * s.L : y0;
  switch (C) {
    case 2: padded_window_outputs<2, scalar_t, kReverse>(smem, y0, y1, has1, L, N); break;
    case 4: padded_window_outputs<4, scalar_t, kReverse>(smem, y0, y1, has1, L, N); break;
    default: padded_window_outputs<8, scalar_t, kReverse>(smem, y0, y1, has1, L, N); break;
  }
  cluster_fft::cluster_sync();  // a block's shared memory stays until every peer has read it
#endif
}

// K[d, f] = FFT_N(k_eff[d, :taps])[f] / N for f <= N/2 with N = C * M (the cluster path's spectrum):
// channels in pairs, z = k[d0] + i*k[d1] (k[d0] again for an odd last channel), one transform for
// two real rows split by Hermitian symmetry: K0 = (Z[f] + conj Z[N-f])/2, K1 = (Z[f] - conj Z[N-f])/2i,
// with Z[N-f] read from the block that holds it. grid: ceil(D/2) clusters of C blocks.
__global__ void __launch_bounds__(1024) kernel_spectrum_cluster_kernel(KernelTaps k, float2* __restrict__ K,
                                                                       int64_t D, int N, int C, int logC) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  constexpr int M = (int)kMaxFusedFFT;
  extern __shared__ float2 smem[];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  const int64_t d0 = 2 * (int64_t)(blockIdx.x / C), d1 = d0 + 1 < D ? d0 + 1 : d0;
  for (int m = threadIdx.x; m < M; m += blockDim.x) {
    const int n = rank * M + m;
    smem[pad(m)] = make_float2(k(d0, n), k(d1, n));
  }
  cluster.sync();
  cluster_fft::cross_block_dft<false>(smem, C, M, N);
  cluster.sync();
  smem_fft::fft<M>(smem);  // block rank holds Z[rank + C*k2] at k2
  cluster.sync();          // every block's spectrum is complete before partners read it
  const int half = N / 2;
  const float scale = 0.5f / (float)N;
  for (int k2 = threadIdx.x; k2 < M; k2 += blockDim.x) {
    const int f = rank + C * k2;
    if (f > half) continue;
    const int g = (N - f) & (N - 1);
    const RealPairBins x =
        split_real_pair(smem[pad(k2)], cluster.map_shared_rank(smem, g & (C - 1))[pad(g >> logC)], scale);
    K[d0 * (half + 1) + f] = x.x0;
    if (d1 != d0) K[d1 * (half + 1) + f] = x.x1;
  }
  cluster.sync();  // partners are done reading this block's spectrum before the block exits
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
  const int N = s.N, M = N >> logC, T = blockDim.x, half = N / 2;
  const int64_t cid = blockIdx.x / C;
  const int group = (int)(cid % groups);
  const int64_t d = cid / groups;
  float2* acc = partial + ((int64_t)group * s.D + d) * (half + 1);
  if (threadIdx.x == 0) window_max[0][0] = window_max[0][1] = window_max[1][0] = window_max[1][1] = 0u;
  __syncthreads();

  const int64_t items = s.B * s.nseg;
  int parity = 0;
  for (int64_t it = group; it < items; it += groups, parity ^= 1) {
    load_u_gy_window<0>(smem, u, gy, s, d, it, rank * M, M, window_max[parity]);
    cluster.sync();  // every block's maxima of this item are in
    float mu = 0.f, mg = 0.f;
    for (int r = 0; r < C; ++r) {
      const unsigned int* wm = cluster.map_shared_rank(&window_max[parity][0], r);
      mu = fmaxf(mu, __uint_as_float(wm[0]));
      mg = fmaxf(mg, __uint_as_float(wm[1]));
    }
    const float sc = gy_scale(mu, mg);
    // The other parity's slots were last read (by every block) before this item's first cross-block
    // step and are next written after it, so they can be cleared now.
    if (threadIdx.x == 0) window_max[parity ^ 1][0] = window_max[parity ^ 1][1] = 0u;
    if (sc != 1.f)
      for (int m = threadIdx.x; m < M; m += T) smem[pad(m)].y *= sc;  // the elements this thread wrote
    cluster.sync();
    cluster_fft::cross_block_dft<false>(smem, C, M, N);
    cluster.sync();
    smem_fft::fft<(int)kMaxFusedFFT>(smem);  // block rank holds Z[rank + C*k2] at k2
    cluster.sync();                // every block's spectrum is complete before partners read it
    for (int k2 = threadIdx.x; k2 < M; k2 += T) {
      const int f = rank + C * k2;
      if (f > half) continue;
      const int g = (N - f) & (N - 1);
      acc[f] = add_g_conj_u(acc[f], smem[pad(k2)], conjf2(cluster.map_shared_rank(smem, g & (C - 1))[pad(g >> logC)]), sc);
    }
    cluster.sync();  // partners are done reading this block's spectrum before the next item overwrites it
  }
#endif
}

}  // namespace
}  // namespace fft_tensor
