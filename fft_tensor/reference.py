"""Plain-torch definitions of every op: what the tests compare the compiled kernels against.

Written for clarity, not speed. Each one is independent of the C++ code.
"""
import torch


def phase_rotate_reference(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """z * exp(i*theta), theta broadcast to z."""
    return z * torch.polar(torch.ones_like(theta), theta)


def causal_conv_reference(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Direct sum y[b,d,t] = sum_{s<=min(t,Lk-1)} k[d,s] u[b,d,t-s] + skip[d] u[b,d,t], in float64.

    O(B*D*L*Lk): keep it to test sizes.
    """
    B, D, L = u.shape
    Lk = min(k.shape[-1], L)
    u64, k64 = u.double(), k.double()[:, :Lk]
    y = torch.zeros(B, D, L, dtype=torch.float64, device=u.device)
    for s in range(Lk):
        y[:, :, s:] += k64[:, s, None] * u64[:, :, : L - s]
    if skip is not None:
        y += skip.double()[:, None] * u64
    return y


def causal_conv_fft_reference(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """The torch.fft formulation the benchmarks call "the reference": irfft(rfft(u,2L)*rfft(k,2L))[:L]."""
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k.float()[:, :L], n=n), n=n)[..., :L]
    if skip is not None:
        y = y + skip.float()[:, None] * u.float()
    return y.to(u.dtype)


def causal_conv_update_reference(u: torch.Tensor, state: torch.Tensor, k: torch.Tensor,
                                 skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, new_state) of one streaming step, in float64, without touching state: the direct sum over
    x = cat(state, u) for the T new outputs, and x's last S steps."""
    S, T = state.shape[-1], u.shape[-1]
    x = torch.cat([state.double(), u.double()], dim=-1)
    Lk = k.shape[-1]
    y = torch.zeros(u.shape, dtype=torch.float64, device=u.device)
    k64 = k.double()
    for s in range(Lk):
        y += k64[:, s, None] * x[:, :, S - s: S - s + T]
    if skip is not None:
        y += skip.double()[:, None] * u.double()
    return y, x[:, :, T:]


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                       delta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, normed) in float64: s = x + delta rounded to x's dtype (as ATen's add rounds it, or x),
    normed = s / sqrt(mean(s^2) + eps) * weight."""
    s = x if delta is None else (x + delta)
    s64 = s.double()
    normed = s64 / torch.sqrt(s64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    return s, normed
