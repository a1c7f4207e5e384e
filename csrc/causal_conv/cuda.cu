// causal_conv on CUDA: a fused shared-memory FFT convolution.
//
// Every plan (common.h: conv_plan) is overlap-save over windows of N = 2^m points: window j of a
// row holds u[j*S - (taps-1) + n], n < N, and its outputs n in [taps-1, taps-1+S) are exact. One
// thread block owns one window of TWO batch rows of one channel, packed as z = u[b] + i*u[b+1]:
// the kernel spectrum of a real kernel is Hermitian, so the real and imaginary parts of
// IFFT(FFT(z) * K) are the two convolutions (one complex FFT per two real rows, no pre/post
// processing). The inverse is a second forward FFT of the conjugate, with 1/N folded into K.
// So a row is read once, transformed, multiplied, transformed back and written once; the only
// other traffic is K (D x (N/2+1) complex, reused from L2 by the blocks of one channel).
// The skip term is tap 0 of the effective kernel. grad_u is the same kernel run backwards in time;
// grad_k sums G * conj(U) over (row, window) items per (channel, group) block: rows in pairs
// (two FFTs per pair) up to 8192 points, else one FFT of u + i*sc*gy per row and window (sc: a
// power of two that keeps gy above u's rounding).
// A one-window plan of 32K points (taps > 8192 and L + taps - 1 <= 32768: Lk = L from 8193 to 16384,
// L up to 24576) takes the real-window kernels: the
// forward and grad_u alone one row per block (conv_real_window_kernel: the 16K-point FFT of its even
// and odd samples), the backward with grad_k one channel per block (conv_real_window_backward_kernel);
// measured faster than the four-step path at 8K-16K (H200, RESULTS.md, twentieth session). One window
// of 32K to 4M points otherwise (long kernels, L from about 8K to 2M) takes the four-step path
// (fourstep.cuh): column FFTs, row FFTs with the spectrum product, column inverse, through a global
// workspace; its backward computes grad_u and grad_k from one transform of gy. With
// FFT_TENSOR_CONV_FOURSTEP=0, windows of 2x to 8x kMaxFusedFFT points run on a thread-block cluster
// of 2 to 8 blocks instead (Hopper+, cluster_fft.cuh: the transform split across the cluster's
// shared memory; when the row fills at most half a 2-block window the window starts at t = 0 and
// conv_cluster_padded_kernel skips the zero half's cross-block work); they measured slower at 64K and in
// forward+backward at 16K, about even in the 16K forward (H200, RESULTS.md, eighteenth session).
// Longer windows and float64 go to the composite at::fft (cuFFT)
// path in cpu.cpp. bfloat16 rows with 33-128 taps take tensor-core direct kernels (direct_mma.cuh).
// With FFT_TENSOR_CONV_TC=1, bfloat16 one-window plans of 2048-8192 points with L <= N/2 take the
// tensor-core window kernel in the forward (tc_window.cuh; measured slower than the window kernel, so off).
// The kernels are in fft_kernels.cuh (FFT paths), tc_window.cuh, direct.cuh, direct_mma.cuh and direct_tiled.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <type_traits>
#include <map>

#include "common.h"
#include "direct.cuh"
#include "direct_mma.cuh"
#include "direct_tiled.cuh"
#include "fft_kernels.cuh"
#include "fourstep.cuh"
#include "layout.cuh"
#include "radix3.cuh"
#include "tc_window.cuh"

namespace fft_tensor {
namespace {

// The fused kernels serve float32, bfloat16 and float16 input (float64 takes the composite path);
// instantiating only these keeps compile time down.
template <typename F>
void dispatch_io_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, "causal_conv: the fused CUDA path does not take ", t);
  }
}

size_t smem_bytes(int N) { return (size_t)smem_fft::padded_size(N) * sizeof(float2); }

// The most shared memory a block may opt in to on the current device (ATen caches the properties per
// device); every "does it fit" test reads it here.
size_t optin_smem_bytes() { return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin; }

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

// ---- FFT_TENSOR_CONV_* switches: A/B switches for the benchmarks and the tests (README's table). All of
// them are read once per op call, at its entry, and passed down: one call sees one setting, and a bad
// value is an error on every call whatever path the sizes take, naming the variable, the values it
// takes and the value given. (FFT_TENSOR_CONV_MIN_WINDOW and DIRECT_MAX_TAPS are common.h's: the CPU
// reads them too, for its plan and its direct path.)

// The value of `name`; `unset` when it is unset or empty.
std::string env_choice(const char* name, std::initializer_list<const char*> allowed, const char* unset) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return unset;
  std::string expected;
  for (const char* a : allowed) {
    if (std::strcmp(v, a) == 0) return v;
    expected += expected.empty() ? a : std::string(", ") + a;
  }
  TORCH_CHECK(false, name, ": expected one of ", expected, " (or unset), got '", v, "'");
}

bool env_flag(const char* name, bool unset) { return env_choice(name, {"0", "1"}, unset ? "1" : "0") == "1"; }

// A decimal integer in [lo, hi] (ASCII digits only), or `unset`.
int64_t env_int(const char* name, int64_t lo, int64_t hi, int64_t unset) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return unset;
  const int64_t x = parse_ascii_digits(v, hi);  // -1 for anything but digits: below every lo (>= 0)
  // integers through std::to_string, as in every message of this file: streaming an int64_t into
  // TORCH_CHECK's message segfaults in this nvcc-built code on the device (seen again for this check)
  TORCH_CHECK(x >= lo && x <= hi, name, ": expected an integer in [", std::to_string(lo), ", ",
              std::to_string(hi), "] (or unset), got '", v, "'");
  return x;
}

enum class RealWindowMode { kAuto, kOff, kForced, kForwardOnly };
enum class Radix3Mode { kOff, kGradK, kReal, kAll };  // RADIX3: 0, grad_k, real (or unset), 1
enum class PaddedMode { kAuto, kOff, kLoad, kExchange };

struct ConvSwitches {
  bool pdl;                     // PDL: the window kernel as a dependent launch of the spectrum kernel (conv_pdl)
  bool half;                    // HALF: the half-window kernels (half_window)
  bool tc;                      // TC: the tensor-core window kernel (use_tc_window)
  bool clusters;                // CLUSTERS: the thread-block cluster path (use_cluster)
  PaddedMode cluster_padded;    // CLUSTER_PADDED (padded_window)
  RealWindowMode real_window;   // REAL_WINDOW (use_real_window)
  bool regs_forward, regs_backward;  // REAL_WINDOW_REGS: the register variants (real_window_regs)
  bool fourstep;                // FOURSTEP: the four-step path (use_fourstep)
  int64_t fourstep_mb;          // FOURSTEP_MB: a workspace chunk in MiB, 0 = the default (fourstep_chunk)
  bool fourstep3;               // FOURSTEP3: the four-step path on 3 x 2^m points (fourstep_groups)
  bool fourstep_bf16;           // FOURSTEP_BF16: a bfloat16 workspace for bfloat16 rows (launch_fourstep)
  int direct_max_taps;          // DIRECT_MAX_TAPS: -1 unset (the default rule), else 0..128 (use_direct)
  bool mma;                     // MMA: the tensor-core direct kernels (use_mma)
  bool channels_last;           // CHANNELS_LAST: the tiled direct kernels (use_tiled)
  bool fused_backward;          // FUSED_BACKWARD: both gradients of a one-window plan in one kernel (use_backward_pairs)
  int64_t grad_k_groups;        // GRAD_K_GROUPS: grad_k's blocks per channel, 0 = the rule (grad_k_groups)
  Radix3Mode radix3;            // RADIX3: windows of 3 x 2^m points (radix3_window, radix3_real_window)

  static ConvSwitches from_env() {
    ConvSwitches w;
    w.pdl = env_flag("FFT_TENSOR_CONV_PDL", true);
    w.half = env_flag("FFT_TENSOR_CONV_HALF", true);
    w.tc = env_flag("FFT_TENSOR_CONV_TC", false);
    w.clusters = env_flag("FFT_TENSOR_CONV_CLUSTERS", true);
    const std::string padded = env_choice("FFT_TENSOR_CONV_CLUSTER_PADDED", {"0", "1", "exchange"}, "");
    w.cluster_padded = padded == "0"   ? PaddedMode::kOff
                       : padded == "1" ? PaddedMode::kLoad
                       : padded.empty() ? PaddedMode::kAuto
                                        : PaddedMode::kExchange;
    const std::string real = env_choice("FFT_TENSOR_CONV_REAL_WINDOW", {"0", "1", "forward"}, "");
    w.real_window = real == "0"   ? RealWindowMode::kOff
                    : real == "1" ? RealWindowMode::kForced
                    : real.empty() ? RealWindowMode::kAuto
                                   : RealWindowMode::kForwardOnly;
    const std::string regs = env_choice("FFT_TENSOR_CONV_REAL_WINDOW_REGS", {"0", "1", "forward"}, "forward");
    w.regs_forward = regs != "0";
    w.regs_backward = regs == "1";
    w.fourstep = env_flag("FFT_TENSOR_CONV_FOURSTEP", true);
    w.fourstep_mb = env_int("FFT_TENSOR_CONV_FOURSTEP_MB", 1, int64_t(1) << 20, 0);
    w.fourstep3 = env_flag("FFT_TENSOR_CONV_FOURSTEP3", true);
    w.fourstep_bf16 = env_flag("FFT_TENSOR_CONV_FOURSTEP_BF16", true);
    w.direct_max_taps = (int)fft_tensor::direct_max_taps();  // common.h: the CPU's direct path reads it too
    w.mma = env_flag("FFT_TENSOR_CONV_MMA", true);
    w.channels_last = env_flag("FFT_TENSOR_CONV_CHANNELS_LAST", false);
    w.fused_backward = env_flag("FFT_TENSOR_CONV_FUSED_BACKWARD", true);
    w.grad_k_groups = env_int("FFT_TENSOR_CONV_GRAD_K_GROUPS", 1, 4096, 0);
    const std::string radix3 = env_choice("FFT_TENSOR_CONV_RADIX3", {"0", "1", "grad_k", "real"}, "real");
    w.radix3 = radix3 == "1"        ? Radix3Mode::kAll
               : radix3 == "grad_k" ? Radix3Mode::kGradK
               : radix3 == "real"   ? Radix3Mode::kReal
                                    : Radix3Mode::kOff;
    return w;
  }
};

// Calls f(std::integral_constant<int, N>) for N = 2^logN, kLogN <= logN <= kMaxLogN: every fused
// kernel takes its FFT size as a template parameter (immediate shared-memory offsets, unrolled passes).
template <int kLogN = 6, int kMaxLogN = 14, typename F>
void dispatch_fft_size(int logN, F&& f) {
  if constexpr (kLogN <= kMaxLogN) {
    if (logN == kLogN) return f(std::integral_constant<int, 1 << kLogN>{});
    return dispatch_fft_size<kLogN + 1, kMaxLogN>(logN, std::forward<F>(f));
  }
  TORCH_CHECK(false, "causal_conv: no fused kernel for an FFT of 2^", logN, " points");
}

// The same for the radix-3 windows' M = 2^logM (radix3.cuh: N = 3M points).
template <typename F>
void dispatch_radix3(int logM, F&& f) {
  if (logM == 10) return f(std::integral_constant<int, 1024>{});
  if (logM == 11) return f(std::integral_constant<int, 2048>{});
  if (logM == 12) return f(std::integral_constant<int, 4096>{});
  TORCH_CHECK(false, "causal_conv: no radix-3 window kernel for M = 2^", logM);
}

// Whether a shape is a radix3_shape: N = 3M points, logN = log2 M (every plan's own N is a power of two).
bool is_radix3_shape(const ConvShape& s) { return (s.N & (s.N - 1)) != 0; }

int log2_int(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

// k and skip as the spectrum kernels read them (KernelTaps): in place when k is float32 with unit
// stride along taps (a model's taps are), else through a float32 copy; the tensors keep the data alive.
struct SpectrumTaps {
  at::Tensor k, skip;
  KernelTaps taps;
};

SpectrumTaps spectrum_taps(const at::Tensor& k, const c10::optional<at::Tensor>& skip, int64_t taps) {
  SpectrumTaps t;
  t.k = k.scalar_type() == at::kFloat && (k.stride(1) == 1 || k.size(1) == 1) ? k : k.to(at::kFloat).contiguous();
  if (skip.has_value()) t.skip = skip->to(at::kFloat);
  t.taps = {t.k.data_ptr<float>(), t.k.stride(0), t.skip.defined() ? t.skip.data_ptr<float>() : nullptr,
            t.skip.defined() ? t.skip.stride(0) : 0, (int)taps};
  return t;
}

// FFTs from this size take the half-window forms (smem_fft's kHalf) where a window's second half is zero.
constexpr int kMinHalfFFT = 2048;

// (D, N/2+1) complex64 spectrum of the effective kernel (k's taps, skip at lag 0), scaled by 1/N; s may be a
// plan's shape or its radix3_shape (N = 3M: kernel_spectrum3_kernel).
at::Tensor kernel_spectrum(const at::Tensor& k, const c10::optional<at::Tensor>& skip, const ConvShape& s) {
  const int64_t D = k.size(0);
  const SpectrumTaps taps = spectrum_taps(k, skip, s.taps);
  at::Tensor K = at::empty({D, s.N / 2 + 1}, k.options().dtype(at::kComplexFloat));
  if (D == 0) return K;
  TORCH_CHECK(2 * s.taps <= s.N, "causal_conv: internal: a plan with more than N/2 taps");  // kHalf's premise
  const auto launch = [&](auto kernel, unsigned threads, size_t bytes) {
    allow_smem(kernel, bytes);
    kernel<<<(unsigned)((D + 1) / 2), threads, bytes, at::cuda::getCurrentCUDAStream()>>>(
        taps.taps, D, reinterpret_cast<float2*>(K.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (is_radix3_shape(s)) {
    dispatch_radix3(s.logN, [&](auto size) {
      constexpr int M = decltype(size)::value;
      launch(kernel_spectrum3_kernel<M>, radix3::threads<M>(), radix3::smem_bytes<M>());
    });
    return K;
  }
  dispatch_fft_size(s.logN, [&](auto size) {
    constexpr int N = decltype(size)::value;
    launch(kernel_spectrum_kernel<N, (N >= kMinHalfFFT)>, N / kElemsPerThread, smem_bytes(N));
  });
  return K;
}

// Whether a kernel was compiled to sm_90 code (its __CUDA_ARCH__ >= 900 parts are there).
template <typename Kernel>
bool has_sm90_code(Kernel kernel) {
  cudaFuncAttributes attr;
  // Both: a PTX-only sm_80 build JIT-compiled on Hopper reports binaryVersion 90 but ptxVersion 80,
  // and its kernel bodies (guarded by __CUDA_ARCH__ >= 900) are empty.
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess || attr.binaryVersion < 90 || attr.ptxVersion < 90) {
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

// Whether this file's kernels carry sm_90 code on the current device: PDL's griddepcontrol instructions
// (like the cluster kernels' bodies) are guarded by __CUDA_ARCH__ >= 900, so a build without sm_90 code (a
// PTX-only compute_80 build JIT-compiled on Hopper reports binaryVersion 90 but ptxVersion 80) would launch
// a dependent window kernel that does not wait for the spectrum. One arch list for the whole file: one
// kernel tells. Asked once per device.
bool kernels_have_sm90_code() {
  static std::mutex mutex;
  static std::map<int, bool> known;
  const int device = (int)at::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  const auto hit = known.find(device);
  if (hit != known.end()) return hit->second;
  const bool ok = has_sm90_code(kernel_spectrum_cluster_kernel);
  known.emplace(device, ok);
  return ok;
}

// FFT_TENSOR_CONV_PDL: unset, empty or 1 = for one-window plans (nseg == 1, where
// the spectrum of a row's kernel costs about what the window kernel spends on a row pair's forward
// transform) the window kernel is launched as a programmatic dependent of the spectrum kernel, on sm_90
// and later: it loads and transforms its rows while the spectrum finishes, and waits for the spectrum
// before the product. 0 = always the ordinary launch. Plans of many windows keep the ordinary launch:
// their spectrum is a small part of the op, and the dependent kernel must read it through L2 (below).
// H200, B = 8, D = 768, fp32, Lk = L (one window): 1K 0.0460 -> 0.0425 ms, 4K 0.220 -> 0.216 ms (ordinary
// -> dependent, one call, RESULTS.md twenty-third session). Windows of 128 taps at 16K and 64K were 9%
// slower with every launch dependent and reading through L2 (0.309 -> 0.336 ms at 16K); with the
// ordinary kernel kept for them they measured 0.311 and 1.20 ms again.
bool conv_pdl(const ConvShape& s, const ConvSwitches& sw) {
  return sw.pdl && s.nseg == 1 && at::cuda::getCurrentDeviceProperties()->major >= 9 && kernels_have_sm90_code();
}

// FFT_TENSOR_CONV_HALF: unset, empty or 1 = one-window plans whose row fills at most
// half the window (L <= N/2; every Lk = L plan) skip the window's zero half in the first forward pass
// and its unwanted half in the last inverse pass (conv_window_kernel's and the real-window kernels'
// kHalf), for FFTs of kMinHalfFFT points and more; 0 = the general kernels (an A/B switch for the
// benchmark and the tests; the spectrum kernels skip the taps' zero half either way).

// Whether a plan's single window holds the row in its first half: L <= N/2 of the plan's N points (the
// real-window kernels' complex FFT of the N/2 points z[n] = x[2n] + i x[2n+1] then has its second half
// zero too).
bool half_window(const ConvShape& s, const ConvSwitches& sw) {
  return sw.half && s.nseg == 1 && 2 * s.L <= s.N && s.N >= kMinHalfFFT;
}

// y = the windows' convolution of x with K. K must be the output of the kernel launched just before
// on this stream (kernel_spectrum), and y and x must be allocated before that kernel was launched: the
// window kernel may start while the spectrum kernel runs (conv_pdl), so nothing either kernel touches
// may be memory the allocator handed out in between.
// s may be a plan's shape or its radix3_shape (N = 3M points; logN = log2 M): the window kernel of that size.
template <bool kReverse>
void launch_conv_windows(const at::Tensor& x, const at::Tensor& K, at::Tensor& y, const ConvShape& s,
                         const ConvSwitches& sw) {
  const int64_t blocks = s.D * s.npairs * s.nseg;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many FFT windows (", std::to_string(blocks), ") for one launch");
  const bool radix3 = is_radix3_shape(s);
  TORCH_CHECK(!radix3 || (s.nseg == 1 && s.L + s.taps - 1 <= s.N),
              "causal_conv: internal: a radix-3 window that does not hold the row");
  const bool pdl = conv_pdl(s, sw), half = half_window(s, sw);
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto launch = [&](auto kernel, unsigned threads, size_t bytes) {
      allow_smem(kernel, bytes);
      cudaLaunchAttribute attr{};
      attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr.val.programmaticStreamSerializationAllowed = 1;
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3((unsigned)blocks);
      cfg.blockDim = dim3(threads);
      cfg.dynamicSmemBytes = bytes;
      cfg.stream = at::cuda::getCurrentCUDAStream();
      cfg.attrs = &attr;
      cfg.numAttrs = pdl ? 1 : 0;
      C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, x.data_ptr<scalar_t>(),
                                        reinterpret_cast<const float2*>(K.data_ptr()), y.data_ptr<scalar_t>(), s));
    };
    if (radix3) {
      dispatch_radix3(s.logN, [&](auto size) {
        constexpr int M = decltype(size)::value;
        launch(half ? conv_window3_kernel<scalar_t, kReverse, M, true> : conv_window3_kernel<scalar_t, kReverse, M, false>,
               radix3::threads<M>(), radix3::smem_bytes<M>());
      });
      return;
    }
    dispatch_fft_size(s.logN, [&](auto size) {
      constexpr int N = decltype(size)::value;
      auto kernel = pdl ? conv_window_kernel<scalar_t, kReverse, N, true> : conv_window_kernel<scalar_t, kReverse, N, false>;
      // the kHalf kernels exist only in the dependent-launch build (one instantiation per size, not two):
      // launched the ordinary way (no PDL), their grid-dependency wait returns at once
      if constexpr (N >= kMinHalfFFT) {
        if (half) kernel = conv_window_kernel<scalar_t, kReverse, N, true, true>;
      }
      launch(kernel, N / kElemsPerThread, smem_bytes(N));
    });
  });
}

// ---- windows of N = 3M points (radix3.cuh)

// FFT_TENSOR_CONV_RADIX3: 1 = a one-window plan of 4096, 8192 or 16384 points whose row and kernel fit
// three quarters of it (L + taps - 1 <= 3N/4: Lk = L from 1025 to 1536, 2049 to 3072, 4097 to 6144) runs
// its forward, and grad_u where that is computed by the window kernel (frozen taps, or beside grad_k at
// 16384 points), on windows of 3N/4 points, and at 16384 points grad_k too (grad_k_windows3, rows in the
// window's first half); grad_k = that grad_k only; real (the default: unset or empty) = that grad_k and the
// real-window plans' forward and grad_u alone (radix3_real_window), not the pair windows' forward; 0 = the
// power-of-two windows everywhere. Measured on an H200 (RESULTS.md, thirty-fifth session, the kernels by
// residues): of the pair-window radix-3 kernels only grad_k's wins (0.424 + 0.051 ms against 0.481 + 0.046
// at 6144 fp32; forward+backward 1.32 against 1.36 ms); the forward window takes 0.45 against 0.375 ms (its
// spectrum kernel 0.082 against 0.037), so it stays behind 1.
// On the real-window plans (32K real points) see radix3_real_window.
// Returns M (the window is 3M points), 0 when the plan does not take it.
int radix3_window(const ConvShape& s, const ConvSwitches& sw, bool grad_k = false) {
  const Radix3Mode mode = sw.radix3;
  if (mode == Radix3Mode::kOff || (mode != Radix3Mode::kAll && !grad_k)) return 0;
  if (s.nseg != 1 || s.N < 4096 || s.N > kMaxFusedFFT) return 0;
  const int M = s.N / 4;
  return s.L + s.taps - 1 <= 3 * M ? M : 0;
}

// The plan's shape on the 3M-point window (logN: log2 M, what dispatch_radix3 takes).
ConvShape radix3_shape(const ConvShape& s, int M) {
  ConvShape r = s;
  r.N = 3 * M;
  r.logN = log2_int(M);
  return r;
}

// The window convolution of a fused one-window plan: on the 3M-point window where radix3_window takes
// it, else on the plan's own.
template <bool kReverse>
void conv_windows(const at::Tensor& x, const at::Tensor& k, const c10::optional<at::Tensor>& skip, at::Tensor& y,
                  const ConvShape& s, const ConvSwitches& sw) {
  const int M = radix3_window(s, sw);
  const ConvShape w = M ? radix3_shape(s, M) : s;
  launch_conv_windows<kReverse>(x, kernel_spectrum(k, skip, w), y, w, sw);
}

// ---- the tensor-core window kernel (tc_window.cuh)

// Its DFT and twiddle tables for one device and N, in the order the kernel's fragments read them; built
// on the host in double precision on first use and kept for the life of the process (144 KB at N = 8192,
// 244 KB for the three sizes).
struct TcTableSet {
  at::Tensor dft_n1, dft_64, twiddle;
  tc_window::Tables view() const {
    return {reinterpret_cast<const uint4*>(dft_n1.data_ptr()), reinterpret_cast<const uint4*>(dft_64.data_ptr()),
            reinterpret_cast<const float4*>(twiddle.data_ptr())};
  }
};

std::mutex tc_tables_mutex;
std::map<std::pair<int, int>, TcTableSet> tc_tables_cache;

const TcTableSet* tc_tables_cached(int N) {
  std::lock_guard<std::mutex> lock(tc_tables_mutex);
  const auto it = tc_tables_cache.find({(int)at::cuda::current_device(), N});
  return it == tc_tables_cache.end() ? nullptr : &it->second;
}

const TcTableSet& tc_tables(int N) {
  if (const TcTableSet* t = tc_tables_cached(N)) return *t;
  const int N1 = N / tc_window::kN2;
  // W_n^m = exp(-2 pi i m / n), m reduced mod n first (exact arguments)
  const auto W = [](int64_t m, int64_t n) { return std::polar(1.0, -2.0 * M_PI * (double)(m % n) / (double)n); };
  const auto half_bits = [](double v) { return (uint32_t)c10::Half((float)v).x; };
  const auto pack = [&](double lo, double hi) { return (int32_t)(half_bits(lo) | (half_bits(hi) << 16)); };
  // A fragments of F_N1 (row-major m16k16): register q holds rows g + 8 (q & 1), columns 2t + 8 (q >> 1), +1
  std::vector<int32_t> a((size_t)(N1 / 16) * (N1 / 16) * 32 * 8);
  for (int mt = 0; mt < N1 / 16; ++mt)
    for (int ks = 0; ks < N1 / 16; ++ks)
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const size_t base = (((size_t)mt * (N1 / 16) + ks) * 32 + lane) * 8;
        for (int q = 0; q < 4; ++q) {
          const int64_t r = 16 * mt + g + 8 * (q & 1), c = 16 * ks + 2 * t + 8 * (q >> 1);
          const auto w0 = W(r * c, N1), w1 = W(r * (c + 1), N1);
          a[base + q] = pack(w0.real(), w1.real());
          a[base + 4 + q] = pack(w0.imag(), w1.imag());
        }
      }
  // B fragments of F_64 (k x n, "col"): b0 rows k = 2t, 2t + 1, b1 rows + 8, column n = g
  std::vector<int32_t> b(4 * 8 * 32 * 4);
  for (int ks = 0; ks < 4; ++ks)
    for (int j = 0; j < 8; ++j)
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const int64_t n = 8 * j + g, k0 = 16 * ks + 2 * t;
        const size_t base = (((size_t)ks * 8 + j) * 32 + lane) * 4;
        for (int q = 0; q < 2; ++q) {
          const auto w0 = W((k0 + 8 * q) * n, 64), w1 = W((k0 + 8 * q + 1) * n, 64);
          b[base + q] = pack(w0.real(), w1.real());
          b[base + 2 + q] = pack(w0.imag(), w1.imag());
        }
      }
  // W_N^(k1 n2) at the m16n8 accumulator positions e: rows g + 8 (e >> 1), columns 2t + (e & 1)
  std::vector<float> tw((size_t)(N1 / 16) * 8 * 32 * 8);
  for (int w = 0; w < N1 / 16; ++w)
    for (int j = 0; j < 8; ++j)
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        for (int e = 0; e < 4; ++e) {
          const int64_t k1 = 16 * w + g + 8 * (e >> 1), n2 = 8 * j + 2 * t + (e & 1);
          const auto v = W(k1 * n2, N);
          const size_t i = ((((size_t)w * 8 + j) * 32 + lane) * 4 + e) * 2;
          tw[i] = (float)v.real();
          tw[i + 1] = (float)v.imag();
        }
      }
  const auto dev = at::TensorOptions().device(at::kCUDA, at::cuda::current_device());
  const auto upload = [&](auto& v, at::ScalarType type) {
    return at::from_blob(v.data(), {(int64_t)v.size()}, at::TensorOptions().dtype(type)).to(dev.dtype(type));
  };
  TcTableSet set{upload(a, at::kInt), upload(b, at::kInt), upload(tw, at::kFloat)};
  std::lock_guard<std::mutex> lock(tc_tables_mutex);
  return tc_tables_cache.emplace(std::make_pair((int)at::cuda::current_device(), N), std::move(set)).first->second;
}

// FFT_TENSOR_CONV_TC: 1 = bfloat16 rows of one-window plans of 2048 to 8192 points with L <= N/2 (so
// taps <= N/2 too) take the tensor-core kernel (tc_window.cuh) in the forward; unset, empty or 0 = the
// shared-memory FFT kernel (the default: the tensor-core kernel measured 1.3-1.6x slower on the H200 at
// 1K-4K, RESULTS.md twenty-fourth session).
// Whether this call takes it: as requested, on sm_80 and later, and not while a CUDA graph is captured
// before the tables exist (their upload is a host-to-device copy).
bool use_tc_window(const at::Tensor& u, const ConvPlan& plan, const ConvSwitches& sw) {
  const int64_t N = plan.fft_size, L = u.size(2);
  if (!sw.tc || u.scalar_type() != at::kBFloat16 || plan.segments != 1 || N < 2048 || N > 8192 || 2 * L > N)
    return false;
  if (at::cuda::getCurrentDeviceProperties()->major < 8) return false;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &capture));
  return capture == cudaStreamCaptureStatusNone || tc_tables_cached((int)N) != nullptr;
}

// y = causal_conv(x, k) from K = kernel_spectrum(k, skip, s) on the tensor cores; x and y packed bf16.
void launch_tc_window(const at::Tensor& x, const at::Tensor& K, at::Tensor& y, const ConvShape& s) {
  const tc_window::Tables tables = tc_tables(s.N).view();
  const int64_t pairs = s.D * s.npairs;
  const bool vec = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && s.L % 8 == 0;
  const auto launch = [&](auto size) {
    constexpr int N = decltype(size)::value;
    using G = tc_window::Geometry<N>;
    const int64_t blocks = (pairs + G::kPairsPerBlock - 1) / G::kPairsPerBlock;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many row pairs (", std::to_string(pairs), ") for one launch");
    allow_smem(tc_window::conv_tc_window_kernel<N>, G::kSmemBytes);
    tc_window::conv_tc_window_kernel<N><<<(unsigned)blocks, tc_window::kThreads, G::kSmemBytes,
                                          at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), reinterpret_cast<const float2*>(K.data_ptr()),
        reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), tables, s.B, s.D, (int)s.L, s.npairs, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (s.N == 2048) launch(std::integral_constant<int, 2048>{});
  else if (s.N == 4096) launch(std::integral_constant<int, 4096>{});
  else launch(std::integral_constant<int, 8192>{});
}

// grad_k: the row-pair kernel (FFT buffer + N complex of stash) up to 8192 points, where its
// 128-register bound allows N/16 threads; one row per FFT (buffer + N/2+1 complex of sums) beyond.
constexpr int kMaxLogNGradKPairs = 13;
size_t grad_k_smem_bytes(int N) {
  return smem_bytes(N) + (size_t)(N <= (1 << kMaxLogNGradKPairs) ? N : N / 2 + 1) * sizeof(float2);
}

// The fused path needs float32/bf16/fp16 input and an FFT that fits this GPU's shared memory
// (an H100 takes every fused size; an A100's 163 KB and sm_86/89's 99 KB do not take the largest).
bool use_fused(const at::Tensor& u, const ConvPlan& plan, bool with_grad_k) {
  if (u.scalar_type() == at::kDouble || plan.fft_size > kMaxFusedFFT) return false;
  const int N = (int)plan.fft_size;
  const size_t need = with_grad_k ? std::max(smem_bytes(N), grad_k_smem_bytes(N)) : smem_bytes(N);
  return need <= optin_smem_bytes();
}

// Blocks per channel for grad_k: enough (channel, group) blocks for a few waves of blocks of
// `smem` bytes, no more than the items (row or row pair, window), and for one-window plans few
// enough that the partial sums (groups * D * (N/2+1) complex) take at most about half of u's bytes
// (one group at least, which in bf16 with Lk = L is a little over half): at B = 8, D = 768, L = 1K
// (N = 2048) the old rule's four groups were 25 MB beside u's 12.6 MB in bf16, the forward+backward's
// peak 1.56x inputs plus outputs; one group there is one wave of 768 blocks of 4 row pairs each where
// four were about 3.9 waves of one pair, and was as fast (2K: 9% faster than the old rule's three;
// RESULTS.md, thirty-first session). Many-window plans keep the old rule (their partial sums are of the
// window's N, small against u; their peak was measured at most 1.29x). FFT_TENSOR_CONV_GRAD_K_GROUPS=g:
// g groups (at most the items).
int grad_k_groups(const at::Tensor& u, const ConvShape& s, size_t smem, int64_t items, const ConvSwitches& sw) {
  if (sw.grad_k_groups > 0) return (int)std::min<int64_t>(sw.grad_k_groups, items);
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int threads = s.N / kElemsPerThread;
  const int64_t by_threads = std::max(1, prop->maxThreadsPerMultiProcessor / std::max(threads, 32));
  const int64_t by_smem = std::max<int64_t>(1, (int64_t)prop->sharedMemPerMultiprocessor / (int64_t)smem);
  const int64_t resident = (int64_t)prop->multiProcessorCount * std::min<int64_t>({by_threads, by_smem, 32});
  const int64_t want = std::min<int64_t>((4 * resident + s.D - 1) / s.D, items);
  if (s.nseg != 1) return (int)std::max<int64_t>(1, want);
  const int64_t group_bytes = s.D * (int64_t)(s.N / 2 + 1) * (int64_t)sizeof(float2);
  const int64_t by_memory = (int64_t)(u.numel() * u.element_size()) / (2 * group_bytes);
  return (int)std::max<int64_t>(1, std::min<int64_t>(want, by_memory));
}

// The grad_k kernels' launch: (groups, partial), groups (grad_k_groups) blocks per channel and the
// (groups, D, N/2 + 1) complex buffer their partial sums go to.
std::pair<int, at::Tensor> grad_k_partial(const at::Tensor& u, const ConvShape& s, size_t smem, int64_t items,
                                          const ConvSwitches& sw) {
  const int groups = grad_k_groups(u, s, smem, items, sw);
  TORCH_CHECK(s.D * groups < (int64_t(1) << 31), "causal_conv_backward: too many blocks (",
              std::to_string(s.D * groups), ")");
  return {groups, at::empty({groups, s.D, s.N / 2 + 1}, u.options().dtype(at::kComplexFloat))};
}

// grad_k (D, Lk) float32 from partial (groups, D, N/2 + 1), the row-pair kernels' sums of G conj(U) per
// (group, channel): grad_k_taps_kernel sums the groups in a fixed order (deterministic) and transforms back.
at::Tensor grad_k_from_partial(const at::Tensor& partial, const ConvShape& s, int groups, int64_t Lk) {
  at::Tensor grad_k = at::empty({s.D, Lk}, partial.options().dtype(at::kFloat));
  const size_t bytes = smem_bytes(s.N);
  dispatch_fft_size(s.logN, [&](auto size) {
    constexpr int N = decltype(size)::value;
    allow_smem(grad_k_taps_kernel<N>, bytes);
    grad_k_taps_kernel<N><<<(unsigned)((s.D + 1) / 2), N / kElemsPerThread, bytes, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const float2*>(partial.data_ptr()), grad_k.data_ptr<float>(), s.D, groups, s.taps, Lk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_k;
}

// grad_k (D, Lk) float32 on the 3M-point window of a 16384-point one-window plan (radix3_window, the row in
// the window's first half): conv_grad_k3_kernel's partial sums, then grad_k_taps3_kernel.
at::Tensor grad_k_windows3(const at::Tensor& u, const at::Tensor& gy, const ConvShape& s3, int64_t Lk,
                           const ConvSwitches& sw) {
  constexpr int M = (int)kMaxFusedFFT / 4;  // the one-row kernel's plans only (pair plans keep theirs)
  TORCH_CHECK(s3.N == 3 * M && s3.nseg == 1 && 2 * s3.L <= s3.N, "causal_conv: internal: a radix-3 grad_k plan");
  const size_t smem = radix3::smem_bytes<M>() + (size_t)(3 * M / 2 + 1) * sizeof(float2);  // + the sums
  const std::pair<int, at::Tensor> launch_setup = grad_k_partial(u, s3, smem, s3.B, sw);
  const int groups = launch_setup.first;
  const at::Tensor& partial = launch_setup.second;
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto kernel = conv_grad_k3_kernel<scalar_t, M>;
    allow_smem(kernel, smem);
    kernel<<<(unsigned)(s3.D * groups), radix3::threads<M>(), smem, at::cuda::getCurrentCUDAStream()>>>(
        u.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), reinterpret_cast<float2*>(partial.data_ptr()), s3, groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor grad_k = at::empty({s3.D, Lk}, partial.options().dtype(at::kFloat));
  const size_t bytes = radix3::smem_bytes<M>();
  allow_smem(grad_k_taps3_kernel<M>, bytes);
  grad_k_taps3_kernel<M><<<(unsigned)((s3.D + 1) / 2), radix3::threads<M>(), bytes, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const float2*>(partial.data_ptr()), grad_k.data_ptr<float>(), s3.D, groups, (int)s3.taps, Lk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_k;
}

// grad_k (D, Lk) float32 for windows of one block: partial sums of G conj(U) per (group, channel)
// from the row-pair kernel where it applies, else one row per FFT; then grad_k_from_partial. With
// FFT_TENSOR_CONV_RADIX3 the one-row kernel's half-window plans take the 3M-point window (grad_k_windows3).
at::Tensor grad_k_windows(const at::Tensor& u, const at::Tensor& gy, const ConvShape& s, int64_t Lk,
                          const ConvSwitches& sw) {
  const bool pairs = s.logN <= kMaxLogNGradKPairs;
  if (const int M = pairs ? 0 : radix3_window(s, sw, /*grad_k=*/true)) {
    const ConvShape s3 = radix3_shape(s, M);
    if (half_window(s3, sw)) return grad_k_windows3(u, gy, s3, Lk, sw);
  }
  const size_t smem = grad_k_smem_bytes(s.N);
  // (no structured binding: lambdas below capture these, which C++17 does not allow for bindings)
  const std::pair<int, at::Tensor> launch_setup =
      grad_k_partial(u, s, smem, pairs ? (int64_t)s.npairs * s.nseg : s.B * s.nseg, sw);
  const int groups = launch_setup.first;
  const at::Tensor& partial = launch_setup.second;
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto launch = [&](auto kernel) {
      allow_smem(kernel, smem);
      kernel<<<(unsigned)(s.D * groups), s.N / kElemsPerThread, smem, at::cuda::getCurrentCUDAStream()>>>(
          u.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), reinterpret_cast<float2*>(partial.data_ptr()), s,
          groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (pairs) {
      const bool half = half_window(s, sw);
      dispatch_fft_size<6, kMaxLogNGradKPairs>(s.logN, [&](auto size) {
        constexpr int N = decltype(size)::value;
        if constexpr (N >= kMinHalfFFT) {
          if (half) return launch(conv_grad_k_pair_kernel<scalar_t, N, true>);
        }
        launch(conv_grad_k_pair_kernel<scalar_t, N>);
      });
    } else if (half_window(s, sw)) {
      launch(conv_grad_k_kernel<scalar_t, (int)kMaxFusedFFT, true>);
    } else {
      launch(conv_grad_k_kernel<scalar_t, (int)kMaxFusedFFT>);
    }
  });
  return grad_k_from_partial(partial, s, groups, Lk);
}

// FFT_TENSOR_CONV_FUSED_BACKWARD: unset, empty or 1 = when both gradients are wanted, a one-window plan
// whose rows go in pairs (up to 8192 points) runs conv_backward_pair_kernel: three transforms per row
// pair (u, gy, and grad_u's inverse) where the window kernel run backwards (grad_u) and the pair grad_k
// kernel take four; 0 = those two kernels.
// Its windows start at t = 0, so the plan must hold the whole linear correlation: N >= L + taps - 1 (every
// one-window plan does; checked so that a change of conv_plan cannot make it wrap silently).
bool use_backward_pairs(const ConvShape& s, const ConvSwitches& sw) {
  return sw.fused_backward && s.nseg == 1 && s.logN <= kMaxLogNGradKPairs && s.L + s.taps - 1 <= s.N;
}

// Both gradients of a one-window plan (use_backward_pairs): grad_u into its packed rows, grad_k returned
// ((D, Lk) float32). K: kernel_spectrum's output.
at::Tensor backward_pairs(const at::Tensor& u, const at::Tensor& gy, const at::Tensor& K, at::Tensor& grad_u,
                          const ConvShape& s, int64_t Lk, const ConvSwitches& sw) {
  const size_t smem = grad_k_smem_bytes(s.N);
  const std::pair<int, at::Tensor> launch_setup = grad_k_partial(u, s, smem, s.npairs, sw);
  const int groups = launch_setup.first;
  const at::Tensor& partial = launch_setup.second;
  const bool half = half_window(s, sw);
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    dispatch_fft_size<6, kMaxLogNGradKPairs>(s.logN, [&](auto size) {
      constexpr int N = decltype(size)::value;
      auto kernel = conv_backward_pair_kernel<scalar_t, N, false>;
      if constexpr (N >= kMinHalfFFT) {
        if (half) kernel = conv_backward_pair_kernel<scalar_t, N, true>;
      }
      allow_smem(kernel, smem);
      kernel<<<(unsigned)(s.D * groups), N / kElemsPerThread, smem, at::cuda::getCurrentCUDAStream()>>>(
          u.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), reinterpret_cast<const float2*>(K.data_ptr()),
          grad_u.data_ptr<scalar_t>(), reinterpret_cast<float2*>(partial.data_ptr()), s, groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_k_from_partial(partial, s, groups, Lk);
}

// ---------------------------------------------------------------------------------------------
// Cluster path (N = 2x, 4x or 8x kMaxFusedFFT, one window per cluster): Hopper and later, and only
// when the kernels in this build were compiled for sm_90+ (a PTX-only build for sm_80 would JIT an
// empty body). FFT_TENSOR_CONV_CLUSTERS=0 turns it off (then cuFFT, as on older GPUs).
int cluster_blocks(const ConvPlan& plan) { return (int)(plan.fft_size / kMaxFusedFFT); }

// A launch of `blocks` 1024-thread blocks in clusters of C (the attribute lives beside the config
// that points at it, so the pair is built in place and never copied).
struct ClusterLaunch {
  cudaLaunchAttribute cluster;
  cudaLaunchConfig_t cfg;
  ClusterLaunch(int64_t blocks, int C, size_t smem, cudaStream_t stream) : cluster{}, cfg{} {
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(1024);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = C;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    cfg.attrs = &cluster;
    cfg.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

template <typename Kernel>
bool cluster_launchable(Kernel kernel, size_t smem, int C) {
  if (!has_sm90_code(kernel)) return false;
  // a GPU of compute capability 9+ with less shared memory per block (consumer Blackwell: 99 KB) cannot
  // take these kernels: cuFFT then, where allow_smem would raise
  if (smem > optin_smem_bytes()) return false;
  allow_smem(kernel, smem);
  const ClusterLaunch launch(C, C, smem, nullptr);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return clusters > 0;
}

// The kernel sets the cluster path chooses between, each launchable in clusters of C or not: the
// driver is asked once per (device, C, set) and the answer kept (it cannot change in a process).
enum class ClusterKernels { kGeneral, kGeneralGradK, kPaddedLoad, kPaddedExchange };

bool cluster_kernels_launchable(ClusterKernels set, int C) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int>, bool> known;
  const auto key = std::make_tuple((int)at::cuda::current_device(), C, (int)set);
  std::lock_guard<std::mutex> lock(mutex);
  const auto hit = known.find(key);
  if (hit != known.end()) return hit->second;
  const size_t smem = smem_bytes((int)kMaxFusedFFT);
  // every cluster forward and grad_u runs the general kernel and the spectrum kernel
  const auto general = [&] {
    return cluster_launchable(conv_cluster_kernel<float, false>, smem, C) &&
           cluster_launchable(kernel_spectrum_cluster_kernel, smem, C);
  };
  bool ok = false;
  switch (set) {
    case ClusterKernels::kGeneral: ok = general(); break;
    case ClusterKernels::kGeneralGradK:
      ok = general() && cluster_launchable(conv_grad_k_cluster_kernel<float>, smem, C);
      break;
    case ClusterKernels::kPaddedLoad:
      ok = cluster_launchable(conv_cluster_padded_kernel<float, false, false>, smem, C);
      break;
    case ClusterKernels::kPaddedExchange:
      ok = cluster_launchable(conv_cluster_padded_kernel<float, false, true>, smem, C);
      break;
  }
  known.emplace(key, ok);
  return ok;
}

template <typename Kernel, typename... Args>
void launch_cluster(Kernel kernel, int64_t blocks, int C, size_t smem, Args... args) {
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many FFT windows (", std::to_string(blocks / C),
              ") for one launch");
  const ClusterLaunch launch(blocks, C, smem, at::cuda::getCurrentCUDAStream());
  C10_CUDA_CHECK(cudaLaunchKernelEx(&launch.cfg, kernel, args...));
}

bool use_cluster(const at::Tensor& u, const ConvPlan& plan, bool with_grad_k, const ConvSwitches& sw) {
  if (!sw.clusters || u.scalar_type() == at::kDouble || plan.fft_size <= kMaxFusedFFT ||
      plan.fft_size > kMaxFusedFFT * cluster_fft::kMaxClusterBlocks)
    return false;
  if (at::cuda::getCurrentDeviceProperties()->major < 9) return false;
  return cluster_kernels_launchable(with_grad_k ? ClusterKernels::kGeneralGradK : ClusterKernels::kGeneral,
                                    cluster_blocks(plan));
}

// (D, N/2+1) spectrum of the effective kernel scaled by 1/N for cluster-sized N: two channels per
// cluster transform (kernel_spectrum_cluster_kernel); the spectrum is the only allocation.
at::Tensor kernel_spectrum_clusters(const at::Tensor& k, const c10::optional<at::Tensor>& skip, const ConvShape& s,
                                    int C) {
  const int64_t D = k.size(0);
  const SpectrumTaps taps = spectrum_taps(k, skip, s.taps);
  at::Tensor K = at::empty({D, s.N / 2 + 1}, k.options().dtype(at::kComplexFloat));
  const size_t smem = smem_bytes((int)kMaxFusedFFT);
  allow_smem(kernel_spectrum_cluster_kernel, smem);
  launch_cluster(kernel_spectrum_cluster_kernel, (D + 1) / 2 * C, C, smem, taps.taps,
                 reinterpret_cast<float2*>(K.data_ptr()), D, s.N, C, log2_int(C));
  return K;
}

// conv_cluster_padded_kernel applies when the row fills at most half the window. Measured (H200, B=8,
// D=768, Lk = L): 2-block clusters 2.03 -> 1.71 ms forward at L = 16K, but 8-block clusters 12.1 ->
// 14.3 ms at 64K (not profiled; likely cause: each block there reads half the row from L2, the
// cluster the row 8 times, where the general kernel moves it once through distributed shared
// memory). So it is the default for 2-block clusters only; 4 blocks is unmeasured and keeps the
// general kernel. FFT_TENSOR_CONV_CLUSTER_PADDED: 1 = wherever it applies, 0 = never, exchange = its
// kExchange variant wherever it applies (tested and sanitized on the GPU, not timed). A variant the
// driver cannot launch in clusters of C leaves the general kernel.
enum class PaddedWindow { kNo, kLoad, kExchange };

PaddedWindow padded_window(const ConvShape& s, int C, const ConvSwitches& sw) {
  if (s.nseg != 1 || 2 * s.L > s.N) return PaddedWindow::kNo;
  const PaddedMode mode = sw.cluster_padded;
  const PaddedWindow want = mode == PaddedMode::kLoad       ? PaddedWindow::kLoad
                            : mode == PaddedMode::kExchange ? PaddedWindow::kExchange
                            : mode == PaddedMode::kOff      ? PaddedWindow::kNo
                            : C == 2                        ? PaddedWindow::kLoad
                                                            : PaddedWindow::kNo;
  if (want == PaddedWindow::kNo) return want;
  const bool ok = cluster_kernels_launchable(
      want == PaddedWindow::kExchange ? ClusterKernels::kPaddedExchange : ClusterKernels::kPaddedLoad, C);
  return ok ? want : PaddedWindow::kNo;
}

template <bool kReverse>
void launch_conv_clusters(const at::Tensor& x, const at::Tensor& K, at::Tensor& y, const ConvShape& s, int C,
                          const ConvSwitches& sw) {
  const size_t smem = smem_bytes((int)kMaxFusedFFT);
  const PaddedWindow padded = padded_window(s, C, sw);
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    if (padded != PaddedWindow::kNo) {
      auto kernel = padded == PaddedWindow::kExchange ? conv_cluster_padded_kernel<scalar_t, kReverse, true>
                                                      : conv_cluster_padded_kernel<scalar_t, kReverse, false>;
      allow_smem(kernel, smem);
      launch_cluster(kernel, s.D * s.npairs * C, C, smem, x.data_ptr<scalar_t>(),
                     reinterpret_cast<const float2*>(K.data_ptr()), y.data_ptr<scalar_t>(), s, C);
      return;
    }
    auto kernel = conv_cluster_kernel<scalar_t, kReverse>;
    allow_smem(kernel, smem);
    launch_cluster(kernel, s.D * s.npairs * s.nseg * C, C, smem, x.data_ptr<scalar_t>(),
                   reinterpret_cast<const float2*>(K.data_ptr()), y.data_ptr<scalar_t>(), s, C, log2_int(C));
  });
}

// sum over rows of G conj(U), (D, N/2+1), for cluster-sized windows; groups split a channel's
// (row, window) items when there are too few channels to fill the GPU.
at::Tensor grad_k_spectrum_clusters(const at::Tensor& u, const at::Tensor& gy, const ConvShape& s, int C) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t resident = std::max(1, prop->multiProcessorCount / C);  // one 1024-thread block per SM
  int groups = (int)std::max<int64_t>(1, std::min<int64_t>((2 * resident + s.D - 1) / s.D, s.B * s.nseg));
  // The partial sums are (groups, D, N/2+1) complex: keep them under half of u's size.
  while (groups > 1 && groups * s.D * (s.N / 2 + 1) * 8 > u.numel() * (int64_t)u.element_size() / 2) --groups;
  at::Tensor partial = at::zeros({groups, s.D, s.N / 2 + 1}, u.options().dtype(at::kComplexFloat));
  const size_t smem = smem_bytes((int)kMaxFusedFFT);
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = conv_grad_k_cluster_kernel<scalar_t>;
    allow_smem(kernel, smem);
    launch_cluster(kernel, s.D * groups * C, C, smem, u.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(),
                   reinterpret_cast<float2*>(partial.data_ptr()), s, groups, C, log2_int(C));
  });
  return groups == 1 ? partial[0] : partial.sum(0);
}

// ---------------------------------------------------------------------------------------------
// One-window plans of 2 * kMaxFusedFFT = 32K points (Lk = L from about 8K to 16K): one row per block
// (conv_real_window_kernel: the 16K-point complex FFT of the row's even and odd samples), so a row
// crosses global memory once; the four-step path moves it three times as complex values. The backward
// with grad_k runs one channel per block over its rows (conv_real_window_backward_kernel); grad_u alone
// is the forward kernel run backwards in time. FFT_TENSOR_CONV_REAL_WINDOW: 0 turns it off, "forward"
// keeps it for the forward and grad_u alone only (the backward with grad_k then takes the four-step path).
constexpr int kRealWindowN = (int)kMaxFusedFFT;  // complex points per row; the window is 2x as many real ones

// FFT_TENSOR_CONV_REAL_WINDOW: unset or empty = the kernels where they apply (the backward with grad_k
// only where real_window_backward_chunk allows it), 0 = never, 1 = wherever they can run (tests),
// forward = the forward and grad_u alone only.
bool use_real_window(const at::Tensor& u, const ConvPlan& plan, bool with_grad_k, const ConvSwitches& sw) {
  if (u.scalar_type() == at::kDouble || plan.fft_size != 2 * kMaxFusedFFT || plan.segments != 1) return false;
  const RealWindowMode mode = sw.real_window;
  if (mode == RealWindowMode::kOff || (mode == RealWindowMode::kForwardOnly && with_grad_k)) return false;
  return smem_bytes(kRealWindowN) <= optin_smem_bytes();
}

// FFT_TENSOR_CONV_REAL_WINDOW_REGS: the kernels' register variant (each thread's own bins through the
// real-spectrum step, the inverse from registers straight to global memory: two shared-memory round trips
// fewer per inverse, but x live across the step: it spills 104 bytes in the forward kernel and 680 in the
// backward at the 64-register bound). Unset, empty or forward = the
// one-row kernel only (forward and grad_u alone: 16K 1.29 -> 1.27 ms fp32, 1.28 -> 1.20 bf16 on the
// H200); 1 = the backward with grad_k too (its spills cost: fwd+bwd 3.95 -> 5.89 ms); 0 = neither.
bool real_window_regs(bool backward_with_grad_k, const ConvSwitches& sw) {
  return backward_with_grad_k ? sw.regs_backward : sw.regs_forward;
}

// FFT_TENSOR_CONV_RADIX3 on the real-window plans (32K real points): where L + taps - 1 <= 24576 (Lk = L
// from 8193 to 12288) the forward and grad_u alone (conv_real_window3_kernel; RADIX3=real, the default, or
// 1) and the backward with grad_k (conv_real_window3_backward_kernel, real_window_grad_k3_kernel; RADIX3=1
// only, where REAL_WINDOW sends it to the real-window kernels) take 24576 real points: 12288 complex in three
// groups (radix3.cuh). Measured on the H100 (RESULTS.md, thirty-sixth session, B=8 D=768, Lk = L, fp32): the
// forward kernel 0.689 against 0.901 ms at 8193, 0.714 against 0.931 at 12288 (bf16 0.780 / 0.877, 0.802 /
// 0.884); the backward 1.20 against 1.11 ms per launch at 8193 (bf16 1.33 against 1.08), and with U in
// shared memory (kUShared) 1.13 (bf16 1.06) at 8193, 1.18 against 1.14 (bf16 1.17 against 1.11) at 12288:
// even at best, so the backward keeps the power-of-two kernels unless RADIX3=1. Every
// function below serves both sizes, each asking this predicate (the backward with grad_k computes its own
// spectrum), so a plan's spectrum and kernels always agree.
constexpr int kRadix3RealM = kRealWindowN / 4;
bool radix3_real_window(const ConvShape& s, const ConvSwitches& sw, bool backward_with_grad_k = false) {
  const bool on = sw.radix3 == Radix3Mode::kAll || (sw.radix3 == Radix3Mode::kReal && !backward_with_grad_k);
  return on && s.nseg == 1 && s.N == 2 * kRealWindowN && s.L + s.taps - 1 <= 6 * kRadix3RealM;
}

// The real-window kernels' complex points N (the window is 2N real ones), threads and shared memory.
struct RealWindowLaunch {
  int N;
  unsigned threads;
  size_t smem;
  explicit RealWindowLaunch(bool radix3)
      : N(radix3 ? 3 * kRadix3RealM : kRealWindowN),
        threads(radix3 ? (unsigned)radix3::threads<kRadix3RealM>() : (unsigned)(kRealWindowN / kElemsPerThread)),
        smem(radix3 ? radix3::smem_bytes<kRadix3RealM>() : smem_bytes(kRealWindowN)) {}
};

// (channels, N + 1) complex64: bins 0..N of the 2N-point spectrum of the effective kernel over 4N (the
// kernels' scale), for channels d0 .. d0 + channels - 1. D rows against the convolution's B * D.
at::Tensor real_window_spectrum(const SpectrumTaps& taps, int64_t d0, int64_t channels, const at::TensorOptions& opts,
                                bool radix3) {
  const RealWindowLaunch w(radix3);
  TORCH_CHECK(taps.taps.taps <= w.N, "causal_conv: internal: a real window with more than N taps");
  at::Tensor Kr = at::empty({channels, w.N + 1}, opts.dtype(at::kComplexFloat));
  if (channels == 0) return Kr;
  KernelTaps t = taps.taps;
  t.k += d0 * t.k_stride;
  if (t.skip != nullptr) t.skip += d0 * t.skip_stride;
  const auto kernel = radix3 ? real_window_spectrum3_kernel<kRadix3RealM> : real_window_spectrum_kernel<kRealWindowN>;
  allow_smem(kernel, w.smem);
  kernel<<<(unsigned)channels, w.threads, w.smem, at::cuda::getCurrentCUDAStream()>>>(
      t, reinterpret_cast<float2*>(Kr.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return Kr;
}

at::Tensor real_window_spectrum(const at::Tensor& k, const c10::optional<at::Tensor>& skip, const ConvShape& s,
                                const ConvSwitches& sw) {
  return real_window_spectrum(spectrum_taps(k, skip, s.taps), 0, s.D, k.options(), radix3_real_window(s, sw));
}

// The backward with grad_k's kernels for a plan: power-of-two or radix-3 (radix3_real_window), and for
// radix-3 whether each row's spectrum U stays in shared memory beside the FFT buffer
// (conv_real_window3_backward_kernel's kUShared; 202 KB: Hopper yes, an A100 no). Its scratch per channel
// of a launch: the kernel spectrum Kr and the sums C, (N + 1) complex each, and U_scratch for the bins of
// U not in shared memory. The power-of-two kernel keeps U's first u_smem_bins bins in the shared memory the
// device lets a block have beyond the FFT buffer (11648 of 16385 on Hopper, 0 where there is none) and
// only the rest in U_scratch.
struct RealWindowBackward {
  bool radix3;
  RealWindowLaunch w;
  size_t u_bytes;
  bool u_shared;
  int u_smem_bins;
  RealWindowBackward(const ConvShape& s, const ConvSwitches& sw)
      : radix3(radix3_real_window(s, sw, /*backward_with_grad_k=*/true)),
        w(radix3),
        u_bytes((size_t)(w.N + 1) * sizeof(float2)),
        u_shared(radix3 && w.smem + u_bytes <= optin_smem_bytes()),
        u_smem_bins(radix3 || optin_smem_bytes() <= w.smem
                        ? 0
                        : (int)std::min<size_t>((size_t)w.N + 1, (optin_smem_bytes() - w.smem) / sizeof(float2))) {}
  int64_t u_scratch_bins() const { return u_shared ? 0 : (int64_t)w.N + 1 - u_smem_bins; }
  int64_t scratch_bytes_per_channel() const { return 2 * (int64_t)u_bytes + u_scratch_bins() * (int64_t)sizeof(float2); }
  size_t kernel_smem() const { return w.smem + (u_shared ? u_bytes : (size_t)u_smem_bins * sizeof(float2)); }
};

// Channels per launch of the backward with grad_k (one block per channel), 0 = not this kernel. Its
// memory beyond inputs and outputs (RealWindowBackward: 2 x 128 KB per channel of a launch and the part
// of U not in shared memory, 37 KB on Hopper; 2 x 96 KB for radix-3 with U in shared memory) is kept under half the backward's inputs plus outputs and 256 MiB. By
// default a launch takes a multiple of the SM count (one block per SM, each working through its rows):
// fewer channels than SMs, or too little memory for that many, leave SMs idle, and the four-step path
// takes the backward instead. FFT_TENSOR_CONV_REAL_WINDOW=1: whatever fits, at least one channel.
int64_t real_window_backward_chunk(const at::Tensor& u, const at::Tensor& k, const ConvPlan& plan,
                                   const ConvSwitches& sw) {
  const int64_t D = u.size(1);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const RealWindowBackward rb(conv_shape(u.size(0), D, u.size(2), plan), sw);
  const int64_t per_channel = rb.scratch_bytes_per_channel();
  const int64_t io = 3 * (int64_t)u.nbytes() + 2 * (int64_t)k.nbytes();
  const int64_t fits = std::min<int64_t>(io / 2, int64_t(256) << 20) / per_channel;
  if (sw.real_window == RealWindowMode::kForced) return std::max<int64_t>(1, std::min(fits, D));
  const int64_t chunk = fits / sms * sms;
  return chunk >= sms && D >= sms ? std::min(chunk, D) : 0;
}

// grad_k's first taps (grad_k: (D, Lk) float32, rows contiguous; the rest of each row is left as it is),
// and grad_u into grad_u_out when it is defined: one channel per block, in launches of `chunk` channels
// (real_window_backward_chunk) that reuse one set of buffers.
void real_window_backward(const at::Tensor& gy, const at::Tensor& u, const at::Tensor& k,
                          const c10::optional<at::Tensor>& skip, at::Tensor grad_u_out, at::Tensor& grad_k,
                          const ConvShape& s, int64_t chunk, const ConvSwitches& sw) {
  const int64_t D = s.D;
  const bool need_u = grad_u_out.defined();
  TORCH_CHECK(grad_k.scalar_type() == at::kFloat && grad_k.stride(1) == 1, "causal_conv: internal: grad_k layout");
  const RealWindowBackward rb(s, sw);
  const bool radix3 = rb.radix3, u_shared = rb.u_shared;
  const RealWindowLaunch& w = rb.w;
  const SpectrumTaps taps = spectrum_taps(k, skip, s.taps);
  const auto cf = u.options().dtype(at::kComplexFloat);
  at::Tensor C = at::empty({chunk, w.N + 1}, cf), U_scratch = at::empty({chunk, rb.u_scratch_bins()}, cf);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // the half-window kernels where the row fills at most half the window (L <= N: half_window's rule)
  const bool half = sw.half && s.L <= w.N, regs = real_window_regs(true, sw);
  for (int64_t d0 = 0; d0 < D; d0 += chunk) {
    const int64_t n = std::min(chunk, D - d0);
    // the kernel's spectrum (bins 0..N over 4N), for this chunk's channels
    const at::Tensor Kr = need_u ? real_window_spectrum(taps, d0, n, k.options(), radix3) : at::Tensor();
    dispatch_io_type(u.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      using Kernel = decltype(&conv_real_window_backward_kernel<scalar_t, kRealWindowN, true, true>);
      const Kernel kernels[2][2][2] = {  // [need_u][regs][half]
          {{conv_real_window_backward_kernel<scalar_t, kRealWindowN, false, false>,
            conv_real_window_backward_kernel<scalar_t, kRealWindowN, false, false, true>},
           {conv_real_window_backward_kernel<scalar_t, kRealWindowN, false, true>,
            conv_real_window_backward_kernel<scalar_t, kRealWindowN, false, true, true>}},
          {{conv_real_window_backward_kernel<scalar_t, kRealWindowN, true, false>,
            conv_real_window_backward_kernel<scalar_t, kRealWindowN, true, false, true>},
           {conv_real_window_backward_kernel<scalar_t, kRealWindowN, true, true>,
            conv_real_window_backward_kernel<scalar_t, kRealWindowN, true, true, true>}}};
      const Kernel kernels3[2][2][2] = {  // [need_u][half][u_shared]; each thread's bins in registers
          {{conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, false, false>,
            conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, false, false, true>},
           {conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, false, true>,
            conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, false, true, true>}},
          {{conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, true, false>,
            conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, true, false, true>},
           {conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, true, true>,
            conv_real_window3_backward_kernel<scalar_t, kRadix3RealM, true, true, true>}}};
      const Kernel kernel = radix3 ? kernels3[need_u][half][u_shared] : kernels[need_u][regs][half];
      const size_t smem = rb.kernel_smem();
      allow_smem(kernel, smem);
      kernel<<<(unsigned)n, w.threads, smem, stream>>>(
          gy.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
          need_u ? reinterpret_cast<const float2*>(Kr.data_ptr()) : nullptr,
          need_u ? grad_u_out.data_ptr<scalar_t>() : nullptr, reinterpret_cast<float2*>(C.data_ptr()),
          u_shared ? nullptr : reinterpret_cast<float2*>(U_scratch.data_ptr()), s, d0, rb.u_smem_bins);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    // C holds 4 * sum_b G conj(U) over bins 0..N of the 2N-point spectra: the correlation's first taps
    const auto grad_k_kernel = radix3 ? real_window_grad_k3_kernel<kRadix3RealM> : real_window_grad_k_kernel<kRealWindowN>;
    allow_smem(grad_k_kernel, w.smem);
    grad_k_kernel<<<(unsigned)n, w.threads, w.smem, stream>>>(
        reinterpret_cast<const float2*>(C.data_ptr()), grad_k.data_ptr<float>() + d0 * grad_k.stride(0),
        grad_k.stride(0), (int)s.taps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The one-row real-window convolution (forward, or grad_u alone with kReverse); Kr from real_window_spectrum
// for the same plan and switches.
template <bool kReverse>
void launch_real_window(const at::Tensor& x, const at::Tensor& Kr, at::Tensor& y, const ConvShape& s,
                        const ConvSwitches& sw) {
  const int64_t blocks = s.B * s.D;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many rows (", std::to_string(blocks), ") for one launch");
  const bool radix3 = radix3_real_window(s, sw);
  const RealWindowLaunch w(radix3);
  TORCH_CHECK(Kr.size(1) == w.N + 1, "causal_conv: internal: a real-window spectrum of another size");
  const bool half = sw.half && s.L <= w.N, regs = real_window_regs(false, sw);
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using Kernel = decltype(&conv_real_window_kernel<scalar_t, kReverse, kRealWindowN, true>);
    const Kernel kernels[2][2] = {  // [regs][half]
        {conv_real_window_kernel<scalar_t, kReverse, kRealWindowN, false>,
         conv_real_window_kernel<scalar_t, kReverse, kRealWindowN, false, true>},
        {conv_real_window_kernel<scalar_t, kReverse, kRealWindowN, true>,
         conv_real_window_kernel<scalar_t, kReverse, kRealWindowN, true, true>}};
    const Kernel kernels3[2] = {conv_real_window3_kernel<scalar_t, kReverse, kRadix3RealM, false>,  // [half]
                                conv_real_window3_kernel<scalar_t, kReverse, kRadix3RealM, true>};
    const Kernel kernel = radix3 ? kernels3[half] : kernels[regs][half];
    allow_smem(kernel, w.smem);
    kernel<<<(unsigned)blocks, w.threads, w.smem, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), reinterpret_cast<const float2*>(Kr.data_ptr()), y.data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Four-step path (fourstep.cuh): one-window plans of 32K to 4M points through a global workspace.
constexpr int64_t kMaxFourStepFFT = int64_t(1) << 22;

// FFT_TENSOR_CONV_FOURSTEP: 1 or unset = the four-step path for every one-window plan it serves
// (measured faster than the cluster kernels at 64K and in forward+backward at 16K, H200, RESULTS.md),
// 0 = never (the cluster kernels on Hopper, else cuFFT).

size_t fourstep_column_smem(int N1) { return (size_t)fourstep::column_tile_size(N1) * sizeof(float2); }

// N = N1 x N2: N1 = 64 up to 2^19 points (N2 <= 8192), then N2 = 8192 (N1 = 128 to 512): the row
// kernel of the backward holds an FFT buffer and a running sum of N2 complex in shared memory.
constexpr int kMaxFourStepRow = 8192;
int fourstep_n1(int64_t N) { return N <= 64 * kMaxFourStepRow ? 64 : (int)(N / kMaxFourStepRow); }
size_t fourstep_row_smem(int N2) { return smem_bytes(N2) + (size_t)N2 * sizeof(float2); }
// rows_spectrum_kernel holds two rows (k1 and N1 - k1)
size_t fourstep_spectrum_smem(int N2) { return 2 * smem_bytes(N2); }

bool use_fourstep(const at::Tensor& u, const ConvPlan& plan, const ConvSwitches& sw) {
  if (u.scalar_type() == at::kDouble || plan.segments != 1 || plan.fft_size <= kMaxFusedFFT ||
      plan.fft_size > kMaxFourStepFFT)
    return false;
  if (!sw.fourstep || (u.size(0) + 1) / 2 > 65535) return false;  // a channel's pairs in one grid dim
  // the largest block: the backward's row kernel (FFT buffer and running sum), the spectrum's row kernel
  // (two rows) or a column tile
  const int N1 = fourstep_n1(plan.fft_size), N2 = (int)(plan.fft_size / N1);
  const size_t need = std::max({fourstep_row_smem(N2), fourstep_spectrum_smem(N2), fourstep_column_smem(N1)});
  return need <= optin_smem_bytes();
}

// The workspace of one chunk by default: 40% of the call's inputs plus outputs (io_bytes) less the kernel
// spectrum Kp (kp_bytes), at most 2 GiB, so that peak memory stays below issue 3's 1.5x of inputs plus
// outputs (about 1.4x in the forward); at least min(256 MiB, u / 4), the rule before the fortieth session,
// where the spectrum leaves less (few rows: Kp outweighs u). Fewer chunks pay: each chunk's launches end
// in a tail of idle SMs (H100, Lk = L, fp32 forward+backward: 14.1 -> 13.1 ms at 40000 and 7.80 -> 7.26
// at 24576 with 512 MiB chunks instead of u / 4; RESULTS.md, fortieth session), and chunks much smaller
// than that lose to the gaps between launches (H200, 64K: 7.7 ms forward in 32 MiB chunks, 6.6 ms in
// one), so the workspace is not sized for L2.
int64_t fourstep_budget(int64_t io_bytes, int64_t kp_bytes, int64_t u_bytes) {
  const int64_t floor = std::min<int64_t>(int64_t(256) << 20, u_bytes / 4);
  return std::max(floor, std::min<int64_t>(int64_t(2) << 30, io_bytes * 2 / 5 - kp_bytes));
}

// Units (row pairs or channels, row_bytes of workspace each) per chunk: FFT_TENSOR_CONV_FOURSTEP_MB MiB
// of workspace when set, else budget_bytes (fourstep_budget).
int64_t fourstep_chunk(int64_t row_bytes, int64_t units, int64_t budget_bytes, const ConvSwitches& sw) {
  const int64_t bytes = sw.fourstep_mb > 0 ? sw.fourstep_mb << 20 : budget_bytes;
  return std::max<int64_t>(1, std::min<int64_t>({units, bytes / row_bytes, 65535}));
}

// FFT_TENSOR_CONV_FOURSTEP3: 1 or unset = a four-step plan whose row and kernel fit three quarters of its
// N points (L + taps - 1 <= 3N/4: Lk = L from 16385 to 24576, 32769 to 49152, ...) runs on N' = 3N/4
// points by residues (fourstep.cuh, R = 3): three M = N/4-point four-step transforms, where the torch.fft
// reference transforms about 2L points; 0 = the power-of-two size. Returns R: 3 where it applies (M of
// at least 16K points, so that N2 >= 256, and three column tiles within a block's shared memory), else 1.
int fourstep_groups(const ConvShape& cs, const ConvSwitches& sw) {
  const int64_t M = cs.N / 4;
  if (!sw.fourstep3 || M < 64 * 256 || cs.L + cs.taps - 1 > 3 * M) return 1;
  return 3 * fourstep_column_smem(fourstep_n1(M)) <= optin_smem_bytes() ? 3 : 1;
}

fourstep::Shape fourstep_shape(const ConvShape& s, const ConvSwitches& sw) {
  const int R = fourstep_groups(s, sw);
  const int M = R == 3 ? s.N / 4 : s.N;  // the power-of-two part
  const int N1 = fourstep_n1(M);
  return {s.B, s.D, s.L, N1, M / N1, log2_int(M), s.npairs, R, 0};
}

// Points per row (N, or 3M) and shared memory of the column kernels (one tile per group).
int64_t fourstep_points(const fourstep::Shape& s) { return (int64_t)s.R * s.N1 * s.N2; }
size_t fourstep_columns_smem(const fourstep::Shape& s) { return s.R * fourstep_column_smem(s.N1); }

template <typename F>
void dispatch_n1(int N1, F&& f) {
  switch (N1) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    case 512: return f(std::integral_constant<int, 512>{});
    default: TORCH_CHECK(false, "causal_conv: no four-step column kernel for ", N1, " points");
  }
}

// f(std::integral_constant<int, N1>, std::integral_constant<int, N2>, std::integral_constant<int, R>)
// for the shape's split: every four-step kernel takes its FFT sizes as template parameters. The splits
// that occur: N1 = 64 with N2 = 256 (R = 3 only) to 8192, and N2 = 8192 with N1 = 128 to 512 (R = 3
// up to 128: fourstep_groups).
template <typename F>
void dispatch_fourstep_split(const fourstep::Shape& s, F&& f) {
  auto with_groups = [&](auto n1, auto n2) {
    if (s.R == 1) return f(n1, n2, std::integral_constant<int, 1>{});
    if constexpr (decltype(n1)::value <= 128) {
      if (s.R == 3) return f(n1, n2, std::integral_constant<int, 3>{});
    }
    TORCH_CHECK(false, "causal_conv: no four-step kernels for R = ", s.R, " and N1 = ", s.N1);
  };
  if (s.N1 == 64)
    return dispatch_fft_size<8, 13>(s.logN - 6, [&](auto n2) { with_groups(std::integral_constant<int, 64>{}, n2); });
  TORCH_CHECK(s.N2 == kMaxFourStepRow, "causal_conv: no four-step split ", s.N1, " x ", s.N2);
  dispatch_n1(s.N1, [&](auto n1) { with_groups(n1, std::integral_constant<int, kMaxFourStepRow>{}); });
}

// Kp (D, kp_rows(N1, R), N2): the kernel spectrum / N in the transform's order, bins k1 <= N1/2 (with R = 3
// group 0's, then all of group 1's; fourstep.cuh).
// io_bytes and u_bytes: the call's inputs plus outputs and the input the convolution runs over, which
// bound the workspace (fourstep_budget).
at::Tensor fourstep_spectrum(const at::Tensor& k, const c10::optional<at::Tensor>& skip, fourstep::Shape s, int taps,
                             int64_t io_bytes, int64_t u_bytes, const ConvSwitches& sw) {
  const int64_t D = k.size(0), points = fourstep_points(s);
  const SpectrumTaps k_taps = spectrum_taps(k, skip, taps);
  at::Tensor Kp = at::empty({D, fourstep::kp_rows(s.N1, s.R), s.N2}, k.options().dtype(at::kComplexFloat));
  const int64_t pairs = (D + 1) / 2;  // two channels per transform (fourstep::TapPairRows)
  const int64_t chunk = fourstep_chunk(points * 8, pairs, fourstep_budget(io_bytes, Kp.nbytes(), u_bytes), sw);
  at::Tensor T = at::empty({chunk * points}, Kp.options());
  auto* Tp = reinterpret_cast<float2*>(T.data_ptr());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const size_t col_smem = fourstep_columns_smem(s);
  dispatch_fourstep_split(s, [&](auto n1, auto n2, auto r) {
    constexpr int N1 = decltype(n1)::value, N2 = decltype(n2)::value, R = decltype(r)::value;
    auto columns = fourstep::columns_forward<N1, N2, R, fourstep::TapPairRows>();
    auto rows = fourstep::rows_spectrum_kernel<N2>;
    allow_smem(columns, col_smem);
    allow_smem(rows, fourstep_spectrum_smem(N2));
    for (int64_t p0 = 0; p0 < pairs; p0 += chunk) {
      const int64_t g = std::min(chunk, pairs - p0);
      s.pair0 = p0;
      columns<<<dim3(N2 / fourstep::kCols, (unsigned)g), dim3(N1 / kElemsPerThread, fourstep::kCols), col_smem,
                stream>>>(fourstep::TapPairRows{k_taps.taps, s, 0, false}, Tp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      rows<<<dim3(fourstep::kp_rows(N1, R), (unsigned)g), N2 / kElemsPerThread, fourstep_spectrum_smem(N2), stream>>>(
          Tp, reinterpret_cast<float2*>(Kp.data_ptr()), s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return Kp;
}

// f(static_cast<W*>(nullptr)) for the four-step workspace element W: a bfloat16 pair where bf16_work
// (bfloat16 rows only), else float2.
template <typename scalar_t, typename F>
void dispatch_work(bool bf16_work, F&& f) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (bf16_work) return f(static_cast<__nv_bfloat162*>(nullptr));
  }
  f(static_cast<float2*>(nullptr));
}

// y (packed rows) = causal_conv of x's packed rows; with conj_k the correlation with the taps instead
// (grad_u from gy's rows, when grad_k is not wanted). FFT_TENSOR_CONV_FOURSTEP_BF16 (1 or unset):
// bfloat16 rows go through a workspace of bfloat16 pairs (fourstep.cuh), half the bytes of each pass
// and twice the rows per chunk for the same budget; 0 = float2 for every dtype.
void launch_fourstep(const at::Tensor& x, const at::Tensor& Kp, at::Tensor& y, fourstep::Shape s, int64_t io_bytes,
                     const ConvSwitches& sw, bool conj_k = false) {
  const bool bf16_work = sw.fourstep_bf16 && x.scalar_type() == at::kBFloat16;
  const int64_t work_bytes = bf16_work ? sizeof(__nv_bfloat162) : sizeof(float2);  // per point
  const int64_t pairs = s.D * s.npairs, points = fourstep_points(s);
  const int64_t u_bytes = x.numel() * x.element_size();
  const int64_t chunk =
      fourstep_chunk(points * work_bytes, pairs, fourstep_budget(io_bytes, Kp.nbytes(), u_bytes), sw);
  at::Tensor T = at::empty({chunk * points * work_bytes}, x.options().dtype(at::kByte));
  const auto* Kpp = reinterpret_cast<const float2*>(Kp.data_ptr());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    dispatch_work<scalar_t>(bf16_work, [&](auto work_tag) {
      using W = std::remove_pointer_t<decltype(work_tag)>;
      auto* Tp = reinterpret_cast<W*>(T.data_ptr());
      dispatch_fourstep_split(s, [&](auto n1, auto n2, auto r) {
        constexpr int N1 = decltype(n1)::value, N2 = decltype(n2)::value, R = decltype(r)::value;
        auto forward = fourstep::columns_forward<N1, N2, R, fourstep::PairRows<scalar_t>, W>();
        auto rows = conj_k ? fourstep::rows_conv_kernel<N2, true, W> : fourstep::rows_conv_kernel<N2, false, W>;
        auto inverse = fourstep::columns_inverse<N1, N2, R, scalar_t, W>();
        const size_t col_smem = fourstep_columns_smem(s);
        allow_smem(forward, col_smem);
        allow_smem(inverse, col_smem);
        allow_smem(rows, smem_bytes(N2));
        const dim3 col_block(N1 / kElemsPerThread, fourstep::kCols);
        for (int64_t p0 = 0; p0 < pairs; p0 += chunk) {
          const unsigned g = (unsigned)std::min(chunk, pairs - p0);
          s.pair0 = p0;
          fourstep::PairRows<scalar_t> in{x.data_ptr<scalar_t>(), s};
          forward<<<dim3(N2 / fourstep::kCols, g), col_block, col_smem, stream>>>(in, Tp);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          rows<<<dim3(R * N1, g), N2 / kElemsPerThread, smem_bytes(N2), stream>>>(Tp, Kpp, s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          inverse<<<dim3(N2 / fourstep::kCols, g), col_block, col_smem, stream>>>(Tp, y.data_ptr<scalar_t>(), s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  });
}

// grad_u (into grad_u's packed rows, if defined) and grad_k's taps (into taps_grad, (D, taps) float32,
// if defined) from gy and u's packed rows. gy's transform serves both: grad_u multiplies it by
// conj(K) (a correlation, so no time reversal), grad_k accumulates G conj(U) over the channel's
// pairs (rows_backward_kernel). Chunks are whole channels. grad_u alone is the forward's three passes
// with conj(K) (launch_fourstep, its workspace rule included); with grad_k the workspace stays float2
// whatever the dtype, for grad_k's float32 sums.
void launch_fourstep_backward(const at::Tensor& gy, const at::Tensor& u, const at::Tensor& Kp, at::Tensor& grad_u,
                              at::Tensor& taps_grad, fourstep::Shape s, int taps, int64_t io_bytes,
                              const ConvSwitches& sw) {
  const bool need_u = grad_u.defined(), need_k = taps_grad.defined();
  if (!need_k) {
    if (need_u) launch_fourstep(gy, Kp, grad_u, s, io_bytes, sw, /*conj_k=*/true);
    return;
  }
  const int64_t points = fourstep_points(s), row_bytes = points * sizeof(float2);
  const int64_t channel_bytes = (2 * s.npairs + 1) * row_bytes;
  // a chunk's pairs are one grid dimension (at most 65535; use_fourstep bounds npairs)
  const int64_t budget = fourstep_budget(io_bytes, Kp.nbytes(), gy.numel() * gy.element_size());
  const int64_t chunk = std::min<int64_t>(fourstep_chunk(channel_bytes, s.D, budget, sw),
                                          std::max<int64_t>(1, 65535 / s.npairs));
  const auto cf = gy.options().dtype(at::kComplexFloat);
  at::Tensor Tg = at::empty({chunk * s.npairs * points}, cf);
  at::Tensor Tu = at::empty({chunk * s.npairs * points}, cf);
  at::Tensor Q = at::empty({chunk * points}, cf);
  auto* Tgp = reinterpret_cast<float2*>(Tg.data_ptr());
  auto* Tup = reinterpret_cast<float2*>(Tu.data_ptr());
  auto* Qp = reinterpret_cast<float2*>(Q.data_ptr());
  const auto* Kpp = reinterpret_cast<const float2*>(Kp.data_ptr());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_io_type(gy.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    dispatch_fourstep_split(s, [&](auto n1, auto n2, auto r) {
      constexpr int N1 = decltype(n1)::value, N2 = decltype(n2)::value, R = decltype(r)::value;
      auto forward = fourstep::columns_forward<N1, N2, R, fourstep::PairRows<scalar_t>>();
      auto inverse = fourstep::columns_inverse<N1, N2, R, scalar_t>();
      auto columns_taps = fourstep::columns_taps<N1, N2, R>();
      auto rows_k = need_u ? fourstep::rows_backward_kernel<N2, true> : fourstep::rows_backward_kernel<N2, false>;
      const size_t col_smem = fourstep_columns_smem(s);
      allow_smem(forward, col_smem);
      allow_smem(inverse, col_smem);
      allow_smem(columns_taps, col_smem);
      allow_smem(rows_k, fourstep_row_smem(N2));
      const dim3 col_block(N1 / kElemsPerThread, fourstep::kCols);
      for (int64_t d0 = 0; d0 < s.D; d0 += chunk) {
        const int64_t channels = std::min(chunk, s.D - d0);
        const unsigned pairs = (unsigned)(channels * s.npairs);
        s.pair0 = d0 * s.npairs;
        forward<<<dim3(N2 / fourstep::kCols, pairs), col_block, col_smem, stream>>>(
            fourstep::PairRows<scalar_t>{gy.data_ptr<scalar_t>(), s}, Tgp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        forward<<<dim3(N2 / fourstep::kCols, pairs), col_block, col_smem, stream>>>(
            fourstep::PairRows<scalar_t>{u.data_ptr<scalar_t>(), s}, Tup);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        rows_k<<<dim3(R * N1, (unsigned)channels), N2 / kElemsPerThread, fourstep_row_smem(N2), stream>>>(Tgp, Tup, Kpp,
                                                                                                     Qp, s);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        columns_taps<<<dim3(N2 / fourstep::kCols, (unsigned)channels), col_block, col_smem, stream>>>(
            Qp, taps_grad.data_ptr<float>(), s, taps);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (need_u) {
          inverse<<<dim3(N2 / fourstep::kCols, pairs), col_block, col_smem, stream>>>(Tgp, grad_u.data_ptr<scalar_t>(), s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Direct path (direct.cuh): kernels of at most 32 taps, and of at most 128 taps on rows shorter than
// 1024 (streaming steps, where an FFT window would be mostly padding). Its cost grows with the taps
// while the FFT windows' does not: with 128 taps the fused windows measured 1.7-1.9x faster forward
// from 4K (0.152 vs 0.264 ms at 4K, B=8, D=768), while 32 taps are near the direct kernel's memory
// floor. FFT_TENSOR_CONV_DIRECT_MAX_TAPS=N (0..128) replaces the rule by "at most N taps" (0 = never
// direct).
constexpr int kDirectTaps = 32, kDirectTapsShortRows = 128;
static_assert(direct::kMaxTaps == kMaxDirectTaps, "FFT_TENSOR_CONV_DIRECT_MAX_TAPS's range is the direct kernel's");
constexpr int64_t kShortRow = 1024;

bool use_direct(const at::Tensor& u, const ConvPlan& plan, const ConvSwitches& sw) {
  if (u.scalar_type() == at::kDouble) return false;
  if (sw.direct_max_taps >= 0) return plan.taps <= sw.direct_max_taps;
  return plan.taps <= (u.size(2) < kShortRow ? kDirectTapsShortRows : kDirectTaps);
}

// Tensor-core direct path (direct_mma.cuh): bfloat16 u with 33-128 taps, on sm_80+, forward and
// backward at every length. It reads the row once and does the taps as bf16 mma; measured on the H200
// (bf16, 128 taps, B=8, D=768, kernel time, RESULTS.md fifteenth session) against the FFT windows:
// forward 25 vs 37 us at 1K, 76 vs 85 us at 4K, 275 vs 296 us at 16K; grad_k 30 vs 78 us at 1K.
// FFT_TENSOR_CONV_MMA=0 switches it off; a FFT_TENSOR_CONV_DIRECT_MAX_TAPS cutoff also bounds it, so =0
// still means FFT windows only.
bool use_mma(const at::Tensor& u, const ConvPlan& plan, const ConvSwitches& sw) {
  if (!sw.mma || u.scalar_type() != at::kBFloat16 || plan.taps <= kDirectTaps || plan.taps > direct_mma::kMaxTaps)
    return false;
  if (u.size(2) > std::numeric_limits<int>::max() - direct_mma::kChunk) return false;  // the kernels' times are int
  if (sw.direct_max_taps >= 0 && plan.taps > sw.direct_max_taps) return false;
  return at::cuda::getCurrentDeviceProperties()->major >= 8;
}

int64_t mma_chunks(int64_t L) { return (L + direct_mma::kChunk - 1) / direct_mma::kChunk; }

// Blocks per channel: enough (channel, group) blocks for a few waves, at most one per item.
int mma_groups(int64_t D, int64_t items) {
  const int64_t want = 8 * (int64_t)at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return (int)std::max<int64_t>(1, std::min<int64_t>({(want + D - 1) / D, items, 65535}));
}

// Rows with time contiguous (the mma kernels read and write any batch and channel strides).
bool time_rows(const at::Tensor& t) { return t.size(2) <= 1 || t.stride(2) == 1; }

direct_mma::RowStrides row_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1)}; }

// 16-byte loads and stores: every row starts 16-byte aligned.
bool mma_vec(const at::Tensor& a, const at::Tensor& b) {
  auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0;
  };
  return a.size(2) % 8 == 0 && aligned(a) && aligned(b);
}

// k and skip read in place (no effective-kernel tensor per call: fewer launches on the LM's step).
template <bool kReverse>
void launch_conv_mma(const at::Tensor& x, const at::Tensor& k, const c10::optional<at::Tensor>& skip, at::Tensor& y,
                     int64_t taps) {
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2), chunks = mma_chunks(L);
  TORCH_CHECK(D < (int64_t(1) << 31), "causal_conv: too many channels (", std::to_string(D), ") for one launch");
  const SpectrumTaps t = spectrum_taps(k, skip, taps);
  const dim3 grid((unsigned)D, (unsigned)mma_groups(D, B * chunks));
  const auto kernel = taps >= direct_mma::kAllStepsTaps ? direct_mma::conv_mma_kernel<kReverse, true>
                                                        : direct_mma::conv_mma_kernel<kReverse, false>;
  kernel<<<grid, direct_mma::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), row_strides(x), t.taps,
      reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), row_strides(y), B, (int)L, (int)chunks, mma_vec(x, y));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// (D, taps) float32: sum over rows and times of gy[t] u[t - s], from (groups, D, taps) partial sums.
at::Tensor mma_grad_k(const at::Tensor& u, const at::Tensor& gy, int taps) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2), chunks = mma_chunks(L);
  TORCH_CHECK(D < (int64_t(1) << 31), "causal_conv_backward: too many channels (", std::to_string(D), ")");
  const int groups = mma_groups(D, B * chunks);
  // one group writes the result itself (a fresh tensor, not a view of a larger one)
  at::Tensor partial = groups == 1 ? at::empty({D, taps}, u.options().dtype(at::kFloat))
                                   : at::empty({groups, D, taps}, u.options().dtype(at::kFloat));
  direct_mma::conv_mma_grad_k_kernel<<<dim3((unsigned)D, (unsigned)groups), direct_mma::kThreads, 0,
                                       at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(u.data_ptr()), row_strides(u),
      reinterpret_cast<const __nv_bfloat16*>(gy.data_ptr()), row_strides(gy), partial.data_ptr<float>(), B, D,
      (int)L, taps, (int)chunks, mma_vec(u, gy));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return groups == 1 ? partial : partial.sum(0);
}

int64_t direct_tiles(int64_t L) { return (L + direct::kTile - 1) / direct::kTile; }

template <bool kReverse>
void launch_conv_direct(const at::Tensor& x, const at::Tensor& k_eff, at::Tensor& y, int taps) {
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2), tiles = direct_tiles(L);
  const int64_t blocks = B * D * tiles;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "causal_conv: too many tiles (", std::to_string(blocks), ") for one launch");
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    direct::conv_direct_kernel<scalar_t, kReverse><<<(unsigned)blocks, direct::kThreads, 0,
                                                      at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), k_eff.data_ptr<float>(), y.data_ptr<scalar_t>(), D, L, taps, tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// (D, taps) float32: sum over rows and times of gy[t] u[t - s].
at::Tensor direct_grad_k(const at::Tensor& u, const at::Tensor& gy, int taps) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2), tiles = direct_tiles(L);
  int lag_groups = 1;
  while (lag_groups * direct::kPerThread < taps) lag_groups *= 2;
  // Enough (channel, group) blocks for a few waves of 16 blocks per SM; each group's partial sum is
  // one (D, taps) slice, summed below in a fixed order.
  const int64_t want = 4 * 16 * (int64_t)at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int groups = (int)std::max<int64_t>(1, std::min<int64_t>((want + D - 1) / D, B * tiles));
  TORCH_CHECK(D * groups < (int64_t(1) << 31), "causal_conv_backward: too many blocks (", std::to_string(D * groups), ")");
  at::Tensor partial = groups == 1 ? at::empty({D, taps}, u.options().dtype(at::kFloat))
                                   : at::empty({groups, D, taps}, u.options().dtype(at::kFloat));
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    direct::conv_direct_grad_k_kernel<scalar_t><<<(unsigned)(D * groups), direct::kThreads, 0,
                                                   at::cuda::getCurrentCUDAStream()>>>(
        u.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), partial.data_ptr<float>(), B, D, L, taps, lag_groups,
        tiles, groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return groups == 1 ? partial : partial.sum(0);
}

// ---------------------------------------------------------------------------------------------
// Channels-contiguous inputs (direct_tiled.cuh): tested on the GPU, not measured faster in the LM, so off
// unless FFT_TENSOR_CONV_CHANNELS_LAST=1.

// Layouts the tile loader reads coalesced: channels or time contiguous.
bool tile_layout(const at::Tensor& t) { return t.stride(1) == 1 || t.stride(2) == 1; }

// The tiled kernels pay off where the plain ones would first copy u: channels contiguous.
bool use_tiled(const at::Tensor& u, const ConvSwitches& sw) {
  return sw.channels_last && u.size(1) > 1 && u.stride(1) == 1 && u.size(0) <= 65535 &&
         (u.size(1) + direct_tiled::kLanes - 1) / direct_tiled::kLanes <= 65535;
}

direct_tiled::Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

template <bool kReverse>
void launch_conv_tiled(const at::Tensor& x, const at::Tensor& k_eff, at::Tensor& y, int taps) {
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
  const dim3 grid((unsigned)((L + direct_tiled::kTile - 1) / direct_tiled::kTile),
                  (unsigned)((D + direct_tiled::kLanes - 1) / direct_tiled::kLanes), (unsigned)B);
  const size_t smem = direct_tiled::forward_smem_bytes();
  dispatch_io_type(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = direct_tiled::conv_tiled_kernel<scalar_t, kReverse>;
    allow_smem(kernel, smem);
    kernel<<<grid, dim3(direct_tiled::kLanes, direct_tiled::kWarps), smem, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), strides_of(x), k_eff.data_ptr<float>(), y.data_ptr<scalar_t>(), D, L, taps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor tiled_grad_k(const at::Tensor& u, const at::Tensor& gy, int taps) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
  const int64_t tiles = (L + direct_tiled::kTile - 1) / direct_tiled::kTile;
  const int64_t channel_blocks = (D + direct_tiled::kLanes - 1) / direct_tiled::kLanes;
  const int64_t want = 8 * (int64_t)at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int groups = (int)std::max<int64_t>(1, std::min<int64_t>({(want + channel_blocks - 1) / channel_blocks,
                                                                   B * tiles, 65535}));
  at::Tensor partial = at::empty({groups, D, taps}, u.options().dtype(at::kFloat));
  const size_t smem = direct_tiled::grad_k_smem_bytes();
  dispatch_io_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = direct_tiled::conv_tiled_grad_k_kernel<scalar_t>;
    allow_smem(kernel, smem);
    kernel<<<dim3((unsigned)groups, (unsigned)channel_blocks), dim3(direct_tiled::kLanes, direct_tiled::kWarps), smem,
             at::cuda::getCurrentCUDAStream()>>>(u.data_ptr<scalar_t>(), strides_of(u), gy.data_ptr<scalar_t>(),
                                                 strides_of(gy), partial.data_ptr<float>(), B, D, L, taps, groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return groups == 1 ? partial[0] : partial.sum(0);
}

at::Tensor causal_conv_cuda_packed(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2);
  const ConvPlan plan = conv_plan(L, k.size(1));
  const ConvSwitches sw = ConvSwitches::from_env();
  if (use_direct(u, plan, sw) && u.numel() > 0 && use_tiled(u, sw)) {
    at::Tensor y = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
    launch_conv_tiled<false>(u, effective_kernel(k, skip, plan.taps).to(at::kFloat).contiguous(), y, (int)plan.taps);
    return y;
  }
  // (the experimental tiled kernels above first: FFT_TENSOR_CONV_CHANNELS_LAST=1 asks for them)
  if (use_mma(u, plan, sw)) {
    // rows read in place wherever time is contiguous; y in the output layout directly
    const at::Tensor uc = time_rows(u) ? u : layout::rows_contiguous(u);
    at::Tensor y = empty_like_output(u);
    if (uc.numel() == 0) return y;
    launch_conv_mma<false>(uc, k, skip, y, plan.taps);
    return y;
  }
  if (use_direct(u, plan, sw)) {
    const at::Tensor uc = layout::rows_contiguous(u);
    at::Tensor y = at::empty_like(uc);
    if (uc.numel() == 0) return y;
    launch_conv_direct<false>(uc, effective_kernel(k, skip, plan.taps).to(at::kFloat).contiguous(), y, (int)plan.taps);
    return y;
  }
  const bool fused = use_fused(u, plan, /*with_grad_k=*/false);
  const bool real_window = !fused && use_real_window(u, plan, /*with_grad_k=*/false, sw);
  const bool fourstep = !fused && !real_window && use_fourstep(u, plan, sw);
  if (!fused && !real_window && !fourstep && !use_cluster(u, plan, /*with_grad_k=*/false, sw))
    return causal_conv_composite(u, k, skip);
  const ConvShape s = conv_shape(B, D, L, plan);
  const at::Tensor uc = layout::rows_contiguous(u);
  at::Tensor y = at::empty_like(uc);
  if (uc.numel() == 0) return y;
  if (fused && use_tc_window(uc, plan, sw)) {
    launch_tc_window(uc, kernel_spectrum(k, skip, s), y, s);
  } else if (fused) {
    conv_windows<false>(uc, k, skip, y, s, sw);
  } else if (real_window) {
    launch_real_window<false>(uc, real_window_spectrum(k, skip, s, sw), y, s, sw);
  } else if (fourstep) {
    const fourstep::Shape fs = fourstep_shape(s, sw);  // once: the spectrum and the launch take the same split
    const int64_t u_bytes = uc.numel() * uc.element_size();
    const int64_t io_bytes = 2 * u_bytes + k.numel() * k.element_size();  // u, k and y
    launch_fourstep(uc, fourstep_spectrum(k, skip, fs, s.taps, io_bytes, u_bytes, sw), y, fs, io_bytes, sw);
  } else {
    const int C = cluster_blocks(plan);
    launch_conv_clusters<false>(uc, kernel_spectrum_clusters(k, skip, s, C), y, s, C, sw);
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cuda_packed(const at::Tensor& grad_y, const at::Tensor& u,
                                                                    const at::Tensor& k,
                                                                    const c10::optional<at::Tensor>& skip,
                                                                    bool need_u, bool need_k) {
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2), Lk = k.size(1);
  const ConvPlan plan = conv_plan(L, Lk);
  const ConvSwitches sw = ConvSwitches::from_env();
  const bool tiled = use_direct(u, plan, sw) && u.numel() > 0 && (use_tiled(u, sw) || use_tiled(grad_y, sw));
  const bool mma = !tiled && use_mma(u, plan, sw);
  const bool direct = mma || use_direct(u, plan, sw);  // time-domain taps: the mma kernels or the plain ones
  const bool fused = !direct && use_fused(u, plan, need_k);
  const int64_t real_window_chunk = !direct && !fused && need_k && use_real_window(u, plan, true, sw)
                                        ? real_window_backward_chunk(u, k, plan, sw)
                                        : 0;
  const bool real_window = !direct && !fused && (need_u || need_k) &&
                           (need_k ? real_window_chunk > 0 : use_real_window(u, plan, false, sw));
  const bool fourstep = !direct && !fused && !real_window && use_fourstep(u, plan, sw);
  const bool clusters = !direct && !fused && !real_window && !fourstep && use_cluster(u, plan, need_k, sw);
  if (!direct && !fused && !real_window && !clusters && !fourstep)
    return causal_conv_backward_composite(grad_y, u, k, skip, need_u, need_k);
  const ConvShape s = conv_shape(B, D, L, plan);
  if (real_window) {
    const at::Tensor gy = layout::rows_contiguous(grad_y.to(u.scalar_type()));
    at::Tensor grad_u = need_u ? at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous))
                               : at::empty({0}, u.options());
    at::Tensor grad_k = at::empty({0}, k.options());
    if (!need_k) {  // grad_u alone (frozen taps): the forward kernel run backwards in time
      if (gy.numel() > 0) launch_real_window<true>(gy, real_window_spectrum(k, skip, s, sw), grad_u, s, sw);
      return {grad_u, grad_k};
    }
    // the kernels write every tap in use; taps past L stay zero
    grad_k = plan.taps == Lk && u.numel() > 0 ? at::empty({D, Lk}, k.options()) : at::zeros({D, Lk}, k.options());
    if (u.numel() > 0) {
      real_window_backward(gy, layout::rows_contiguous(u), k, skip, need_u ? grad_u : at::Tensor(), grad_k, s,
                           real_window_chunk, sw);
    } else if (need_u) {
      grad_u.zero_();
    }
    return {grad_u, grad_k};
  }
  if (fourstep) {
    const at::Tensor gy = layout::rows_contiguous(grad_y.to(u.scalar_type()));
    at::Tensor grad_u = need_u ? at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous))
                               : at::empty({0}, u.options());
    at::Tensor taps_grad = need_k ? at::empty({D, plan.taps}, k.options().dtype(at::kFloat)) : at::Tensor();
    if (u.numel() > 0 && (need_u || need_k)) {
      at::Tensor grad_u_rows = need_u ? grad_u : at::Tensor();
      const int64_t gy_bytes = gy.numel() * gy.element_size(), k_bytes = k.numel() * k.element_size();
      // inputs gy, k (and u for grad_k), outputs grad_u and grad_k as wanted
      const int64_t io_bytes = gy_bytes + k_bytes + (need_u ? gy_bytes : 0) + (need_k ? gy_bytes + k_bytes : 0);
      const fourstep::Shape fs = fourstep_shape(s, sw);
      launch_fourstep_backward(gy, need_k ? layout::rows_contiguous(u) : u,
                               fourstep_spectrum(k, skip, fs, s.taps, io_bytes, gy_bytes, sw), grad_u_rows, taps_grad,
                               fs, s.taps, io_bytes, sw);
    } else if (need_u) {
      grad_u.zero_();
    }
    at::Tensor grad_k = at::empty({0}, k.options());
    if (need_k) {
      if (u.numel() == 0) taps_grad.zero_();
      if (plan.taps == Lk && k.scalar_type() == at::kFloat) {
        grad_k = taps_grad;
      } else {
        grad_k = at::zeros({D, Lk}, k.options());
        grad_k.narrow(1, 0, plan.taps).copy_(taps_grad);
      }
    }
    return {grad_u, grad_k};
  }
  if (tiled) {
    // no layout copies: the tile loader reads u and grad_y in their own strides
    const at::Tensor gy_t = grad_y.to(u.scalar_type());
    const at::Tensor ut = tile_layout(u) ? u : u.contiguous();
    const at::Tensor gyt = tile_layout(gy_t) ? gy_t : gy_t.contiguous();
    at::Tensor grad_u = at::empty({0}, u.options());
    at::Tensor grad_k = at::empty({0}, k.options());
    if (need_u) {
      grad_u = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
      launch_conv_tiled<true>(gyt, effective_kernel(k, skip, plan.taps).to(at::kFloat).contiguous(), grad_u,
                              (int)plan.taps);
    }
    if (need_k) {
      grad_k = at::zeros({D, Lk}, k.options());
      grad_k.narrow(1, 0, plan.taps).copy_(tiled_grad_k(ut, gyt, (int)plan.taps));
    }
    return {grad_u, grad_k};
  }
  const at::Tensor gy_cast = grad_y.to(u.scalar_type());
  // the mma kernels read rows in place wherever time is contiguous
  const at::Tensor gy = mma && time_rows(gy_cast) ? gy_cast : layout::rows_contiguous(gy_cast);
  at::Tensor grad_u = at::empty({0}, u.options());
  at::Tensor grad_k = at::empty({0}, k.options());
  if (u.numel() == 0) {  // no rows: nothing to launch
    if (need_u) grad_u = at::zeros(u.sizes(), u.options());
    if (need_k) grad_k = at::zeros({D, Lk}, k.options());
    return {grad_u, grad_k};
  }
  if (fused && need_u && need_k && use_backward_pairs(s, sw)) {
    grad_u = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
    grad_k = backward_pairs(layout::rows_contiguous(u), gy, kernel_spectrum(k, skip, s), grad_u, s, Lk, sw)
                 .to(k.scalar_type());
    return {grad_u, grad_k};
  }
  if (need_u) {
    grad_u = mma ? empty_like_output(u) : at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
    if (mma) {
      launch_conv_mma<true>(gy, k, skip, grad_u, plan.taps);
    } else if (direct) {
      launch_conv_direct<true>(gy, effective_kernel(k, skip, plan.taps).to(at::kFloat).contiguous(), grad_u,
                               (int)plan.taps);
    } else if (fused) {
      conv_windows<true>(gy, k, skip, grad_u, s, sw);
    } else {
      const int C = cluster_blocks(plan);
      launch_conv_clusters<true>(gy, kernel_spectrum_clusters(k, skip, s, C), grad_u, s, C, sw);
    }
  }
  if (need_k) {
    const at::Tensor uc = mma && time_rows(u) ? u : layout::rows_contiguous(u);
    if (fused) {
      grad_k = grad_k_windows(uc, gy, s, Lk, sw).to(k.scalar_type());
    } else {
      const at::Tensor taps_grad =
          mma      ? mma_grad_k(uc, gy, (int)plan.taps)
          : direct ? direct_grad_k(uc, gy, (int)plan.taps)
                 : at::fft_irfft(grad_k_spectrum_clusters(uc, gy, s, cluster_blocks(plan)), s.N).narrow(-1, 0, plan.taps);
      if (plan.taps == Lk && taps_grad.scalar_type() == k.scalar_type() && taps_grad.is_contiguous()) {
        grad_k = taps_grad;  // every tap is in use: no zero fill and copy
      } else {
        grad_k = at::zeros({D, Lk}, k.options());
        grad_k.narrow(1, 0, plan.taps).copy_(taps_grad);
      }
    }
  }
  return {grad_u, grad_k};
}

// The entry points: every path above computes y and grad_u either in the output layout (the mma
// kernels) or packed; in_output_layout moves a packed one into u's layout where u keeps one (common.h).
at::Tensor causal_conv_cuda(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  check_causal_conv_args(u, k, skip, "causal_conv");
  return in_output_layout(causal_conv_cuda_packed(u, k, skip), u);
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cuda(const at::Tensor& grad_y, const at::Tensor& u,
                                                             const at::Tensor& k,
                                                             const c10::optional<at::Tensor>& skip, bool need_u,
                                                             bool need_k) {
  check_causal_conv_args(u, k, skip, "causal_conv_backward");
  check_causal_conv_grad_y(grad_y, u);
  const auto [grad_u, grad_k] = causal_conv_backward_cuda_packed(grad_y, u, k, skip, need_u, need_k);
  return {in_output_layout(grad_u, u), grad_k};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CUDA, m) {
  m.impl("causal_conv", &causal_conv_cuda);
  m.impl("causal_conv_backward", &causal_conv_backward_cuda);
}

}  // namespace fft_tensor
