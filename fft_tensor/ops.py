"""Typed wrappers, fake (meta) kernels and autograd for the fft_tensor ops.

The kernels are C++/CUDA (csrc/); schemas are in csrc/ops.cpp. The fake kernels mirror the C++
argument checks so torch.compile reports the same errors while tracing.
"""
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["phase_rotate", "causal_conv", "causal_conv_update", "causal_conv_fft_size", "chunk_decode",
           "chunk_decode_smem_bytes", "chunk_decode_unsupported", "rms_norm", "add_rms_norm"]

_ops = torch.ops.fft_tensor


def _check_tensors(op: str, **args) -> None:
    """A TypeError naming the argument for a non-tensor (the dispatcher's own message, "tensor does not
    have a device", names none). Optional arguments are passed only when given."""
    for name, value in args.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{op}: expected {name} to be a Tensor, got {type(value).__name__}")


# ----------------------------------------------------------------------------- phase_rotate

def phase_rotate(z: Tensor, theta: Tensor) -> Tensor:
    """Return ``z * exp(1j * theta)`` as a new contiguous complex tensor of ``z.shape``.

    z: complex64 (complex128 too), any shape and strides.
    theta: float32 (float64 for complex128) angles, broadcastable to ``z.shape``; typically a
      learned per-channel, per-frequency angle broadcast over the batch. Its gradient is reduced
      over the broadcast dimensions.
    """
    _check_tensors("phase_rotate", z=z, theta=theta)
    return _ops.phase_rotate.default(z, theta)


def _check_phase_rotate(z: Tensor, theta: Tensor, op: str = "phase_rotate") -> None:
    torch._check(z.dtype in (torch.complex64, torch.complex128),
                 lambda: f"{op}: expected z to be complex64 or complex128, got {z.dtype}")
    torch._check(theta.dtype in (torch.float32, torch.float64),
                 lambda: f"{op}: expected theta to be float32 or float64 (a real angle), got {theta.dtype}")
    real = torch.float32 if z.dtype == torch.complex64 else torch.float64
    torch._check(theta.dtype == real,
                 lambda: f"{op}: expected theta's dtype to match z's precision ({real} for z of {z.dtype}), got {theta.dtype}")
    torch._check(z.device == theta.device,
                 lambda: f"{op}: expected z and theta on the same device, got z on {z.device} and theta on {theta.device}")
    torch._check(theta.dim() <= z.dim(),
                 lambda: f"{op}: expected theta broadcastable to z.shape {list(z.shape)}, got theta.shape {list(theta.shape)}")
    off = z.dim() - theta.dim()
    for i in range(theta.dim()):
        torch._check(theta.shape[i] == 1 or theta.shape[i] == z.shape[off + i],
                     lambda: f"{op}: expected theta broadcastable to z.shape {list(z.shape)}, got theta.shape {list(theta.shape)}")


@torch.library.register_fake("fft_tensor::phase_rotate")
def _phase_rotate_fake(z, theta):
    _check_phase_rotate(z, theta)
    return z.new_empty(z.shape)


@torch.library.register_fake("fft_tensor::phase_rotate_backward")
def _phase_rotate_backward_fake(grad, z, theta):
    _check_phase_rotate(z, theta, "phase_rotate_backward")
    torch._check(grad.shape == z.shape,
                 lambda: f"phase_rotate_backward: expected grad of shape {list(z.shape)}, got {list(grad.shape)}")
    torch._check(grad.dtype == z.dtype,
                 lambda: f"phase_rotate_backward: expected grad of dtype {z.dtype}, got {grad.dtype}")
    torch._check(grad.device == z.device,
                 lambda: f"phase_rotate_backward: expected grad on {z.device}, got {grad.device}")
    return z.new_empty(z.shape), theta.new_empty(theta.shape)


def _phase_rotate_setup_context(ctx, inputs, output):
    z, theta = inputs
    ctx.save_for_backward(z, theta)


def _phase_rotate_backward(ctx, grad):
    z, theta = ctx.saved_tensors
    need_z, need_theta = ctx.needs_input_grad
    if torch.is_grad_enabled():
        # create_graph=True (a second derivative is wanted): the same gradients from differentiable
        # pieces, phase_rotate itself included, so every order works. dL/dtheta = Re(conj(grad) * i * y).
        grad_z = _ops.phase_rotate.default(grad, -theta) if need_z else None
        grad_theta = None
        if need_theta:
            y = _ops.phase_rotate.default(z, theta)
            grad_theta = (grad.conj() * y).imag.neg().sum_to_size(theta.shape)
        return grad_z, grad_theta
    if not need_theta:  # d/dz only: one rotation by -theta, no reduction
        return _ops.phase_rotate.default(grad, -theta) if need_z else None, None
    grad_z, grad_theta = _ops.phase_rotate_backward.default(grad, z, theta)
    return (grad_z if need_z else None), grad_theta


torch.library.register_autograd("fft_tensor::phase_rotate", _phase_rotate_backward,
                                setup_context=_phase_rotate_setup_context)


# ----------------------------------------------------------------------------- causal_conv

_MAX_FUSED_FFT = 16384  # csrc/causal_conv/common.h: kMaxFusedFFT
_MIN_FFT = 64


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _min_window() -> int:
    """csrc/causal_conv/common.h:min_window: 1024, or FFT_TENSOR_CONV_MIN_WINDOW (an experiment hook)."""
    env = os.environ.get("FFT_TENSOR_CONV_MIN_WINDOW", "")
    if not env:
        return 1024
    v = int(env) if env.isascii() and env.isdigit() else 0  # ASCII digits only, as the C++ parser
    if not (_MIN_FFT <= v <= _MAX_FUSED_FFT and v & (v - 1) == 0):
        raise ValueError(f"FFT_TENSOR_CONV_MIN_WINDOW: expected a power of two in [64, 16384] (or unset), got {env!r}")
    return v


def causal_conv_plan(L: int, Lk: int) -> tuple:
    """(fft_size, taps, segment, segments) exactly as csrc/causal_conv/common.h:conv_plan."""
    for name, value in (("L", L), ("Lk", Lk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"causal_conv_plan: expected {name} an int >= 1, got {value!r}")
    taps = min(Lk, L)
    full = max(_next_pow2(L + taps - 1), _MIN_FFT)
    os_ = max(_next_pow2(4 * taps), _min_window())
    if os_ > _MAX_FUSED_FFT and 2 * taps <= _MAX_FUSED_FFT:
        os_ = _MAX_FUSED_FFT
    if full <= os_ or os_ > _MAX_FUSED_FFT:
        return full, taps, L, 1
    seg = os_ - taps + 1
    return os_, taps, seg, -(-L // seg)


def causal_conv_fft_size(L: int, Lk: int) -> int:
    """The FFT length ``causal_conv`` uses for rows of length L and Lk taps.

    Short kernels on long rows use overlap-save blocks of ``max(1024, next_pow2(4*Lk))`` points (capped at
    16384 when ``2*Lk <= 16384``; the 1024 is FFT_TENSOR_CONV_MIN_WINDOW when set); otherwise
    one FFT of ``next_pow2(L + Lk - 1)`` covers the row. A spectral parameterisation that wants
    its frequency bins to be the op's own bins should use this size.
    """
    return causal_conv_plan(L, Lk)[0]


def causal_conv(u: Tensor, k: Tensor, skip: Optional[Tensor] = None) -> Tensor:
    """Causal depthwise long convolution along the last dimension.

    ``y[b,d,t] = sum_{s=0}^{min(t,Lk-1)} k[d,s] * u[b,d,t-s] + skip[d] * u[b,d,t]``

    u: (B, D, L) float32, bfloat16 or float16 (float64 for gradcheck); any strides.
    k: (D, Lk) float32 (float64 with float64 u), Lk >= 1; taps past L are ignored.
    skip: (D,) like k, or None.
    Returns y of u's shape and dtype; arithmetic is float32 (float64 for float64 input). y (and, in
    the backward, grad_u) has u's strides when u is dense with time contiguous, else it is contiguous:
    a feature-major u (a GEMM's (D, B * L) output viewed as (B, D, L), strides (L, B * L, 1)) gives a
    feature-major y that the next GEMM reads in place (bfloat16 with 33-128 taps on CUDA reads and
    writes it in place; the other paths copy).
    Differentiable in u, k and skip, to any order.
    """
    _check_tensors("causal_conv", u=u, k=k, **({} if skip is None else {"skip": skip}))
    return _ops.causal_conv.default(u, k, skip)


def _check_causal_conv(u: Tensor, k: Tensor, skip: Optional[Tensor], op: str = "causal_conv") -> None:
    torch._check(u.dim() == 3, lambda: f"{op}: expected u of shape (B, D, L), got a {u.dim()}-d tensor of shape {list(u.shape)}")
    torch._check(u.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64),
                 lambda: f"{op}: expected u of dtype float32, bfloat16, float16 or float64, got {u.dtype}")
    torch._check(k.dim() == 2, lambda: f"{op}: expected k of shape (D, Lk), got a {k.dim()}-d tensor of shape {list(k.shape)}")
    torch._check(k.dtype in (torch.float32, torch.float64),
                 lambda: f"{op}: expected k of dtype float32 (or float64), got {k.dtype}")
    torch._check(k.shape[0] == u.shape[1],
                 lambda: f"{op}: expected k.shape[0] == u.shape[1] (D = {u.shape[1]}), got k.shape {list(k.shape)}")
    torch._check(k.shape[1] >= 1, lambda: f"{op}: expected k with at least one tap (Lk >= 1), got k.shape {list(k.shape)}")
    torch._check(u.shape[2] >= 1, lambda: f"{op}: expected u with length L >= 1, got u.shape {list(u.shape)}")
    torch._check(k.device == u.device, lambda: f"{op}: expected k on the same device as u ({u.device}), got {k.device}")
    torch._check((u.dtype == torch.float64) == (k.dtype == torch.float64),
                 lambda: f"{op}: expected u and k both float64 or neither, got u {u.dtype} and k {k.dtype}")
    if skip is not None:
        torch._check(skip.dim() == 1 and skip.shape[0] == u.shape[1],
                     lambda: f"{op}: expected skip of shape (D,) = ({u.shape[1]},), got {list(skip.shape)}")
        torch._check(skip.dtype == k.dtype, lambda: f"{op}: expected skip of dtype {k.dtype}, got {skip.dtype}")
        torch._check(skip.device == u.device,
                     lambda: f"{op}: expected skip on the same device as u ({u.device}), got {skip.device}")


def _causal_conv_output_like(u: Tensor) -> Tensor:
    """y's (and grad_u's) layout, as csrc/causal_conv/common.h:output_strides: u's layout when u is
    dense with time contiguous (packed (B, D, L), or feature-major: strides (L, B * L, 1), a GEMM's
    (D, B * L) output), else packed; u's layout spelled out as dense strides in u's dim order by
    decreasing stride (ties: the lower dim outer), so size-1 dims agree with the C++ side."""
    order = [0, 1, 2]  # outermost first
    if _non_overlapping_and_dense(u) and (u.shape[2] <= 1 or u.stride(2) == 1):
        order.sort(key=lambda i: -u.stride(i))  # stable, like std::stable_sort
    strides, step = [0, 0, 0], 1
    for i in reversed(order):
        strides[i] = step
        step *= max(u.shape[i], 1)
    return u.new_empty_strided(u.shape, strides)


def _non_overlapping_and_dense(t: Tensor) -> bool:
    """c10's is_non_overlapping_and_dense: the dims of size >= 2, by increasing stride, tile memory."""
    want = 1
    for stride, size in sorted((t.stride(i), t.shape[i]) for i in range(t.dim()) if t.shape[i] >= 2):
        if stride != want:
            return False
        want *= size
    return True


@torch.library.register_fake("fft_tensor::causal_conv")
def _causal_conv_fake(u, k, skip=None):
    _check_causal_conv(u, k, skip)
    return _causal_conv_output_like(u)


@torch.library.register_fake("fft_tensor::causal_conv_backward")
def _causal_conv_backward_fake(grad_y, u, k, skip, need_u, need_k):
    _check_causal_conv(u, k, skip, "causal_conv_backward")
    torch._check(grad_y.shape == u.shape,
                 lambda: f"causal_conv_backward: expected grad_y of shape {list(u.shape)}, got {list(grad_y.shape)}")
    torch._check(grad_y.device == u.device,
                 lambda: f"causal_conv_backward: expected grad_y on {u.device}, got {grad_y.device}")
    torch._check(grad_y.dtype.is_floating_point,
                 lambda: f"causal_conv_backward: expected grad_y of a floating dtype, got {grad_y.dtype}")
    grad_u = _causal_conv_output_like(u) if need_u else u.new_empty((0,))
    grad_k = k.new_empty(k.shape) if need_k else k.new_empty((0,))
    return grad_u, grad_k


# causal_conv's autograd is registered in C++ (csrc/causal_conv/autograd.cpp): the backward is one
# call of causal_conv_backward (grad_skip = grad_k[:, 0]), with no Python on the per-call path.


# ----------------------------------------------------------------------------- causal_conv_update

def causal_conv_update(u: Tensor, state: Tensor, k: Tensor, skip: Optional[Tensor] = None,
                       gate: Optional[Tensor] = None) -> Tensor:
    """One streaming step of ``causal_conv``: T new inputs per row against the row's last S inputs.

    With ``x = cat(state, u, dim=-1)`` (S + T steps):
    ``y[b,d,t] = sum_{s<Lk} k[d,s] * x[b,d,S+t-s] + skip[d] * u[b,d,t]``, and ``state`` becomes
    ``x[..., T:]`` (updated in place; its storage never moves, so CUDA graphs can replay a step).
    Running a sequence through in pieces therefore gives exactly ``causal_conv`` of the whole
    sequence, when the state starts as zeros.

    u: (B, D, T) float32, bfloat16 or float16 (float64), any strides; T is small (a generation step):
      the cost is O(T * Lk) per row, one kernel launch, independent of how long the context is.
    state: (B, D, S) float32 (float64 for float64 u), S >= Lk - 1; mutated.
    k: (D, Lk) float32 (float64), skip: (D,) or None.
    gate: None, or (B, D, T) of u's dtype, any strides: then the result is ``y * silu(gate)`` (a gated
      conv mixer's product in the same launch), rounded as ``y.to(u.dtype) * F.silu(gate)`` rounds.
    Returns y (B, D, T) contiguous, u's dtype. Inference only: no autograd (use ``causal_conv`` on the
    concatenated sequence to train through a state).
    """
    _check_inference_only("causal_conv_update", "causal_conv on the concatenated sequence",
                          u=u, state=state, k=k, skip=skip, gate=gate)
    _check_tensors("causal_conv_update", u=u, state=state, k=k, **{n: t for n, t in (("skip", skip), ("gate", gate)) if t is not None})
    return _ops.causal_conv_update.default(u, state, k, skip, gate)


def _check_inference_only(op: str, instead: str, **tensors) -> None:
    """The inference-only ops have no autograd: with grad mode on, an input that requires grad would get
    no gradient (PyTorch only warns). Say so instead of training silently wrong."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        for x in (t if isinstance(t, (list, tuple)) else [t]):
            if isinstance(x, Tensor) and x.requires_grad:
                raise RuntimeError(f"{op}: inference only (no autograd), but {name} requires grad; call it under "
                                   f"torch.no_grad() / torch.inference_mode(), or train through {instead}")


def _check_causal_conv_update(u: Tensor, state: Tensor, k: Tensor, skip: Optional[Tensor],
                              gate: Optional[Tensor] = None) -> None:
    op = "causal_conv_update"
    torch._check(u.dim() == 3, lambda: f"{op}: expected u of shape (B, D, T), got a {u.dim()}-d tensor of shape {list(u.shape)}")
    torch._check(u.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64),
                 lambda: f"{op}: expected u of dtype float32, bfloat16, float16 or float64, got {u.dtype}")
    torch._check(u.shape[2] >= 1, lambda: f"{op}: expected u with T >= 1 new steps, got u.shape {list(u.shape)}")
    torch._check(k.dim() == 2, lambda: f"{op}: expected k of shape (D, Lk), got a {k.dim()}-d tensor of shape {list(k.shape)}")
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    torch._check(k.dtype == acc, lambda: f"{op}: expected k of dtype {acc} (for u of {u.dtype}), got {k.dtype}")
    torch._check(k.shape[0] == u.shape[1],
                 lambda: f"{op}: expected k.shape[0] == u.shape[1] (D = {u.shape[1]}), got k.shape {list(k.shape)}")
    torch._check(k.shape[1] >= 1, lambda: f"{op}: expected k with at least one tap (Lk >= 1), got k.shape {list(k.shape)}")
    torch._check(state.dim() == 3 and state.shape[0] == u.shape[0] and state.shape[1] == u.shape[1],
                 lambda: f"{op}: expected state of shape (B, D, S) = ({u.shape[0]}, {u.shape[1]}, S), got {list(state.shape)}")
    torch._check(state.shape[2] >= k.shape[1] - 1,
                 lambda: f"{op}: expected state with S >= Lk - 1 = {k.shape[1] - 1} past inputs (the taps reach that "
                         f"far back), got state.shape {list(state.shape)}")
    torch._check(state.dtype == acc,
                 lambda: f"{op}: expected state of dtype {acc} (it keeps u's past inputs exactly), got {state.dtype}")
    torch._check(torch._debug_has_internal_overlap(state) != 1,  # 1: MemOverlap::Yes
                 lambda: f"{op}: expected a state whose elements do not share memory (it is written in place), "
                         f"got one with strides {list(state.stride())} (an expand()ed tensor?); pass a contiguous copy")
    for name, t in (("k", k), ("state", state)):
        torch._check(t.device == u.device, lambda: f"{op}: expected {name} on the same device as u ({u.device}), got {t.device}")
    if skip is not None:
        torch._check(skip.dim() == 1 and skip.shape[0] == u.shape[1],
                     lambda: f"{op}: expected skip of shape (D,) = ({u.shape[1]},), got {list(skip.shape)}")
        torch._check(skip.dtype == acc, lambda: f"{op}: expected skip of dtype {acc}, got {skip.dtype}")
        torch._check(skip.device == u.device,
                     lambda: f"{op}: expected skip on the same device as u ({u.device}), got {skip.device}")
    if gate is not None:
        torch._check(tuple(gate.shape) == tuple(u.shape),
                     lambda: f"{op}: expected gate of u's shape {list(u.shape)}, got {list(gate.shape)}")
        torch._check(gate.dtype == u.dtype, lambda: f"{op}: expected gate of u's dtype ({u.dtype}), got {gate.dtype}")
        torch._check(gate.device == u.device,
                     lambda: f"{op}: expected gate on the same device as u ({u.device}), got {gate.device}")


@torch.library.register_fake("fft_tensor::causal_conv_update")
def _causal_conv_update_fake(u, state, k, skip=None, gate=None):
    _check_causal_conv_update(u, state, k, skip, gate)
    return u.new_empty(u.shape)


# ----------------------------------------------------------------------------- rms_norm, add_rms_norm

def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``x * rsqrt(mean(x^2, -1) + eps) * weight`` over the last dim, written in ``out_dtype``.

    The same value as ``F.rms_norm(x, (D,), weight, eps).to(out_dtype)`` up to float rounding, in one
    launch: a norm that feeds a low-precision GEMM writes that GEMM's input dtype directly.
    x: (..., D) float32, bfloat16, float16 or float64, any strides; weight: (D,) float32 (float64 for
    float64 x); out_dtype: None (x's dtype) or a floating dtype (float64 exactly when x is float64).
    Arithmetic in float32 (float64). Differentiable in x and weight.
    """
    _check_tensors("rms_norm", x=x, weight=weight)
    return _ops.rms_norm.default(x, weight, eps, out_dtype)


def add_rms_norm(x: Tensor, delta: Tensor, weight: Tensor, eps: float = 1e-6,
                 out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """``s = x + delta`` and ``rms_norm(s, weight, eps, out_dtype)`` in one launch: a pre-norm residual
    block's "add the branch, normalise for the next one", the pattern ATen runs as three kernels
    (add, norm, cast).

    delta: x's shape, a dtype that promotes to x's (bfloat16 or float16 into a float32 stream), any
    strides. ``s`` has x's dtype and is exactly ``x + delta`` as ATen computes it. Returns ``(s, normed)``.
    Differentiable in x, delta and weight.
    """
    _check_tensors("add_rms_norm", x=x, delta=delta, weight=weight)
    return _ops.add_rms_norm.default(x, delta, weight, eps, out_dtype)


def _check_rms_norm(op: str, x: Tensor, delta: Optional[Tensor], weight: Tensor, eps: float,
                    out_dtype: Optional[torch.dtype]) -> torch.dtype:
    floats = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    torch._check(x.dim() >= 1, lambda: f"{op}: expected x with at least one dimension (..., D), got a 0-d tensor")
    torch._check(x.dtype in floats, lambda: f"{op}: expected x of dtype float32, bfloat16, float16 or float64, got {x.dtype}")
    D = x.shape[-1]
    torch._check(D >= 1, lambda: f"{op}: expected x with a non-empty last dimension, got x.shape {list(x.shape)}")
    if delta is not None:
        torch._check(tuple(delta.shape) == tuple(x.shape),
                     lambda: f"{op}: expected delta of x's shape {list(x.shape)}, got {list(delta.shape)}")
        torch._check(delta.dtype in floats,
                     lambda: f"{op}: expected delta of dtype float32, bfloat16, float16 or float64, got {delta.dtype}")
        torch._check(torch.promote_types(x.dtype, delta.dtype) == x.dtype,
                     lambda: f"{op}: expected delta's dtype to promote to x's (the sum keeps x's dtype), got x {x.dtype} "
                             f"and delta {delta.dtype}")
        torch._check(delta.device == x.device, lambda: f"{op}: expected delta on x's device ({x.device}), got {delta.device}")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    torch._check(weight.dim() == 1 and weight.shape[0] == D,
                 lambda: f"{op}: expected weight of shape (D,) = ({D},), got {list(weight.shape)}")
    torch._check(weight.dtype == acc, lambda: f"{op}: expected weight of dtype {acc} (for x of {x.dtype}), got {weight.dtype}")
    torch._check(weight.device == x.device, lambda: f"{op}: expected weight on x's device ({x.device}), got {weight.device}")
    torch._check(eps >= 0, lambda: f"{op}: expected eps >= 0, got {eps}")
    out = x.dtype if out_dtype is None else out_dtype
    torch._check(out in floats, lambda: f"{op}: expected out_dtype float32, bfloat16, float16 or float64, got {out}")
    torch._check((out == torch.float64) == (x.dtype == torch.float64),
                 lambda: f"{op}: expected out_dtype float64 exactly when x is float64, got x {x.dtype} and out_dtype {out}")
    return out


@torch.library.register_fake("fft_tensor::rms_norm")
def _rms_norm_fake(x, weight, eps, out_dtype=None):
    out = _check_rms_norm("rms_norm", x, None, weight, eps, out_dtype)
    return x.new_empty(x.shape, dtype=out)


@torch.library.register_fake("fft_tensor::add_rms_norm")
def _add_rms_norm_fake(x, delta, weight, eps, out_dtype=None):
    out = _check_rms_norm("add_rms_norm", x, delta, weight, eps, out_dtype)
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=out)


def _rms_norm_grads(s: Tensor, weight: Tensor, eps: float, grad_out: Tensor, need_weight: bool):
    """(grad_s, grad_weight) of out = s * rstd * weight, rstd = rsqrt(mean(s^2) + eps), in s's acc type."""
    acc = weight.dtype
    s, g = s.to(acc), grad_out.to(acc)
    rstd = torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    s_hat = s * rstd
    gw = g * weight
    grad_s = rstd * (gw - s_hat * (gw * s_hat).mean(-1, keepdim=True))
    grad_weight = (g * s_hat).reshape(-1, s.shape[-1]).sum(0) if need_weight else None
    return grad_s, grad_weight


def _rms_norm_setup_context(ctx, inputs, output):
    x, weight, eps, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rms_norm_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_s, grad_weight = _rms_norm_grads(x, weight, ctx.eps, grad_out, ctx.needs_input_grad[1])
    return grad_s.to(x.dtype) if ctx.needs_input_grad[0] else None, grad_weight, None, None


def _add_rms_norm_setup_context(ctx, inputs, output):
    x, delta, weight, eps, _ = inputs
    ctx.save_for_backward(output[0], weight)
    ctx.eps, ctx.delta_dtype = eps, delta.dtype


def _add_rms_norm_backward(ctx, grad_sum, grad_out):
    s, weight = ctx.saved_tensors
    grad_s, grad_weight = _rms_norm_grads(s, weight, ctx.eps, grad_out, ctx.needs_input_grad[2])
    if grad_sum is not None:
        grad_s = grad_s + grad_sum.to(grad_s.dtype)
    grad_x = grad_s.to(s.dtype) if ctx.needs_input_grad[0] else None
    grad_delta = grad_s.to(ctx.delta_dtype) if ctx.needs_input_grad[1] else None
    return grad_x, grad_delta, grad_weight, None, None


torch.library.register_autograd("fft_tensor::rms_norm", _rms_norm_backward, setup_context=_rms_norm_setup_context)
torch.library.register_autograd("fft_tensor::add_rms_norm", _add_rms_norm_backward,
                                setup_context=_add_rms_norm_setup_context)


# ----------------------------------------------------------------------------- chunk_decode

# Sampling temperatures: 0 (greedy) or at least this. logits / temperature overflows float64 (inf - inf
# = NaN) only below about 1e-270 for float32 logits; 1e-30 is a bound with room to spare that no sampling
# needs to go under. csrc/chunk_decode/common.h checks the same bound.
MIN_TEMPERATURE = 1e-30

def chunk_decode(context: Tensor, first: Tensor, uniforms: Tensor, byte_emb: Tensor, slot_emb: Tensor,
                 norm1: List[Tensor], qkv: List[Tensor], proj: List[Tensor], norm2: List[Tensor],
                 fc: List[Tensor], fc_proj: List[Tensor], norm_f: Tensor, head: Tensor, *, heads: int,
                 eps: float = 1e-6, temperature: float = 0.0, top_k: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """A whole chunk of a chunk decoder (``fft_lm.chunk.ChunkDecoder``) in one call: K slots, each
    through ``len(qkv)`` pre-norm blocks, each slot's byte picked and fed to the next slot.

    Slot j's input is ``x = byte_emb[b_j] + slot_emb[j] + context`` with ``b_0 = first`` and
    ``b_{j+1}`` the byte picked at slot j. Each block: ``x += proj(attn(rms_norm(x) * norm1))`` with
    causal attention (``heads`` heads, scale 1/sqrt(C/heads)) over the slots 0..j of this call, then
    ``x += fc_proj(gelu(fc(rms_norm(x) * norm2)))`` (exact GELU, no biases); the slot's logits are
    ``head(rms_norm(x) * norm_f)``. The pick is ``fft_lm.generation.sample_bytes``'s rule: argmax
    when ``temperature == 0`` (first index on ties), else inverse-CDF sampling in float64 at
    ``uniforms[:, j]`` from softmax(logits / temperature) over the ``top_k`` largest (all when None).

    context: (N, C) float32 (the decoder's projection of the backbone feature); first: (N,) int64
    bytes; uniforms: (N, K) float64 in [0, 1); byte_emb (256, C); slot_emb (>= K, C); norm1, norm2,
    norm_f: (C,); per layer qkv (3C, C), proj (C, C), fc (F, C), fc_proj (C, F) and head (256, C), all
    linear weights in one dtype (float32, bfloat16 or float16). Accumulation in float32.
    Returns (logits (N, K, 256) float32, bytes (N, K) int64). Inference only (no autograd).

    CUDA: one launch per call, a thread-block cluster per row (up to 16 blocks on sm_90, at most
    the largest power of two dividing C; one block per row before Hopper). The attention and head
    matrices are split over the blocks by rows, the MLP by hidden units; the results are exchanged
    through distributed shared memory. The chunk's keys and values live in shared memory: C, F, K
    and the layer count must fit it (``chunk_decode_smem_bytes``; an error says when not), and C and F
    must be whole 16-byte weight rows (divisible by 4 for float32 weights, 8 for bf16/fp16). The
    result is the same bits whatever the cluster size.
    """
    _check_inference_only("chunk_decode", "the decoder module (fft_lm.chunk.ChunkDecoder)", context=context,
                          byte_emb=byte_emb, slot_emb=slot_emb, norm1=norm1, qkv=qkv, proj=proj, norm2=norm2,
                          fc=fc, fc_proj=fc_proj, norm_f=norm_f, head=head)
    return _ops.chunk_decode.default(context, first, uniforms, byte_emb, slot_emb, list(norm1), list(qkv),
                                     list(proj), list(norm2), list(fc), list(fc_proj), norm_f, head, heads, eps,
                                     temperature, 0 if top_k is None else top_k)


def chunk_decode_smem_bytes(C: int, F: int, heads: int, slots: int, layers: int) -> int:
    """Shared memory per thread block that chunk_decode's CUDA kernel needs for a decoder of width C,
    MLP width F, ``heads`` heads and ``layers`` blocks decoding ``slots`` slots (the kernel's own
    layout; compare with ``torch.cuda.get_device_properties(d).shared_memory_per_block_optin``)."""
    return _ops.chunk_decode_smem_bytes.default(C, F, heads, slots, layers)


def chunk_decode_unsupported(C: int, F: int, heads: int, layers: int, weight_dtype: torch.dtype, cuda: bool) -> str:
    """Why ``chunk_decode`` cannot run a decoder of width C, MLP width F, ``heads`` heads and ``layers``
    blocks with linear weights of ``weight_dtype`` (on CUDA when ``cuda``): the op's own rules, as an
    error message; "" when it can. Shared memory is separate: ``chunk_decode_smem_bytes``."""
    return _ops.chunk_decode_unsupported.default(C, F, heads, layers, weight_dtype, cuda)


def _check_chunk_decode(context, first, uniforms, byte_emb, slot_emb, norm1, qkv, proj, norm2, fc, fc_proj,
                        norm_f, head, heads, temperature, top_k) -> None:
    op = "chunk_decode"
    torch._check(context.dim() == 2, lambda: f"{op}: expected context of shape (N, C), got {list(context.shape)}")
    torch._check(context.dtype == torch.float32, lambda: f"{op}: expected context of dtype float32, got {context.dtype}")
    N, C = context.shape
    torch._check(C >= 1, lambda: f"{op}: expected context with C >= 1 columns, got {list(context.shape)}")
    torch._check(first.dim() == 1 and first.shape[0] == N,
                 lambda: f"{op}: expected first of shape (N,) = ({N},), got {list(first.shape)}")
    torch._check(first.dtype == torch.int64, lambda: f"{op}: expected first of dtype int64 (bytes), got {first.dtype}")
    torch._check(uniforms.dim() == 2 and uniforms.shape[0] == N and uniforms.shape[1] >= 1,
                 lambda: f"{op}: expected uniforms of shape (N, K) = ({N}, K >= 1), got {list(uniforms.shape)}")
    torch._check(uniforms.dtype == torch.float64, lambda: f"{op}: expected uniforms of dtype float64, got {uniforms.dtype}")
    K = uniforms.shape[1]
    torch._check(tuple(byte_emb.shape) == (256, C),
                 lambda: f"{op}: expected byte_emb of shape (256, {C}), got {list(byte_emb.shape)}")
    torch._check(slot_emb.dim() == 2 and slot_emb.shape[0] >= K and slot_emb.shape[1] == C,
                 lambda: f"{op}: expected slot_emb of shape (>= K = {K}, {C}), got {list(slot_emb.shape)}")
    for name, t in (("first", first), ("uniforms", uniforms), ("byte_emb", byte_emb), ("slot_emb", slot_emb),
                    ("head", head)):
        torch._check(t.device == context.device, lambda: f"{op}: expected every argument on context's device "
                                                         f"({context.device}), got {t.device}")
    torch._check(byte_emb.is_floating_point() and slot_emb.is_floating_point(),
                 lambda: f"{op}: expected floating-point embeddings, got byte_emb {byte_emb.dtype} and slot_emb "
                         f"{slot_emb.dtype}")
    layers = len(qkv)
    torch._check(1 <= layers <= 8, lambda: f"{op}: expected 1 to 8 decoder layers (qkv tensors), got {layers}")
    for lst in (norm1, proj, norm2, fc, fc_proj):
        torch._check(len(lst) == layers, lambda: f"{op}: expected one tensor per layer in every weight list "
                                                 f"({layers}, as qkv), got a list of {len(lst)}")
    torch._check(heads >= 1 and C % heads == 0, lambda: f"{op}: expected heads >= 1 dividing C = {C}, got heads = {heads}")
    torch._check(fc[0].dim() == 2, lambda: f"{op}: expected fc[0] of shape (F, C), got {list(fc[0].shape)}")
    F = fc[0].shape[0]
    torch._check(F >= 1, lambda: f"{op}: expected fc[0] of shape (F, C) with F >= 1 hidden units, got {list(fc[0].shape)}")
    wt = qkv[0].dtype
    torch._check(wt in (torch.float32, torch.bfloat16, torch.float16),
                 lambda: f"{op}: expected linear weights of dtype float32, bfloat16 or float16, got {wt}")
    for i in range(layers):
        for name, t, shape in (("qkv", qkv[i], (3 * C, C)), ("proj", proj[i], (C, C)), ("fc", fc[i], (F, C)),
                               ("fc_proj", fc_proj[i], (C, F))):
            torch._check(tuple(t.shape) == shape, lambda: f"{op}: expected {name}[{i}] of shape {shape}, got {list(t.shape)}")
            torch._check(t.dtype == wt, lambda: f"{op}: expected {name}[{i}] of dtype {wt} (every linear weight in one "
                                                f"dtype, qkv[0]'s), got {t.dtype}")
        for name, t in (("norm1", norm1[i]), ("norm2", norm2[i]), ("norm_f", norm_f)):
            torch._check(tuple(t.shape) == (C,), lambda: f"{op}: expected {name} of shape ({C},), got {list(t.shape)}")
            torch._check(t.is_floating_point(), lambda: f"{op}: expected {name} to be floating point, got {t.dtype}")
        for name, t in (("qkv", qkv[i]), ("proj", proj[i]), ("fc", fc[i]), ("fc_proj", fc_proj[i]),
                        ("norm1", norm1[i]), ("norm2", norm2[i]), ("norm_f", norm_f)):
            torch._check(t.device == context.device, lambda: f"{op}: expected {name}[{i}] on {context.device}, got {t.device}")
    torch._check(tuple(head.shape) == (256, C), lambda: f"{op}: expected head of shape (256, {C}), got {list(head.shape)}")
    torch._check(temperature == 0 or MIN_TEMPERATURE <= temperature < float("inf"),
                 lambda: f"{op}: expected temperature 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, "
                         f"got {temperature}")
    torch._check(top_k >= 0, lambda: f"{op}: expected top_k >= 0 (0: no top-k filter), got {top_k}")


@torch.library.register_fake("fft_tensor::chunk_decode")
def _chunk_decode_fake(context, first, uniforms, byte_emb, slot_emb, norm1, qkv, proj, norm2, fc, fc_proj, norm_f,
                       head, heads, eps, temperature, top_k):
    _check_chunk_decode(context, first, uniforms, byte_emb, slot_emb, norm1, qkv, proj, norm2, fc, fc_proj, norm_f,
                        head, heads, temperature, top_k)
    N, K = uniforms.shape
    return context.new_empty(N, K, 256), first.new_empty(N, K)
