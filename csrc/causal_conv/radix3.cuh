// causal_conv windows of N = 3M points (M = 2^m: N = 3072, 6144 or 12288) for one-window plans whose row
// and kernel fit three quarters of the plan's power-of-two window (L + taps - 1 <= 3/4 of 4096, 8192 or
// 16384: Lk = L from 1025 to 1536, 2049 to 3072 and 4097 to 6144). Those lengths pay for 4/3 the points
// they need in the power-of-two kernels, while the torch.fft reference's 3 x 2^k-point FFT costs about what
// its size says (RESULTS.md, thirty-second session: forward+backward 2.85x the reference at L = 6144 fp32).
// Behind FFT_TENSOR_CONV_RADIX3 (cuda.cu) until measured on a GPU.
//
// One block of 3 * M/16 threads per row pair (conv_window_kernel's packing, z = u[b] + i u[b+1]), in three
// groups of M/16 threads; thread t of group g. By residues (decimation in frequency on the way in):
//   X[3k + g] = DFT_M over n of a_g[n],   a_g[n] = W_N^gn (z[n] + W_3^g z[n + M] + W_3^2g z[n + 2M]),  n < M,
// so group g forms a_g from its own loads (contiguous, no exchange) and runs smem_fft's M-point passes in
// its own third of shared memory, ending with X[3k + g] for its bins k in registers (forward3).
// The product with the kernel's spectrum (bins 0..N/2 stored, scaled 1/N) reads bin 3k + g; the inverse
// (the forward DFT of the conjugate) is the same split on the way out:
//   out[n' + mM] = sum_g W_3^gm s_g[n'],   s_g[n'] = W_N^gn' DFT_M over k of a[3k + g],
// group g's M-point passes, one exchange through shared memory, and contiguous stores (inverse3).
// kHalf (L <= N/2, every Lk = L plan): z[n] = 0 for n >= 3M/2, so z[n + M] is loaded for n < M/2 only and
// z[n + 2M] not at all, and only outputs n < 3M/2 are formed. The real-window kernels pair bin f with
// N - f in the same layout (residue_at). The thirty-third session's decimation in time (group g
// transforming z[3n + g], then a radix-3 combine reading all three thirds, on both sides) made two more
// exchanges and read rows with stride 3; its window kernels ran no faster than the 4/3 larger power-of-two
// ones (RESULTS.md, thirty-fourth session).
// benchmarks/emulate_radix3_window.py checks both decompositions in float64 with numpy.
#pragma once
#include "fft_kernels.cuh"
#include "smem_fft.cuh"

namespace fft_tensor {
namespace {
namespace radix3 {

using smem_fft::last_radix;
using smem_fft::padded_size;

// cos(2 pi m / 48) for a compile-time m in [0, 24] (after unrolling: an immediate).
__device__ __forceinline__ float cos48(int m) {
  const int a = m > 12 ? 24 - m : m;
  const float v = a == 0 ? 1.f : a == 1 ? 0.99144486f : a == 2 ? 0.96592583f : a == 3 ? 0.92387953f
                : a == 4 ? 0.86602540f : a == 5 ? 0.79335334f : a == 6 ? 0.70710678f : a == 7 ? 0.60876143f
                : a == 8 ? 0.5f : a == 9 ? 0.38268343f : a == 10 ? 0.25881905f : a == 11 ? 0.13052619f : 0.f;
  return m > 12 ? -v : v;
}
// exp(-2 pi i m / 48) for a compile-time m in [0, 48): W_N^(gr M/16) (N = 3M) in residue_twiddle.
__device__ __forceinline__ float2 root48(int m) {
  const int c = m <= 24 ? m : 48 - m;
  int s = m >= 12 ? m - 12 : 12 - m;  // sin(2 pi m/48) = cos(2 pi (m - 12)/48)
  s = s <= 24 ? s : 48 - s;
  return make_float2(cos48(c), -cos48(s));
}
// W_3^g = exp(-2 pi i g / 3), g in {0, 1, 2}.
__device__ __forceinline__ float2 root3(int g) {
  return g == 0 ? make_float2(1.f, 0.f) : make_float2(-0.5f, g == 1 ? -0.86602540f : 0.86602540f);
}

// W_N^t for thread t, N = 3M.
template <int M>
__device__ __forceinline__ float2 thread_root(int t) {
  float s, c;
  sincospif((float)t * (-2.f / (float)(3 * M)), &s, &c);
  return make_float2(c, s);
}

template <int M>
constexpr int threads() { return 3 * M / kElemsPerThread; }
template <int M>
constexpr size_t smem_bytes() { return (size_t)3 * padded_size(M) * sizeof(float2); }

// Blocks per SM for the launch bound: 768 threads per SM (80 registers) at every M. At the pair window
// kernel's 1024 (64 registers) the M = 1024 kernel spilled 128-208 bytes (ptxas, sm_90), at 768 it spills
// less; which is faster is for the device to say.
template <int M>
constexpr int min_blocks() {
  constexpr int b = 768 / threads<M>();
  return b < 1 ? 1 : b;
}

// The thread's bins and their twiddle index: slot b*Rl + i holds bin t + c with c = b*M/16 + i*M/Rl,
// and c = m * M/16 for m = b + i*16/Rl < 16.
template <int M>
struct Slots {
  static constexpr int Rl = last_radix(M), M16 = M / kElemsPerThread, MR = M / Rl, kBfly = kElemsPerThread / Rl;
  static __device__ __forceinline__ constexpr int offset(int slot) { return (slot / Rl) * M16 + (slot % Rl) * MR; }
  static __device__ __forceinline__ constexpr int m(int slot) { return slot / Rl + (slot % Rl) * (16 / Rl); }
  // pad(t + offset(slot)) = pad(t) + padded(slot): offset is a multiple of M/16 >= 64 (smem_fft's
  // padded_offset rule), so a thread's 16 addresses are one register plus immediates
  static __device__ __forceinline__ constexpr int padded(int slot) { return smem_fft::padded_offset(offset(slot)); }
  // the bin of the 3M-point transform that slot holds in thread (t, g): X[3k + g], k = t + offset(slot)
  static __device__ __forceinline__ int bin(int slot, int t, int g) { return 3 * (t + offset(slot)) + g; }
};


// Bin f of the spectrum of a real sequence given by its half K[0..N/2] (N = 3M): K[f] or conj(K[N - f]).
// kFromPriorGrid: K may still be being written by the grid before this one (smem_fft::hermitian_bin).
template <int M, bool kFromPriorGrid>
__device__ __forceinline__ float2 hermitian_bin3(const float2* K, int f) {
  constexpr int N = 3 * M;
  const int i = f <= N / 2 ? f : N - f;
  const float2 v = kFromPriorGrid ? __ldcg(K + i) : K[i];
  return f <= N / 2 ? v : conjf2(v);
}


// W_N^(g n) for n = t + r M/16 (N = 3M): W_N^(g t), given, times the constant exp(-2 pi i g r / 48).
// g is uniform per warp (groups are whole warps), so each branch folds r's constant.
__device__ __forceinline__ float2 residue_twiddle(float2 v, float2 wgt, int g, int r) {
  if (g == 0) return v;
  return cmul(v, cmul(wgt, g == 1 ? root48(r) : root48(2 * r)));
}

// The forward by decimation in frequency: X[3k + g] = DFT_M over n of a_g[n],
//   a_g[n] = W_N^(gn) (z[n] + W_3^g z[n + M] + W_3^2g z[n + 2M]),  n < M,
// formed by group g from its own loads (no exchange, contiguous reads), then smem_fft's M-point passes in
// the group's third of shared memory. Leaves bin k = t + Slots::offset(i) of group g's transform, i.e.
// X[3k + g], in x[i]. kHalf: z[n] = 0 for n >= 3M/2 (load is called for n < 3M/2 only). Starts without
// a barrier (its first pass writes the group's third at once: a caller that used shared memory before puts
// a barrier first) and ends reading the group's third: the caller's barrier comes before it is written again.
template <int M, bool kHalf, typename Load>
__device__ __forceinline__ void forward3(float2* smem, float2 (&x)[kElemsPerThread], Load load, int t, int g) {
  constexpr int M16 = M / kElemsPerThread, Rl = last_radix(M);
  float2* own = smem + g * padded_size(M);
  const float2 w3 = root3(g), w3sq = cmul(w3, w3);
  const float2 wgt = thread_root<M>(g * t);  // W_N^(gt)
#pragma unroll
  for (int r = 0; r < kElemsPerThread; ++r) {
    const int n = t + r * M16;
    float2 v = load(n);
    if (!kHalf || r < kElemsPerThread / 2) v = cadd(v, cmul(w3, load(n + M)));  // n + M < 3M/2 iff r < 8
    if (!kHalf) v = cadd(v, cmul(w3sq, load(n + 2 * M)));
    x[r] = residue_twiddle(v, wgt, g, r);
  }
  smem_fft::dft<kElemsPerThread>(x);  // pass 1: radix 16, Ns = 1
  smem_fft::store_pass<M, 16, 1>(own, x, t);
  __syncthreads();
  smem_fft::radix16_passes<M, 16, M / Rl>(own, t);
  smem_fft::load_pass<M, Rl>(own, x, t);
  smem_fft::compute_pass<M, Rl, M / Rl>(x, t);
}

// The inverse of forward3's layout: x holds a[3k + g] for group g's bins k (forward3's
// slots); out[n] = sum_f a[f] W_N^(fn) goes to store(n, v). Group g transforms its bins (every output
// n' < M), keeps s_g[n'] = W_N^(g n') C_g[n'] in its third of shared memory, and after one barrier
// out[n' + mM] = sum_g W_3^(gm) s_g[n'], thread by thread over n' (contiguous stores); kHalf: only
// n < 3M/2 is wanted (m = 0, and m = 1 for n' < M/2). Starts with a barrier (the forward's reads of
// shared memory come first); ends reading shared memory.
template <int M, bool kHalf, typename Store>
__device__ __forceinline__ void inverse3(float2* smem, float2 (&x)[kElemsPerThread], Store store, int t, int g) {
  constexpr int padM = padded_size(M);
  float2* own = smem + g * padM;
  const float2 wgt = thread_root<M>(g * t);
  __syncthreads();
  int r = 0;  // inverse_from_registers stores n' = t + r M/16 for r = 0, 1, ..., 15 in that order
  // kInPlace: its last pass reads the third these stores write, so a barrier separates them
  smem_fft::inverse_from_registers<M, true, false>(
      own, x, [&](int n, float2 v) { own[pad(n)] = residue_twiddle(v, wgt, g, r++); }, t);
  __syncthreads();
  const float2 w3 = root3(1), w3sq = root3(2);
  for (int n = (int)threadIdx.x; n < M; n += 3 * (M / kElemsPerThread)) {
    const float2 s0 = smem[pad(n)], s1 = smem[padM + pad(n)], s2 = smem[2 * padM + pad(n)];
    store(n, cadd(s0, cadd(s1, s2)));
    if (!kHalf || n < M / 2) store(n + M, cadd(s0, cadd(cmul(w3, s1), cmul(w3sq, s2))));
    if (!kHalf) store(n + 2 * M, cadd(s0, cadd(cmul(w3sq, s1), cmul(w3, s2))));
  }
}

// Z[f] from shared memory holding the transform in the residue layout (slots_to_smem): X[3k + g] at
// third g, index k.
template <int M>
__device__ __forceinline__ float2 residue_at(const float2* smem, int f) {
  return smem[(f % 3) * padded_size(M) + pad(f / 3)];
}

// Where the real-window kernels keep bin f (0 <= f <= 3M) of a spectrum in global memory (the kernel's Kr,
// the backward's U and C): X[3k + g] at g M + k, so a thread's own bins are contiguous across the group's
// threads (natural order made those accesses stride 3), and bin 3M last. ResidueIndex gives that index for
// thread (t, g)'s bins f = S::bin(i, t, g) and for their partners 3M - f (bin 3M for f = 0) in closed form:
// one base per thread plus or minus the slot's constant offset. Computed from f as (f mod 3) M + f / 3 (a
// division by 3 per slot that the compiler cannot fold, since it does not know f mod 3 = g) the indices were
// hoisted out of the backward's row loop: 904 bytes of spills per thread (ptxas -v).
//   f = 3k + g, k = t + offset(i):  own at g M + k;
//   3M - f = 3(M - k) for g = 0 (residue 0, index M - k), 3(M - k - 1) + 2 for g = 1 (2M + M - k - 1),
//   3(M - k - 1) + 1 for g = 2 (M + M - k - 1).
template <int M>
struct ResidueIndex {
  int own0, partner0;
  bool first;  // thread (0, 0): slot 0 holds bin 0, whose partner is bin 3M
  __device__ __forceinline__ ResidueIndex(int t, int g)
      : own0(g * M + t), partner0((g == 0 ? M : g == 1 ? 3 * M - 1 : 2 * M - 1) - t), first(g == 0 && t == 0) {}
  __device__ __forceinline__ int own(int i) const { return own0 + Slots<M>::offset(i); }
  __device__ __forceinline__ int partner(int i) const {
    return i == 0 && first ? 3 * M : partner0 - Slots<M>::offset(i);
  }
};

// t and g through an empty asm: what is derived from them (twiddles, indices) is computed again where it is
// used instead of being hoisted out of a row loop and kept live (spilled) across the whole row.
__device__ __forceinline__ void opaque(int& t, int& g) { asm volatile("" : "+r"(t), "+r"(g)); }
// t, g = t0, g0 through opaque: one phase's own copies of the thread ids (a row loop's phases each take one).
__device__ __forceinline__ void fresh_ids(int& t, int& g, int t0, int g0) {
  t = t0;
  g = g0;
  opaque(t, g);
}

// forward3's slots to shared memory (third g, index k: residue_at), behind barriers on both sides.
template <int M>
__device__ __forceinline__ void slots_to_smem(float2* smem, const float2 (&x)[kElemsPerThread], int t, int g) {
  using S = Slots<M>;
  __syncthreads();  // every earlier read of shared memory is done
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) smem[g * padded_size(M) + pad(t) + S::padded(i)] = x[i];
  __syncthreads();
}

// exp(-2 pi i m / 32) for a compile-time m in [0, 16].
__device__ __forceinline__ float2 root32(int m) {
  constexpr float kCos32[9] = {1.00000000f, 0.98078528f, 0.92387953f, 0.83146961f, 0.70710678f,
                               0.55557023f, 0.38268343f, 0.19509032f, 0.f};
  const float c = m <= 8 ? kCos32[m] : -kCos32[16 - m];
  return make_float2(c, -kCos32[m <= 8 ? 8 - m : m - 8]);  // sin(2 pi m/32) = cos(2 pi (8 - m)/32)
}

// The real-window step on the 3M-point transform Z of z[n] = x[2n] + i x[2n + 1] (the row's 6M real
// points), for the 16 bins f = 3(t + c) + g of thread (t, g) whose Z[f] it holds in x (forward3's
// slots): bin(i, f, tw, X1, X2) with tw = W_2N^f (N = 3M), X1 = 2 X[f], X2 = 2 X[f + N] of the row's
// 2N-point spectrum (fft_kernels.cuh: real_spectrum_own's formulas); the partner Z[N - f] comes from shared
// memory, where the caller has stored Z (slots_to_smem) behind a barrier. bin may overwrite x[i].
// tw = W_2N^(3t + g) W_2N^(3c), and W_2N^(3c) = exp(-2 pi i m/32) for c = m M/16.
template <int M, typename Bin>
__device__ __forceinline__ void real_spectrum3(const float2* smem, const float2 (&x)[kElemsPerThread], int t, int g,
                                               Bin bin) {
  using S = Slots<M>;
  constexpr int N = 3 * M;
  float sn, cs;
  sincospif((float)(3 * t + g) * (-1.f / (float)N), &sn, &cs);  // W_2N^(3t + g)
  const float2 wt = make_float2(cs, sn);
  // the partner bin (N - f) mod N in shared memory (residue_at), in closed form as ResidueIndex: third
  // (3 - g) mod 3, index k' = (M - offset) - s with s = t (g = 0) or t + 1, and as offset is a multiple of
  // 16, pad(k') = padded_size(M) - padded(i) + (-s + (-s >> 4)); bin 0 (thread (0, 0), slot 0) is its own.
  const int s = t + (g != 0);
  const int partner0 = (g == 0 ? 0 : 3 - g) * padded_size(M) + padded_size(M) - s + ((-s) >> 4);
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) {
    const int f = S::bin(i, t, g);
    const int p = i == 0 && g == 0 && t == 0 ? 0 : partner0 - S::padded(i);
    const float2 tw = cmul(wt, root32(S::m(i)));
    const float2 af = x[i], c = conjf2(smem[p]);
    const float2 P = cadd(af, c), Dd = smem_fft::csub(af, c);
    const float2 tM = cmul(tw, make_float2(Dd.y, -Dd.x));  // tw * (-i) * (Z[f] - conj(Z[N-f]))
    bin(i, f, tw, cadd(P, tM), smem_fft::csub(P, tM));
    asm volatile("" ::: "memory");  // one bin's loads in flight at a time: fewer live registers
  }
}

}  // namespace radix3

// conv_window_kernel on a window of N = 3M points starting at t = 0 (one-window plans: N >= L + taps - 1,
// so nothing wraps into outputs t < L); kReverse as there. kHalf: L <= N/2. grid: D * npairs blocks of
// 3M/16 threads, pair fastest; K: (D, N/2 + 1) from kernel_spectrum3_kernel, the kernel launched just
// before, read as conv_window_kernel's kAfterSpectrum build reads it (one build for both launches: launched
// the ordinary way, the grid-dependency wait returns at once).
template <typename scalar_t, bool kReverse, int M, bool kHalf>
__global__ void __launch_bounds__(radix3::threads<M>(), radix3::min_blocks<M>())
    conv_window3_kernel(const scalar_t* __restrict__ x, const float2* __restrict__ K, scalar_t* __restrict__ y,
                        ConvShape s) {
  extern __shared__ float2 smem[];
  constexpr int N = 3 * M, T = M / kElemsPerThread;
  using S = radix3::Slots<M>;
  const int g = (int)threadIdx.x / T, t = (int)threadIdx.x - g * T;
  const int64_t blk = blockIdx.x;
  const int pair = (int)(blk % s.npairs);
  const int64_t d = blk / s.npairs;
  const int64_t b0 = 2 * pair, b1 = b0 + 1;
  const bool has1 = b1 < s.B;
  const int64_t off0 = (b0 * s.D + d) * s.L, off1 = has1 ? (b1 * s.D + d) * s.L : off0;
  const WindowRows<scalar_t, kReverse> rows(x + off0, x + off1, has1, 0, s.L, N);
  float2 v[kElemsPerThread];
  radix3::forward3<M, kHalf>(smem, v, rows, t, g);
  smem_fft::pdl_wait();
  const float2* Kd = K + d * (N / 2 + 1);
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i)
    v[i] = conjf2(cmul(v[i], radix3::hermitian_bin3<M, true>(Kd, 3 * (t + S::offset(i)) + g)));
  scalar_t* y0 = y + off0 + (kReverse ? s.L - 1 : 0);
  scalar_t* y1 = y + off1 + (kReverse ? s.L - 1 : 0);
  const int L = (int)s.L;
  radix3::inverse3<M, kHalf>(
      smem, v,
      [&](int n, float2 w) {  // w = conj of the result: real part = row 0, -imag = row 1
        if (n >= L) return;
        const int i = kReverse ? -n : n;
        y0[i] = static_cast<scalar_t>(w.x);
        if (has1) y1[i] = static_cast<scalar_t>(-w.y);
      },
      t, g);
}

// K[d, f] = FFT_N(k_eff[d, :taps])[f] / N for f <= N/2 (N = 3M), two channels per block as
// kernel_spectrum_kernel (z = k[d0] + i k[d1], split by Hermitian symmetry). taps <= N/2 (every one-window
// plan), so each group's input has its upper half zero. grid: ceil(D/2) blocks of 3M/16 threads; the
// window kernel after it may start at once (programmatic dependent launch).
template <int M>
__global__ void __launch_bounds__(radix3::threads<M>()) kernel_spectrum3_kernel(KernelTaps k, int64_t D,
                                                                               float2* __restrict__ K) {
  extern __shared__ float2 smem[];
  smem_fft::pdl_launch_dependents();
  constexpr int N = 3 * M, T = M / kElemsPerThread;
  const int g = (int)threadIdx.x / T, t = (int)threadIdx.x - g * T;
  const int64_t d0 = 2 * (int64_t)blockIdx.x, d1 = d0 + 1;
  const bool has1 = d1 < D;
  float2 v[kElemsPerThread];
  radix3::forward3<M, true>(smem, v, [&](int n) { return make_float2(k(d0, n), has1 ? k(d1, n) : 0.f); }, t,
                                     g);
  radix3::slots_to_smem<M>(smem, v, t, g);
  const auto at = [&](int f) { return radix3::residue_at<M>(smem, f); };
  constexpr int half = N / 2 + 1;
  constexpr float scale = 0.5f / (float)N;
  float2* K0 = K + d0 * half;
  float2* K1 = K + d1 * half;
  // bins f = 3k + r <= N/2 taken residue by residue (r = 0: k <= M/2; r = 1, 2: k < M/2), so a warp reads
  // one third of shared memory at consecutive k (in natural order f, f + 1, f + 2 sit in the three thirds
  // at the same offset: 3-way bank conflicts)
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    const int r = j <= M / 2 ? 0 : 1 + (j - (M / 2 + 1)) / (M / 2);
    const int kk = r == 0 ? j : (j - (M / 2 + 1)) % (M / 2);
    const int f = 3 * kk + r;
    const RealPairBins b = split_real_pair(at(f), at(f == 0 ? 0 : N - f), scale);
    K0[f] = b.x0;
    if (has1) K1[f] = b.x1;
  }
}

// conv_real_window_kernel on 6M real points (N = 3M complex: 24576 real at M = 4096) for a one-window
// real-window plan with L + taps - 1 <= 6M: one row per block, z[n] = x[2n] + i x[2n + 1] from t = 0,
// forward3, the real-spectrum step with Kr (bins 0..N of the 2N-point kernel spectrum, scaled 1/(4N):
// real_window_spectrum3_kernel), inverse3 writing y[2n] and y[2n + 1]. kReverse as there (grad_u alone);
// kHalf: L <= N (z[n] = 0 from n = N/2). grid: B * D blocks, batch fastest; 3M/16 threads.
template <typename scalar_t, bool kReverse, int M, bool kHalf>
__global__ void __launch_bounds__(radix3::threads<M>(), 1)
    conv_real_window3_kernel(const scalar_t* __restrict__ x, const float2* __restrict__ Kr, scalar_t* __restrict__ y,
                             ConvShape s) {
  extern __shared__ float2 smem[];
  constexpr int N = 3 * M, T = M / kElemsPerThread;
  int g = (int)threadIdx.x / T, t = (int)threadIdx.x - g * T;
  const int64_t d = blockIdx.x / s.B, row = (blockIdx.x % s.B) * s.D + d;
  const int L = (int)s.L;
  const int64_t first = kReverse ? s.L - 1 : 0;  // sample m lives at first +- m
  const scalar_t* xr = x + row * s.L + first;
  scalar_t* yr = y + row * s.L + first;
  auto sample = [&](int m) { return m < L ? to_float(xr[kReverse ? -m : m]) : 0.f; };
  const float2* K = Kr + d * (N + 1);
  float2 v[kElemsPerThread];
  radix3::forward3<M, kHalf>(smem, v, [&](int n) { return make_float2(sample(2 * n), sample(2 * n + 1)); }, t,
                                      g);
  radix3::slots_to_smem<M>(smem, v, t, g);
  radix3::opaque(t, g);  // forward3's twiddles are not kept live through the rest (fewer spills)
  const radix3::ResidueIndex<M> ri(t, g);
  radix3::real_spectrum3<M>(smem, v, t, g, [&](int i, int, float2 tw, float2 X1, float2 X2) {
    // K[f + N] = conj(K[N - f]); Kr in the residue layout (ResidueIndex)
    v[i] = real_merge_conj(tw, cmul(X1, K[ri.own(i)]), cmul(X2, conjf2(K[ri.partner(i)])));
  });
  radix3::opaque(t, g);
  radix3::inverse3<M, kHalf>(
      smem, v,
      [&](int n, float2 w) {  // w = conj(z'[n]): y at samples 2n and 2n + 1
        const int m0 = 2 * n, m1 = m0 + 1;
        if (m0 < L) yr[kReverse ? -m0 : m0] = static_cast<scalar_t>(w.x);
        if (m1 < L) yr[kReverse ? -m1 : m1] = static_cast<scalar_t>(-w.y);
      },
      t, g);
}

// Kr for conv_real_window3_kernel: bins 0..N of the 2N-point spectrum (N = 3M) of a channel's effective
// kernel, scaled by 1/(4N), as real_window_spectrum_kernel on the 3M-point transform. taps <= N (one window
// holds the row), so z[n] = k[2n] + i k[2n + 1] is zero from n = N/2. grid: D blocks of 3M/16 threads.
template <int M>
__global__ void __launch_bounds__(radix3::threads<M>(), 1)
    real_window_spectrum3_kernel(KernelTaps taps, float2* __restrict__ Kr) {
  extern __shared__ float2 smem[];
  constexpr int N = 3 * M, T = M / kElemsPerThread;
  const int g = (int)threadIdx.x / T, t = (int)threadIdx.x - g * T;
  const int64_t d = blockIdx.x;
  float2* K = Kr + d * (N + 1);
  float2 v[kElemsPerThread];
  radix3::forward3<M, true>(smem, v, [&](int n) { return make_float2(taps(d, 2 * n), taps(d, 2 * n + 1)); },
                                     t, g);
  radix3::slots_to_smem<M>(smem, v, t, g);
  constexpr float scale = 1.f / (8.f * (float)N);
  const radix3::ResidueIndex<M> ri(t, g);
  radix3::real_spectrum3<M>(smem, v, t, g, [&](int i, int f, float2, float2 X1, float2 X2) {
    K[ri.own(i)] = make_float2(scale * X1.x, scale * X1.y);
    if (f == 0) K[N] = make_float2(scale * X2.x, scale * X2.y);
  });
}

// grad_k from conv_real_window3_backward_kernel's sums C[f] = 4 sum_b G[f] conj(U[f]) (bins 0..N of 2N-point
// spectra, N = 3M), as real_window_grad_k_kernel: the merge of Y1 = C[f] / (8N), Y2 = conj(C[N - f]) / (8N)
// for the thread's own bins, inverse3, and grad_k[d, s] for s < taps written straight from the outputs
// n < N/2 (2n < N covers every tap: taps <= N): the kHalf inverse. One channel per block.
template <int M>
__global__ void __launch_bounds__(radix3::threads<M>(), 1)
    real_window_grad_k3_kernel(const float2* __restrict__ C, float* __restrict__ grad_k, int64_t grad_k_stride,
                               int taps) {
  extern __shared__ float2 smem[];
  constexpr int N = 3 * M, T = M / kElemsPerThread;
  using S = radix3::Slots<M>;
  const int g = (int)threadIdx.x / T, t = (int)threadIdx.x - g * T;
  const float2* Cd = C + (int64_t)blockIdx.x * (N + 1);
  float* gk = grad_k + (int64_t)blockIdx.x * grad_k_stride;
  constexpr float scale = 1.f / (8.f * (float)N);
  float sn, cs;
  sincospif((float)(3 * t + g) * (-1.f / (float)N), &sn, &cs);  // W_2N^(3t + g): real_spectrum3's twiddle
  const float2 wt = make_float2(cs, sn);
  float2 v[kElemsPerThread];
  const radix3::ResidueIndex<M> ri(t, g);
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) {
    const float2 c1 = Cd[ri.own(i)], c2 = conjf2(Cd[ri.partner(i)]);
    v[i] = real_merge_conj(cmul(wt, radix3::root32(S::m(i))), make_float2(scale * c1.x, scale * c1.y),
                           make_float2(scale * c2.x, scale * c2.y));
  }
  radix3::inverse3<M, true>(
      smem, v,
      [&](int n, float2 w) {  // w = conj(z'[n]), z'[n] = grad_k[2n] + i grad_k[2n + 1]
        if (2 * n < taps) gk[2 * n] = w.x;
        if (2 * n + 1 < taps) gk[2 * n + 1] = -w.y;
      },
      t, g);
}

// conv_real_window_backward_kernel (its register variant) on 6M real points: one channel per block over its
// B rows, rows read from t = 0 (2N = 6M >= L + taps - 1: nothing wraps). Per row: U = the spectrum of u[b]
// into U_scratch (each bin written and read back by the thread that owns it), G = the spectrum of gy[b],
// C[f] += G[f] conj(U[f]) for f = 0..N (the first row writes), and with kNeedU grad_u[b] = the inverse of
// G conj(K). grid: the chunk's channels d0, d0 + 1, ...; Kr, C and U_scratch (chunk, N + 1); 3M/16 threads.
// kUShared: U lives in shared memory after the FFT buffer (N + 1 more complex: 202 KB in all at M = 4096,
// which Hopper's 227 KB per block holds and the power-of-two kernel's 270 KB would not), so the row's
// spectrum makes no round trip through L2 and DRAM (a third of the kernel's traffic per row with C's
// read-modify-write and the rows); U_scratch is then not read.
template <typename scalar_t, int M, bool kNeedU, bool kHalf, bool kUShared = false>
__global__ void __launch_bounds__(radix3::threads<M>(), 1)
    conv_real_window3_backward_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ u,
                                      const float2* __restrict__ Kr, scalar_t* __restrict__ grad_u,
                                      float2* __restrict__ C, float2* __restrict__ U_scratch, ConvShape s,
                                      int64_t d0, int /*u_smem_bins: the power-of-two kernel's*/) {
  extern __shared__ float2 smem[];
  constexpr int N = 3 * M, T = M / kElemsPerThread;
  const int g0 = (int)threadIdx.x / T, t0 = (int)threadIdx.x - g0 * T;
  const int64_t d = d0 + blockIdx.x;
  const int L = (int)s.L;
  const float2* K = Kr + (int64_t)blockIdx.x * (N + 1);
  float2* Cd = C + (int64_t)blockIdx.x * (N + 1);
  float2* Ud = kUShared ? smem + 3 * smem_fft::padded_size(M) : U_scratch + (int64_t)blockIdx.x * (N + 1);
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t off = (b * s.D + d) * s.L;
    const scalar_t* ur = u + off;
    const scalar_t* gr = gy + off;
    scalar_t* yr = kNeedU ? grad_u + off : nullptr;
    const bool first_row = b == 0;
    int t, g;
    radix3::fresh_ids(t, g, t0, g0);
    float2 v[kElemsPerThread];
    __syncthreads();  // the previous row's last reads of shared memory are done
    radix3::forward3<M, kHalf>(
        smem, v,
        [&](int n) {
          return make_float2(2 * n < L ? to_float(ur[2 * n]) : 0.f, 2 * n + 1 < L ? to_float(ur[2 * n + 1]) : 0.f);
        },
        t, g);
    radix3::slots_to_smem<M>(smem, v, t, g);
    radix3::fresh_ids(t, g, t0, g0);
    const radix3::ResidueIndex<M> ri_u(t, g);
    radix3::real_spectrum3<M>(smem, v, t, g, [&](int i, int f, float2, float2 X1, float2 X2) {
      Ud[ri_u.own(i)] = X1;
      if (f == 0) Ud[N] = X2;
    });
    __syncthreads();  // every partner has been read before the next transform writes shared memory
    radix3::fresh_ids(t, g, t0, g0);
    radix3::forward3<M, kHalf>(
        smem, v,
        [&](int n) {
          return make_float2(2 * n < L ? to_float(gr[2 * n]) : 0.f, 2 * n + 1 < L ? to_float(gr[2 * n + 1]) : 0.f);
        },
        t, g);
    radix3::slots_to_smem<M>(smem, v, t, g);
    radix3::fresh_ids(t, g, t0, g0);
    const radix3::ResidueIndex<M> ri(t, g);
    radix3::real_spectrum3<M>(smem, v, t, g, [&](int i, int f, float2 tw, float2 X1, float2 X2) {
      const int r = ri.own(i);
      const float2 p = cmul(X1, conjf2(Ud[r]));  // C[f] += G[f] conj(U[f]), bin N with bin 0
      Cd[r] = first_row ? p : cadd(Cd[r], p);
      if (f == 0) {
        const float2 pN = cmul(X2, conjf2(Ud[N]));
        Cd[N] = first_row ? pN : cadd(Cd[N], pN);
      }
      // G conj(K) merged (conj(K[f + N]) = K[N - f]): what grad_u's inverse takes
      if constexpr (kNeedU)
        v[i] = real_merge_conj(tw, cmul(X1, conjf2(K[r])), cmul(X2, K[ri.partner(i)]));
    });
    if constexpr (kNeedU) {
      radix3::fresh_ids(t, g, t0, g0);
      radix3::inverse3<M, kHalf>(  // (a barrier first: every partner has been read)
          smem, v,
          [&](int n, float2 w) {  // w = conj(z'[n]): grad_u at samples 2n and 2n + 1
            const int m0 = 2 * n, m1 = m0 + 1;
            if (m0 < L) yr[m0] = static_cast<scalar_t>(w.x);
            if (m1 < L) yr[m1] = static_cast<scalar_t>(-w.y);
          },
          t, g);
    }
  }
}

// conv_grad_k_kernel's kHalf variant on the 3M-point window (one-window plans with L <= 3M/2: the 16384-point
// plans that radix3_window serves, grad_k beside grad_u's conv_window3_kernel): per row (dealt out
// round-robin to the channel's groups) the maxima of u and gy over the elements this thread loads, sc,
// forward3 of z = u + i sc gy, the thread's bins to shared memory, and acc[f] += G[f] conj(U[f]) for
// f <= N/2 (acc after the FFT buffer, one owner per bin). partial: (groups, D, N/2 + 1), summed and
// transformed back by grad_k_taps3_kernel. grid: D * groups blocks (group fastest), 3M/16 threads.
template <typename scalar_t, int M>
__global__ void __launch_bounds__(radix3::threads<M>(), 1)
    conv_grad_k3_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ gy,
                        float2* __restrict__ partial, ConvShape s, int groups) {
  extern __shared__ float2 smem[];
  __shared__ unsigned int window_max[2][2];  // [row parity][u, gy]: float bits, values >= 0
  constexpr int N = 3 * M, T = M / kElemsPerThread, half = N / 2 + 1;
  const int g = (int)threadIdx.x / T, t = (int)threadIdx.x - g * T;
  float2* acc = smem + 3 * smem_fft::padded_size(M);
  const int group = (int)(blockIdx.x % groups);
  const int64_t d = blockIdx.x / groups;
  for (int f = threadIdx.x; f < half; f += blockDim.x) acc[f] = make_float2(0.f, 0.f);
  if (threadIdx.x == 0) window_max[0][0] = window_max[0][1] = window_max[1][0] = window_max[1][1] = 0u;
  __syncthreads();
  const int L = (int)s.L;
  int parity = 0;
  for (int64_t b = group; b < s.B; b += groups, parity ^= 1) {
    const int64_t off = (b * s.D + d) * s.L;
    const scalar_t* __restrict__ ur = u + off;
    const scalar_t* __restrict__ gr = gy + off;
    float mu = 0.f, mg = 0.f;
#pragma unroll
    for (int r = 0; r < 8; ++r) {  // the row (L <= 3M/2 = 8 blockDim.x): every group loads all of it
      const int n = (int)threadIdx.x + r * 3 * T;
      if (n < L) {
        mu = fmaxf(mu, fabsf(to_float(ur[n])));
        mg = fmaxf(mg, fabsf(to_float(gr[n])));
      }
    }
    fold_warp_maxima(mu, mg, window_max[parity]);
    __syncthreads();
    const float sc = gy_scale(__uint_as_float(window_max[parity][0]), __uint_as_float(window_max[parity][1]));
    // the other parity's slot was last read before this row's barrier and is next written after the
    // barrier that ends this row (conv_grad_k_kernel's rule)
    if (threadIdx.x == 0) window_max[parity ^ 1][0] = window_max[parity ^ 1][1] = 0u;
    float2 x[kElemsPerThread];
    radix3::forward3<M, true>(
        smem, x,
        [&](int n) { return n < L ? make_float2(to_float(ur[n]), sc * to_float(gr[n])) : make_float2(0.f, 0.f); },
        t, g);
    radix3::slots_to_smem<M>(smem, x, t, g);
    for (int f = threadIdx.x; f < half; f += blockDim.x)
      acc[f] = add_g_conj_u(acc[f], radix3::residue_at<M>(smem, f),
                            conjf2(radix3::residue_at<M>(smem, f == 0 ? 0 : N - f)), sc);
    __syncthreads();  // every read of Z is done before the next row's transform writes shared memory
  }
  float2* out = partial + ((int64_t)group * s.D + d) * half;
  for (int f = threadIdx.x; f < half; f += blockDim.x) out[f] = acc[f];
}

// grad_k_taps_kernel on the 3M-point window: the groups' partial sums (fixed order: deterministic) of two
// channels per block packed as Z = P0 + i P1, its conjugate spectrum formed in each thread's own slots
// (bins above N/2 from their mirror), inverse3 (kHalf: outputs n < N/2 cover every tap, taps <= N/2), and
// grad_k[d, :Lk] written with zeros from taps on. grid: ceil(D/2) blocks of 3M/16 threads.
template <int M>
__global__ void __launch_bounds__(radix3::threads<M>(), 1)
    grad_k_taps3_kernel(const float2* __restrict__ partial, float* __restrict__ grad_k, int64_t D, int groups,
                        int taps, int64_t Lk) {
  extern __shared__ float2 smem[];
  constexpr int N = 3 * M, T = M / kElemsPerThread, half = N / 2;
  using S = radix3::Slots<M>;
  const int g = (int)threadIdx.x / T, t = (int)threadIdx.x - g * T;
  const int64_t d0 = 2 * (int64_t)blockIdx.x, d1 = d0 + 1 < D ? d0 + 1 : d0;
  const int64_t group_stride = D * (half + 1);
  float2 x[kElemsPerThread];
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) {
    const int f = S::bin(i, t, g);
    const int fm = f <= half ? f : N - f;
    float2 p0 = make_float2(0.f, 0.f), p1 = p0;
    for (int k = 0; k < groups; ++k) {
      p0 = cadd(p0, partial[k * group_stride + d0 * (half + 1) + fm]);
      p1 = cadd(p1, partial[k * group_stride + d1 * (half + 1) + fm]);
    }
    if (fm == 0 || fm == half) p0.y = p1.y = 0.f;
    // conj(Z[f]) with Z[f] = P0 + i P1 for f <= N/2; above, conj(Z[N - fm]) with Z[N - fm] = conj(P0) + i conj(P1)
    x[i] = f <= half ? make_float2(p0.x - p1.y, -(p0.y + p1.x)) : make_float2(p0.x + p1.y, p0.y - p1.x);
  }
  constexpr float scale = 1.f / (float)N;
  radix3::inverse3<M, true>(  // w = conj(result) * N
      smem, x,
      [&](int n, float2 w) {
        if (n >= taps) return;
        grad_k[d0 * Lk + n] = w.x * scale;
        if (d1 != d0) grad_k[d1 * Lk + n] = -w.y * scale;
      },
      t, g);
  for (int64_t n = taps + threadIdx.x; n < Lk; n += blockDim.x) {
    grad_k[d0 * Lk + n] = 0.f;
    if (d1 != d0) grad_k[d1 * Lk + n] = 0.f;
  }
}

}  // namespace
}  // namespace fft_tensor
