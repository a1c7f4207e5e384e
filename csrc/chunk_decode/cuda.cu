// chunk_decode on CUDA: a ChunkLM's whole chunk (every slot, every decoder layer, the byte picks) in
// one launch. At batch 1 the eager decoder is ~40 small kernels per slot (680 per 16-byte chunk),
// each a few microseconds of launch and latency for almost no work; here one thread-block cluster
// per row walks the slots, with the weights split over the cluster's G blocks (a power of two).
//
// Per slot and layer: each block computes the RMSNorm of the residual stream itself (C values), its
// rows of the matrix-vector product (4 consecutive rows per warp, 16-byte weight loads), and sends the
// results into every block's shared memory (distributed shared memory, sm_90), 4 rows per 16-byte
// store: clock64 stamps per phase showed each exchange's wait growing with its count of stores (the
// qkv exchange waited ~2000 cycles with 4-byte stores, ~330 with 16-byte ones). The slot's
// keys and values stay in shared memory (the decoder attends within the chunk only), and every block
// computes the small causal attention and the byte pick redundantly, so no other exchange is needed.
// The MLP is split by hidden units instead (each block's share of the second product is summed over
// the cluster in one exchange): 3 exchanges per layer + 1 per slot. The weights (a few MB) stay in L2
// across slots and chunks, and each block pulls its next slice into L1 while it waits. (Staging each
// block's next weight slice in shared memory with cp.async instead measured 7% slower: the products
// are not bound by their loads' latency. Folding each RMSNorm into the product that reads it, every
// warp summing the squares itself, measured 10% slower too: 332 against 303 us per 29m chunk.
// Profiling build: setup.py's FFT_TENSOR_DECODE_STAMPS_BUILD.)
//
// An exchange is asynchronous stores into the peers' shared memory (st.async) that count their bytes
// on the receiver's mbarrier; a block waits only for the bytes it expects. A cluster barrier here
// (what this kernel first used) costs a GPU-wide memory fence before arriving and an L1 invalidation
// after waiting, which also dropped the prefetched weights: Nsight showed the L1 hit rate at 5%.
//
// Without clusters (pre-Hopper, or FFT_TENSOR_DECODE_CLUSTER=1) G = 1: one block per row does it all.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"

namespace cg = cooperative_groups;

namespace fft_tensor {
namespace {

// 16 warps: at cluster 16 every warp's rows of each matrix are one pass of 4 rows (8 warps took two
// passes for the 768 qkv and 1024 fc rows, and had half the warps to hide latency with).
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kPickWarps = kDecodeVocab / 32;  // thread i < 256 owns byte i in the pick
static_assert(kThreads >= kDecodeVocab && kWarps <= 32, "the pick and the reductions assume these");
constexpr int kMaxCluster = 16;
constexpr int kStamps = 96;
static_assert(10 * kDecodeMaxLayers + 6 <= kStamps, "a stamp per phase of a slot");
static_assert(kDecodeColumnGroups % kMaxCluster == 0,
              "every cluster size (a power of two up to 16) divides the MLP column groups");

template <typename w_t>
struct DecodeArgs {
  const float* context;   // (N, C)
  const int64_t* first;   // (N,)
  const double* uniforms; // (N, K)
  const float* byte_emb;  // (256, C)
  const float* slot_emb;  // (>= K, C)
  const float* norm1[kDecodeMaxLayers];
  const float* norm2[kDecodeMaxLayers];
  const w_t* qkv[kDecodeMaxLayers];      // (3C, C)
  const w_t* proj[kDecodeMaxLayers];     // (C, C)
  const w_t* fc[kDecodeMaxLayers];       // (F, C)
  const w_t* fc_proj[kDecodeMaxLayers];  // (C, F)
  const float* norm_f;
  const w_t* head;        // (256, C)
  float* logits;          // (N, K, 256)
  int64_t* bytes;         // (N, K)
  int C, F, H, K, layers, G, top_k;
  long long* stamps;  // profiling build only: clock64 at phase ends, (N, G, K, kStamps)
  float eps;
  double temperature;
};


__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// A barrier over every thread of the cluster whose shared-memory writes it also publishes.
__device__ __forceinline__ void cluster_barrier(int G) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (G > 1) {
    cg::this_cluster().sync();
    return;
  }
#endif
  __syncthreads();
}

__device__ __forceinline__ int cluster_rank(int G) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (G > 1) return (int)cg::this_cluster().block_rank();
#endif
  return 0;
}

// The exchanges: every one writes a vector (R values, each row's owner sends it to every block) that
// all blocks read after it. Two mbarriers alternate between consecutive exchanges e (bars[e & 1],
// phase parity (e >> 1) & 1); at the start of exchange e thread 0 arms its barrier with the bytes it
// will receive (R * 4), and each owner's st.async counts its 4 bytes on the receiver's barrier.
// Why a barrier is never reused early: a peer sends exchange e + 2 only after receiving this block's
// part of e + 1, which this block sends only after its wait for e (and e - 1, so the barrier's last
// phase is complete before it is armed again); likewise every buffer is rewritten only by sends that
// follow a peer's wait on data this block sends after it has last read that buffer. Both need every
// block to send in every exchange: the launcher picks a cluster size dividing C, so each block owns
// rows of every row-split product, and every block sends its MLP column groups.
// The wait is an acquire at CTA scope on the block's own barrier (as for TMA multicast writes from
// other CTAs); a cluster-scope acquire would add an L1 invalidation after every wait.
// G == 1 (no cluster): plain shared-memory stores and a block barrier.
struct Exchange {
  uint64_t* bars;  // 2 mbarriers in shared memory
  int e = 0;       // exchanges started so far
  int G;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __device__ __forceinline__ static unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
  }
#endif

  // every thread of the cluster, once, before the first exchange
  __device__ __forceinline__ void init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (G > 1 && threadIdx.x == 0) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bars)) : "memory");
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bars + 1)) : "memory");
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
#endif
    cluster_barrier(G);  // every block's barriers exist before anyone sends
  }

  // thread 0 arms this exchange's barrier: R values of 4 bytes will arrive
  __device__ __forceinline__ void begin(int R) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (G > 1 && threadIdx.x == 0)
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bars + (e & 1))),
                   "r"(R * 4) : "memory");
#endif
  }

  // v into element p of every block's shared memory, by lanes that all hold v: this one sends to
  // blocks first, first + stride, ...
  __device__ __forceinline__ void send1(float* p, float v, int first, int stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (G > 1) {
      for (int g = first; g < G; g += stride) {
        unsigned dst, bar;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(dst) : "r"(smem_u32(p)), "r"(g));
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(bar) : "r"(smem_u32(bars + (e & 1))), "r"(g));
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(dst),
                     "r"(__float_as_uint(v)), "r"(bar) : "memory");
      }
      return;
    }
#endif
    if (first == 0) *p = v;
  }

  // 4 consecutive values into p[0..3] (16-byte aligned) of every block's shared memory: one 16-byte
  // st.async per destination instead of four 4-byte ones (the exchanges' cost grows with their count
  // of stores: clock64 stamps showed the waits tracking it)
  __device__ __forceinline__ void send4(float* p, float4 v, int first, int stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (G > 1) {
      for (int g = first; g < G; g += stride) {
        unsigned dst, bar;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(dst) : "r"(smem_u32(p)), "r"(g));
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(bar) : "r"(smem_u32(bars + (e & 1))), "r"(g));
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];"
                     ::"r"(dst), "r"(__float_as_uint(v.x)), "r"(__float_as_uint(v.y)), "r"(__float_as_uint(v.z)),
                     "r"(__float_as_uint(v.w)), "r"(bar) : "memory");
      }
      return;
    }
#endif
    if (first == 0) *reinterpret_cast<float4*>(p) = v;
  }

  // rows r .. r + m - 1 (m <= 4, values v) to dst(r + u) in every block, by a whole warp (lane i sends
  // to blocks i, i + 32, ...): 16-byte stores when the 4 rows are consecutive and aligned (rows4)
  template <typename Dst>
  __device__ __forceinline__ void send_rows(Dst dst, int r, int m, float4 v, bool rows4, int lane) {
    if (m == 4 && rows4) {
      send4(dst(r), v, lane, 32);
      return;
    }
    const float vs[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      if (u < m) send1(dst(r + u), vs[u], lane, 32);
    }
  }

  // every thread: this exchange's values have all arrived (ends with a block barrier)
  __device__ __forceinline__ void wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (G > 1) {
      const unsigned bar = smem_u32(bars + (e & 1)), parity = (e >> 1) & 1;
      unsigned done = 0;
      do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
      } while (!done);
    }
#endif
    ++e;
    __syncthreads();
  }
};

// 16 bytes of weights (4 float32 or 8 bf16/fp16) as floats.
template <typename w_t>
struct Vec {
  static constexpr int n = 16 / sizeof(w_t);
  float v[n];
  __device__ __forceinline__ void load(const w_t* p) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    if constexpr (std::is_same_v<w_t, float>) {
      v[0] = __uint_as_float(raw.x); v[1] = __uint_as_float(raw.y);
      v[2] = __uint_as_float(raw.z); v[3] = __uint_as_float(raw.w);
    } else {
      const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float2 f;
        if constexpr (std::is_same_v<w_t, __nv_bfloat16>) {
          f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[i]));
        } else {
          f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
        }
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
      }
    }
  }
};

// n floats of a shared vector at a 16-byte aligned offset
template <int n>
__device__ __forceinline__ void load_vector(const float* v, float (&out)[n]) {
#pragma unroll
  for (int e = 0; e < n; e += 4) {
    const float4 t = *reinterpret_cast<const float4*>(v + e);
    out[e] = t.x; out[e + 1] = t.y; out[e + 2] = t.z; out[e + 3] = t.w;
  }
}

// The 4 partial sums of a lane (rows u = 0..3) reduced over the warp in 6 shuffles instead of 20:
// halve the rows while halving the lanes (offsets 16, 8), then sum within groups of 8 lanes. Lanes
// 8u .. 8u + 7 end with row u's total (all 8 the same: each step adds the same two values).
__device__ __forceinline__ float warp_sum4(const float (&a)[4], int lane) {
  const bool upper = lane & 16;  // keeps rows 2, 3; the partner lane (lane ^ 16) keeps rows 0, 1
  const float b0 = (upper ? a[2] : a[0]) + __shfl_xor_sync(0xffffffffu, upper ? a[0] : a[2], 16);
  const float b1 = (upper ? a[3] : a[1]) + __shfl_xor_sync(0xffffffffu, upper ? a[1] : a[3], 16);
  const bool odd = lane & 8;     // keeps row 2*upper + 1
  float c = (odd ? b1 : b0) + __shfl_xor_sync(0xffffffffu, odd ? b0 : b1, 8);
#pragma unroll
  for (int off = 4; off > 0; off >>= 1) c += __shfl_xor_sync(0xffffffffu, c, off);
  return c;
}

// This block's rows [r0, r1) of W (R, Cin) times the shared vector v (Cin): a warp takes 4 consecutive
// rows at a time (rq .. rq + 3, one 16-byte load of each in flight per lane), lanes 8u .. 8u + 7 reduce
// row rq + u, then every lane gathers the 4 totals: epilogue(rq, m, sums) by the whole warp, with
// m = min(4, r1 - rq) rows valid. A row's sum has the same shape whatever the warp or block.
template <typename w_t, typename Epilogue>
__device__ __forceinline__ void matvec_rows(const w_t* __restrict__ W, const float* v, int Cin, int r0, int r1,
                                            Epilogue epilogue) {
  constexpr int n = Vec<w_t>::n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int rq = r0 + 4 * warp; rq < r1; rq += 4 * kWarps) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int c = lane * n; c < Cin; c += 32 * n) {
      Vec<w_t> w[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (rq + u < r1) w[u].load(W + (int64_t)(rq + u) * Cin + c);
      }
      float xv[n];
      load_vector<n>(v + c, xv);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (rq + u < r1) {
#pragma unroll
          for (int e = 0; e < n; ++e) acc[u] = fmaf(w[u].v[e], xv[e], acc[u]);
        }
      }
    }
    const float s = warp_sum4(acc, lane);
    const float4 sums = make_float4(__shfl_sync(0xffffffffu, s, 0), __shfl_sync(0xffffffffu, s, 8),
                                    __shfl_sync(0xffffffffu, s, 16), __shfl_sync(0xffffffffu, s, 24));
    epilogue(rq, min(4, r1 - rq), sums);
  }
}

// Rows [r0, r1) of R split evenly over the G blocks: this block's.
__device__ __forceinline__ int2 block_rows(int R, int rank, int G) {
  const int per_block = (R + G - 1) / G;
  return make_int2(min(R, rank * per_block), min(R, (rank + 1) * per_block));
}

// Columns per group of the MLP's hidden vector (kDecodeColumnGroups groups): F / 16 rounded up to
// whole 16-byte vectors, so every group starts aligned.
template <typename w_t>
__device__ __forceinline__ int group_cols(int F) {
  constexpr int n = Vec<w_t>::n;
  return ((F + kDecodeColumnGroups - 1) / kDecodeColumnGroups + n - 1) / n * n;
}

// Rows 0..R-1 of W (R, Cin; R a multiple of 4) over columns [c0, c1) times v[c0..c1): epilogue4(r,
// sums, sub) for rows r .. r + 3 as a float4, by the 8 lanes that hold them (sub = lane % 8). A warp
// takes 16 rows: 4 groups of 8 lanes, 4 rows in flight each (group k's row u is base + 4u + k), then
// a 16-shuffle transpose gives group k rows base + 4k .. base + 4k + 3; every row's sum has the same
// shape whatever the warp or block.
template <typename w_t, typename Epilogue4>
__device__ __forceinline__ void matvec_cols(const w_t* __restrict__ W, const float* v, int Cin, int R, int c0, int c1,
                                            Epilogue4 epilogue4) {
  constexpr int n = Vec<w_t>::n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane >> 3, sub = lane & 7;
  for (int base = warp * 16; base < R; base += kWarps * 16) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int c = c0 + sub * n; c < c1; c += 8 * n) {
      Vec<w_t> w[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int r = base + u * 4 + grp;
        if (r < R) w[u].load(W + (int64_t)r * Cin + c);
      }
      float xv[n];
      load_vector<n>(v + c, xv);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (base + u * 4 + grp < R) {
#pragma unroll
          for (int e = 0; e < n; ++e) acc[u] = fmaf(w[u].v[e], xv[e], acc[u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
#pragma unroll
      for (int off = 4; off > 0; off >>= 1) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], off);
    }
    float4 rows4 = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float t0 = __shfl_sync(0xffffffffu, acc[u], sub), t1 = __shfl_sync(0xffffffffu, acc[u], sub + 8),
                  t2 = __shfl_sync(0xffffffffu, acc[u], sub + 16), t3 = __shfl_sync(0xffffffffu, acc[u], sub + 24);
      if (u == grp) rows4 = make_float4(t0, t1, t2, t3);
    }
    const int r = base + grp * 4;
    if (r < R) epilogue4(r, rows4, sub);
  }
}

// Columns [c0, c1) of every row of W (R, Cin) pulled into L1 (128-byte lines).
template <typename w_t>
__device__ __forceinline__ void prefetch_cols(const w_t* W, int Cin, int R, int c0, int c1) {
  if (c1 <= c0) return;
  constexpr int per_line = 128 / sizeof(w_t);
  const int lines = (c1 - c0 + per_line - 1) / per_line;
  for (int i = threadIdx.x; i < R * lines; i += kThreads)
    asm volatile("prefetch.global.L1 [%0];" ::"l"(W + (int64_t)(i / lines) * Cin + c0 + (i % lines) * per_line));
}

// Rows [r0, r1) of W (R, Cin) pulled into L1 while the block waits for an exchange before the
// product that reads them (the weights never depend on the exchange; the vector does).
template <typename w_t>
__device__ __forceinline__ void prefetch_rows(const w_t* W, int Cin, int2 rows) {
  const int r0 = rows.x, r1 = rows.y;
  if (r1 <= r0) return;
  const char* base = reinterpret_cast<const char*>(W + (int64_t)r0 * Cin);
  const int64_t bytes = (int64_t)(r1 - r0) * Cin * (int64_t)sizeof(w_t);
  for (int64_t off = (int64_t)threadIdx.x * 128; off < bytes; off += (int64_t)kThreads * 128)
    asm volatile("prefetch.global.L1 [%0];" ::"l"(base + off));
}

// out = x / rms(x) * w over C values (every thread of the block; ends with a block barrier).
__device__ __forceinline__ void rms_norm(const float* x, const float* w, float* out, float* red, int C, float eps) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += kThreads) ss = fmaf(x[i], x[i], ss);
  ss = warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) total += red[i];
  const float r = rsqrtf(total / (float)C + eps);
  for (int i = threadIdx.x; i < C; i += kThreads) out[i] = x[i] * r * w[i];
  __syncthreads();  // out complete; red free again
}

// The byte drawn from logit[0..255] (every thread of the block gets it): fft_lm.generation.sample_bytes's
// rule, see chunk_decode's doc. Threads i < 256 hold byte i (whole warps); the others only meet the
// barriers. dbl: 256 + 32 doubles of scratch, pick: one int.
__device__ int pick_byte(const float* logit, double u, double temperature, int top_k, double* dbl, int* pick) {
  const int i = threadIdx.x, warp = i / 32, lane = i % 32;
  const bool mine = i < kDecodeVocab;
  double* red = dbl + kDecodeVocab;
  if (temperature == 0) {
    // argmax, first index on ties, NaN as the largest (torch.argmax)
    float v = mine ? logit[i] : 0.f;
    int idx = i;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, off);
      const int oi = __shfl_xor_sync(0xffffffffu, idx, off);
      const bool better = (isnan(ov) && !isnan(v)) || (isnan(ov) == isnan(v) && (ov > v || ((ov == v || isnan(v)) && oi < idx)));
      if (better) { v = ov; idx = oi; }
    }
    if (lane == 0 && mine) { red[warp] = v; reinterpret_cast<int*>(red + kPickWarps)[warp] = idx; }
    __syncthreads();
    if (i == 0) {
      float bv = (float)red[0];
      int bi = reinterpret_cast<int*>(red + kPickWarps)[0];
      for (int w = 1; w < kPickWarps; ++w) {
        const float ov = (float)red[w];
        const int oi = reinterpret_cast<int*>(red + kPickWarps)[w];
        // warps hold ascending index ranges: a later warp wins only if strictly better
        if ((isnan(ov) && !isnan(bv)) || (!isnan(bv) && ov > bv)) { bv = ov; bi = oi; }
      }
      *pick = bi;
    }
    __syncthreads();
    return *pick;
  }
  double s = mine ? (double)logit[i] / temperature : -INFINITY;
  if (top_k > 0 && top_k < kDecodeVocab) {
    if (mine) dbl[i] = s;
    __syncthreads();
    if (mine) {
      int greater = 0;  // s is among the top_k iff fewer than top_k scores exceed it
      for (int j = 0; j < kDecodeVocab; ++j) greater += dbl[j] > s;
      if (greater >= top_k) s = -INFINITY;
    }
    __syncthreads();
  }
  // softmax in float64: max, exp, sum
  double m = s;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (lane == 0 && mine) red[warp] = m;
  __syncthreads();
  m = red[0];
  for (int w = 1; w < kPickWarps; ++w) m = fmax(m, red[w]);
  __syncthreads();
  const double e = mine ? exp(s - m) : 0.0;
  double total = e;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
  if (lane == 0 && mine) red[warp] = total;
  __syncthreads();
  total = 0;
  for (int w = 0; w < kPickWarps; ++w) total += red[w];
  __syncthreads();
  // inclusive prefix sum of the probabilities (the CDF)
  double c = e / total;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const double o = __shfl_up_sync(0xffffffffu, c, off);
    if (lane >= off) c += o;
  }
  if (lane == 31 && mine) red[warp] = c;
  if (i == 0) *pick = kDecodeVocab - 1;
  __syncthreads();
  if (mine) {
    for (int w = 0; w < warp; ++w) c += red[w];
    dbl[i] = c;
  }
  __syncthreads();
  // the first byte whose cumulative mass exceeds u * total mass
  if (mine && c > u * dbl[kDecodeVocab - 1]) atomicMin(pick, i);
  __syncthreads();
  return *pick;
}

template <typename w_t>
__global__ void __launch_bounds__(kThreads) chunk_decode_kernel(const DecodeArgs<w_t> p) {
  extern __shared__ __align__(16) float smem[];
  const int G = p.G, C = p.C, F = p.F, H = p.H, K = p.K, Dh = C / H;
  const int rank = cluster_rank(G);
  const int64_t row = blockIdx.x / G;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const SmemLayout L = SmemLayout::of(C, F, H, K, p.layers);
  float *x = smem + L.x, *a = smem + L.a, *y = smem + L.y, *q = smem + L.q, *hid = smem + L.hid, *part = smem + L.part,
        *logit = smem + L.logit, *kc = smem + L.kc, *vc = smem + L.vc, *scores = smem + L.scores,
        *norms = smem + L.norms, *red = smem + L.red;
  double* dbl = reinterpret_cast<double*>(smem + L.end_floats);
  int* pick = reinterpret_cast<int*>(dbl + kDecodeVocab + 32);
  Exchange ex;
  ex.bars = reinterpret_cast<uint64_t*>(dbl + kDecodeVocab + 32 + 1);
  ex.G = G;
  const float* ctx = p.context + row * C;
  const float scale = rsqrtf((float)Dh);
  const int CP = SmemLayout::kv_stride(C);  // padded row stride of the keys and values
#ifdef FFT_TENSOR_DECODE_STAMPS
  // profiling build: clock64 at the end of each phase of each slot (after a block barrier)
  auto stamp = [&](int j, int idx) {
    if (p.stamps) {
      __syncthreads();
      if (tid == 0) p.stamps[((row * G + rank) * K + j) * kStamps + idx] = clock64();
    }
  };
#else
  auto stamp = [](int, int) {};
#endif

  int64_t byte = p.first[row];
  CUDA_KERNEL_ASSERT(byte >= 0 && byte < kDecodeVocab);
  // this block's rows of each row-split matrix; of the MLP, its column groups of the hidden vector
  const int2 qkv_rows = block_rows(3 * C, rank, G), c_rows = block_rows(C, rank, G),
             head_rows = block_rows(kDecodeVocab, rank, G);
  const int groups = kDecodeColumnGroups / G, pf = group_cols<w_t>(F);
  const int2 hid_rows = make_int2(min(F, rank * groups * pf), min(F, (rank + 1) * groups * pf));

  // the norm weights in shared memory: norm1[l], norm2[l] per layer, then norm_f
  for (int l = 0; l <= p.layers; ++l) {
    for (int i = tid; i < C; i += kThreads) {
      if (l < p.layers) {
        norms[2 * l * C + i] = p.norm1[l][i];
        norms[(2 * l + 1) * C + i] = p.norm2[l][i];
      } else {
        norms[2 * l * C + i] = p.norm_f[i];
      }
    }
  }
  __syncthreads();
  ex.init();  // also: every block of the cluster is running before anyone writes into its memory
  for (int j = 0; j < K; ++j) {
    stamp(j, 0);
    for (int i = tid; i < C; i += kThreads) x[i] = p.byte_emb[byte * C + i] + p.slot_emb[(int64_t)j * C + i] + ctx[i];
    __syncthreads();
    stamp(j, 1);
    for (int l = 0; l < p.layers; ++l) {
      const int sb = 2 + 10 * l;
      float* kl = kc + l * K * CP;
      float* vl = vc + l * K * CP;
      rms_norm(x, norms + 2 * l * C, a, red, C, p.eps);
      stamp(j, sb + 0);
      ex.begin(3 * C);
      // q, k or v row r; 4 aligned consecutive rows never straddle two of them (C % 4 == 0 on CUDA)
      auto qkv_dst = [&](int r) { return r < C ? q + r : (r < 2 * C ? kl + j * CP + (r - C) : vl + j * CP + (r - 2 * C)); };
      matvec_rows(p.qkv[l], a, C, qkv_rows.x, qkv_rows.y, [&](int rq, int m, float4 v) {
        ex.send_rows(qkv_dst, rq, m, v, rq % 4 == 0, lane);
      });
      prefetch_rows(p.proj[l], C, c_rows);
      stamp(j, sb + 1);
      ex.wait();
      stamp(j, sb + 2);
      // causal attention of slot j over slots 0..j, one warp per head (every block, redundantly);
      // lane i scores key i, with 4 partial sums over 16-byte loads
      for (int h = warp; h < H; h += kWarps) {
        float* sc = scores + h * K;
        for (int i = lane; i <= j; i += 32) {
          const float* qh = q + h * Dh;
          const float* kr = kl + i * CP + h * Dh;
          float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
          if (Dh % 4 == 0) {
#pragma unroll 4
            for (int d = 0; d < Dh; d += 4) {
              const float4 qa = *reinterpret_cast<const float4*>(qh + d), ka = *reinterpret_cast<const float4*>(kr + d);
              d0 = fmaf(qa.x, ka.x, d0); d1 = fmaf(qa.y, ka.y, d1);
              d2 = fmaf(qa.z, ka.z, d2); d3 = fmaf(qa.w, ka.w, d3);
            }
          } else {
            for (int d = 0; d < Dh; ++d) d0 = fmaf(qh[d], kr[d], d0);
          }
          sc[i] = ((d0 + d1) + (d2 + d3)) * scale;
        }
        __syncwarp();
        float m = -INFINITY;
        for (int i = lane; i <= j; i += 32) m = fmaxf(m, sc[i]);
        m = warp_max(m);
        float total_e = 0.f;
        for (int i = lane; i <= j; i += 32) total_e += (sc[i] = expf(sc[i] - m));
        total_e = warp_sum(total_e);
        __syncwarp();
        for (int d = lane; d < Dh; d += 32) {
          float acc = 0.f;
          for (int i = 0; i <= j; ++i) acc = fmaf(sc[i], vl[i * CP + h * Dh + d], acc);
          y[h * Dh + d] = acc / total_e;
        }
      }
      __syncthreads();
      stamp(j, sb + 3);
      ex.begin(C);
      auto x_dst = [&](int r) { return x + r; };
      matvec_rows(p.proj[l], y, C, c_rows.x, c_rows.y, [&](int rq, int m, float4 v) {
        const float old[4] = {x[rq], m > 1 ? x[rq + 1] : 0.f, m > 2 ? x[rq + 2] : 0.f, m > 3 ? x[rq + 3] : 0.f};
        __syncwarp();  // every lane has read x[rq..] before a send rewrites this block's copy
        ex.send_rows(x_dst, rq, m, make_float4(old[0] + v.x, old[1] + v.y, old[2] + v.z, old[3] + v.w), rq % 4 == 0,
                     lane);
      });
      prefetch_rows(p.fc[l], C, hid_rows);
      prefetch_cols(p.fc_proj[l], F, C, hid_rows.x, hid_rows.y);
      stamp(j, sb + 4);
      ex.wait();
      stamp(j, sb + 5);
      // MLP in one exchange: this block's hidden units (its column groups) stay local, and their share
      // of the second product goes out as one partial sum per group and output row; every block then
      // adds the 16 partials in group order (an exchange of the hidden vector and then of the output
      // rows cost one more round trip per layer)
      rms_norm(x, norms + (2 * l + 1) * C, a, red, C, p.eps);
      matvec_rows(p.fc[l], a, C, hid_rows.x, hid_rows.y, [&](int rq, int m, float4 v) {
        const float vs[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (lane == u && u < m) hid[rq + u] = 0.5f * vs[u] * (1.f + erff(vs[u] * 0.70710678118654752f));  // exact GELU
        }
      });
      __syncthreads();
      stamp(j, sb + 6);
      ex.begin(kDecodeColumnGroups * C);
      for (int g = rank * groups; g < (rank + 1) * groups; ++g) {
        matvec_cols(p.fc_proj[l], hid, F, C, min(F, g * pf), min(F, (g + 1) * pf),
                    [&](int r, float4 v, int sub) { ex.send4(part + g * C + r, v, sub, 8); });
      }
      if (l + 1 < p.layers) prefetch_rows(p.qkv[l + 1], C, qkv_rows);
      else prefetch_rows(p.head, C, head_rows);
      stamp(j, sb + 7);
      ex.wait();
      stamp(j, sb + 8);
      for (int i = tid; i < C; i += kThreads) {
        float sum = part[i];
        for (int g = 1; g < kDecodeColumnGroups; ++g) sum += part[g * C + i];
        x[i] += sum;
      }
      __syncthreads();
      stamp(j, sb + 9);
    }
    const int fb = 2 + 10 * p.layers;
    rms_norm(x, norms + 2 * p.layers * C, a, red, C, p.eps);
    stamp(j, fb);
    ex.begin(kDecodeVocab);
    auto logit_dst = [&](int r) { return logit + r; };
    matvec_rows(p.head, a, C, head_rows.x, head_rows.y,
                [&](int rq, int m, float4 v) { ex.send_rows(logit_dst, rq, m, v, rq % 4 == 0, lane); });
    prefetch_rows(p.qkv[0], C, qkv_rows);
    stamp(j, fb + 1);
    ex.wait();
    stamp(j, fb + 2);
    byte = pick_byte(logit, p.temperature == 0 ? 0.0 : p.uniforms[row * K + j], p.temperature, p.top_k, dbl, pick);
    if (rank == 0 && tid < kDecodeVocab) {
      p.logits[(row * K + j) * kDecodeVocab + tid] = logit[tid];
      if (tid == 0) p.bytes[row * K + j] = byte;
    }
    stamp(j, fb + 3);
  }
  cluster_barrier(G);  // no block leaves while its stores into another may still be in flight
}

template <typename w_t>
bool cluster_fits(int G, size_t smem) {
  auto kernel = chunk_decode_kernel<w_t>;
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess || attr.binaryVersion < 90 || attr.ptxVersion < 90) {
    (void)cudaGetLastError();
    return false;
  }
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = G;
  cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(G);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return clusters > 0;
}

// FFT_TENSOR_DECODE_CLUSTER rounded down to a power of two: each block owns 16 / G of the MLP's
// column groups, so G must divide 16 (a cluster of 12 would leave 4 groups unsent).
int max_cluster_env() {
  static const int value = [] {
    const char* env = std::getenv("FFT_TENSOR_DECODE_CLUSTER");
    const int v = env ? std::atoi(env) : kMaxCluster;
    if (v < 1 || v > kMaxCluster) return kMaxCluster;
    int g = 1;
    while (2 * g <= v) g *= 2;
    return g;
  }();
  return value;
}

// Raises the kernel's dynamic shared-memory limit on the current device to at least smem, once per
// new maximum (an eager generation step called cudaFuncSetAttribute on every launch before).
template <typename w_t>
void allow_smem(size_t smem) {
  if (smem <= 48 * 1024) return;
  static std::mutex mutex;
  static std::map<int, size_t> allowed;  // device -> the limit set so far
  const int device = at::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  size_t& limit = allowed[device];
  if (smem <= limit) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(chunk_decode_kernel<w_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  limit = smem;
}

// The largest cluster (16, 8, 4, 2) the device runs with this much shared memory per block, else 1.
template <typename w_t>
int cluster_size(size_t smem) {
  static std::mutex mutex;
  static std::map<std::pair<int, size_t>, int> cache;  // (device, smem) -> G
  const int device = at::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find({device, smem});
  if (it != cache.end()) return it->second;
  int G = 1;
  if (at::cuda::getCurrentDeviceProperties()->major >= 9) {
    auto kernel = chunk_decode_kernel<w_t>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
      (void)cudaGetLastError();
    for (int g = max_cluster_env(); g >= 2; g /= 2) {
      if (cluster_fits<w_t>(g, smem)) {
        G = g;
        break;
      }
    }
  }
  cache[{device, smem}] = G;
  return G;
}

template <typename w_t, typename at_t>
void launch(const DecodeShape& s, const at::Tensor& ctx, const at::Tensor& first, const at::Tensor& uni,
            const std::vector<at::Tensor>& f32, const std::vector<at::Tensor>& lin, double eps, double temperature,
            int64_t top_k, at::Tensor& logits, at::Tensor& bytes) {
  // f32: byte_emb, slot_emb, norm_f, then norm1[l], norm2[l] per layer; lin: head, then qkv, proj, fc, fc_proj per layer
  DecodeArgs<w_t> p{};
  p.context = ctx.data_ptr<float>();
  p.first = first.data_ptr<int64_t>();
  p.uniforms = uni.data_ptr<double>();
  p.byte_emb = f32[0].data_ptr<float>();
  p.slot_emb = f32[1].data_ptr<float>();
  p.norm_f = f32[2].data_ptr<float>();
  auto w = [](const at::Tensor& t) { return reinterpret_cast<const w_t*>(t.data_ptr<at_t>()); };
  p.head = w(lin[0]);
  for (int64_t l = 0; l < s.layers; ++l) {
    p.norm1[l] = f32[3 + 2 * l].data_ptr<float>();
    p.norm2[l] = f32[4 + 2 * l].data_ptr<float>();
    p.qkv[l] = w(lin[1 + 4 * l]);
    p.proj[l] = w(lin[2 + 4 * l]);
    p.fc[l] = w(lin[3 + 4 * l]);
    p.fc_proj[l] = w(lin[4 + 4 * l]);
  }
  p.logits = logits.data_ptr<float>();
  p.bytes = bytes.data_ptr<int64_t>();
  p.C = (int)s.C;
  p.F = (int)s.F;
  p.H = (int)s.H;
  p.K = (int)s.K;
  p.layers = (int)s.layers;
  p.top_k = (int)std::min<int64_t>(top_k, kDecodeVocab);
  p.eps = (float)eps;
  p.temperature = temperature;
  const size_t smem = (size_t)chunk_decode_smem_bytes(s.C, s.F, s.H, s.K, s.layers);  // refuses int overflow
  auto kernel = chunk_decode_kernel<w_t>;
  const int max_smem = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(smem <= (size_t)max_smem, "chunk_decode: the decoder's per-chunk state needs ", std::to_string(smem),
              " bytes of shared memory (C = ", std::to_string(s.C), ", F = ", std::to_string(s.F), ", K = ",
              std::to_string(s.K), ", ", std::to_string(s.layers), " layers), more than this GPU's ",
              std::to_string(max_smem), "; decode with fewer slots or layers");
  allow_smem<w_t>(smem);  // before the cluster query, which counts blocks at this size
  p.G = cluster_size<w_t>(smem);
  // every block must own rows of every row-split product (3C, C and 256 rows): the exchange protocol
  // relies on each block sending in each exchange (a block with nothing to send could fall two
  // exchanges behind a peer that writes into its buffers). G dividing C guarantees it.
  while (p.G > 1 && p.C % p.G != 0) p.G /= 2;
  const auto stream = at::cuda::getCurrentCUDAStream();
#ifdef FFT_TENSOR_DECODE_STAMPS
  // the profiling build: stamps written to the file FFT_TENSOR_DECODE_STAMPS names (eager calls only:
  // the dump synchronizes), read by benchmarks/decode_stamps.py
  const char* stamp_path = std::getenv("FFT_TENSOR_DECODE_STAMPS");
  at::Tensor stamps;
  if (stamp_path && *stamp_path) {
    stamps = at::zeros({s.N * p.G * s.K * kStamps}, ctx.options().dtype(at::kLong));
    p.stamps = reinterpret_cast<long long*>(stamps.data_ptr<int64_t>());
  }
  auto dump = [&] {
    if (!stamps.defined()) return;
    at::Tensor host = stamps.cpu();
    FILE* f = std::fopen(stamp_path, "a");
    if (!f) return;
    std::fprintf(f, "# N %lld G %d K %d layers %d stamps %d\n", (long long)s.N, p.G, p.K, p.layers, kStamps);
    const int64_t* v = host.data_ptr<int64_t>();
    for (int64_t i = 0; i < host.numel(); i += kStamps) {
      for (int k = 0; k < kStamps; ++k) std::fprintf(f, k ? " %lld" : "%lld", (long long)v[i + k]);
      std::fprintf(f, "\n");
    }
    std::fclose(f);
  };
#else
  auto dump = [] {};
#endif
  TORCH_CHECK(s.N * p.G < (int64_t(1) << 31), "chunk_decode: too many rows (", std::to_string(s.N), ")");
  if (p.G == 1) {
    kernel<<<(unsigned)s.N, kThreads, smem, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dump();
    return;
  }
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = p.G;
  cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3((unsigned)(s.N * p.G));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &cluster;
  cfg.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p));
  dump();
}

std::tuple<at::Tensor, at::Tensor> chunk_decode_cuda(const at::Tensor& context, const at::Tensor& first,
                                                     const at::Tensor& uniforms, const at::Tensor& byte_emb,
                                                     const at::Tensor& slot_emb, at::TensorList norm1,
                                                     at::TensorList qkv, at::TensorList proj, at::TensorList norm2,
                                                     at::TensorList fc, at::TensorList fc_proj,
                                                     const at::Tensor& norm_f, const at::Tensor& head, int64_t heads,
                                                     double eps, double temperature, int64_t top_k) {
  const DecodeShape s = check_chunk_decode_args(context, first, uniforms, byte_emb, slot_emb, norm1, qkv, proj, norm2,
                                                fc, fc_proj, norm_f, head, heads, temperature, top_k);
  const std::string why = chunk_decode_unsupported(s.C, s.F, s.H, s.layers, qkv[0].scalar_type(), /*cuda=*/true);
  TORCH_CHECK(why.empty(), "chunk_decode: ", why);
  c10::cuda::CUDAGuard guard(context.device());
  // float32 copies of the small float tensors (no-ops when they already are), weights contiguous
  std::vector<at::Tensor> f32 = {byte_emb, slot_emb, norm_f};
  for (int64_t l = 0; l < s.layers; ++l) {
    f32.push_back(norm1[l]);
    f32.push_back(norm2[l]);
  }
  for (auto& t : f32) t = t.to(at::kFloat).contiguous();
  std::vector<at::Tensor> lin = {head};
  for (int64_t l = 0; l < s.layers; ++l) {
    for (const auto* list : {&qkv, &proj, &fc, &fc_proj}) lin.push_back((*list)[l]);
  }
  for (auto& t : lin) {
    t = t.contiguous();
    if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) t = t.clone();  // a view at an odd offset
  }
  const at::Tensor ctx = context.contiguous(), first_c = first.contiguous(), uni = uniforms.contiguous();
  at::Tensor logits = at::empty({s.N, s.K, kDecodeVocab}, context.options());
  at::Tensor bytes = at::empty({s.N, s.K}, first.options());
  if (s.N == 0) return {logits, bytes};
  switch (qkv[0].scalar_type()) {
    case at::kFloat:
      launch<float, float>(s, ctx, first_c, uni, f32, lin, eps, temperature, top_k, logits, bytes);
      break;
    case at::kBFloat16:
      launch<__nv_bfloat16, at::BFloat16>(s, ctx, first_c, uni, f32, lin, eps, temperature, top_k, logits, bytes);
      break;
    default:
      launch<__half, at::Half>(s, ctx, first_c, uni, f32, lin, eps, temperature, top_k, logits, bytes);
  }
  return {logits, bytes};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CUDA, m) { m.impl("chunk_decode", &chunk_decode_cuda); }

}  // namespace fft_tensor
