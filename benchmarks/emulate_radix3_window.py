"""FFT windows of N = 3 x 2^m points for causal_conv: a CPU emulation of the radix-3 kernels' decomposition
(csrc/causal_conv/radix3.cuh, behind FFT_TENSOR_CONV_RADIX3; written to this plan), to check its arithmetic
in float64 (the per-thread register layout and exchanges are described below, not modelled: numpy's FFT
stands in for each M-point shared-memory transform).

Why: every default plan uses N = next_pow2(L + taps - 1) points, so L = 12288 with Lk = L pays for a 32K-point
(real) window where 24K would do, while the torch.fft reference's 24576-point FFT costs about what its
size says. At 6144 (fp32), 12288, 24576 and 40000 forward+backward falls to 2.2-2.9x the reference, under issue 3's 3x
(RESULTS.md, thirty-second session). Windows of 3 x 2^m points cut a quarter of the points there.

The kernels (one block per row pair for conv_window3_kernel, as conv_window_kernel): N = 3M with M = 2^m one of
the sizes smem_fft already transforms, the block in three groups of M/16 threads. Since the thirty-fifth
session by residues (dft_3m_residues, inverse_3m_residues):
  X[3k + g] = DFT_M over n of a_g[n],   a_g[n] = W_N^gn (z[n] + W_3^g z[n + M] + W_3^2g z[n + 2M]),  n < M,
so group g forms a_g from contiguous loads and transforms it with no exchange, multiplies bin 3k + g by the
kernel's spectrum, and the inverse splits the same way on the way out:
  out[n' + mM] = sum_g W_3^gm s_g[n'],   s_g[n'] = W_N^gn' DFT_M over k of a[3k + g],
one exchange through shared memory before contiguous stores. kHalf (L <= N/2): z[n + M] is loaded for
n < M/2 only, z[n + 2M] never, and outputs n < 3M/2 only are formed. The real-window kernels pair bin
f = 3k + g with N - f in that layout (conv_real_window_residues).
The thirty-third session's kernels went by decimation in time (dft_3m, inverse_3m):
  X[k + jM] = F_0[k] + W_N^k W_3^j F_1[k] + W_N^2k W_3^2j F_2[k],   F_r = DFT_M(z[3n + r]), k < M, j < 3,
group r transforming z[3n + r] (stride-3 loads), then an exchange in which every thread read all three
thirds, and the same on the way out: two exchanges more than the residue split, and on the GPU no faster
than the 4/3 larger power-of-two window (RESULTS.md, thirty-fourth session).
This script runs both decompositions with numpy's FFT standing in for the M-point shared-memory transforms
(those are the tested kernels), and checks y against a float64 direct convolution; then it lists the
window sizes a plan over {2^k, 3 x 2^k} would pick for the lengths measured.

  python benchmarks/emulate_radix3_window.py [--seed 0]
"""
import argparse
import math
import sys

import numpy as np


def next_pow2(n):
    return 1 << max(0, (n - 1).bit_length())


def window_size(points, allow_radix3=True):
    """The smallest N >= points among 2^k (and 3 x 2^k when allowed): what the plan would pick."""
    p2 = next_pow2(points)
    if allow_radix3 and p2 >= 8 and 3 * p2 // 4 >= points:
        return 3 * p2 // 4
    return p2


def dft_3m(z, half_input=False):
    """DFT of z (length N = 3M) the kernel's way: three M-point transforms of z[3n + r], an exchange,
    the radix-3 combine; returns X[0..N). half_input: asserts each group's input has its upper half zero and
    transforms only the lower half's nonzeros (what dft16_upper_zero relies on)."""
    N = z.shape[-1]
    assert N % 3 == 0 and (N // 3) & (N // 3 - 1) == 0, N
    M = N // 3
    F = []
    for r in range(3):
        x = z[..., r::3]  # group r's loads: z[3n + r], n < M
        if half_input:
            assert not np.any(x[..., M // 2:]), "a group's input upper half is not zero"
        F.append(np.fft.fft(x, axis=-1))  # smem_fft::fft_to_registers<M> in group r
    k = np.arange(M)
    w1 = np.exp(-2j * np.pi * k / N)  # W_N^k: one sincospif per thread, as compute_pass's twiddles
    w2 = w1 * w1
    X = np.empty(z.shape[:-1] + (N,), dtype=complex)
    for j in range(3):  # thread (q, j) after the exchange: X[k + jM] for its bins k
        w3 = np.exp(-2j * np.pi * j / 3)
        X[..., j * M:(j + 1) * M] = F[0] + w1 * w3 * F[1] + w2 * w3 * w3 * F[2]
    return X


def inverse_3m(a, half_output=False):
    """out[n] = sum_f a[f] W_N^(f n) (the forward DFT, which the kernels use on the conjugate), by decimation
    in frequency into three M-point transforms; half_output: only n < N/2 are produced."""
    N = a.shape[-1]
    M = N // 3
    k = np.arange(M)
    A = [a[..., j * M:(j + 1) * M] for j in range(3)]
    out = np.zeros(a.shape[:-1] + (N,), dtype=complex)
    for r in range(3):  # group r after the exchange: b_r[k] = W_N^kr sum_j W_3^jr a[k + jM]
        w3 = np.exp(-2j * np.pi * r / 3)
        b = np.exp(-2j * np.pi * k * r / N) * (A[0] + w3 * A[1] + w3 * w3 * A[2])
        o = np.fft.fft(b, axis=-1)  # smem_fft::inverse_from_registers<M> in group r
        if half_output:
            o[..., M // 2:] = np.nan  # the kHalf inverse never computes these: any use shows as nan
        out[..., r::3] = o  # outputs 3n + r
    return out


def dft_3m_residues(z, half_input=False):
    """The forward by decimation in frequency (conv_window3_kernel since the thirty-fifth session): group j
    forms a_j[n] = W_N^(jn) (z[n] + W_3^j z[n + M] + W_3^2j z[n + 2M]) for n < M from its loads (no
    exchange) and transforms it: A_j[k] = X[3k + j]. Returns A as (..., 3, M). half_input: z[n] = 0 for
    n >= 3M/2, so the loads are z[n] (every n) and z[n + M] (n < M/2 only)."""
    N = z.shape[-1]
    M = N // 3
    n = np.arange(M)
    if half_input:
        assert not np.any(z[..., N // 2:]), "the window's upper half is not zero"
    A = []
    for j in range(3):
        w3 = np.exp(-2j * np.pi * j / 3)
        hi = np.where(n < M // 2, z[..., M + n], 0) if half_input else z[..., M:2 * M]
        top = 0 if half_input else z[..., 2 * M:]
        a = np.exp(-2j * np.pi * j * n / N) * (z[..., :M] + w3 * hi + w3 * w3 * top)
        A.append(np.fft.fft(a, axis=-1))  # the group's M-point transform (fft_to_registers' passes)
    return np.stack(A, axis=-2)


def inverse_3m_residues(A, half_output=False):
    """out[n] = sum_f a[f] W_N^(f n) for a given as A[j][k] = a[3k + j] (dft_3m_residues' layout): group j
    transforms A_j (inverse_from_registers, every output n' < M), stores s_j[n'] = W_N^(j n') C_j[n'] to
    shared memory, and after one barrier out[n' + mM] = sum_j W_3^(jm) s_j[n'] for m = 0 and, with
    half_output (only n < 3M/2 wanted), m = 1 for n' < M/2 only."""
    M = A.shape[-1]
    N = 3 * M
    n = np.arange(M)
    s = [np.exp(-2j * np.pi * j * n / N) * np.fft.fft(A[..., j, :], axis=-1) for j in range(3)]
    out = np.full(A.shape[:-2] + (N,), np.nan, dtype=complex)
    for m in range(3):
        w = np.exp(-2j * np.pi * m / 3)
        v = s[0] + w * s[1] + w * w * s[2]
        if half_output:
            if m == 2:
                continue
            if m == 1:
                v = np.where(n < M // 2, v, np.nan)
        out[..., m * M:(m + 1) * M] = v
    return out


def spectrum_bin(K, f, N):
    """hermitian_bin for N = 3M: K holds bins 0..N/2; group 1's range straddles N/2."""
    f = np.asarray(f)
    return np.where(f <= N // 2, K[np.minimum(f, N // 2)], np.conj(K[np.minimum(N - f, N // 2)]))


def conv_pair_window(u, k, N, residues=False):
    """conv_window_kernel's algorithm on a 3M-point window: rows u[0], u[1] packed as z = u0 + i u1, the
    product with K / N (the kernel spectrum's scale), the inverse as the forward DFT of the conjugate.
    residues: by the residue split (conv_window3_kernel now): group j holds bins 3k + j, so it multiplies by
    K[3k + j]; else by decimation in time (the thirty-third session's kernels)."""
    B, L = u.shape
    taps = k.shape[-1]
    assert B == 2 and L + taps - 1 <= N
    half = L <= N // 2
    z = np.zeros(N, dtype=complex)
    z[:L] = u[0] + 1j * u[1]
    kp = np.zeros(N)
    kp[:taps] = k
    K = np.fft.fft(kp)[:N // 2 + 1] / N  # kernel_spectrum_kernel's output: bins 0..N/2, scaled 1/N
    if residues:
        M = N // 3
        A = dft_3m_residues(z, half_input=half)
        f = 3 * np.arange(M)[None, :] + np.arange(3)[:, None]  # (3, M): bin of group j's slot k
        w = inverse_3m_residues(np.conj(A * spectrum_bin(K, f, N)), half_output=half)
    else:
        X = dft_3m(z, half_input=half)
        S = spectrum_bin(K, np.arange(N), N)
        w = inverse_3m(np.conj(X * S), half_output=half)  # conj(result)
    y = np.conj(w[:L])
    assert not np.any(np.isnan(y)), "an output the kHalf inverse skips was used"
    return np.stack([y.real, y.imag])


def _real_window_setup(u, k, Nc):
    """The real window's packed row z[n] = u[2n] + i u[2n + 1] (2 Nc real points), the kernel's real
    spectrum Kr (bins 0..Nc of 2 Nc points) and whether the row fills at most half the window."""
    L = u.shape[-1]
    x = np.zeros(2 * Nc)
    x[:L] = u
    kp = np.zeros(2 * Nc)
    kp[:k.shape[-1]] = k
    return x[0::2] + 1j * x[1::2], np.fft.fft(kp)[:Nc + 1], L <= Nc


def _real_window_output(w, Nc, L):
    """y from the inverse's output w = Nc conj(q[n]), q[n] = y[2n] + i y[2n + 1]."""
    q = np.conj(w / Nc)
    y = np.empty(2 * Nc)
    y[0::2] = q.real
    y[1::2] = q.imag
    assert not np.any(np.isnan(y[:L])), "an output the kHalf inverse skips was used"
    return y[:L]


def conv_real_window(u, k, Nc):
    """conv_real_window_kernel's algorithm on 2 Nc real points (Nc = 3M complex): z[n] = u[2n] + i u[2n + 1],
    Z = DFT_Nc(z), the row's spectrum U[f] (f = 0..Nc) from the pairs Z[f], Z[Nc - f], the product with the
    kernel's real spectrum, merged back into a half-length sequence and transformed by the same scheme."""
    assert u.shape[-1] + k.shape[-1] - 1 <= 2 * Nc
    z, Kr, half = _real_window_setup(u, k, Nc)
    N2 = 2 * Nc
    Z = dft_3m(z, half_input=half)
    f = np.arange(Nc + 1)
    Zf = Z[f % Nc]
    Zc = np.conj(Z[(Nc - f) % Nc])
    E = (Zf + Zc) / 2  # spectrum of the even samples
    O = (Zf - Zc) / 2j  # of the odd samples
    U = E + np.exp(-2j * np.pi * f / N2) * O  # bins 0..Nc of the 2Nc-point real spectrum
    P = U * Kr  # bins 0..Nc of the product; the rest are its conjugates
    # merge back: the half-length complex sequence whose even/odd parts are the product's even/odd samples
    fk = np.arange(Nc)
    Pf = P[fk]
    Pc = np.conj(P[Nc - fk])
    Ev = (Pf + Pc) / 2
    Od = (Pf - Pc) / 2 * np.exp(2j * np.pi * fk / N2)
    Q = Ev + 1j * Od  # the DFT of y[2n] + i y[2n + 1]
    # forward DFT of the conjugate: Nc conj(q[n])
    return _real_window_output(inverse_3m(np.conj(Q), half_output=half), Nc, u.shape[-1])


def conv_real_window_residues(u, k, Nc):
    """conv_real_window by the residue scheme, as the kernels index it: thread (t, g) holds Z[f], f = 3k + g,
    reads its partner Z[N - f] at residue_at(N - f) = A[(N - f) % 3][(N - f) // 3], forms the merged bin
    for the same f, and inverse3 takes the merged bins in the same layout."""
    z, Kr, half = _real_window_setup(u, k, Nc)
    N2 = 2 * Nc
    M = Nc // 3
    A = dft_3m_residues(z, half_input=half)  # A[g, k] = Z[3k + g]
    Q = np.empty_like(A)
    kk = np.arange(M)
    for g in range(3):
        f = 3 * kk + g
        p = np.where(f == 0, 0, Nc - f)
        Zf, Zc = A[g, kk], np.conj(A[p % 3, p // 3])
        tw = np.exp(-2j * np.pi * f / N2)  # W_2N^f
        P, Dd = Zf + Zc, Zf - Zc
        tM = tw * (-1j) * Dd
        X1, X2 = P + tM, P - tM  # 2 U[f], 2 U[f + Nc]
        K1 = Kr[f]
        K2 = np.conj(Kr[Nc - f])  # K[f + Nc] = conj(K[Nc - f])
        Y1, Y2 = X1 * K1 / 2, X2 * K2 / 2
        # real_merge: the DFT of y[2n] + i y[2n + 1] at f from the product's bins f and f + Nc
        Ev = (Y1 + Y2) / 2
        Od = (Y1 - Y2) / 2 / tw
        Q[g] = np.conj(Ev + 1j * Od)
    return _real_window_output(inverse_3m_residues(Q, half_output=half), Nc, u.shape[-1])


def direct_conv(u, k):
    L = u.shape[-1]
    return np.stack([np.convolve(row, k)[:L] for row in np.atleast_2d(u)])


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# (L, Lk): Lk = L at the lengths measured between the powers of two, short-row and odd cases
PAIR_CASES = [(1000, 1000), (1536, 1536), (3000, 3000), (100, 2000), (2048, 1), (4000, 1000), (3071, 3072)]
REAL_CASES = [(1536, 1536), (3000, 3000), (6000, 6000), (500, 5000), (6144, 6144),
              (2900, 100)]  # L > Nc: the general (not half) real window


def check(seed=0):
    """Max relative error of each emulated kernel against float64 direct convolution."""
    rng = np.random.default_rng(seed)
    worst = {}
    for L, Lk in PAIR_CASES:
        taps = min(L, Lk)
        N = window_size(L + taps - 1)
        if N % 3:
            N = 3 * next_pow2(-(-(L + taps - 1) // 3))  # force a 3 x 2^m window for the check
        u = rng.standard_normal((2, L))
        k = rng.standard_normal(taps) / math.sqrt(taps)
        worst[("pair", L, Lk, N)] = rel_err(conv_pair_window(u, k, N), direct_conv(u, k))
        worst[("pair, residues", L, Lk, N)] = rel_err(conv_pair_window(u, k, N, residues=True), direct_conv(u, k))
    for L, Lk in REAL_CASES:
        taps = min(L, Lk)
        Nc = 3 * next_pow2(-(-(L + taps - 1) // 6))  # 2 Nc real points >= L + taps - 1, Nc = 3 x 2^m
        u = rng.standard_normal(L)
        k = rng.standard_normal(taps) / math.sqrt(taps)
        worst[("real", L, Lk, 2 * Nc)] = rel_err(conv_real_window(u, k, Nc), direct_conv(u, k)[0])
        worst[("real, residues", L, Lk, 2 * Nc)] = rel_err(conv_real_window_residues(u, k, Nc), direct_conv(u, k)[0])
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    worst = check(args.seed)
    print("| kernel | L | Lk | window points | rel err vs float64 direct |")
    print("|---|---|---|---|---|")
    for (kind, L, Lk, N), e in worst.items():
        print(f"| {kind} | {L} | {Lk} | {N} | {e:.2e} |")
    print()
    print("| L = Lk | points now (next_pow2(2L - 1)) | with 3 x 2^k | fraction |")
    print("|---|---|---|---|")
    for L in (1024, 3000, 4096, 6144, 8192, 12288, 16384, 24576, 40000, 65536):
        now, new = window_size(2 * L - 1, False), window_size(2 * L - 1)
        print(f"| {L} | {now} | {new} | {new / now:.2f} |")
    ok = max(worst.values()) < 1e-12
    print("\nALL OK" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
