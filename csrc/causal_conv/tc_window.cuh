// causal_conv for one-window plans of bfloat16 rows on the tensor cores (sm_80+; host dispatch in
// cuda.cu, the only file that includes this one). Opt-in (FFT_TENSOR_CONV_TC=1): on the H200 it ran
// 1.3-1.6x slower than the shared-memory FFT kernel at 1K-4K (RESULTS.md, twenty-fourth session) with
// half its instructions: 25% theoretical occupancy at 128 registers, and L1 75% busy, because each warp of 16 rows
// loads the whole F_64 table and its twiddles for itself and reads the whole row pair by ldmatrix.
// wgmma (B in shared memory, read once per 64 rows of a warpgroup) would cut the table part of that traffic
// (about a quarter of it, RESULTS.md); the twiddles (a recurrence in registers) and the row reads too.
//
// Why: the shared-memory FFT kernels (smem_fft.cuh) are bound by instruction issue (about 50 CUDA-core
// instructions per point per transform). Here the N-point DFT of a row pair is two dense DFTs done as
// matrix products with mma.sync (fp16 operands, fp32 accumulation), N = N1 x 64:
//   n = 64 n1 + n2 (n1 < N1, n2 < 64),  f = k1 + N1 k2,
//   X[f] = sum_n2 W64^(n2 k2) [ W_N^(k1 n2) sum_n1 W_N1^(n1 k1) x[n1, n2] ].
// One group of N1/16 warps owns a row pair z = u[b] + i u[b+1] (the kernel's spectrum is Hermitian, so
// the real and imaginary parts of the inverse are the two rows' convolutions); warp w of the group owns
// the 16 rows k1 in [16w, 16w+16) of every intermediate matrix, so:
//   pass 1   C[k1, n2]  = F_N1[k1, n1] . x[n1, n2]       A: DFT table, B: x from shared memory (ldmatrix)
//   twiddle, fp32 -> fp16: the accumulators become pass 2's A operand in registers (the layouts agree)
//   pass 2   C[k1, k2]  = C . F_64[n2, k2]               B: DFT table
//   product  Z = C * K[k1 + N1 k2] (the fp32 kernel spectrum), scaled to fp16's range
//   inverse 1 V[k1, n2'] = Z . conj F_64[k2, n2']         A: Z in registers again
//   conj twiddle, to shared memory (the only exchange between the group's warps)
//   inverse 2 y[n1', n2'] = conj F_N1[n1', k1] . V[k1, n2']  only n1' < N1/2: the outputs n < N/2
// Rows are at n in [0, L) with zeros after them (L <= N/2, taps <= N/2: no wrap-around reaches n < L),
// so pass 1 contracts over n1 < N1/2 only. Every product is one fp16 mma per real product (no 3xTF32):
// benchmarks/emulate_tc_dft.py put this precision at 1.7e-3 relative for bf16 rows, under the tests'
// bound of 4x bf16's rounding of the exact result (float16 rows, whose bound is 8x tighter, do not take
// this path). fp16's range: each row is scaled by a power of two to max |x| in [1/2, 1) (then
// |pass 1| <= N1/sqrt 2 and |pass 2| <= N/sqrt 2 in fp32), and the product Z by a power of two to max |Z|
// in [1/2, 1) (then |V| <= 64 sqrt 2 in fp16); both scales are undone exactly on the way out. Errors are
// relative to the pair: the fp16 rounding of Z and V is shared by the two rows, so a sparse row (an
// impulse) paired with a dense one can exceed the per-row bound (1.3e-2 against 8.9e-3 at 4K in
// benchmarks/emulate_tc_dft.py --pairs); rows that differ only in size keep their own precision (the tests).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "smem_fft.cuh"  // cmul, conjf2

namespace fft_tensor {
namespace tc_window {

// mma.m16n8k16 with fp16 operands and cp.async need sm_80: the device code of older targets in
// TORCH_CUDA_ARCH_LIST compiles to a trap (use_tc_window checks the device, not the build).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define FFT_TENSOR_TC_WINDOW_OK 0
#else
#define FFT_TENSOR_TC_WINDOW_OK 1
#endif

constexpr int kN2 = 64;          // the second DFT's size: a warp's 16 rows x 64 columns = 64 fp32 registers
constexpr int kRowHalfs = 72;    // shared-memory row stride (64 + 8 halfs): ldmatrix and the V stores
                                 // hit 32 distinct banks
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

template <int N>
struct Geometry {
  static constexpr int N1 = N / kN2;
  static constexpr int kWarpsPerPair = N1 / 16;
  static constexpr int kPairsPerBlock = kWarps / kWarpsPerPair;
  static constexpr int kGroupThreads = kWarpsPerPair * 32;
  static constexpr int kPlaneHalfs = N1 * kRowHalfs;   // one plane (real or imaginary) of V; x uses N1/2 rows
  static constexpr int kGroupHalfs = 2 * kPlaneHalfs;
  static constexpr int kChunksPerThread = (N / 8) / kGroupThreads;  // 8-element chunks of the two rows (N/2 each)
  static constexpr int kSpectrumStride = N / 2 + 2;   // a group's copy of K[d] (N/2 + 1 bins), 16-byte multiple
  static constexpr size_t kSpectrumOffset = (size_t)kPairsPerBlock * kGroupHalfs * sizeof(__half);
  static constexpr size_t kSlotsOffset = kSpectrumOffset + (size_t)kPairsPerBlock * kSpectrumStride * sizeof(float2);
  static constexpr size_t kSmemBytes = kSlotsOffset + 2 * kWarps * sizeof(float2);
  static_assert(N1 >= 32 && N1 <= 128 && kWarps % kWarpsPerPair == 0, "tc_window: N from 2048 to 8192");
  static_assert(kChunksPerThread * kGroupThreads == N / 8, "tc_window: chunks per thread");
};

// Fragment-ordered DFT and twiddle tables (built once per device and N by tc_tables in cuda.cu).
struct Tables {
  const uint4* dft_n1;   // [mt < N1/16][ks < N1/16][lane] x 2: A fragments of F_N1 (real, imaginary)
  const uint4* dft_64;   // [ks < 4][j < 8][lane]: B fragments of F_64 (real b0 b1, imaginary b0 b1)
  const float4* twiddle; // [w < N1/16][j < 8][lane] x 2: W_N^(k1 n2) at the accumulator positions
};

__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if FFT_TENSOR_TC_WINDOW_OK
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// B fragments of two n-tiles (8 columns each) from a row-major [k][n] fp16 tile in shared memory.
__device__ __forceinline__ void ldmatrix_b_pair(uint32_t (&b)[4], const __half* p) {
  const uint32_t s = (uint32_t)__cvta_generic_to_shared(p);
#if FFT_TENSOR_TC_WINDOW_OK
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(s));
#else
  b[0] = b[1] = b[2] = b[3] = s;
#endif
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

constexpr uint32_t kNegHalf2 = 0x80008000u;

using smem_fft::cmul;
using smem_fft::conjf2;

// Maxima over the warp, then over the group's warps through shared memory (two per warp; the barrier
// between the writes and the reads is the __syncthreads inside, so every thread must call it).
__device__ __forceinline__ float2 group_max(float2 v, float2* slots, int warp, int first_warp, int warps) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v.x = fmaxf(v.x, __shfl_xor_sync(0xffffffffu, v.x, o));
    v.y = fmaxf(v.y, __shfl_xor_sync(0xffffffffu, v.y, o));
  }
  if ((threadIdx.x & 31) == 0) slots[warp] = v;
  __syncthreads();
  float2 m = make_float2(0.f, 0.f);
  for (int w = 0; w < warps; ++w) {
    const float2 s = slots[first_warp + w];
    m = make_float2(fmaxf(m.x, s.x), fmaxf(m.y, s.y));
  }
  return m;
}

// The power of two a (|a| <= 126, so 2^a and 2^-a are normal floats) with max * 2^a in [1/2, 1) where
// that clamp allows (0 for 0, inf or NaN: those then propagate). A row of bf16 subnormals gets 2^126 and
// stays below 1/2, still far inside fp16's normal range.
__device__ __forceinline__ int range_exponent(float max_abs) {
  if (!(max_abs > 0.f) || !isfinite(max_abs)) return 0;
  int e;
  frexpf(max_abs, &e);
  return e > 126 ? -126 : e < -126 ? 126 : -e;
}

// y = acc * 2^t for |t| <= 252, as two multiplies by normal powers of two.
struct Unscale {
  float lo, hi;
  __device__ __forceinline__ explicit Unscale(int t) : lo(ldexpf(1.f, t / 2)), hi(ldexpf(1.f, t - t / 2)) {}
  __device__ __forceinline__ float operator()(float acc) const { return acc * lo * hi; }
};

// Accumulators (16 rows x 64 columns of one warp, complex: re[j][e], im[j][e] for n-tile j, element e of
// the m16n8 layout) times per-element complex factors, packed as the A operand of the next product
// (k = the accumulators' column): a[kk] for k-step kk (n-tiles 2kk and 2kk+1).
template <typename Factor>
__device__ __forceinline__ void accumulators_to_a(const float (&re)[8][4], const float (&im)[8][4], Factor factor,
                                                  float scale, uint32_t (&a_re)[4][4], uint32_t (&a_im)[4][4]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    float2 v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = factor(j, e);
      v[e] = cmul(make_float2(re[j][e], im[j][e]), f);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // h = 0: row g, h = 1: row g + 8
      a_re[j / 2][(j & 1) * 2 + h] = pack_half2(v[2 * h].x * scale, v[2 * h + 1].x * scale);
      a_im[j / 2][(j & 1) * 2 + h] = pack_half2(v[2 * h].y * scale, v[2 * h + 1].y * scale);
    }
  }
}

// C[16 x 64] (+)= A[16 x 64] . (conj?) F_64, A in registers (a_re, a_im), F_64 from the table.
template <bool kConjB>
__device__ __forceinline__ void times_dft64(const uint32_t (&a_re)[4][4], const uint32_t (&a_im)[4][4],
                                            const uint4* __restrict__ dft_64, int lane, float (&re)[8][4],
                                            float (&im)[8][4]) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) re[j][e] = im[j][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t neg[4];  // -a_im (F_64) or -a_re (conj F_64)
#pragma unroll
    for (int q = 0; q < 4; ++q) neg[q] = (kConjB ? a_re[kk][q] : a_im[kk][q]) ^ kNegHalf2;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint4 b = __ldg(dft_64 + (kk * 8 + j) * 32 + lane);  // (re b0, re b1, im b0, im b1)
      if (!kConjB) {  // (ar + i ai)(br + i bi)
        mma_f16(re[j], a_re[kk], b.x, b.y);
        mma_f16(re[j], neg, b.z, b.w);
        mma_f16(im[j], a_re[kk], b.z, b.w);
        mma_f16(im[j], a_im[kk], b.x, b.y);
      } else {  // (ar + i ai)(br - i bi)
        mma_f16(re[j], a_re[kk], b.x, b.y);
        mma_f16(re[j], a_im[kk], b.z, b.w);
        mma_f16(im[j], neg, b.z, b.w);
        mma_f16(im[j], a_im[kk], b.x, b.y);
      }
    }
  }
}

// C[16 x 8 kTiles] = (conj?) F_N1[the 16 rows of m-tile mt, k < 16 kSteps] . S[k, columns 8 j0 ...], S in
// shared memory as fp16 planes (real sr, imaginary si; rows kRowHalfs apart), F_N1 from the table.
template <int kSteps, int kTiles, bool kConjA>
__device__ __forceinline__ void dft_n1_times_smem(const uint4* __restrict__ dft_n1, int N1, int mt, const __half* sr,
                                                  const __half* si, int j0, int lane, float (&re)[kTiles][4],
                                                  float (&im)[kTiles][4]) {
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) re[j][e] = im[j][e] = 0.f;
  const int mi = lane >> 3, r = lane & 7;  // ldmatrix: this lane's row address
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
    const uint4* fa = dft_n1 + ((mt * (N1 / 16) + ks) * 32 + lane) * 2;
    const uint4 far = __ldg(fa), fai = __ldg(fa + 1);
    const uint32_t a_re[4] = {far.x, far.y, far.z, far.w};
    const uint32_t a_im[4] = {fai.x, fai.y, fai.z, fai.w};
    const uint32_t a_neg[4] = {fai.x ^ kNegHalf2, fai.y ^ kNegHalf2, fai.z ^ kNegHalf2, fai.w ^ kNegHalf2};
    const int row = ks * 16 + r + 8 * (mi & 1);
#pragma unroll
    for (int j = 0; j < kTiles; j += 2) {
      const int col = 8 * (j0 + j + (mi >> 1));
      uint32_t br[4], bi[4];
      ldmatrix_b_pair(br, sr + row * kRowHalfs + col);
      ldmatrix_b_pair(bi, si + row * kRowHalfs + col);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (!kConjA) {  // (ar + i ai)(br + i bi)
          mma_f16(re[j + h], a_re, br[2 * h], br[2 * h + 1]);
          mma_f16(re[j + h], a_neg, bi[2 * h], bi[2 * h + 1]);
          mma_f16(im[j + h], a_re, bi[2 * h], bi[2 * h + 1]);
          mma_f16(im[j + h], a_im, br[2 * h], br[2 * h + 1]);
        } else {  // (ar - i ai)(br + i bi)
          mma_f16(re[j + h], a_re, br[2 * h], br[2 * h + 1]);
          mma_f16(re[j + h], a_im, bi[2 * h], bi[2 * h + 1]);
          mma_f16(im[j + h], a_re, bi[2 * h], bi[2 * h + 1]);
          mma_f16(im[j + h], a_neg, br[2 * h], br[2 * h + 1]);
        }
      }
    }
  }
}

// y = causal_conv(x, k) for row pairs of one-window plans, bfloat16 rows, L <= N/2, taps <= N/2.
// K: kernel_spectrum's (D, N/2 + 1) spectrum (skip folded in, scaled by 1/N). grid: ceil(D * npairs /
// kPairsPerBlock) blocks of kThreads; pair p = d * npairs + (b / 2) (the pairs of a channel adjacent).
// x and y: packed (B, D, L); vec: x is 16-byte aligned and L % 8 == 0 (16-byte loads).
template <int N>
__global__ void __launch_bounds__(kThreads, 2)
    conv_tc_window_kernel(const __nv_bfloat16* __restrict__ x, const float2* __restrict__ K, __nv_bfloat16* __restrict__ y,
                          Tables tables, int64_t B, int64_t D, int L, int npairs, bool vec) {
  using G = Geometry<N>;
  constexpr int N1 = G::N1;
  extern __shared__ __align__(16) unsigned char tc_smem_raw[];
  __half* smem = reinterpret_cast<__half*>(tc_smem_raw);
  float2* slots_in = reinterpret_cast<float2*>(tc_smem_raw + G::kSlotsOffset);
  float2* slots_z = slots_in + kWarps;

  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int group = warp / G::kWarpsPerPair, wg = warp % G::kWarpsPerPair;
  const int gt = threadIdx.x % G::kGroupThreads;
  const int g = lane >> 2, t = lane & 3;
  const int64_t pair = (int64_t)blockIdx.x * G::kPairsPerBlock + group;
  const bool active = pair < D * npairs;
  const int64_t d = active ? pair / npairs : 0;
  const int64_t b0 = active ? 2 * (pair % npairs) : 0;
  const bool has1 = active && b0 + 1 < B;
  const __nv_bfloat16* x0 = x + (b0 * D + d) * L;
  const __nv_bfloat16* x1 = x + ((has1 ? b0 + 1 : b0) * D + d) * L;
  __half* xr = smem + group * G::kGroupHalfs;  // x, then V: real plane
  __half* xi = xr + G::kPlaneHalfs;            // imaginary plane
  float2* spectrum = reinterpret_cast<float2*>(tc_smem_raw + G::kSpectrumOffset) + group * G::kSpectrumStride;

  // ---- K[d] to shared memory (cp.async, waited for before the first barrier): the product reads it at
  // scattered bins, which from global memory cost a round trip each at this kernel's register budget
  if (active) {
    const float2* Kd = K + d * (N / 2 + 1);
    for (int i = gt; i <= N / 2; i += G::kGroupThreads) {
      const uint32_t dst = (uint32_t)__cvta_generic_to_shared(spectrum + i);
#if FFT_TENSOR_TC_WINDOW_OK
      asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(Kd + i));
#else
      (void)dst;
      (void)Kd;
#endif
    }
  }
#if FFT_TENSOR_TC_WINDOW_OK
  asm volatile("cp.async.commit_group;\n" ::);
#endif

  // ---- load the row pair (8-element chunks; n >= L and a missing second row are zeros) and its max
  uint4 chunk[G::kChunksPerThread];
  __nv_bfloat162 amax[2] = {__float2bfloat162_rn(0.f), __float2bfloat162_rn(0.f)};  // per row
#pragma unroll
  for (int i = 0; i < G::kChunksPerThread; ++i) {
    constexpr int kPerRow = G::kChunksPerThread / 2;  // chunks i < kPerRow: row b0, then row b0 + 1
    const bool second = i >= kPerRow;
    const int n0 = (gt + (i % kPerRow) * G::kGroupThreads) * 8;
    const __nv_bfloat16* row = second ? x1 : x0;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (active && (!second || has1)) {
      if (vec && n0 + 8 <= L) {
        v = __ldg(reinterpret_cast<const uint4*>(row + n0));
      } else if (n0 < L) {
        uint32_t* w = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const __nv_bfloat16 zero = __float2bfloat16(0.f);
          const __nv_bfloat162 p = __halves2bfloat162(n0 + 2 * q < L ? row[n0 + 2 * q] : zero,
                                                      n0 + 2 * q + 1 < L ? row[n0 + 2 * q + 1] : zero);
          w[q] = *reinterpret_cast<const uint32_t*>(&p);
        }
      }
    }
    chunk[i] = v;
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int q = 0; q < 4; ++q) amax[second] = __hmax2(amax[second], __habs2(h[q]));
  }
#if FFT_TENSOR_TC_WINDOW_OK
  asm volatile("cp.async.wait_all;\n" ::: "memory");  // group_max's barrier makes K visible to the group
#elif defined(__CUDA_ARCH__)
  __trap();  // built without sm_80 code
#endif
  // each row its own scale (rows of very different sizes keep their own precision)
  const float2 in_max = group_max(make_float2(fmaxf(__low2float(amax[0]), __high2float(amax[0])),
                                              fmaxf(__low2float(amax[1]), __high2float(amax[1]))),
                                  slots_in, warp, group * G::kWarpsPerPair, G::kWarpsPerPair);
  const int in_exp0 = range_exponent(in_max.x), in_exp1 = range_exponent(in_max.y);
#pragma unroll
  for (int i = 0; i < G::kChunksPerThread; ++i) {
    constexpr int kPerRow = G::kChunksPerThread / 2;
    const bool second = i >= kPerRow;
    const int n0 = (gt + (i % kPerRow) * G::kGroupThreads) * 8;
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&chunk[i]);
    const float in_scale = ldexpf(1.f, second ? in_exp1 : in_exp0);
    uint4 out;
    uint32_t* o = reinterpret_cast<uint32_t*>(&out);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float2 f = __bfloat1622float2(h[q]);
      o[q] = pack_half2(f.x * in_scale, f.y * in_scale);
    }
    *reinterpret_cast<uint4*>((second ? xi : xr) + (n0 / kN2) * kRowHalfs + n0 % kN2) = out;
  }
  __syncthreads();

  float re[8][4], im[8][4];
  // ---- pass 1: C[k1, n2] = sum_{n1 < N1/2} W_N1^(k1 n1) x[n1, n2] (rows k1 in [16 wg, 16 wg + 16))
  dft_n1_times_smem<N1 / 32, 8, false>(tables.dft_n1, N1, wg, xr, xi, 0, lane, re, im);

  // ---- twiddle W_N^(k1 n2), then pass 2: C[k1, k2] = sum_n2 C[k1, n2] W_64^(n2 k2)
  const float4* tw = tables.twiddle + (wg * 8 * 32 + lane) * 2;  // + j * 64 for n-tile j
  auto twiddle = [&](int j, int e) {
    const float4 w = __ldg(tw + j * 64 + (e >> 1));
    return (e & 1) ? make_float2(w.z, w.w) : make_float2(w.x, w.y);
  };
  {
    uint32_t a_re[4][4], a_im[4][4];
    accumulators_to_a(re, im, twiddle, 1.f, a_re, a_im);
    times_dft64<false>(a_re, a_im, tables.dft_64, lane, re, im);
  }

  // ---- the product with the kernel's spectrum at f = k1 + N1 k2 (Hermitian half: f > N/2 is conj(K[N - f]))
  float z_max = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int k1 = wg * 16 + g + 8 * (e >> 1), k2 = 8 * j + 2 * t + (e & 1);
      const int f = k1 + N1 * k2;
      float2 s = spectrum[f <= N / 2 ? f : N - f];
      if (f > N / 2) s.y = -s.y;
      const float2 z = cmul(make_float2(re[j][e], im[j][e]), s);
      re[j][e] = z.x;
      im[j][e] = z.y;
      z_max = fmaxf(z_max, fmaxf(fabsf(z.x), fabsf(z.y)));
    }
  // (group_max's barrier is also the one between pass 1's ldmatrix reads of x and the V stores below,
  // which overwrite x)
  const int z_exp =
      range_exponent(group_max(make_float2(z_max, 0.f), slots_z, warp, group * G::kWarpsPerPair, G::kWarpsPerPair).x);
  const float z_scale = ldexpf(1.f, z_exp);

  // ---- inverse 1: V[k1, n2'] = sum_k2 Z[k1, k2] conj W_64^(k2 n2'), conj twiddle, to shared memory
  {
    uint32_t a_re[4][4], a_im[4][4];
    accumulators_to_a(re, im, [](int, int) { return make_float2(1.f, 0.f); }, z_scale, a_re, a_im);
    times_dft64<true>(a_re, a_im, tables.dft_64, lane, re, im);
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // rows g and g + 8, columns 2t and 2t + 1
      const float2 w0 = twiddle(j, 2 * h), w1 = twiddle(j, 2 * h + 1);
      const float2 v0 = cmul(make_float2(re[j][2 * h], im[j][2 * h]), conjf2(w0));
      const float2 v1 = cmul(make_float2(re[j][2 * h + 1], im[j][2 * h + 1]), conjf2(w1));
      const int off = (wg * 16 + g + 8 * h) * kRowHalfs + 8 * j + 2 * t;
      *reinterpret_cast<uint32_t*>(xr + off) = pack_half2(v0.x, v1.x);
      *reinterpret_cast<uint32_t*>(xi + off) = pack_half2(v0.y, v1.y);
    }
  __syncthreads();

  // ---- inverse 2: y[n1', n2'] = sum_k1 conj W_N1^(n1' k1) V[k1, n2'] for n1' < N1/2: m-tile wg / 2,
  // n-tiles 4 (wg & 1) .. + 3
  const int mt = wg >> 1, j0 = 4 * (wg & 1);
  float yr[4][4], yi[4][4];
  dft_n1_times_smem<N1 / 16, 4, true>(tables.dft_n1, N1, mt, xr, xi, j0, lane, yr, yi);

  // ---- y = the real (row b0) and imaginary (row b0 + 1) parts, scales undone (1/N is in K)
  if (!active) return;
  const Unscale unscale0(-(in_exp0 + z_exp)), unscale1(-(in_exp1 + z_exp));
  __nv_bfloat16* y0 = y + (b0 * D + d) * L;
  __nv_bfloat16* y1 = y + ((has1 ? b0 + 1 : b0) * D + d) * L;
  const bool even = (L % 2) == 0;
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = (mt * 16 + g + 8 * h) * kN2 + 8 * (j0 + j) + 2 * t;
      const float a0 = unscale0(yr[j][2 * h]), a1 = unscale0(yr[j][2 * h + 1]);
      const float c0 = unscale1(yi[j][2 * h]), c1 = unscale1(yi[j][2 * h + 1]);
      if (even && n + 1 < L) {
        *reinterpret_cast<__nv_bfloat162*>(y0 + n) = __floats2bfloat162_rn(a0, a1);
        if (has1) *reinterpret_cast<__nv_bfloat162*>(y1 + n) = __floats2bfloat162_rn(c0, c1);
      } else {
        if (n < L) {
          y0[n] = __float2bfloat16(a0);
          if (has1) y1[n] = __float2bfloat16(c0);
        }
        if (n + 1 < L) {
          y0[n + 1] = __float2bfloat16(a1);
          if (has1) y1[n + 1] = __float2bfloat16(c1);
        }
      }
    }
}

}  // namespace tc_window
}  // namespace fft_tensor
