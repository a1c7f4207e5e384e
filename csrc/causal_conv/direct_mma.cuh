// Tensor-core direct convolution for bfloat16 rows and kernels of 33-128 taps (the language models'
// mixers: 128 taps at L = 1K-64K). The convolution of a tile of 16 outputs is a small matrix
// product: with window_n[r] = x[16 n - 128 + r], r < 144,
//     y[16 n + t] = sum_r A[t][r] window_n[r],   A[t][r] = k[t + 128 - r] (0 outside [0, taps)),
// so for 8 tiles at once it is one (16 x 144) x (144 x 8) product: 9 mma.sync.m16n8k16 steps. A is
// the same for every tile of a channel and lives in registers, as a bf16 pair hi + lo = k to 2^-17
// (the taps are float32; rounding them to bf16 would add an error as large as the output's own
// rounding): two mmas per step, products of bf16 values exact in the float32 accumulators.
// The window operand comes straight from shared memory with ldmatrix (every tile's window is a
// 16-aligned slice of the row strip), so a row is read once from global memory and written once.
//
// grad_u[t] = sum_s k[s] gy[t + s] is the same product with the window after the tile and the
// mirrored matrix A[t][r] = k[r - t], so rows are always read forwards.
//
// grad_k[s] = sum_{b,t} gy[t] u[t - s] is the transpose: G[t][r] = sum_n gy[16 n + t] window_n[r]
// summed over tiles n is a (16 x tiles) x (tiles x 144) product (gy^T and the windows both read by
// ldmatrix.trans), and grad_k[s] = sum_t G[t][t + 128 - s], a diagonal sum done once per block.
// Both operands are bf16, so the products are exact and only the float32 sums round.
//
// Needs sm_80 (bf16 mma.sync); cuda.cu only launches it there.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fft_kernels.cuh"  // KernelTaps

namespace fft_tensor {
namespace direct_mma {

constexpr int kMaxTaps = 128;
constexpr int kHalo = 128;                    // window samples before a tile's first output
constexpr int kTile = 16;                     // outputs per tile (an mma's rows)
constexpr int kSteps = (kHalo + kTile) / 16;  // 9 k-steps of 16 window samples
constexpr int kCols = kHalo + kTile;          // 144 window samples per tile
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kChunk = 1024;                  // outputs per work item (row b, chunk c)
constexpr int kStrip = kChunk + kHalo;
constexpr int kGroupOutputs = 8 * kTile;      // outputs of one forward mma column group
constexpr int kStepOutputs = 16 * kTile;      // outputs summed by one grad_k mma step
// Strips in flight per block: a block loads the next kStages - 1 items while it computes one. Four
// stages measured the same as two on the H200 (RESULTS.md, fourteenth session): the forward's distance
// from the memory floor (4-5x) is not load latency alone; not profiled further yet.
constexpr int kStages = 4;

using bf16 = __nv_bfloat16;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FFT_TENSOR_MMA_OK 1
#else
#define FFT_TENSOR_MMA_OK 0
#endif

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The loads take 32-bit shared-memory addresses (smem_addr once per block, then byte offsets), so the
// inner loops do no generic-to-shared conversions.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
#if FFT_TENSOR_MMA_OK
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
#if FFT_TENSOR_MMA_OK
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#if FFT_TENSOR_MMA_OK
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
#if FFT_TENSOR_MMA_OK
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
#endif
}

// c += a (16 x 16, row) * b (16 x 8, col), bf16 inputs, float32 accumulators.
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if FFT_TENSOR_MMA_OK
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t pack(bf16 first, bf16 second) {  // first at the lower index
  return (uint32_t)__bfloat16_as_ushort(first) | ((uint32_t)__bfloat16_as_ushort(second) << 16);
}

// cp.async of 16 bytes global -> shared (sm_80+), grouped so a strip can land while the previous one
// is in use.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#if FFT_TENSOR_MMA_OK
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if FFT_TENSOR_MMA_OK
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {  // all but the latest kPending groups have landed
#if FFT_TENSOR_MMA_OK
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// strip[i] = row[t + i] for i < n, t = first time (a multiple of 8), 0 outside [0, L). vec (rows
// 16-byte aligned, L % 8 == 0): 8 times per cp.async, so the strip lands asynchronously; otherwise
// plain loads and stores (done by the next barrier either way). Times are int: cuda.cu takes this
// path for L < 2^31 only.
__device__ __forceinline__ void load_strip(bf16* strip, const bf16* row, int L, int t, int n, bool vec) {
  for (int q = threadIdx.x; q < n / 8; q += blockDim.x) {
    const int tq = t + 8 * q;
    if (vec && tq >= 0 && tq + 8 <= L) {
      cp_async16(strip + 8 * q, row + tq);
    } else {
      uint16_t e[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) e[j] = tq + j >= 0 && tq + j < L ? __bfloat16_as_ushort(row[tq + j]) : 0;
      *reinterpret_cast<uint4*>(strip + 8 * q) =
          make_uint4(e[0] | (uint32_t)e[1] << 16, e[2] | (uint32_t)e[3] << 16, e[4] | (uint32_t)e[5] << 16,
                     e[6] | (uint32_t)e[7] << 16);
    }
  }
}

// Where row (b, d) of a (B, D, L) tensor with time contiguous starts: b * batch + d * channel. Rows
// need not be packed (B, D, L): the LMs hand the conv (D, B * L) feature-major activations, one GEMM's
// output, viewed as (B, D, L) with strides (L, B * L, 1).
struct RowStrides {
  int64_t batch, channel;
  __device__ __forceinline__ int64_t operator()(int64_t b, int64_t d) const { return b * batch + d * channel; }
};

// A block's work items of its channel: item it = row b, chunk c (outputs [t0, t0 + n_out), t0 =
// kChunk c) for it = first, first + stride, ...; advance() steps by stride without a 64-bit division
// per item (the division is a subroutine call on the GPU).
struct ItemCursor {
  int64_t b, db;
  int c, dc, chunks, L;
  __device__ __forceinline__ ItemCursor(int64_t first, int64_t stride, int chunks_, int L_)
      : b(first / chunks_), db(stride / chunks_), c((int)(first % chunks_)), dc((int)(stride % chunks_)),
        chunks(chunks_), L(L_) {}
  __device__ __forceinline__ void advance() {
    b += db;
    c += dc;
    if (c >= chunks) {
      c -= chunks;
      ++b;
    }
  }
  __device__ __forceinline__ int t0() const { return c * kChunk; }
  __device__ __forceinline__ int n_out() const { return min(L - c * kChunk, kChunk); }
};

// Taps from which every k-step of A meets a tap, in either direction (step 0 forward and step
// kSteps - 1 reversed reach lags down to kHalo - 15 at most).
constexpr int kAllStepsTaps = kHalo - 15 + 1;

// A k-step kk of A is all zero when no (t, column) pair of it meets a tap in [0, taps).
template <bool kReverse>
__device__ __forceinline__ bool step_used(int kk, int taps) {
  // lag s = t + halo - r (forward) or r - t (reversed) over t, c < 16 with r = 16 kk + c
  const int lo = kReverse ? 16 * kk - 15 : kHalo - 16 * kk - 15;
  return lo + 30 >= 0 && lo <= taps - 1;
}

// y[t] = sum_{s < taps} k[s] x[t - s] for bf16 rows (forward: window_n[r] = x[16 n - 128 + r],
// A[t][r] = k[t + 128 - r]); kReverse gives grad_u[t] = sum_s k[s] gy[t + s] with the window after the
// tile instead (window_n[r] = gy[16 n + r], A[t][r] = k[r - t]): rows are read forwards either way.
// kt reads k in its own strides and adds skip at tap 0. kAllSteps: taps >= kAllStepsTaps, so every
// k-step of A meets a tap and the step loop has no tests.
// grid (D, groups): block (d, g) takes the items g, g + groups, ... of channel d's B * chunks (row b,
// chunk of kChunk outputs) items, loading the next kStages - 1 items' strips while it computes one; each
// warp takes column groups of 8 tiles (128 outputs).
template <bool kReverse, bool kAllSteps>
__global__ void __launch_bounds__(kThreads) conv_mma_kernel(const bf16* __restrict__ x, const RowStrides xs,
                                                            const KernelTaps kt, bf16* __restrict__ y,
                                                            const RowStrides ys, int64_t B, int L, int chunks,
                                                            bool vec) {
#if FFT_TENSOR_MMA_OK
  __shared__ __align__(16) bf16 strip[kStages][kStrip];
  __shared__ __align__(16) bf16 out[kChunk];
  // Two copies of ks[16 + s] = k[s] (0 outside [0, taps); A reads s in [-15, 143]): A is Toeplitz, so
  // fragment 3 of a step equals fragment 0, and fragment 1 equals fragment 2 of the step before.
  // Loaded from one array, the compiler keeps each value once and copies it into every 4-register
  // mma operand before each use (eight moves per step pair); fragments 2 and 3 come from the second
  // copy, so every operand is its own registers, set once.
  __shared__ float ks[2][kCols + 16];
  const int64_t d = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tig = lane & 3;
  const int taps = kt.taps;
  ItemCursor cur(blockIdx.y, gridDim.y, chunks, L), ahead = cur;
  // item's strip: its outputs' windows (time t0 - halo on), kHalo + groups * 128 samples
  auto issue = [&](const ItemCursor& item, int buf) {
    const int n = kHalo + ((item.n_out() + kGroupOutputs - 1) / kGroupOutputs) * kGroupOutputs;
    load_strip(strip[buf], x + xs(item.b, d), L, kReverse ? item.t0() : item.t0() - kHalo, n, vec);
  };
  for (int st = 0; st + 1 < kStages; ++st, ahead.advance()) {  // prologue: the first kStages - 1 items
    if (ahead.b < B) issue(ahead, st);
    cp_async_commit();
  }
  for (int i = threadIdx.x; i < kCols + 16; i += kThreads) ks[0][i] = ks[1][i] = i >= 16 ? kt(d, i - 16) : 0.f;
  __syncthreads();
  uint32_t a_hi[kSteps][4], a_lo[kSteps][4];
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // fragment q: rows g + 8 (q & 1), columns 2 tig + 8 (q >> 1), two of them
      const int row = g + 8 * (q & 1), col = 16 * kk + 2 * tig + 8 * (q >> 1);
      const int lag = kReverse ? col - row : row + kHalo - col;  // of column col; col + 1 is lag -+ 1
      const float* kq = ks[q >> 1] + 16;
      const float v0 = kq[lag], v1 = kq[lag + (kReverse ? 1 : -1)];
      const bf16 h0 = __float2bfloat16_rn(v0), h1 = __float2bfloat16_rn(v1);
      a_hi[kk][q] = pack(h0, h1);
      a_lo[kk][q] = pack(__float2bfloat16_rn(v0 - __bfloat162float(h0)), __float2bfloat16_rn(v1 - __bfloat162float(h1)));
    }
  }
  bool used[kSteps];
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) used[kk] = kAllSteps || step_used<kReverse>(kk, taps);
  // ldmatrix: lane gives row (lane & 7) of matrix (lane >> 3): window (lane & 7) of a group's 8 tiles at
  // sample 16 kk + 8 (lane >> 3), so one x4 load is b0, b1 of steps kk and kk + 1 (byte offsets).
  const uint32_t strip0 = smem_addr(&strip[0][0]);
  const uint32_t lane_x4 = 2 * (16 * (lane & 7) + 8 * (lane >> 3));
  const uint32_t lane_x2 = 2 * (16 * (lane & 7) + 8 * ((lane >> 3) & 1));  // lanes 0-15 address the x2 load
  int buf = 0;
  for (; cur.b < B; cur.advance(), buf = (buf + 1) % kStages) {
    const int n_out = cur.n_out();
    const int groups = (n_out + kGroupOutputs - 1) / kGroupOutputs;
    // the item kStages - 1 ahead, into the buffer the previous item released at its last barrier
    if (ahead.b < B) issue(ahead, (buf + kStages - 1) % kStages);
    ahead.advance();
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();  // this item's strip has landed; the previous item's out is stored
    const uint32_t sb = strip0 + 2 * kStrip * buf;
    // Two column groups per warp at a time (grp and grp + kWarps), hi and lo in their own
    // accumulators: four independent mma chains instead of one, so the tensor pipe stays fed.
    for (int grp = warp; grp < groups; grp += 2 * kWarps) {
      const bool two = grp + kWarps < groups;  // warp-uniform
      float c[2][2][4] = {};                    // [group][hi, lo][fragment]
      uint32_t base[2];
#pragma unroll
      for (int m = 0; m < 2; ++m) base[m] = sb + 2 * 16 * 8 * (grp + m * kWarps);
#pragma unroll
      for (int kk = 0; kk + 1 < kSteps; kk += 2) {
        if (!used[kk] && !used[kk + 1]) continue;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          if (m == 1 && !two) break;
          uint32_t bq[4];
          ldmatrix_x4(bq, base[m] + lane_x4 + 2 * 16 * kk);
          if (used[kk]) {
            mma(c[m][0], a_hi[kk], bq[0], bq[1]);
            mma(c[m][1], a_lo[kk], bq[0], bq[1]);
          }
          if (used[kk + 1]) {
            mma(c[m][0], a_hi[kk + 1], bq[2], bq[3]);
            mma(c[m][1], a_lo[kk + 1], bq[2], bq[3]);
          }
        }
      }
      if (used[kSteps - 1]) {
        constexpr int kk = kSteps - 1;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          if (m == 1 && !two) break;
          uint32_t bq[2];
          ldmatrix_x2(bq, base[m] + lane_x2 + 2 * 16 * kk);
          mma(c[m][0], a_hi[kk], bq[0], bq[1]);
          mma(c[m][1], a_lo[kk], bq[0], bq[1]);
        }
      }
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        if (m == 1 && !two) break;
        // c[0], c[1]: output t = g of the group's tiles 2 tig and 2 tig + 1; c[2], c[3]: t = g + 8
        const int o = 16 * (8 * (grp + m * kWarps) + 2 * tig) + g;
        out[o] = __float2bfloat16_rn(c[m][0][0] + c[m][1][0]);
        out[o + 16] = __float2bfloat16_rn(c[m][0][1] + c[m][1][1]);
        out[o + 8] = __float2bfloat16_rn(c[m][0][2] + c[m][1][2]);
        out[o + 24] = __float2bfloat16_rn(c[m][0][3] + c[m][1][3]);
      }
    }
    __syncthreads();  // out is complete; every warp is done with strip[buf]
    bf16* yr = y + ys(cur.b, d);
    const int t0 = cur.t0();
    for (int q = threadIdx.x; q < (n_out + 7) / 8; q += kThreads) {
      const int t = t0 + 8 * q;
      if (vec && t + 8 <= L) {
        *reinterpret_cast<uint4*>(yr + t) = *reinterpret_cast<const uint4*>(out + 8 * q);
      } else {
        for (int j = 0; j < 8 && t + j < L; ++j) yr[t + j] = out[8 * q + j];
      }
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // built without sm_80 code: cuda.cu checks the device, not the build
#endif
}

// partial[group, d, s] = sum over the items of block (d, group) of sum_t gy[b,d,t] u[b,d,t - s].
// grid (D, groups) as above, kStages - 1 items' strips loading while one is in use; a pair of warps
// takes each step of 16 tiles (256 times) of an item, each warp half of G's 144 columns, and every
// kFlushItems items a warp adds its accumulators into its own slots of red (float32 adds, no long
// chains of tensor-core accumulation); at the end the block sums G's diagonals over the warps in a
// fixed order (deterministic).
__global__ void __launch_bounds__(kThreads) conv_mma_grad_k_kernel(const bf16* __restrict__ u, const RowStrides us,
                                                                   const bf16* __restrict__ gy, const RowStrides gs,
                                                                   float* __restrict__ partial, int64_t B, int64_t D,
                                                                   int L, int taps, int chunks, bool vec) {
#if FFT_TENSOR_MMA_OK
  __shared__ __align__(16) bf16 ustrip[kStages][kStrip];
  __shared__ __align__(16) bf16 gstrip[kStages][kChunk];
  // A warp covers half of G's 18 column tiles (8 window samples each): warp & 1 picks the half,
  // warp >> 1 the first of its steps (a warp holding all 18 tiles' accumulators needs ~150 registers).
  constexpr int kHalfTiles = kCols / 16;
  // each warp's half of G as its fragments, lane fastest: red[w][4 j + e][lane] is acc[j][e]
  // (conflict-free adds)
  __shared__ float red[kWarps][4 * kHalfTiles][32];
  const int64_t d = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  ItemCursor cur(blockIdx.y, gridDim.y, chunks, L), ahead = cur;
  auto issue = [&](const ItemCursor& item, int buf) {
    const int n = ((item.n_out() + kStepOutputs - 1) / kStepOutputs) * kStepOutputs;
    load_strip(ustrip[buf], u + us(item.b, d), L, item.t0() - kHalo, kHalo + n, vec);
    load_strip(gstrip[buf], gy + gs(item.b, d), L, item.t0(), n, vec);
  };
  for (int st = 0; st + 1 < kStages; ++st, ahead.advance()) {  // prologue: the first kStages - 1 items
    if (ahead.b < B) issue(ahead, st);
    cp_async_commit();
  }
  // G's columns r < 129 - taps never meet a tap: column tiles before col_first are skipped.
  int col_first = 0;
  while (8 * col_first + 7 < kHalo + 1 - taps) ++col_first;
  const int half = warp & 1;
  float acc[kHalfTiles][4];
  float(*mine)[32] = red[warp];
  // acc sums at most kFlushItems items' mmas before it is added into red (float32 adds): no long
  // chains of tensor-core accumulation.
  constexpr int kFlushItems = 8;
  auto flush = [&]() {
#pragma unroll
    for (int j = 0; j < kHalfTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        mine[4 * j + e][lane] += acc[j][e];
        acc[j][e] = 0.f;
      }
  };
#pragma unroll
  for (int j = 0; j < kHalfTiles; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      mine[4 * j + e][lane] = 0.f;
      acc[j][e] = 0.f;
    }
  // byte offsets of this lane's ldmatrix rows (see the loads below)
  const int q = lane >> 3;
  const uint32_t ustrip0 = smem_addr(&ustrip[0][0]), gstrip0 = smem_addr(&gstrip[0][0]);
  const uint32_t lane_a = 2 * (16 * (8 * (q >> 1) + (lane & 7)) + 8 * (q & 1));
  const uint32_t lane_b = 2 * (16 * (8 * (q & 1) + (lane & 7)) + 8 * (kHalfTiles * half));
  int buf = 0, done = 0;
  for (; cur.b < B; cur.advance(), buf = (buf + 1) % kStages) {
    const int steps = (cur.n_out() + kStepOutputs - 1) / kStepOutputs;
    // the item kStages - 1 ahead, into the buffer the previous item released at its last barrier
    if (ahead.b < B) issue(ahead, (buf + kStages - 1) % kStages);
    ahead.advance();
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();  // this item's strips have landed
    const uint32_t ub = ustrip0 + 2 * kStrip * buf, gb = gstrip0 + 2 * kChunk * buf;
    for (int st = warp >> 1; st < steps; st += kWarps / 2) {
      const uint32_t n0 = 2 * 16 * 16 * st;  // bytes of 16 tiles
      // A = gy^T (16 t x 16 tiles): matrix q = lane >> 3 holds tiles n0 + 8 (q >> 1) + (lane & 7),
      // times 8 (q & 1) + 0..7, transposed on load.
      uint32_t a[4];
      ldmatrix_x4_trans(a, gb + n0 + lane_a);
      // B (16 tiles x 8 samples): matrix q holds tiles n0 + 8 (q & 1) + (lane & 7), samples of column
      // tile j + (q >> 1) of this warp's half: b0, b1 of column tiles j and j + 1 in one load.
      const uint32_t base = ub + n0 + lane_b;
#pragma unroll
      for (int j = 0; j + 1 < kHalfTiles; j += 2) {
        if (kHalfTiles * half + j + 1 < col_first) continue;
        uint32_t bq[4];
        ldmatrix_x4_trans(bq, base + 2 * 8 * (j + (q >> 1)));
        mma(acc[j], a, bq[0], bq[1]);
        mma(acc[j + 1], a, bq[2], bq[3]);
      }
      {  // the half's last (odd) column tile: an x2 load, lanes 16-31 repeating lanes 0-15's addresses
        constexpr int j = kHalfTiles - 1;
        uint32_t bq[2];
        ldmatrix_x2_trans(bq, base + 2 * 8 * j);
        mma(acc[j], a, bq[0], bq[1]);
      }
    }
    if (++done % kFlushItems == 0) flush();
    __syncthreads();  // every warp is done with this item's strips
  }
  flush();
  __syncthreads();
  // G[t][r] is in the warps of half h = r / 72: acc[j][e] of lane 4 g + tig with j = (r % 72) / 8,
  // tig = (r % 8) / 2, e = (r % 2) + 2 (t / 8), g = t % 8
  float* dst = partial + ((int64_t)blockIdx.y * D + d) * taps;
  for (int s = threadIdx.x; s < taps; s += kThreads) {
    float sum = 0.f;
    for (int t = 0; t < kTile; ++t) {
      const int r = t + kHalo - s, h = r / (8 * kHalfTiles), rr = r % (8 * kHalfTiles);
      for (int w = h; w < kWarps; w += 2) sum += red[w][4 * (rr >> 3) + (r & 1) + 2 * (t >> 3)][4 * (t & 7) + ((r & 7) >> 1)];
    }
    dst[s] = sum;
  }
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

}  // namespace direct_mma
}  // namespace fft_tensor
