"""How accurate would a tensor-core FFT convolution be? A CPU emulation, to decide before writing one.

The fused window kernels are bound by instruction issue (RESULTS.md), and what would cut the instructions
per point is running the small DFTs of each FFT pass as matrix products on the tensor cores (as FlashFFTConv
does in fp16/bf16). The cost is precision: mma.sync multiplies operands of 10 (tf32, fp16) or 7 (bf16)
mantissa bits and accumulates in fp32. This script emulates, on the CPU, the window kernels' algorithm (two
real rows packed as one complex row, one N-point FFT, the product with the kernel's fp32 spectrum, the
inverse as a forward FFT of the conjugate) with every radix-R DFT done as R x R complex matrix products
whose operands are rounded to the chosen format and whose sums are fp32, and the twiddles between passes
in fp32 (CUDA cores), then compares y with a float64 convolution, in the tests' norm (tests/conftest.py
rel_err), against the tests' bounds:
  - float32 u: rel_err < 1e-5 (tests/test_causal_conv.py);
  - bfloat16 u: rel_err <= 4 x (the error of rounding the exact result to bf16) + 1e-6.
Operand formats ("modes"):
  fp32      every product in fp32 (what the CUDA-core kernels do now; the baseline)
  tf32      operands rounded to tf32 (cvt.rna.tf32.f32), one mma per real product
  3xtf32    a = hi + lo split of both operands, hi*hi + hi*lo + lo*hi: three mmas per real product
  fp16      operands rounded to fp16 (the data scaled by 1/sqrt(R) per pass to stay in range)
  bf16      operands rounded to bf16
  2xbf16    the data split hi + lo in bf16 (the DFT matrix in bf16 hi + lo too), three mmas
The products of two rounded operands are exact in fp32 (at most 22 significant bits), so a float32 matmul
of the rounded operands reproduces an fp32-accumulating mma up to the order of its sums.

  python benchmarks/emulate_tc_dft.py [--lengths 1024,4096] [--radix 16] [--rows 64] [--seed 0]
  python benchmarks/emulate_tc_dft.py --lengths 1024 --chain 32   (two dense passes, 2048 = 32 x 64)
  python benchmarks/emulate_tc_dft.py --pairs   (tc_window.cuh's kernel, error per row of unlike row pairs)

Prints one table (markdown) of rel_err per mode and length, float32 and bfloat16 input, with the bounds.
"""
import argparse
import math
import sys

import torch


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> tf32 (10 mantissa bits), round to nearest, ties away from zero (cvt.rna.tf32.f32)."""
    bits = x.to(torch.float32).resolve_neg().contiguous().view(torch.int32)
    bits = (bits + 0x1000) & ~0x1FFF  # add half an ulp of tf32 to the magnitude, then drop 13 bits
    return bits.view(torch.float32)


def rounder(fmt: str):
    if fmt == "fp32":
        return lambda x: x.to(torch.float32)
    if fmt == "tf32":
        return round_tf32
    if fmt == "fp16":
        return lambda x: x.to(torch.float16).to(torch.float32)
    if fmt == "bf16":
        return lambda x: x.to(torch.bfloat16).to(torch.float32)
    raise ValueError(fmt)


def split(x: torch.Tensor, fmt: str):
    """x (fp32) = hi + lo, both in fmt."""
    r = rounder(fmt)
    hi = r(x)
    return hi, r(x.to(torch.float32) - hi)


def real_mm(a: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
    """a (..., R) @ m (R, R) with fp32 sums, operands in the mode's format."""
    if mode in ("fp32", "tf32", "fp16", "bf16"):
        r = rounder(mode)
        return r(a) @ r(m)
    fmt = {"3xtf32": "tf32", "2xbf16": "bf16"}[mode]
    ah, al = split(a, fmt)
    mh, ml = split(m, fmt)
    return ah @ mh + (ah @ ml + al @ mh)  # small terms first, as a split-precision kernel sums them


def dft_matrix(R: int):
    n = torch.arange(R, dtype=torch.float64)
    ang = -2 * math.pi * torch.outer(n, n) / R
    return torch.cos(ang).to(torch.float32), torch.sin(ang).to(torch.float32)


def _cmm(ar, ai, br, bi, mode):
    """(ar + i ai) @ (br + i bi) as 4 real products, both operands rounded to the mode's format, fp32 sums."""
    return ((real_mm(ar, br, mode) - real_mm(ai, bi, mode)).to(torch.float32),
            (real_mm(ar, bi, mode) + real_mm(ai, br, mode)).to(torch.float32))


def small_dft(xr, xi, R, mode, scale):
    """DFT of length R along the last axis as complex matrix products (4 real ones), in fp32 out."""
    cr, ci = dft_matrix(R)
    if scale != 1.0:  # fp16: keep the data in range (a power of two: exact)
        xr, xi = xr * scale, xi * scale
    return _cmm(xr, xi, cr.T, ci.T, mode)


def fft_tc(xr, xi, radix, mode):
    """Forward DFT (sign -1) along the last axis, N = radix^p * r, by the four-step recursion
    N = R * M: n = M n1 + n2, k = k1 + R k2: a length-R DFT over n1 (matrix products), twiddles
    W_N^(n2 k1) in fp32, a length-M DFT over n2 (recursively), then the transpose. Returns fp32 parts
    and the scale applied (fp16 mode divides by a power of two per pass)."""
    N = xr.shape[-1]
    R = min(radix, N)
    scale = 1.0
    if mode == "fp16":
        scale = 2.0 ** -round(math.log2(R) / 2)  # ~1/sqrt(R): |DFT| grows by sqrt(R) per pass for noise
    if R == N:
        yr, yi = small_dft(xr, xi, R, mode, scale)
        return yr, yi, scale
    M = N // R
    lead = xr.shape[:-1]
    ar = xr.reshape(*lead, R, M).transpose(-1, -2)  # (..., M, R): n1 last
    ai = xi.reshape(*lead, R, M).transpose(-1, -2)
    br, bi = small_dft(ar, ai, R, mode, scale)  # (..., n2, k1)
    n2 = torch.arange(M, dtype=torch.float64)[:, None]
    k1 = torch.arange(R, dtype=torch.float64)[None, :]
    ang = -2 * math.pi * n2 * k1 / N
    wr, wi = torch.cos(ang).to(torch.float32), torch.sin(ang).to(torch.float32)
    tr, ti = br * wr - bi * wi, br * wi + bi * wr  # fp32 twiddles (CUDA cores)
    cr, ci, s2 = fft_tc(tr.transpose(-1, -2).contiguous(), ti.transpose(-1, -2).contiguous(), radix, mode)
    # (..., k1, k2) -> k = k1 + R k2
    return cr.transpose(-1, -2).reshape(*lead, N), ci.transpose(-1, -2).reshape(*lead, N), scale * s2


def window_points(L: int) -> int:
    """N = next_pow2(2L - 1): one window holds a row of L and a kernel of L taps without circular wrap."""
    return 1 << (2 * L - 2).bit_length()


def pack_rows(u: torch.Tensor, N: int) -> torch.Tensor:
    """Rows in pairs as z = u0 + i u1, zero-padded to N (the window from t = 0: y[t] for t < L is exact
    when N >= 2L - 1), complex64 (rows / 2, N)."""
    z = torch.zeros(u.shape[0] // 2, N, dtype=torch.complex64)
    z[:, :u.shape[1]] = torch.complex(u[0::2], u[1::2])
    return z


def unpack_rows(w: torch.Tensor, L: int) -> torch.Tensor:
    """The two real rows of each complex row w (rows / 2, N): (rows, L) float32."""
    y = torch.empty(2 * w.shape[0], L, dtype=torch.float32)
    y[0::2], y[1::2] = w.real[:, :L], w.imag[:, :L]
    return y


def conv_tc(u: torch.Tensor, k: torch.Tensor, mode: str, radix: int) -> torch.Tensor:
    """causal_conv(u, k) for u (rows, L) float32, k (L,) float32 (one channel), Lk = L, one window of
    N = next_pow2(2L - 1) points, rows in pairs packed as u0 + i u1, as conv_window_kernel does."""
    L = u.shape[1]
    N = window_points(L)
    K = torch.fft.fft(k.to(torch.float32), n=N)  # the kernel spectrum, fp32 (1/N applied at the end: fp16 range)
    z = pack_rows(u, N)
    Zr, Zi, s1 = fft_tc(z.real, z.imag, radix, mode)
    Kr, Ki = K.real, K.imag
    Yr, Yi = Zr * Kr - Zi * Ki, Zr * Ki + Zi * Kr
    Wr, Wi, s2 = fft_tc(Yr, -Yi, radix, mode)  # inverse = conj(FFT(conj(Y)))
    return unpack_rows(torch.complex(Wr, -Wi) / (N * s1 * s2), L)


def conv_tc_chain(u: torch.Tensor, k: torch.Tensor, mode: str, n1: int) -> torch.Tensor:
    """conv_tc with two dense DFT passes per transform, N = n1 * n2, in the orientation a kernel could
    chain through mma accumulators without shared memory: each product contracts over the column index of
    the previous result (the accumulator tile as the next A operand, or transposed as its B operand).
      z[n2 r + c] viewed X[r][c] (r < n1 rows, c < n2 columns)
      A1[k1][c]  = F_n1[k1][r] X[r][c]              (DFT over r)
      T1         = A1 * W_N^(k1 c)                  (fp32 twiddles, in registers)
      A2[k1][k2] = T1[k1][c] F_n2[c][k2]            (DFT over c: spectrum bin k1 + n1 k2)
      Y          = A2 * K[k1 + n1 k2]               (fp32)
      A3[c][k1]  = conj F_n2[c][k2] Y[k1][k2]       (inverse over k2; Y as the transposed B operand)
      T3         = A3 * W_N^(-c k1)
      A4[c][r]   = T3[c][k1] conj F_n1[k1][r]       (inverse over k1): y[c + n2 r] = A4[c][r] / N
    Data operands are scaled by powers of two (exact) to stay inside fp16's range: the row pair by its
    largest magnitude, each DFT's output by about 1/sqrt(its length)."""
    L = u.shape[1]
    N = window_points(L)
    n2 = N // n1
    assert n1 * n2 == N and n1 <= n2
    K = torch.fft.fft(k.to(torch.float32), n=N)
    z = pack_rows(u, N)
    amax = z.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    s0 = torch.exp2(-torch.ceil(torch.log2(amax)))  # per row pair, |z * s0| <= 1
    z = z * s0
    X = z.reshape(-1, n1, n2)  # X[r][c] = z[n2 r + c]
    f1 = torch.fft.fft(torch.eye(n1, dtype=torch.complex128)).to(torch.complex64)  # F[k][n] = W^(kn)
    f2 = torch.fft.fft(torch.eye(n2, dtype=torch.complex128)).to(torch.complex64)
    c1 = 2.0 ** -round(math.log2(n1) / 2)
    c2 = 2.0 ** -round(math.log2(n2) / 2)
    kk = torch.arange(n1, dtype=torch.float64)[:, None]
    cc = torch.arange(n2, dtype=torch.float64)[None, :]
    tw = torch.polar(torch.ones(n1, n2, dtype=torch.float64), -2 * math.pi * kk * cc / N).to(torch.complex64)

    def mm(a, b):
        a, b = a.resolve_conj(), b.resolve_conj()
        r, i = _cmm(a.real, a.imag, b.real, b.imag, mode)
        return torch.complex(r, i)

    A1 = mm(f1 * c1, X)                                   # [k1][c]
    T1 = A1 * tw
    A2 = mm(T1 * c2, f2)                                  # [k1][k2]
    Y = A2 * K.reshape(n2, n1).T                          # K[k1 + n1 k2] at [k1][k2]
    A3 = mm(f2.conj() * c2, Y.transpose(-1, -2))          # [c][k1]
    T3 = A3 * tw.T.conj()
    A4 = mm(T3 * c1, f1.conj())                           # [c][r]
    scale = (c1 * c2) ** 2 * N
    return unpack_rows(A4.transpose(-1, -2).reshape(-1, N) / (s0 * scale), L)  # y[n2 r + c]


def pow2_scale(m: torch.Tensor) -> torch.Tensor:
    """2^-e with m * 2^-e in [1/2, 1) (1 where m is 0): tc_window.cuh's range_exponent, unclamped."""
    s = torch.exp2(-torch.frexp(m).exponent.to(m.dtype))
    return torch.where(m > 0, s, torch.ones_like(s))


def conv_tc_window(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """causal_conv(u, k) as csrc/causal_conv/tc_window.cuh computes it, for u (rows, L) (rows in pairs) and
    k (L,) float32, Lk = L, N = next_pow2(2L - 1) = N1 x 64: each row of a pair scaled by its own power of
    two to max |x| in [1/2, 1); pass 1 (F_N1 over the nonzero rows n1 < N1/2), fp32 twiddles W_N^(k1 n2),
    pass 2 (F_64), the product with the fp32 spectrum K[k1 + N1 k2] / N, Z scaled by a power of two to its
    largest component in [1/2, 1), the first inverse (conj F_64), conj twiddles, the second (conj F_N1, rows
    n1' < N1/2 only); every matrix product with fp16 operands and fp32 sums. Returns (rows, L) float32."""
    L = u.shape[1]
    N = window_points(L)
    N1 = N // 64
    u0, u1 = u[0::2].to(torch.float32), u[1::2].to(torch.float32)
    s0 = pow2_scale(u0.abs().amax(-1, keepdim=True))
    s1 = pow2_scale(u1.abs().amax(-1, keepdim=True))
    x = torch.zeros(u0.shape[0], N, dtype=torch.complex64)
    x[:, :L] = torch.complex(u0 * s0, u1 * s1)
    X = x.reshape(-1, N1, 64)[:, :N1 // 2]  # x[64 n1 + n2] at [n1][n2], n1 < N1/2
    f1 = torch.fft.fft(torch.eye(N1, dtype=torch.complex128)).to(torch.complex64)  # F[a][b] = W^(ab)
    f64 = torch.fft.fft(torch.eye(64, dtype=torch.complex128)).to(torch.complex64)
    k1 = torch.arange(N1, dtype=torch.float64)[:, None]
    n2 = torch.arange(64, dtype=torch.float64)[None, :]
    tw = torch.polar(torch.ones(N1, 64, dtype=torch.float64), -2 * math.pi * k1 * n2 / N).to(torch.complex64)

    def mm(a, b):
        r, i = _cmm(a.real, a.imag, b.real, b.imag, "fp16")
        return torch.complex(r, i)

    K = (torch.fft.fft(k.to(torch.float64), n=N) / N).to(torch.complex64)
    C = mm(f1[:, :N1 // 2], X)                                        # [k1][n2]
    Z = mm(C * tw, f64) * K.reshape(64, N1).T                        # [k1][k2] times K[k1 + N1 k2]
    zmax = torch.maximum(Z.real.abs(), Z.imag.abs()).amax(dim=(-2, -1), keepdim=True)
    sz = pow2_scale(zmax)
    V = mm(Z * sz, f64.conj()) * tw.conj()                           # [k1][n2']
    Y = mm(f1.conj()[:N1 // 2], V).reshape(-1, N // 2)[:, :L] / sz[..., 0]  # y[64 n1' + n2'], n1' < N1/2
    y = torch.empty(u.shape[0], L, dtype=torch.float32)
    y[0::2], y[1::2] = Y.real / s0, Y.imag / s1
    return y


def pair_cases(L: int, gen: torch.Generator):
    """Row pairs (name, row 0, row 1), bf16 values: rows that differ in size, and sparse rows next to dense ones."""
    def randn():
        return torch.randn(L, generator=gen, dtype=torch.float64).to(torch.float32)
    impulse = torch.zeros(L)
    impulse[0] = 1.0
    cases = [("randn / randn", randn(), randn()), ("1e-4 randn / randn", 1e-4 * randn(), randn()),
             ("impulse / randn", impulse, randn()), ("impulse / signs", impulse, torch.sign(randn()))]
    return [(name, a.to(torch.bfloat16).float(), b.to(torch.bfloat16).float()) for name, a, b in cases]


def bf16_bound(exact: torch.Tensor) -> float:
    return 4 * rel_err(exact.to(torch.bfloat16), exact) + 1e-6


def pair_table(lengths, gen):
    """tc_window's error per row of a pair, against each row's own bf16 bound."""
    print("| L = Lk | row 0 / row 1 | row 0 error | row 0 bound | row 1 error | row 1 bound |")
    print("|---|---|---|---|---|---|")
    for L in lengths:
        k = (torch.randn(L, generator=gen, dtype=torch.float64) / math.sqrt(L)).to(torch.float32)
        k[0] += torch.randn(1, generator=gen, dtype=torch.float64).item()  # a skip term, folded into tap 0
        for name, a, b in pair_cases(L, gen):
            u = torch.stack([a, b])
            exact = direct64(u, k)
            y = conv_tc_window(u, k).to(torch.bfloat16).float()
            cells = []
            for r in (0, 1):
                e, bound = rel_err(y[r], exact[r]), bf16_bound(exact[r])
                cells += [f"**{e:.2e}**" if e <= bound else f"{e:.2e}", f"{bound:.2e}"]
            print(f"| {L} | {name} | " + " | ".join(cells) + " |")
    print()
    print("Bold: within the row's own bound (4x the error of rounding its exact result to bf16, + 1e-6). The fp16 "
          "rounding of Z and V is shared by the pair, so the error is relative to the pair: a sparse row next "
          "to a dense one can exceed its own bound.")


def direct64(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """float64 causal convolution (exact up to float64 rounding), via a float64 FFT of 2L points."""
    L = u.shape[-1]
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u.double(), n) * torch.fft.rfft(k.double(), n), n)[..., :L]


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="1024,4096")
    p.add_argument("--radix", type=int, default=16, help="radix of the matrix-product DFT passes")
    p.add_argument("--rows", type=int, default=64, help="rows per length (even)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="fp32,tf32,3xtf32,fp16,bf16,2xbf16")
    p.add_argument("--chain", type=int, default=0, metavar="N1",
                   help="two dense passes per transform (N = N1 x N2, conv_tc_chain) instead of --radix passes")
    p.add_argument("--pairs", action="store_true",
                   help="tc_window.cuh's algorithm (conv_tc_window) on row pairs of unlike rows, error per row")
    args = p.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    modes = args.modes.split(",")
    print(f"`python benchmarks/emulate_tc_dft.py {' '.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`"))
    print()
    if args.pairs:
        pair_table([int(x) for x in args.lengths.split(",")], gen)
        return
    print("| L = Lk | FFT points | input | " + " | ".join(modes) + " | bound |")
    print("|---|---|---|" + "---|" * (len(modes) + 1))
    for L in [int(x) for x in args.lengths.split(",")]:
        N = window_points(L)
        u = torch.randn(args.rows, L, generator=gen, dtype=torch.float64).to(torch.float32)
        k = (torch.randn(L, generator=gen, dtype=torch.float64) / math.sqrt(L)).to(torch.float32)
        for inp in ("float32", "bfloat16"):
            ui = u if inp == "float32" else u.to(torch.bfloat16).to(torch.float32)
            exact = direct64(ui, k)
            errs = []
            for mode in modes:
                y = conv_tc_chain(ui, k, mode, args.chain) if args.chain else conv_tc(ui, k, mode, args.radix)
                if inp == "bfloat16":
                    y = y.to(torch.bfloat16).to(torch.float32)  # the op returns u's dtype
                errs.append(rel_err(y, exact))
            bound = 1e-5 if inp == "float32" else 4 * rel_err(exact.to(torch.bfloat16), exact) + 1e-6
            cells = [f"**{e:.2e}**" if e <= bound else f"{e:.2e}" for e in errs]
            print(f"| {L} | {N} | {inp} | " + " | ".join(cells) + f" | {bound:.2e} |")
    print()
    print("Bold: within the tests' bound for that input dtype (float32: 1e-5; bfloat16: 4x the error of "
          "rounding the exact result to bf16, + 1e-6). One channel, random normal u, k ~ N(0, 1/L).")


if __name__ == "__main__":
    main()
