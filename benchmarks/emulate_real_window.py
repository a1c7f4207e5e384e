"""numpy emulation of the real-window kernels (fft_kernels.cuh: real_spectrum_pairs, conv_real_window_kernel,
conv_real_window_backward_kernel) at N = 1024, step for step, against direct sums: the forward, grad_u alone
(the forward run backwards in time) and the backward with grad_k; both spectrum steps, the pair step
(real_spectrum_pairs) and the register variant's own bins (real_spectrum_own: bins q + b*N/16 + r*N/Rl
of thread q, its twiddle W_2N^q times root32(b + r*16/Rl)). A debugging aid for the formulas and the
indexing, not a test of the CUDA code: `python benchmarks/emulate_real_window.py` prints max errors (~1e-14).
"""
import numpy as np
rng = np.random.default_rng(7)
N = 1024; N16 = N//16
m = N.bit_length() - 1; Rl = 16 if m % 4 == 0 else 2**(m % 4); NR = N // Rl
root32 = lambda j: np.exp(-2j*np.pi*j/32)
def sweep_own(Z, binfn):
    for q in range(N16):
        wq = np.exp(-1j*np.pi*q/N)
        for b in range(16 // Rl):
            for r in range(Rl):
                f = q + b*N16 + r*NR
                t = wq*root32(b + r*(16 // Rl))
                af, c = Z[f], np.conj(Z[(N - f) & (N - 1)])
                P = af + c; tM = t*(-1j*(af - c))
                binfn(f, t, P + tM, P - tM)
def sweep_pairs(Z, binfn):
    for q in range(N16):
        for j in range(8):
            f = q + j*N16; g = (N - f) & (N - 1)
            af, c = Z[f], np.conj(Z[g])
            t = np.exp(-1j*np.pi*f/N)
            P = af + c; Dd = af - c; tM = t*(-1j*Dd); X1, X2 = P + tM, P - tM
            if f == 0:
                binfn(0, t, X1, X2)
                ah = Z[N//2]; ch = np.conj(ah); th = -1j; Ph = ah + ch; Dh = ah - ch; tMh = th*(-1j*Dh)
                binfn(N//2, th, Ph + tMh, Ph - tMh)
            else:
                binfn(f, t, X1, X2); binfn(g, -np.conj(t), np.conj(X2), np.conj(X1))
def merge_conj(t, Y1, Y2):
    Dt = np.conj(t)*(Y1 - Y2); return np.conj((Y1 + Y2) + 1j*Dt)
def forward(x, k, taps, rev):
    L = len(x); start = -(taps-1); lo, hi = taps-1, L - start; first = (L-1-start) if rev else start
    samp = lambda m: (x[first - m] if rev else x[first + m]) if lo <= m < hi else 0.0
    Z = np.fft.fft([samp(2*n) + 1j*samp(2*n+1) for n in range(N)])
    K = np.fft.rfft(k[:taps], n=2*N)/(4*N)
    S = Z.copy()
    def b(f, t, X1, X2): S[f] = merge_conj(t, X1*K[f], X2*np.conj(K[N-f]))
    sweep(Z, b)   # reads Z (in place on S is equivalent since pairs are disjoint)
    w = np.fft.fft(S); y = np.zeros(L)
    for n in range(N):
        for m, v in ((2*n, w[n].real), (2*n+1, -w[n].imag)):
            if lo <= m < hi: y[first - m if rev else first + m] = v
    return y
def backward(gy, u, k, taps, need_u=True):
    B, L = u.shape; K = np.fft.rfft(k[:taps], n=2*N)/(4*N)
    C = np.zeros(N+1, complex); Ud = np.zeros(N+1, complex); gu = np.zeros((B, L))
    spec = lambda r: np.fft.fft([(r[2*n] if 2*n < L else 0) + 1j*(r[2*n+1] if 2*n+1 < L else 0) for n in range(N)])
    for b in range(B):
        def bu(f, t, X1, X2):
            Ud[f] = X1
            if f == 0: Ud[N] = X2
        sweep(spec(u[b]), bu)
        Z = spec(gy[b]); S = Z.copy()
        def bg(f, t, X1, X2):
            p = X1*np.conj(Ud[f]); C[f] = p if b == 0 else C[f] + p
            if f == 0:
                pN = X2*np.conj(Ud[N]); C[N] = pN if b == 0 else C[N] + pN
            S[f] = merge_conj(t, X1*np.conj(K[f]), X2*K[N-f])
        sweep(Z, bg)
        w = np.fft.fft(S); y = np.empty(2*N); y[0::2] = w.real; y[1::2] = -w.imag; gu[b] = y[:L]
    return gu, np.fft.irfft(C, n=2*N)[:taps]*0.25
for sweep in (sweep_pairs, sweep_own):
  for (B, L, Lk) in [(2, 1200, 800), (3, 1024, 1025), (1, 1500, 413)]:
      taps = min(L, Lk)
      u = rng.standard_normal((B, L)); gy = rng.standard_normal((B, L)); k = rng.standard_normal(Lk)
      y = np.array([forward(u[b], k, taps, False) for b in range(B)])
      ref = np.array([np.convolve(u[b], k[:taps])[:L] for b in range(B)])
      gr = np.array([forward(gy[b], k, taps, True) for b in range(B)])
      ref_gu = np.array([[sum(k[s]*gy[b, t+s] for s in range(taps) if t+s < L) for t in range(L)] for b in range(B)])
      ref_gk = np.array([sum(gy[b, t]*u[b, t-s] for b in range(B) for t in range(s, L)) for s in range(taps)])
      gu, gk = backward(gy, u, k, taps)
      print(sweep.__name__, B, L, Lk, np.abs(y-ref).max(), np.abs(gr-ref_gu).max(), np.abs(gu-ref_gu).max(), np.abs(gk-ref_gk).max())
