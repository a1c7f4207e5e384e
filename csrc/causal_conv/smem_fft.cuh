// A complex FFT of N = 2^m points (64 <= N <= 16384, a template parameter) held in shared memory
// by one thread block of N/16 threads. Stockham autosort passes of radix 16 (then 8, 4 or 2 for the remainder): each
// thread loads 16 values, twiddles them, runs the small DFT in registers and stores them back in
// natural order, so input and output are both in natural order. Shared memory is indexed through
// pad() (one float2 of padding per 16) so the strided stores of the first pass avoid bank conflicts.
#pragma once
#include <cuda_runtime.h>

namespace fft_tensor {
namespace smem_fft {

constexpr int kElemsPerThread = 16;

__device__ __forceinline__ int pad(int i) { return i + (i >> 4); }
__host__ __device__ constexpr int padded_size(int n) { return n + (n >> 4); }

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float2 cadd(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float2 csub(float2 a, float2 b) { return make_float2(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ float2 conjf2(float2 a) { return make_float2(a.x, -a.y); }

// Bit reversal of i < 2^bits, bits <= 4, written loop-free so it folds once i is a constant.
__host__ __device__ constexpr int bitrev(int i, int bits) {
  return bits == 1 ? i
       : bits == 2 ? ((i & 1) << 1) | ((i & 2) >> 1)
       : bits == 3 ? ((i & 1) << 2) | (i & 2) | ((i & 4) >> 2)
       : ((i & 1) << 3) | ((i & 2) << 1) | ((i & 4) >> 1) | ((i & 8) >> 3);
}

// exp(-2*pi*i*m/16); m is a compile-time constant after unrolling, so this folds to immediates.
__device__ __forceinline__ float cos16(int m) {
  m &= 15;
  const int q = m & 7;
  const float v = q == 0 ? 1.f : q == 1 ? 0.92387953f : q == 2 ? 0.70710678f : q == 3 ? 0.38268343f
                : q == 4 ? 0.f : q == 5 ? -0.38268343f : q == 6 ? -0.70710678f : -0.92387953f;
  return m < 8 ? v : -v;
}
__device__ __forceinline__ float2 root16(int m) { return make_float2(cos16(m), -cos16(m + 12)); }

// x * root16(m) for a compile-time m. m = 4 (-i) is a swap and a sign: cmul would keep its products
// by 0 (IEEE forbids dropping x * 0.f), 7 of the 17 twiddle products of a radix-16 DFT.
__device__ __forceinline__ float2 mul_root16(float2 x, int m) {
  return (m & 15) == 4 ? make_float2(x.y, -x.x) : cmul(x, root16(m));
}

// One radix-2 stage (butterfly span len) of the in-register DFT, then the next; templates keep
// every index a compile-time constant so the array stays in registers.
template <int R, int len>
__device__ __forceinline__ void dft_stage(float2 (&x)[R]) {
  if constexpr (len <= R) {
#pragma unroll
    for (int i = 0; i < R; i += len) {
#pragma unroll
      for (int k = 0; k < len / 2; ++k) {
        const float2 a = x[i + k];
        const float2 b = k == 0 ? x[i + k + len / 2] : mul_root16(x[i + k + len / 2], k * (16 / len));
        x[i + k] = cadd(a, b);
        x[i + k + len / 2] = csub(a, b);
      }
    }
    dft_stage<R, len * 2>(x);
  }
}

// In-register forward DFT of R points (R = 2, 4, 8, 16), natural order in and out.
template <int R>
__device__ __forceinline__ void dft(float2 (&x)[R]) {
  constexpr int bits = R == 2 ? 1 : R == 4 ? 2 : R == 8 ? 3 : 4;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int j = bitrev(i, bits);
    if (j > i) {
      float2 t = x[i];
      x[i] = x[j];
      x[j] = t;
    }
  }
  dft_stage<R, 2>(x);
}

// dft<16> of x whose x[8..15] are zero (a window whose second half is zero): bit reversal puts x[j]
// and x[j + 8] side by side, so the first radix-2 stage is a copy (a + 0 and a - 0; the compiler may
// not fold those itself: x + 0.f is not x for x = -0.f).
__device__ __forceinline__ void dft16_upper_zero(float2 (&x)[16]) {
  float2 t[16];
#pragma unroll
  for (int i = 0; i < 16; i += 2) t[i] = t[i + 1] = x[bitrev(i, 4)];
  dft_stage<16, 4>(t);
#pragma unroll
  for (int i = 0; i < 16; ++i) x[i] = t[i];
}

// Every size below is a template parameter: with N, R and Ns known at compile time each thread's
// shared-memory addresses are one base register plus immediate offsets, and the passes unroll.
//
// pad() of an index with a compile-time offset: pad(base + off) = pad(base) + padded_offset(off)
// whenever (base mod 16) + (off mod 16) < 16, which holds for every access below: loads read
// q + r*N/R with q < N/R, stores write base + r*Ns with base = k (mod 16) and k < Ns (or Ns >= 16),
// and off = r*S is a multiple of S (a power of two) no larger than 16 - S mod 16.
__host__ __device__ constexpr int padded_offset(int off) { return off + (off >> 4); }

// Radix of the last pass of an FFT of N = 16^(P-1) * Rl points, Rl in {2, 4, 8, 16}.
__host__ __device__ constexpr int last_radix(int n) { return n > 16 ? last_radix(n / 16) : n; }

// A Stockham pass of radix R is split in three so that callers can fuse its ends with global memory:
// thread t owns the butterflies q = t + b*T (b < 16/R, T = N/16 threads), and butterfly q
//   reads  elements q + r*N/R            (r < R; load_pass, or any source in that order),
//   computes twiddle(q mod Ns) then a radix-R DFT in registers (compute_pass),
//   writes elements (q - q mod Ns)*R + q mod Ns + r*Ns  (store_pass).
// x is flat: butterfly b's R values are x[b*R .. b*R + R).
template <int N, int R>
__device__ __forceinline__ void load_pass(const float2* data, float2 (&x)[kElemsPerThread], unsigned t = threadIdx.x) {
  constexpr int kBfly = kElemsPerThread / R, T = N / kElemsPerThread, NR = N / R;
#pragma unroll
  for (int b = 0; b < kBfly; ++b) {
    const float2* p = data + pad(t + b * T);
#pragma unroll
    for (int r = 0; r < R; ++r) x[b * R + r] = p[padded_offset(r * NR)];
  }
}

// x[r] *= w^r for 0 < r < R: the twiddles of one butterfly (or of one cross-block column).
template <int R>
__device__ __forceinline__ void twiddle_by_powers(float2 (&x)[R], float2 w) {
  float2 wr = w;
#pragma unroll
  for (int r = 1; r < R; ++r) {
    x[r] = cmul(x[r], wr);
    wr = cmul(wr, w);
  }
}

template <int N, int R, int Ns>
__device__ __forceinline__ void compute_pass(float2 (&x)[kElemsPerThread], unsigned t = threadIdx.x) {
  constexpr int kBfly = kElemsPerThread / R, T = N / kElemsPerThread;
  // The last pass of radix R < 16 (Ns * R == N) has several butterflies per thread, q = t + b*T < Ns:
  // butterfly b's twiddle base exp(-2 pi i q / N) is thread t's times the constant root16(b) (T / N =
  // 1/16), so one sincospif per thread serves them all (it was one per butterfly: 8 per thread when R = 2).
  constexpr bool kSharedBase = Ns > 1 && kBfly > 1 && Ns * R == N;
  float2 w0 = make_float2(1.f, 0.f);
  if constexpr (kSharedBase) {
    float s, c;
    sincospif((float)t * (-2.f / (float)N), &s, &c);
    w0 = make_float2(c, s);
  }
#pragma unroll
  for (int b = 0; b < kBfly; ++b) {
    float2(&xb)[R] = *reinterpret_cast<float2(*)[R]>(&x[b * R]);
    if constexpr (kSharedBase) {
      twiddle_by_powers(xb, b == 0 ? w0 : mul_root16(w0, b));
    } else if constexpr (Ns > 1) {
      const int k = (t + b * T) & (Ns - 1);
      float s, c;
      sincospif((float)k * (-2.f / (float)(Ns * R)), &s, &c);  // exact argument: Ns * R is a power of two
      twiddle_by_powers(xb, make_float2(c, s));
    }
    dft<R>(xb);
  }
}

template <int N, int R, int Ns>
__device__ __forceinline__ void store_pass(float2* data, const float2 (&x)[kElemsPerThread], unsigned t = threadIdx.x) {
  constexpr int kBfly = kElemsPerThread / R, T = N / kElemsPerThread;
#pragma unroll
  for (int b = 0; b < kBfly; ++b) {
    const int q = t + b * T;
    const int k = q & (Ns - 1);
    float2* p = data + pad((q - k) * R + k);
#pragma unroll
    for (int r = 0; r < R; ++r) p[padded_offset(r * Ns)] = x[b * R + r];
  }
}

// One whole Stockham pass of radix R over data[0..N), Ns = product of the radices already applied.
template <int N, int R, int Ns>
__device__ __forceinline__ void pass(float2* data, unsigned t = threadIdx.x) {
  float2 x[kElemsPerThread];
  load_pass<N, R>(data, x, t);
  __syncthreads();
  compute_pass<N, R, Ns>(x, t);
  store_pass<N, R, Ns>(data, x, t);
  __syncthreads();
}

// Radix-16 passes for Ns = Ns0, 16*Ns0, ... while Ns < NsEnd.
template <int N, int Ns, int NsEnd>
__device__ __forceinline__ void radix16_passes(float2* data, unsigned t = threadIdx.x) {
  if constexpr (Ns < NsEnd) {
    pass<N, 16, Ns>(data, t);
    radix16_passes<N, Ns * 16, NsEnd>(data, t);
  }
}

// Forward DFT (sign -1) of data[0..N) in place, N = 2^m >= 64; all N/16 threads of the block call
// it. Starts and ends with the data visible to every thread (a barrier on each side).
template <int N>
__device__ __forceinline__ void fft(float2* data) {
  constexpr int Rl = last_radix(N);
  __syncthreads();
  radix16_passes<N, 1, N / Rl>(data);
  pass<N, Rl, N / Rl>(data);
}

// Forward DFT of a window z[0..N) read through load(n), ending in registers: the first pass reads
// its 16 inputs straight from global memory (no shared-memory staging), and after the last pass
// (radix Rl = last_radix(N), never written back) x[b*Rl + r] holds bin q + b*N/16 + r*N/Rl for
// q = threadIdx.x. N >= 64; all N/16 threads of the block call it. Barriers are the caller's at both
// ends: the first pass writes shared memory at once (no barrier before it, unlike fft()), and the
// last pass reads it (a barrier is needed before anything writes it again).
// kInPlace: load reads data itself (a window already in shared memory): a barrier separates the
// first pass's loads from its stores.
// kHalf: z[n] = 0 for n >= N/2 (a row that fills at most the first half of its window): load is
// called for n < N/2 only and the first pass's first radix-2 stage is skipped (one stage of log2 N).
template <int N, bool kInPlace = false, bool kHalf = false, typename Load>
__device__ __forceinline__ void fft_to_registers(float2* data, float2 (&x)[kElemsPerThread], Load load,
                                                 int q = threadIdx.x) {
  constexpr int Rl = last_radix(N), N16 = N / 16;
#pragma unroll
  for (int r = 0; r < 16; ++r) x[r] = !kHalf || r < 8 ? load(q + r * N16) : make_float2(0.f, 0.f);
  if (kInPlace) __syncthreads();
  if constexpr (kHalf) dft16_upper_zero(x);  // pass 1: radix 16, Ns = 1, no twiddles
  else dft<16>(x);
  store_pass<N, 16, 1>(data, x, q);
  __syncthreads();
  radix16_passes<N, 16, N / Rl>(data, q);  // middle passes
  load_pass<N, Rl>(data, x, q);            // last pass: radix Rl, Ns = N/Rl
  compute_pass<N, Rl, N / Rl>(x, q);
}

// Bin q + c of the spectrum of a real sequence given by its half K[0..N/2]: K[f] or conj(K[N-f]).
// q < N/16 and c a multiple of N/16 (how fused_conv names its bins): with c a constant after
// unrolling, only the middle bin (c = N/2) tests q.
// kFromPriorGrid: K is written by the grid launched before this one, possibly while this one runs
// (programmatic dependent launch), so it is read with ld.global.cg: the read-only path (ld.global.nc,
// which const __restrict__ pointers get) requires data that does not change during the kernel, and the
// compiler may move such loads above the grid-dependency wait.
template <int N, bool kFromPriorGrid = false>
__device__ __forceinline__ float2 hermitian_bin(const float2* K, int q, int c) {
  constexpr int half = N / 2;
  const auto at = [K](int i) {
    if constexpr (kFromPriorGrid) return __ldcg(K + i);
    else return K[i];
  };
  if (c < half) return at(c + q);
  if (c > half) return conjf2(at((N - c) - q));
  return q == 0 ? at(half) : conjf2(at(half - q));
}

// Programmatic dependent launch (sm_90): a kernel launched with programmatic stream serialization may
// start while the kernel before it in the stream still runs. The one before calls pdl_launch_dependents
// to allow that; the dependent calls pdl_wait before its first read of the earlier kernel's output (it
// returns once that grid has finished and its writes are visible). Both are no-ops before sm_90 and in
// a kernel launched the ordinary way.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The inverse half of fused_conv: x holds conj(X * S) in the order fft_to_registers leaves its bins
// (bin q + b*N/16 + r*N/Rl at x[b*Rl + r]); the forward DFT of it goes to store(n, value), called for
// n = q + r*N/16 with r = 0, 1, ..., 15 in that order (callers may keep a running twiddle). It writes
// shared memory at once: the caller's barrier separates that from every earlier read.
// kHalf: only outputs n < N/2 are wanted, so store is called for r = 0..7 only; the other half of the
// last pass's last radix-2 stage is then dead code.
template <int N, bool kInPlace = false, bool kHalf = false, typename Store>
__device__ __forceinline__ void inverse_from_registers(float2* data, float2 (&x)[kElemsPerThread], Store store,
                                                       int q = threadIdx.x) {
  constexpr int Rl = last_radix(N), N16 = N / 16;
  compute_pass<N, Rl, 1>(x, q);
  store_pass<N, Rl, 1>(data, x, q);
  __syncthreads();
  radix16_passes<N, Rl, N16>(data, q);  // middle passes of the inverse
  // last inverse pass (radix 16, Ns = N/16): butterfly q writes outputs q + r*N/16, straight out
  load_pass<N, 16>(data, x, q);
  if (kInPlace) __syncthreads();
  compute_pass<N, 16, N16>(x, q);
#pragma unroll
  for (int r = 0; r < (kHalf ? 8 : 16); ++r) store(q + r * N16, x[r]);
}

// Circular convolution of one window z[0..N) with a spectrum given per frequency, passes fused at
// both ends: fft_to_registers, then the spectrum product and the first inverse pass in registers
// (the last forward pass leaves butterfly q holding bins q + r*N/Rl, exactly what the first inverse
// pass of radix Rl reads), and the last inverse pass writes straight to global memory (store(n, w)).
// Shared memory sees 2*(P-1) round trips for P passes per transform instead of 2P + 3.
// spectrum(q, c) returns the multiplier of bin q + c (q = threadIdx.x, c a multiple of N/16 known
// after unrolling); the inverse is the forward DFT of the conjugate, so store receives
// conj(result) (scale 1/N is the caller's, folded into the spectrum).
// kInPlace: load and store address data itself, so barriers also separate the last pass's loads
// from the stores. Like fft_to_registers, it starts and ends without a barrier.
// kSpectrumFromPriorGrid: the spectrum is the output of the kernel launched just before this one, which
// may still be running (programmatic dependent launch): wait for it after the forward transform.
// kHalf: the window's second half is zero and its outputs there are not wanted (fft_to_registers and
// inverse_from_registers).
template <int N, bool kInPlace = false, bool kSpectrumFromPriorGrid = false, bool kHalf = false, typename Load,
          typename Spectrum, typename Store>
__device__ __forceinline__ void fused_conv(float2* data, Load load, Spectrum spectrum, Store store) {
  constexpr int Rl = last_radix(N), N16 = N / 16, NR = N / Rl, kBfly = kElemsPerThread / Rl;
  float2 x[kElemsPerThread];
  const int q = threadIdx.x;
  fft_to_registers<N, kInPlace, kHalf>(data, x, load);
  if (kSpectrumFromPriorGrid) pdl_wait();
  __syncthreads();  // every thread has read before the inverse pass overwrites
#pragma unroll
  for (int b = 0; b < kBfly; ++b)
#pragma unroll
    for (int r = 0; r < Rl; ++r) x[b * Rl + r] = conjf2(cmul(x[b * Rl + r], spectrum(q, b * N16 + r * NR)));
  inverse_from_registers<N, kInPlace, kHalf>(data, x, store);
}

}  // namespace smem_fft
}  // namespace fft_tensor
