"""The four-step path on N = 3M points (csrc/causal_conv/fourstep.cuh with R = 3, FFT_TENSOR_CONV_FOURSTEP3):
a CPU emulation in float64 of its index math, the check run before the kernels first ran on a GPU.

numpy's FFT stands in for the N1-point column transforms and the N2-point row transforms (the kernels'
shared-memory FFTs, tested on their own); what is emulated is everything around them, in the kernels'
order and layout (M = N1 * N2, w = W_3M):
  columns_forward3_kernel: a_g[n] = w^(gn) * (the 3-point DFT of z[n], z[n + M], z[n + 2M])_g, the N1-point
      FFT of each column n2 of each group, times W_M^(n2 k1), stored as T[g][k1][n2];
  rows: the N2-point FFT of each row, so T's row (g, k1) holds X[3 (k1 + N1 k2) + g] at k2;
  rows_spectrum_kernel: Kp, two channels per transform: group 0's rows k1 <= N1/2 (their mirror N - f is
      in group 0), then group 1's N1 rows (paired with group 2's row N1 - 1 - k1, reversed);
  SpectrumRow: any group's row from Kp (group 2 = group 1's conjugate mirror);
  rows_conv_kernel + columns_inverse3_kernel: the product, the N2-point inverse stored conjugated times
      W_M^(m2 k1), the column FFT over k1, then conj(y[n + jM]) = sum_g W_3^(gj) w^(gn) c_g[n].

  python benchmarks/emulate_fourstep3.py [--n1 8] [--n2 16] [--seed 0]
"""
import argparse

import numpy as np

W3 = np.exp(-2j * np.pi / 3)


def dft3(a, b, c):
    """(a + b + c, a + W_3 b + W_3^2 c, a + W_3^2 b + W_3 c): fourstep::dft3."""
    return a + b + c, a + W3 * b + W3 ** 2 * c, a + W3 ** 2 * b + W3 * c


def columns_forward3(z, N1, N2):
    """Step 1 for one row z of 3M points: T[g, k1, n2]."""
    M = N1 * N2
    w = np.exp(-2j * np.pi * np.arange(M) / (3 * M))
    v = dft3(z[:M], z[M:2 * M], z[2 * M:])
    a = np.stack([v[0], v[1] * w, v[2] * w * w]).reshape(3, N1, N2)  # a[g, n1, n2] = a_g[n1 N2 + n2]
    C = np.fft.fft(a, axis=1)  # over n1: bin k1
    k1, n2 = np.arange(N1)[:, None], np.arange(N2)[None, :]
    return C * np.exp(-2j * np.pi * k1 * n2 / M)


def row_spectra(T):
    """Step 2's forward transform: [g, k1, k2] = X[3 (k1 + N1 k2) + g]."""
    return np.fft.fft(T, axis=-1)


def kp_rows(N1):
    return N1 // 2 + 1 + N1


def kernel_spectrum(k0, k1c, N1, N2):
    """Kp (2, kp_rows, N2) of channels k0 and k1c (taps), / N, as rows_spectrum_kernel leaves it."""
    M = N1 * N2
    N = 3 * M
    z = np.zeros(N, complex)
    z[:len(k0)] = k0 + 1j * k1c
    Z = row_spectra(columns_forward3(z, N1, N2))
    Kp = np.zeros((2, kp_rows(N1), N2), complex)
    k2 = np.arange(N2)
    for x in range(kp_rows(N1)):
        group0 = x <= N1 // 2
        k1 = x if group0 else x - (N1 // 2 + 1)
        a = Z[0, k1] if group0 else Z[1, k1]
        b = Z[0, (N1 - k1) % N1] if group0 else Z[2, N1 - 1 - k1]
        z_nf = a[(N2 - k2) % N2] if (group0 and k1 == 0) else b[N2 - 1 - k2]  # Z[N - f]
        c = np.conj(z_nf)
        Kp[0, x] = 0.5 / N * (a + c)
        Kp[1, x] = 0.5 / N * (a - c) / 1j
    return Kp


def spectrum_row(Kp_d, grp, k1, N1):
    """fourstep::SpectrumRow: K[3 (k1 + N1 k2) + grp] / N for k2 < N2, from one channel's Kp."""
    if grp == 0:
        mirrored = k1 > N1 // 2
        r = N1 - k1 if mirrored else k1
    else:
        mirrored = grp == 2
        r = N1 // 2 + 1 + (N1 - 1 - k1 if mirrored else k1)
    row = Kp_d[r]
    return np.conj(row[::-1]) if mirrored else row


def conv_pair(u0, u1, Kp_d, N1, N2):
    """y of the row pair (u0, u1) against one channel's Kp: steps 1-3 with the residue recombination."""
    M = N1 * N2
    L = len(u0)
    z = np.zeros(3 * M, complex)
    z[:L] = u0 + 1j * u1
    T = columns_forward3(z, N1, N2)
    S = np.empty_like(T)
    m2 = np.arange(N2)
    for g in range(3):
        for k1 in range(N1):
            Y = np.fft.fft(T[g, k1]) * spectrum_row(Kp_d, g, k1, N1)
            b = np.fft.ifft(Y) * N2  # the unnormalised inverse
            S[g, k1] = np.conj(b) * np.exp(-2j * np.pi * m2 * k1 / M)  # stored conjugated, times W_M^(m2 k1)
    c = np.fft.fft(S, axis=1)  # step 3's column FFT over k1: c[g, m1, m2] = conj(y_g)[m1 N2 + m2]
    c = c.reshape(3, M)
    w = np.exp(-2j * np.pi * np.arange(M) / (3 * M))
    v = np.concatenate(dft3(c[0], c[1] * w, c[2] * w * w))  # conj(y) at n, n + M, n + 2M
    return v.real[:L], -v.imag[:L]


def check(N1=8, N2=16, L=None, taps=None, seed=0):
    """The largest errors of each emulated step against numpy's FFT and a direct convolution (relative)."""
    rng = np.random.default_rng(seed)
    M = N1 * N2
    N = 3 * M
    L = L or (3 * M + 2) // 2
    taps = taps or min(L, N - L + 1)
    assert L + taps - 1 <= N, "the row and kernel must fit the 3M points"
    z = np.zeros(N, complex)
    z[:L] = rng.standard_normal(L) + 1j * rng.standard_normal(L)
    X = np.fft.fft(z)
    f = 3 * (np.arange(N1)[:, None] + N1 * np.arange(N2)[None, :])  # f of group 0's [k1, k2]
    Xg = row_spectra(columns_forward3(z, N1, N2))
    order = max(np.abs(Xg[g] - X[f + g]).max() for g in range(3)) / np.abs(X).max()
    k0, k1c = rng.standard_normal(taps), rng.standard_normal(taps)
    Kp = kernel_spectrum(k0, k1c, N1, N2)
    spectrum = 0.0
    for d, kd in enumerate((k0, k1c)):
        K = np.fft.fft(np.pad(kd, (0, N - taps))) / N
        for g in range(3):
            for k1 in range(N1):
                spectrum = max(spectrum, np.abs(spectrum_row(Kp[d], g, k1, N1) - K[f[k1] + g]).max() / np.abs(K).max())
    u0, u1 = rng.standard_normal(L), rng.standard_normal(L)
    y0, y1 = conv_pair(u0, u1, Kp[1], N1, N2)  # channel 1: the split's second half
    r0, r1 = np.convolve(u0, k1c)[:L], np.convolve(u1, k1c)[:L]
    conv = max(np.abs(y0 - r0).max(), np.abs(y1 - r1).max()) / max(np.abs(r0).max(), np.abs(r1).max())
    return {"order": order, "spectrum": spectrum, "conv": conv}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n1", type=int, default=8)
    p.add_argument("--n2", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    errs = check(args.n1, args.n2, seed=args.seed)
    print(f"N1={args.n1} N2={args.n2} (N = {3 * args.n1 * args.n2} points): "
          + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    ok = all(v < 1e-12 for v in errs.values())
    print("OK" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
