// causal_conv's direct path on the CPU (included by cpu.cpp only): a sum over the taps for kernels of up
// to 128 taps, where pocketfft's transforms (two of at least 64 points per row, and ATen temporaries for
// each) cost more than the taps themselves (RESULTS.md, twenty-eighth session).
//
// Rows go in tiles of kTile outputs. A tile's inputs are copied once into an accumulation-typed buffer
// (any strides and dtypes in, zeros outside [0, L)), and every sum is then one loop:
//     out[w] += sum_{i < count} c[i] * v[w - i]      for blocks of W consecutive w
// with a block's W sums held in registers while the c[i] stream past (one load and one FMA per term;
// the loop over w vectorises without reordering any sum). The forward (c = the taps, v = the inputs),
// grad_u (c = the taps reversed, v = grad_y read ahead) and grad_k (c = grad_y, v = the inputs
// reversed, the blocks over taps) are all this loop. Accumulation is float32 for float32, bfloat16 and
// float16 input, float64 for float64, as in the FFT paths.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "../cpu_clones.h"

namespace fft_tensor {
namespace cpu_direct {
// Internal to cpu.cpp, its one includer: the clones' ifunc symbols stay local to the library.
namespace {

// The sum loops are cloned per instruction set (cpu_clones.h: AVX-512, AVX2 + FMA, SSE2): the wheel's
// baseline flags alone leave them 4 floats wide without FMA (1.5x slower on the build machine's EPYC).

constexpr int64_t kTile = 2048;  // outputs per tile: its input and output buffers stay in L1/L2

template <typename acc_t, int64_t W>
FFT_TENSOR_ALWAYS_INLINE void sum_blocks_impl(const acc_t* __restrict c, int64_t count, const acc_t* __restrict v,
                                              int64_t nblocks, acc_t* __restrict out) {
  for (int64_t b = 0; b < nblocks; ++b) {
    acc_t a[W];
    for (int64_t w = 0; w < W; ++w) a[w] = out[b * W + w];
    const acc_t* vb = v + b * W;
    for (int64_t i = 0; i < count; ++i) {
      const acc_t ci = c[i];
      const acc_t* vi = vb - i;
      for (int64_t w = 0; w < W; ++w) a[w] += ci * vi[w];
    }
    for (int64_t w = 0; w < W; ++w) out[b * W + w] = a[w];
  }
}

// Wide blocks (64 floats, 32 doubles: four AVX-512 registers, four independent FMA chains) for long
// sums; narrow ones (32 floats, 16 doubles) for grad_k of short kernels, whose blocks run over the taps
// (4 taps in a 64-wide block would be 16x the work). Not narrower: blocks of one register (16 floats)
// ran 4-8x slower per FMA in a g++ 12 microbenchmark (vectorised poorly, one dependent chain).
FFT_TENSOR_CPU_CLONES void sum_blocks_wide(const float* c, int64_t count, const float* v, int64_t nblocks, float* out) {
  sum_blocks_impl<float, 64>(c, count, v, nblocks, out);
}
FFT_TENSOR_CPU_CLONES void sum_blocks_narrow(const float* c, int64_t count, const float* v, int64_t nblocks,
                                             float* out) {
  sum_blocks_impl<float, 32>(c, count, v, nblocks, out);
}
FFT_TENSOR_CPU_CLONES void sum_blocks_wide(const double* c, int64_t count, const double* v, int64_t nblocks,
                                           double* out) {
  sum_blocks_impl<double, 32>(c, count, v, nblocks, out);
}
FFT_TENSOR_CPU_CLONES void sum_blocks_narrow(const double* c, int64_t count, const double* v, int64_t nblocks,
                                             double* out) {
  sum_blocks_impl<double, 16>(c, count, v, nblocks, out);
}

// The other orientation, for grad_k of very short kernels: out[s] += sum_{j < npad} g[j] x[j - s] for
// s < T, the lanes over j (W partial sums per tap, added at the end). Two loads per FMA, but no lane
// wasted: cheaper than a 32-wide block over the taps when T < 16.
template <typename acc_t, int64_t W>
FFT_TENSOR_ALWAYS_INLINE void dot_lanes_impl(const acc_t* __restrict g, int64_t npad, const acc_t* __restrict x,
                                             int64_t T, acc_t* __restrict out) {
  for (int64_t s = 0; s < T; ++s) {
    acc_t p[W];
    for (int64_t w = 0; w < W; ++w) p[w] = acc_t(0);
    const acc_t* xs = x - s;
    for (int64_t j = 0; j < npad; j += W)
      for (int64_t w = 0; w < W; ++w) p[w] += g[j + w] * xs[j + w];
    acc_t sum = 0;
    for (int64_t w = 0; w < W; ++w) sum += p[w];
    out[s] += sum;
  }
}
FFT_TENSOR_CPU_CLONES void dot_lanes(const float* g, int64_t npad, const float* x, int64_t T, float* out) {
  dot_lanes_impl<float, 64>(g, npad, x, T, out);
}
FFT_TENSOR_CPU_CLONES void dot_lanes(const double* g, int64_t npad, const double* x, int64_t T, double* out) {
  dot_lanes_impl<double, 32>(g, npad, x, T, out);
}
constexpr int64_t kDotLanesMaxTaps = 15;

template <typename acc_t>
constexpr int64_t wide_width() {
  return sizeof(acc_t) == 4 ? 64 : 32;
}
template <typename acc_t>
constexpr int64_t narrow_width() {
  return sizeof(acc_t) == 4 ? 32 : 16;
}

inline int64_t round_up(int64_t n, int64_t w) { return (n + w - 1) / w * w; }

// dst[m] = row[start + m] (stride st) for 0 <= start + m < L, else 0; m < count.
template <typename scalar_t, typename acc_t>
void load_ahead(acc_t* dst, const scalar_t* row, int64_t st, int64_t start, int64_t count, int64_t L) {
  const int64_t lo = std::clamp<int64_t>(-start, 0, count), hi = std::clamp<int64_t>(L - start, lo, count);
  std::fill(dst, dst + lo, acc_t(0));
  const scalar_t* p = row + (start + lo) * st;
  if (st == 1)
    for (int64_t m = lo; m < hi; ++m) dst[m] = static_cast<acc_t>(p[m - lo]);
  else
    for (int64_t m = lo; m < hi; ++m) dst[m] = static_cast<acc_t>(p[(m - lo) * st]);
  std::fill(dst + hi, dst + count, acc_t(0));
}

// dst[m] = row[last - m] for 0 <= last - m < L, else 0; m < count.
template <typename scalar_t, typename acc_t>
void load_reversed(acc_t* dst, const scalar_t* row, int64_t st, int64_t last, int64_t count, int64_t L) {
  const int64_t lo = std::clamp<int64_t>(last - (L - 1), 0, count), hi = std::clamp<int64_t>(last + 1, lo, count);
  std::fill(dst, dst + lo, acc_t(0));
  if (st == 1) {
    const scalar_t* p = row + last;
    for (int64_t m = lo; m < hi; ++m) dst[m] = static_cast<acc_t>(p[-m]);
  } else {
    for (int64_t m = lo; m < hi; ++m) dst[m] = static_cast<acc_t>(row[(last - m) * st]);
  }
  std::fill(dst + hi, dst + count, acc_t(0));
}

template <typename scalar_t, typename acc_t>
void store(scalar_t* row, int64_t st, const acc_t* src, int64_t n) {
  if (st == 1)
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<scalar_t>(src[j]);
  else
    for (int64_t j = 0; j < n; ++j) row[j * st] = static_cast<scalar_t>(src[j]);
}

// The lanes' width for this call: 16 on AVX-512 CPUs, 8 on AVX2 ones, 0 (the time-in-lanes loops) on
// others. FFT_TENSOR_CONV_CPU_LANES (0, 8 or 16; read on every call like the op's other switches) caps
// it, for A/B runs and so the tests run every width this CPU has.
// Validated on every build (a bad value is an error on every call), 0 where the lanes kernels are not built.
inline int lanes_width() {
#if FFT_TENSOR_CPU_LANES
  static const int supported = __builtin_cpu_supports("x86-64-v4") ? 16 : __builtin_cpu_supports("x86-64-v3") ? 8 : 0;
#else
  constexpr int supported = 0;
#endif
  const char* env = std::getenv("FFT_TENSOR_CONV_CPU_LANES");
  if (env == nullptr || *env == '\0') return supported;
  const std::string v(env);
  TORCH_CHECK(v == "0" || v == "8" || v == "16",
              "FFT_TENSOR_CONV_CPU_LANES: expected one of 0, 8, 16 (or unset), got '", v, "'");
  return std::min(supported, std::stoi(v));
}

#if FFT_TENSOR_CPU_LANES
// Channels in the vector lanes (chosen at run time: V = 16 on AVX-512, 8 on AVX2): V channels of one batch
// row are transposed into (time, V) vectors, so a tap is one FMA per V outputs with its taps' vectors held
// in registers and every input vector loaded once per block of kLanesR outputs and kLanesG taps (the
// time-in-lanes loop above re-reads a shifted, unaligned window per tap). V x V transposes in and out by
// two-input shuffles. Measured in a microbenchmark on the build machine: 47-51 GFMA/s per core at 64-128
// taps with its transposes (V = 16), against 28-33 for the loop above; the 512-bit vectors compiled for
// AVX2 spilled (4-9 GFMA/s), hence the 256-bit kernels there.
template <int V>
struct Lanes {
  typedef float vec __attribute__((vector_size(V * 4)));
  typedef int index __attribute__((vector_size(V * 4)));
  typedef float unaligned_vec __attribute__((vector_size(V * 4), aligned(4)));
};
constexpr int64_t kLanesTile = 256;      // outputs per tile: a multiple of V and of kLanesR
constexpr int kLanesR = 8, kLanesG = 4;  // outputs per register block, taps per register group
// grad_k's tiles are longer: each carries taps - 1 samples of u's history and its sums stream over time,
// so 1024 outputs (L2-resident) measured 1.1-1.4x faster than 256 at 16K, about even from 1K to 4K
constexpr int64_t kCorrTile = 1024;
constexpr int64_t kLanesMinTaps = 32;    // below, the transposes cost about what they save (measured at 16)

// Swaps the off-diagonal b x b blocks of each 2b x 2b block: log2(V) stages (b = V/2, ..., 1) transpose.
template <int V, int b>
FFT_TENSOR_ALWAYS_INLINE void lanes_swap_stage(typename Lanes<V>::vec* A) {
  typename Lanes<V>::index lo{}, hi{};  // constants after unrolling
  for (int j = 0; j < V; ++j) {
    lo[j] = (j & b) ? V + j - b : j;
    hi[j] = (j & b) ? V + j : j + b;
  }
  for (int i = 0; i < V; ++i)
    if (!(i & b)) {
      const typename Lanes<V>::vec x = __builtin_shuffle(A[i], A[i + b], lo), y = __builtin_shuffle(A[i], A[i + b], hi);
      A[i] = x;
      A[i + b] = y;
    }
}

template <int V>
FFT_TENSOR_ALWAYS_INLINE void lanes_transpose(typename Lanes<V>::vec* A) {
  if constexpr (V == 16) lanes_swap_stage<V, 8>(A);
  lanes_swap_stage<V, 4>(A);
  lanes_swap_stage<V, 2>(A);
  lanes_swap_stage<V, 1>(A);
}

// X[m][c] = in[c * pitch + m] for V rows c and m < count (a multiple of V).
template <int V>
FFT_TENSOR_ALWAYS_INLINE void lanes_load_transposed(const float* in, int64_t pitch, int64_t count,
                                                    typename Lanes<V>::vec* X) {
  for (int64_t m0 = 0; m0 < count; m0 += V) {
    typename Lanes<V>::vec A[V];
    for (int c = 0; c < V; ++c) A[c] = *reinterpret_cast<const typename Lanes<V>::unaligned_vec*>(in + c * pitch + m0);
    lanes_transpose<V>(A);
    for (int i = 0; i < V; ++i) X[m0 + i] = A[i];
  }
}

// out[c * pitch + m] = Y[m][c] for V rows c and m < count (a multiple of V).
template <int V>
FFT_TENSOR_ALWAYS_INLINE void lanes_store_transposed(const typename Lanes<V>::vec* Y, int64_t count, float* out,
                                                     int64_t pitch) {
  for (int64_t m0 = 0; m0 < count; m0 += V) {
    typename Lanes<V>::vec A[V];
    for (int i = 0; i < V; ++i) A[i] = Y[m0 + i];
    lanes_transpose<V>(A);
    for (int c = 0; c < V; ++c) *reinterpret_cast<typename Lanes<V>::unaligned_vec*>(out + c * pitch + m0) = A[c];
  }
}

// out[c][t] = sum_{i < Tg} K[i][c] * in[c][H + t - i] for V channel rows c and t < n: in holds V rows of
// H + n floats (row pitch in_pitch), K is Tg x V (Tg a multiple of kLanesG, H >= Tg - 1; H and n multiples
// of 16), X and Y (H + n and n vectors) are aligned scratch.
template <int V>
FFT_TENSOR_ALWAYS_INLINE void lanes_sum_impl(const float* in, int64_t in_pitch, int64_t H, int64_t n,
                                             const typename Lanes<V>::vec* K, int64_t Tg, typename Lanes<V>::vec* X,
                                             typename Lanes<V>::vec* Y, float* out, int64_t out_pitch) {
  using vec = typename Lanes<V>::vec;
  lanes_load_transposed<V>(in, in_pitch, H + n, X);
  for (int64_t t0 = 0; t0 < n; t0 += kLanesR) {
    vec acc[kLanesR];
    for (int r = 0; r < kLanesR; ++r) acc[r] = vec{};
    for (int64_t s0 = 0; s0 < Tg; s0 += kLanesG) {
      vec k[kLanesG];
      for (int g = 0; g < kLanesG; ++g) k[g] = K[s0 + g];
      const vec* xb = X + (H + t0 - s0);
      for (int r = 0; r < kLanesR; ++r)
        for (int g = 0; g < kLanesG; ++g) acc[r] += k[g] * xb[r - g];
    }
    for (int r = 0; r < kLanesR; ++r) Y[t0 + r] = acc[r];
  }
  lanes_store_transposed<V>(Y, n, out, out_pitch);
}

// grad_k's sums for V channel rows c: acc[s][c] += sum_{t < n} g[c][t] * x[c][H + t - s] for s < Ts, with g
// V rows of n floats (pitch g_pitch) and x V rows of H + n (pitch x_pitch): grad_y of a tile and u from
// H samples before it. Ts a multiple of kLanesR, H >= Ts - 1, n a multiple of 16; G and X (n and H + n
// vectors) aligned scratch. The time-in-lanes grad_k loop's roles swapped: taps in the registers
// (kLanesR of them), time streaming past, each vector of g loaded once per block of taps.
template <int V>
FFT_TENSOR_ALWAYS_INLINE void lanes_correlate_impl(const float* g, int64_t g_pitch, const float* x, int64_t x_pitch,
                                                   int64_t H, int64_t n, int64_t Ts, typename Lanes<V>::vec* G,
                                                   typename Lanes<V>::vec* X, typename Lanes<V>::vec* acc) {
  using vec = typename Lanes<V>::vec;
  lanes_load_transposed<V>(g, g_pitch, n, G);
  lanes_load_transposed<V>(x, x_pitch, H + n, X);
  for (int64_t s0 = 0; s0 < Ts; s0 += kLanesR) {
    vec a[kLanesR];
    for (int r = 0; r < kLanesR; ++r) a[r] = vec{};
    const vec* xb = X + (H - s0);  // x at lag s0 + r of time t: xb[t - r]
    for (int64_t t0 = 0; t0 < n; t0 += kLanesG)
      for (int j = 0; j < kLanesG; ++j) {
        const vec gv = G[t0 + j];
        for (int r = 0; r < kLanesR; ++r) a[r] += gv * xb[t0 + j - r];
      }
    for (int r = 0; r < kLanesR; ++r) acc[s0 + r] += a[r];
  }
}

// The two instruction sets' copies (their vectors need the target's registers; each _impl is inlined).
__attribute__((target("arch=x86-64-v4"))) void lanes_sum(const float* in, int64_t in_pitch, int64_t H, int64_t n,
                                                          const Lanes<16>::vec* K, int64_t Tg, Lanes<16>::vec* X,
                                                          Lanes<16>::vec* Y, float* out, int64_t out_pitch) {
  lanes_sum_impl<16>(in, in_pitch, H, n, K, Tg, X, Y, out, out_pitch);
}
__attribute__((target("arch=x86-64-v3"))) void lanes_sum(const float* in, int64_t in_pitch, int64_t H, int64_t n,
                                                          const Lanes<8>::vec* K, int64_t Tg, Lanes<8>::vec* X,
                                                          Lanes<8>::vec* Y, float* out, int64_t out_pitch) {
  lanes_sum_impl<8>(in, in_pitch, H, n, K, Tg, X, Y, out, out_pitch);
}
__attribute__((target("arch=x86-64-v4"))) void lanes_correlate(const float* g, int64_t g_pitch, const float* x,
                                                                int64_t x_pitch, int64_t H, int64_t n, int64_t Ts,
                                                                Lanes<16>::vec* G, Lanes<16>::vec* X,
                                                                Lanes<16>::vec* acc) {
  lanes_correlate_impl<16>(g, g_pitch, x, x_pitch, H, n, Ts, G, X, acc);
}
__attribute__((target("arch=x86-64-v3"))) void lanes_correlate(const float* g, int64_t g_pitch, const float* x,
                                                                int64_t x_pitch, int64_t H, int64_t n, int64_t Ts,
                                                                Lanes<8>::vec* G, Lanes<8>::vec* X, Lanes<8>::vec* acc) {
  lanes_correlate_impl<8>(g, g_pitch, x, x_pitch, H, n, Ts, G, X, acc);
}

// The lanes' width for a float32 sum over D channels with T taps: 16 or 8 where the CPU (and the switch)
// allow it, T reaches kLanesMinTaps and D fills a vector (fewer channels would leave lanes empty), else 0
// (the time-in-lanes loops). convolve_rows and correlate_rows both follow it.
inline int lanes_for(int64_t D, int64_t T) {
  if (T < kLanesMinTaps) return 0;
  const int V = lanes_width();
  return V == 16 && D >= 16 ? 16 : V >= 8 && D >= 8 ? 8 : 0;
}
#endif

// Rows per parallel task: at least ~64K multiply-adds each, so small problems stay on one thread.
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work_per_item));
}

#if FFT_TENSOR_CPU_LANES
// convolve_rows (below) with channels in the lanes: items are (batch row, group of V channels); the last
// group's missing channels are zero rows whose outputs are dropped.
template <int V, typename in_t, typename out_t>
void convolve_rows_lanes(const at::Tensor& in, const at::Tensor& taps, at::Tensor& out, bool ahead) {
  using vec = typename Lanes<V>::vec;
  const int64_t B = in.size(0), D = in.size(1), L = in.size(2), T = taps.size(1);
  const int64_t Tg = round_up(T, kLanesG), H = round_up(Tg - 1, 16), groups = (D + V - 1) / V;
  const int64_t pitch = H + kLanesTile;
  const in_t* in_p = in.data_ptr<in_t>();
  out_t* out_p = out.data_ptr<out_t>();
  const float* taps_p = taps.data_ptr<float>();
  const int64_t isb = in.stride(0), isd = in.stride(1), ist = in.stride(2);
  const int64_t osb = out.stride(0), osd = out.stride(1), ost = out.stride(2);
  const auto f32 = in.options().dtype(at::kFloat);
  at::parallel_for(0, B * groups, grain(V * L * T), [&](int64_t begin, int64_t end) {
    // at::empty: 64-byte aligned (c10's CPU allocator), as X, Y and K's vectors need
    at::Tensor stage_in = at::zeros({V, pitch}, f32), stage_out = at::empty({V, kLanesTile}, f32);
    at::Tensor X = at::empty({pitch, V}, f32), Y = at::empty({kLanesTile, V}, f32), K = at::empty({Tg, V}, f32);
    float *sin = stage_in.data_ptr<float>(), *sout = stage_out.data_ptr<float>(), *kv_p = K.data_ptr<float>();
    const vec* kv = reinterpret_cast<const vec*>(kv_p);
    vec *xv = reinterpret_cast<vec*>(X.data_ptr<float>()), *yv = reinterpret_cast<vec*>(Y.data_ptr<float>());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / groups, d0 = (item % groups) * V, nc = std::min<int64_t>(V, D - d0);
      for (int64_t i = 0; i < Tg; ++i)
        for (int64_t c = 0; c < V; ++c)
          kv_p[i * V + c] = (c < nc && i < T) ? taps_p[(d0 + c) * T + (ahead ? T - 1 - i : i)] : 0.f;
      for (int64_t c = nc; c < V; ++c) std::fill(sin + c * pitch, sin + (c + 1) * pitch, 0.f);
      for (int64_t t0 = 0; t0 < L; t0 += kLanesTile) {
        const int64_t n = std::min(kLanesTile, L - t0), npad = round_up(n, 16);
        // stage row c, m < H + npad: in[start + m], start = t0 - H (forward) or t0 + T - 1 - H (adjoint)
        const int64_t start = ahead ? t0 + (T - 1) - H : t0 - H;
        for (int64_t c = 0; c < nc; ++c)
          load_ahead(sin + c * pitch, in_p + b * isb + (d0 + c) * isd, ist, start, H + npad, L);
        lanes_sum(sin, pitch, H, npad, kv, Tg, xv, yv, sout, kLanesTile);
        for (int64_t c = 0; c < nc; ++c)
          store(out_p + b * osb + (d0 + c) * osd + t0 * ost, ost, sout + c * kLanesTile, n);
      }
    }
  });
}
#endif

// out (B, D, L) = the causal convolution of in (B, D, L) with taps (D, T) (contiguous, acc_t), or,
// with `ahead`, its adjoint out[t] = sum_s taps[s] in[t + s] (grad_u from grad_y). Any strides.
template <typename in_t, typename out_t, typename acc_t>
void convolve_rows(const at::Tensor& in, const at::Tensor& taps, at::Tensor& out, bool ahead) {
  const int64_t B = in.size(0), D = in.size(1), L = in.size(2), T = taps.size(1);
#if FFT_TENSOR_CPU_LANES
  if constexpr (std::is_same_v<acc_t, float>) {
    switch (lanes_for(D, T)) {
      case 16: return convolve_rows_lanes<16, in_t, out_t>(in, taps, out, ahead);
      case 8: return convolve_rows_lanes<8, in_t, out_t>(in, taps, out, ahead);
    }
  }
#endif
  constexpr int64_t W = wide_width<acc_t>();
  const in_t* in_p = in.data_ptr<in_t>();
  out_t* out_p = out.data_ptr<out_t>();
  const acc_t* taps_p = taps.data_ptr<acc_t>();
  const int64_t isb = in.stride(0), isd = in.stride(1), ist = in.stride(2);
  const int64_t osb = out.stride(0), osd = out.stride(1), ost = out.stride(2);
  at::parallel_for(0, B * D, grain(L * T), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x(T - 1 + kTile), acc(kTile), c(T);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / D, d = r % D;
      const acc_t* kd = taps_p + d * T;
      // the adjoint is the same sum with the taps reversed over the inputs read T - 1 ahead
      for (int64_t i = 0; i < T; ++i) c[i] = ahead ? kd[T - 1 - i] : kd[i];
      const in_t* row = in_p + b * isb + d * isd;
      out_t* orow = out_p + b * osb + d * osd;
      for (int64_t t0 = 0; t0 < L; t0 += kTile) {
        const int64_t n = std::min(kTile, L - t0), npad = round_up(n, W);
        // x[m] = in[t0 - (T - 1) + m] (forward) or in[t0 + m] (adjoint), m < T - 1 + npad
        load_ahead(x.data(), row, ist, ahead ? t0 : t0 - (T - 1), T - 1 + npad, L);
        std::fill(acc.begin(), acc.begin() + npad, acc_t(0));
        sum_blocks_wide(c.data(), T, x.data() + (T - 1), npad / W, acc.data());
        store(orow + t0 * ost, ost, acc.data(), n);
      }
    }
  });
}

// grad_k (D, T) in acc_t: grad_k[d, s] = sum_{b,t} g[b,d,t] u[b,d,t-s]. Channels in parallel; when there
// are few channels, batches are split into a fixed number of groups summed afterwards (fixed by the
// shape, not the thread count, so the result does not depend on the number of threads; it may differ in
// the last bits between CPUs that take different clones, since the AVX2 and AVX-512 ones fuse FMAs).
#if FFT_TENSOR_CPU_LANES
// correlate_rows (below) with channels in the lanes: items are (group of batch rows, group of V channels),
// the batch groups fixed by the shape as there (partial sums added in a fixed order afterwards).
template <int V, typename g_t, typename u_t>
at::Tensor correlate_rows_lanes(const at::Tensor& g, const at::Tensor& u, int64_t T) {
  using vec = typename Lanes<V>::vec;
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
  const int64_t Ts = round_up(T, 16), H = round_up(Ts - 1, 16), pitch = H + kCorrTile, cgroups = (D + V - 1) / V;
  // batch groups from the shape alone (groups of 16 channels whatever V): the same sums, in the same
  // order, at either width and any thread count
  const int64_t groups16 = (D + 15) / 16;
  const int64_t bgroups = std::min<int64_t>(std::max<int64_t>(B, 1), (16 + groups16 - 1) / groups16);
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor partial = at::empty({bgroups, D, T}, f32);
  float* partial_p = partial.data_ptr<float>();
  const g_t* g_p = g.data_ptr<g_t>();
  const u_t* u_p = u.data_ptr<u_t>();
  at::parallel_for(0, bgroups * cgroups, grain(V * ((B + bgroups - 1) / bgroups) * L * Ts), [&](int64_t begin, int64_t end) {
    // at::empty: 64-byte aligned (c10's CPU allocator), as the vectors need
    at::Tensor stage_g = at::zeros({V, kCorrTile}, f32), stage_u = at::zeros({V, pitch}, f32);
    at::Tensor G = at::empty({kCorrTile, V}, f32), X = at::empty({pitch, V}, f32), A = at::empty({Ts, V}, f32);
    at::Tensor out = at::empty({V, Ts}, f32);
    float *sg = stage_g.data_ptr<float>(), *su = stage_u.data_ptr<float>(), *outp = out.data_ptr<float>();
    vec *gv = reinterpret_cast<vec*>(G.data_ptr<float>()), *xv = reinterpret_cast<vec*>(X.data_ptr<float>());
    vec* av = reinterpret_cast<vec*>(A.data_ptr<float>());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bg = item / cgroups, d0 = (item % cgroups) * V, nc = std::min<int64_t>(V, D - d0);
      A.zero_();
      for (int64_t c = nc; c < V; ++c) {  // channels past D: zero rows
        std::fill(sg + c * kCorrTile, sg + (c + 1) * kCorrTile, 0.f);
        std::fill(su + c * pitch, su + (c + 1) * pitch, 0.f);
      }
      for (int64_t b = bg; b < B; b += bgroups) {
        for (int64_t t0 = 0; t0 < L; t0 += kCorrTile) {
          const int64_t n = std::min(kCorrTile, L - t0), npad = round_up(n, 16);
          for (int64_t c = 0; c < nc; ++c) {
            // grad_y at t0 + m (zero past L), u at t0 - H + m
            load_ahead(sg + c * kCorrTile, g_p + b * g.stride(0) + (d0 + c) * g.stride(1), g.stride(2), t0, npad, L);
            load_ahead(su + c * pitch, u_p + b * u.stride(0) + (d0 + c) * u.stride(1), u.stride(2), t0 - H, H + npad, L);
          }
          lanes_correlate(sg, kCorrTile, su, pitch, H, npad, Ts, gv, xv, av);
        }
      }
      lanes_store_transposed<V>(av, Ts, outp, Ts);
      for (int64_t c = 0; c < nc; ++c)
        std::copy(outp + c * Ts, outp + c * Ts + T, partial_p + (bg * D + d0 + c) * T);
    }
  });
  return partial.sum(0);
}
#endif

template <typename g_t, typename u_t, typename acc_t>
at::Tensor correlate_rows(const at::Tensor& g, const at::Tensor& u, int64_t T) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
#if FFT_TENSOR_CPU_LANES
  if constexpr (std::is_same_v<acc_t, float>) {
    switch (lanes_for(D, T)) {
      case 16: return correlate_rows_lanes<16, g_t, u_t>(g, u, T);
      case 8: return correlate_rows_lanes<8, g_t, u_t>(g, u, T);
    }
  }
#endif
  const bool dot = T <= kDotLanesMaxTaps, narrow = !dot && T <= narrow_width<acc_t>();
  const int64_t W = narrow ? narrow_width<acc_t>() : wide_width<acc_t>(), Tpad = round_up(T, W);
  const int64_t groups = std::min<int64_t>(std::max<int64_t>(B, 1), (16 + D - 1) / D);
  at::Tensor partial = at::zeros({groups, D, Tpad}, u.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* partial_p = partial.data_ptr<acc_t>();
  const g_t* g_p = g.data_ptr<g_t>();
  const u_t* u_p = u.data_ptr<u_t>();
  at::parallel_for(0, groups * D, grain(((B + groups - 1) / groups) * L * Tpad), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gt(kTile), x(kTile + Tpad), tile(Tpad);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t group = item / D, d = item % D;
      acc_t* sum = partial_p + item * Tpad;
      for (int64_t b = group; b < B; b += groups) {
        const g_t* grow = g_p + b * g.stride(0) + d * g.stride(1);
        const u_t* urow = u_p + b * u.stride(0) + d * u.stride(1);
        for (int64_t t0 = 0; t0 < L; t0 += kTile) {
          const int64_t n = std::min(kTile, L - t0);
          std::fill(tile.begin(), tile.end(), acc_t(0));  // a tile's sum first, then into the row's
          if (dot) {
            // x[m] = u[t0 - (T - 1) + m], g zero past n: u[t0 + j - s] = (x + T - 1)[j - s]
            const int64_t npad = round_up(n, W);
            load_ahead(gt.data(), grow, g.stride(2), t0, npad, std::min(L, t0 + n));
            load_ahead(x.data(), urow, u.stride(2), t0 - (T - 1), T - 1 + npad, L);
            dot_lanes(gt.data(), npad, x.data() + (T - 1), T, tile.data());
          } else {
            // x[m] = u[t0 + n - 1 - m]: then u[t0 + j - s] = x[(n - 1 + s) - j], a block over s
            load_ahead(gt.data(), grow, g.stride(2), t0, n, L);
            load_reversed(x.data(), urow, u.stride(2), t0 + n - 1, n - 1 + Tpad, L);
            if (narrow)
              sum_blocks_narrow(gt.data(), n, x.data() + (n - 1), Tpad / W, tile.data());
            else
              sum_blocks_wide(gt.data(), n, x.data() + (n - 1), Tpad / W, tile.data());
          }
          for (int64_t s = 0; s < Tpad; ++s) sum[s] += tile[s];
        }
      }
    }
  });
  return partial.sum(0).narrow(1, 0, T);
}

}  // namespace
}  // namespace cpu_direct
}  // namespace fft_tensor
