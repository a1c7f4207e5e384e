"""SpectralLM: a byte-level language model on fft_tensor's causal FFT convolution.

byte embedding -> n_layers x [pre-norm gated long-conv mixer + pre-norm MLP] -> final norm -> head.

The mixer's long kernel is parameterised in the frequency domain of the FFT that `causal_conv`
actually runs at the training length (N = causal_conv_fft_size(seq_len, kernel_len)):
    k = irfft(Z * mask(bin < cutoff), n=N, norm="ortho")[:, :kernel_len] * decay_window + short_taps
so the curriculum's frequency cutoff is an exact count of the op's bins in use: coefficients of
bins >= cutoff change nothing and get exactly zero gradient. The kernel is only kernel_len taps
under a per-channel decaying window (free full-length kernels memorise, see ANCHORS.md), and the
taps are independent of the sequence length, so the model runs at any length.

Streaming (cache=): each layer keeps the last kernel_len - 1 conv inputs, so a call with T new
bytes costs O(T * kernel_len) per layer whatever the context length, and equals the full forward.
"""
import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import fft_tensor
from fft_lm.layers import MLP, ByteLM, RMSNorm, format_params


@dataclass
class SpectralLMConfig:
    vocab_size: int = 256          # bytes
    d_model: int = 512             # channels
    n_layers: int = 8              # residual blocks
    seq_len: int = 1024            # training context; fixes the FFT grid of the kernels (runs at any length)
    kernel_len: int = 128          # long-conv taps per channel
    short_conv_len: int = 4        # free taps added to the first taps (sharp local detail, not band-limited)
    decay_min: float = 0.5         # slowest channel's window: exp(-decay_min) at the last tap
    decay_max: float = 16.0        # fastest channel's window: exp(-decay_max) at the last tap
    fft_size: Optional[int] = None     # the kernels' FFT grid; None = causal_conv_fft_size(seq_len, kernel_len),
                                       # resolved here and saved, so checkpoints survive changes to the op's plan
    freq_cutoff: Optional[int] = None  # spectral bins in use (curriculum); None = full band
    pre_gate: bool = False         # conv input = value * a second projection (Hyena order 2) instead of value
    attn_blocks: int = 0           # blocks that mix by causal softmax attention instead of the conv, spread evenly
    attn_window: int = 0           # positions an attention block sees (itself included); 0 = seq_len
    dropout: float = 0.0
    mlp_mult: int = 4
    tie_embeddings: bool = False
    grad_checkpoint: bool = False  # torch.utils.checkpoint per block while training

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "seq_len", "kernel_len", "mlp_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SpectralLMConfig.{name}: expected a positive int, got {value!r}")
        if not (isinstance(self.short_conv_len, int) and 0 <= self.short_conv_len <= self.kernel_len):
            raise ValueError(f"SpectralLMConfig.short_conv_len: expected an int in [0, kernel_len={self.kernel_len}], "
                             f"got {self.short_conv_len!r}")
        if self.kernel_len > self.seq_len:
            raise ValueError(f"SpectralLMConfig.kernel_len: expected kernel_len <= seq_len ({self.seq_len}), "
                             f"got {self.kernel_len}")
        if not (0 < self.decay_min <= self.decay_max):
            raise ValueError(f"SpectralLMConfig.decay_min/decay_max: expected 0 < decay_min <= decay_max, "
                             f"got {self.decay_min} and {self.decay_max}")
        if not isinstance(self.pre_gate, bool):
            raise ValueError(f"SpectralLMConfig.pre_gate: expected a bool, got {self.pre_gate!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"SpectralLMConfig.dropout: expected a float in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.attn_blocks, int) and 0 <= self.attn_blocks <= self.n_layers):
            raise ValueError(f"SpectralLMConfig.attn_blocks: expected an int in [0, n_layers={self.n_layers}], "
                             f"got {self.attn_blocks!r}")
        if not (isinstance(self.attn_window, int) and (self.attn_window == 0 or self.attn_window >= 2)):
            raise ValueError(f"SpectralLMConfig.attn_window: expected 0 (= seq_len) or an int >= 2, "
                             f"got {self.attn_window!r}")
        if self.attn_blocks and self.d_model % attention_heads(self.d_model):
            raise ValueError(f"SpectralLMConfig.d_model: attention blocks need d_model divisible by their heads")
        if self.fft_size is None:
            self.fft_size = fft_tensor.causal_conv_fft_size(self.seq_len, self.kernel_len)
        if not (isinstance(self.fft_size, int) and self.fft_size >= self.kernel_len):
            raise ValueError(f"SpectralLMConfig.fft_size: expected None or an int >= kernel_len ({self.kernel_len}), "
                             f"got {self.fft_size!r}")
        bins = self.freq_bins
        if self.freq_cutoff is not None and not (isinstance(self.freq_cutoff, int) and 1 <= self.freq_cutoff <= bins):
            raise ValueError(f"SpectralLMConfig.freq_cutoff: expected None or an int in [1, {bins}] "
                             f"(bins of the {self.fft_size}-point FFT), got {self.freq_cutoff!r}")

    @property
    def freq_bins(self) -> int:
        return self.fft_size // 2 + 1

    def is_attention_block(self, i: int) -> bool:
        """Block i mixes by attention: attn_blocks of them, at floor((k + 1/2) * n_layers / attn_blocks)."""
        return i in {(2 * k + 1) * self.n_layers // (2 * self.attn_blocks) for k in range(self.attn_blocks)}


def attention_heads(d_model: int) -> int:
    """Heads of 64 channels where d_model allows, else one."""
    return d_model // 64 if d_model % 64 == 0 else 1


# Same names and (within ~10%) the same parameter counts as fft_lm.gpt.PRESETS.
# (Counts are for the op's current plan: 1024-point kernel grids at kernel_len 128.)
PRESETS = {
    "tiny": dict(d_model=128, n_layers=4, seq_len=256, kernel_len=64),      # 1.05M, CPU tests and quickstart
    "small": dict(d_model=256, n_layers=6, seq_len=512, kernel_len=128),    # 6.04M
    # the original pipeline's scale. (pre_gate at d=504, 28.8M: 1.200 val bits/byte in the 120-s H100 run against
    # 1.197 for this one, RESULTS.md; 0.03 better at the tiny scale on the CPU. Not adopted.)
    "29m": dict(d_model=528, n_layers=8, seq_len=1024, kernel_len=128),     # 29.1M
    "base512": dict(d_model=512, n_layers=8, seq_len=1024, kernel_len=128), # 27.6M, ANCHORS.md throughput model
    # The original pipeline's scale with two of its eight blocks mixing by attention (blocks 2 and 6) and the pre-gate:
    # 0.995 val bits/byte after 120 s on gcide against the GPT's 1.006 in the same run (29m: 1.197
    # against 1.017), same parameter count (RESULTS.md, eleventh session).
    "29m-hybrid": dict(d_model=512, n_layers=8, seq_len=1024, kernel_len=128, attn_blocks=2, pre_gate=True),  # 28.6M
}


class SpectralKernel(nn.Module):
    """Per-channel taps k (D, kernel_len) and skip (D,) from spectral coefficients on an N-point grid."""

    def __init__(self, cfg: SpectralLMConfig):
        super().__init__()
        D, Lk, N = cfg.d_model, cfg.kernel_len, cfg.fft_size
        bins = N // 2 + 1
        self.fft_size, self.kernel_len, self.short_conv_len = N, Lk, cfg.short_conv_len
        self.cutoff = cfg.freq_cutoff  # bins kept (None = all); bin_mask is its saved form
        self.coef_real = nn.Parameter(torch.empty(D, bins))   # Re Z
        self.coef_imag = nn.Parameter(torch.empty(D, bins))   # Im Z (unused at DC and Nyquist, as in irfft)
        self.log_decay = nn.Parameter(torch.empty(D))
        self.short_taps = nn.Parameter(torch.zeros(D, cfg.short_conv_len))
        self.skip = nn.Parameter(torch.ones(D))
        # basis and tap_pos depend on the sizes only and are not saved (_fill_grid); bin_mask is, so a
        # state_dict round trip keeps the curriculum's cutoff
        self.register_buffer("basis", torch.empty(2 * bins, Lk), persistent=False)
        self.register_buffer("tap_pos", torch.empty(Lk), persistent=False)
        self.register_buffer("bin_mask", torch.ones(bins))
        self._fill_grid()
        self.reset_parameters(cfg)
        self.set_freq_cutoff(cfg.freq_cutoff)

    @torch.no_grad()
    def _fill_grid(self) -> None:
        """basis: irfft(Z, n=N, norm="ortho")[:Lk] as two real matrices, so the kernel is a plain matmul
        (compiles everywhere, no complex tensors): k = [Re Z, Im Z] @ [cos_basis; sin_basis], stacked
        (2 * bins, Lk) for one GEMM. tap_pos: t / Lk for the decay window. Filled again after a load
        (a module made on the meta device and materialised by to_empty gets them back) and after a cast
        to a 16-bit dtype (they stay float32: the taps are summed in float32)."""
        N, Lk = self.fft_size, self.kernel_len
        bins = N // 2 + 1
        f = torch.arange(bins, dtype=torch.float64)[:, None]
        t = torch.arange(Lk, dtype=torch.float64)[None, :]
        weight = torch.full((bins, 1), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if N % 2 == 0:
            weight[-1] = 1.0
        angle = 2 * math.pi * f * t / N
        self.basis.copy_(torch.cat([weight * torch.cos(angle), -weight * torch.sin(angle)]) / math.sqrt(N))
        self.tap_pos.copy_(torch.arange(Lk, dtype=torch.float64) / Lk)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.basis.dtype not in (torch.float32, torch.float64):  # model.to(torch.bfloat16), .half()
            self.basis = torch.empty(self.basis.shape, dtype=torch.float32, device=self.basis.device)
            self.tap_pos = torch.empty(self.tap_pos.shape, dtype=torch.float32, device=self.tap_pos.device)
            self._fill_grid()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # checkpoints written before bin_mask was saved: the mask of this module's own cutoff (the
        # loader builds the module from the checkpoint's config, which holds the cutoff)
        state_dict.setdefault(prefix + "bin_mask", self._mask(self.cutoff))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.bin_mask.device.type != "meta":
            keep = int(self.bin_mask.sum().item())
            self.cutoff = None if keep == self.bin_mask.numel() else keep
        self._fill_grid()

    @torch.no_grad()
    def reset_parameters(self, cfg: SpectralLMConfig) -> None:
        D = self.coef_real.shape[0]
        # decay rates log-spaced across channels: a few near-flat windows, many short-range ones
        self.log_decay.copy_(torch.linspace(math.log(cfg.decay_min), math.log(cfg.decay_max), D))
        self.coef_real.normal_()
        self.coef_imag.normal_()
        self.bin_mask.fill_(1.0)
        k = self.long_taps()
        scale = 1.0 / k.norm(dim=1, keepdim=True).clamp_min(1e-6)   # unit-norm windowed kernels at full band
        self.coef_real.mul_(scale)
        self.coef_imag.mul_(scale)

    def _mask(self, bins: Optional[int]) -> torch.Tensor:
        n = self.bin_mask.numel()
        return (torch.arange(n) < (n if bins is None else bins)).float()

    def set_freq_cutoff(self, bins: Optional[int]) -> None:
        self.cutoff = bins
        with torch.no_grad():
            self.bin_mask.copy_(self._mask(bins))

    def long_taps(self) -> torch.Tensor:
        """irfft(Z * mask, n=N, norm='ortho')[:, :kernel_len] * decay window, (D, Lk) float32 (float64
        in a float64 model: the op takes float64 for gradcheck), whatever dtype the module was cast to."""
        dtype = torch.float64 if self.coef_real.dtype == torch.float64 else torch.float32
        coef = torch.cat([self.coef_real, self.coef_imag], 1).to(dtype)
        spectral = (coef * self.bin_mask.to(dtype).repeat(2)) @ self.basis.to(dtype)
        window = torch.exp(-torch.exp(self.log_decay.to(dtype))[:, None] * self.tap_pos.to(dtype)[None, :])
        return spectral * window

    def forward(self):
        device_type = self.basis.device.type  # the op wants fp32 taps; "meta" has no autocast
        no_autocast = (torch.autocast(device_type=device_type, enabled=False) if device_type in ("cuda", "cpu")
                       else contextlib.nullcontext())
        with no_autocast:
            k = self.long_taps()
            if self.short_conv_len:
                k = k + F.pad(self.short_taps.to(k.dtype), (0, self.kernel_len - self.short_conv_len))
        return k, self.skip.to(k.dtype)


# New bytes per streaming call up to which a layer steps its tail with causal_conv_update (O(T * taps)
# per channel, one launch); longer calls (a prefill) concatenate the tail and run causal_conv (FFT).
STREAM_STEP_MAX = 64


class SpectralMixer(nn.Module):
    """x -> (value, gate); y = causal_conv(value, k, skip) * silu(gate); out_proj(y).

    pre_gate: x -> (value, pre, gate) and the conv reads value * pre, so the mixing itself is
    data-controlled (Hyena's order-2 operator); pointwise, so streaming keeps the same state."""

    def __init__(self, cfg: SpectralLMConfig):
        super().__init__()
        self.kernel_len = cfg.kernel_len
        self.pre_gate = cfg.pre_gate
        self.in_proj = nn.Linear(cfg.d_model, (3 if cfg.pre_gate else 2) * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.out_proj.is_residual_out = True
        self.kernel = SpectralKernel(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def taps(self):
        """(k, skip) of the conv, computed once per generation (SpectralCache.taps)."""
        return self.kernel()

    def tail_shape(self, batch_size: int):
        return (batch_size, self.in_proj.in_features, self.kernel_len - 1)

    def forward(self, x, tail=None, taps=None):
        """x (B, T, D). tail: None, or the last kernel_len-1 conv inputs (B, D, kernel_len-1) float32
        seen before x. Returns (out (B, T, D), new tail or None)."""
        T = x.shape[1]
        if tail is not None and T <= STREAM_STEP_MAX and not torch.is_grad_enabled():
            return self._step(x, tail, taps), tail
        # Feature-major projections: in_proj is one GEMM W @ x^T over all B*T positions, its parts
        # blocks of rows of the (parts*D, B*T) result viewed as (B, D, T) with time contiguous. The conv
        # reads value in place and writes y in the same layout, the gate product keeps it, and the
        # output projection reads z back in place: no layout copies, and each weight gradient is one
        # GEMM (at L = 1K the step is host-bound, so kernels per block count: RESULTS.md).
        if self.pre_gate:
            value, pre, gate = channels_first_linear(self.in_proj.weight, x, parts=3)
            value = value * pre  # Hyena's order-2 product: the conv reads value * pre
        else:
            value, gate = channels_first_linear(self.in_proj.weight, x, parts=2)
        k, skip = self.kernel() if taps is None else taps
        new_tail = None
        if tail is None:
            y = fft_tensor.causal_conv(value, k, skip)
        else:
            # overlap-save: the tail supplies every input the new outputs can reach back to
            u_all = torch.cat([tail, value.to(tail.dtype)], dim=-1)
            y = fft_tensor.causal_conv(u_all, k, skip)[..., -T:]
            new_tail = u_all[..., u_all.shape[-1] - tail.shape[-1]:]
        z = y.to(gate.dtype) * F.silu(gate)                       # (B, D, T)
        return self.dropout(time_first_linear(self.out_proj.weight, z)), new_tail

    def _step(self, x, tail, taps):
        """A generation step of T <= STREAM_STEP_MAX inputs (grad off): one GEMM for every part of
        in_proj, then one causal_conv_update that reads the tail, shifts it in place and applies the
        gate (y * silu(gate), rounded as the expression above rounds it): the same sums as forward."""
        parts = channels_first_linear(self.in_proj.weight, x, parts=3 if self.pre_gate else 2)
        value = parts[0] * parts[1] if self.pre_gate else parts[0]
        k, skip = self.kernel() if taps is None else taps
        z = fft_tensor.causal_conv_update(value, tail, k, skip, gate=parts[-1])
        return self.dropout(time_first_linear(self.out_proj.weight, z))


def _autocast_weight(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """w in the dtype F.linear would use on x: the autocast dtype when autocast is on. Cast before
    the batch expand below, so autocast never materialises B copies of the weight."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):  # meta: no autocast
        return w.to(torch.get_autocast_dtype(device_type))
    return w


def feature_major(z: torch.Tensor) -> bool:
    """z (B, I, T) views an (I, B * T) matrix: strides (T, B * T, 1)."""
    return z.transpose(0, 1).is_contiguous()


class _FeatureMajorLinear(torch.autograd.Function):
    """x (B, T, I) -> parts (B, O_j, T), O = sum O_j, from one GEMM W @ x'^T with x' = x as the (B*T, I)
    matrix it is. The result is the (O, B*T) matrix; each part is a block of its rows viewed as
    (B, O_j, T) with strides (T, B*T, 1) ("feature-major"): time contiguous, so causal_conv reads it in
    place and writes y in the same layout, which the output projection reads back in place.
    Backward: the parts' gradients g_j' stacked into one (O, B*T) matrix g' (torch.cat: the pointwise
    ones are written into it directly under torch.compile), then grad_x = g'^T W and grad_W = g' x', one
    GEMM each over all B*T positions (a batched GEMM per sequence would leave per-sequence partial
    sums to add, and a GEMM per part more launches: the 1K step is host-bound)."""

    @staticmethod
    def forward(ctx, x, w, sizes):
        B, T, I = x.shape
        xm = x.reshape(B * T, I)
        ctx.save_for_backward(xm, w)
        ctx.sizes, ctx.shape = sizes, (B, T, I)
        out = torch.mm(w, xm.t())                         # (O, B*T)
        return tuple(part.view(-1, B, T).transpose(0, 1) for part in out.split(sizes))

    @staticmethod
    def backward(ctx, *grads):
        xm, w = ctx.saved_tensors
        B, T, I = ctx.shape
        # each part's gradient as its (O_j, B*T) matrix (zeros for a part that got none)
        gm = torch.cat([xm.new_zeros(wj.shape[0], B * T) if g is None else g.transpose(0, 1).reshape(-1, B * T)
                        for g, wj in zip(grads, w.split(ctx.sizes))])
        grad_x = torch.mm(gm.t(), w).view(B, T, I) if ctx.needs_input_grad[0] else None
        grad_w = torch.mm(gm, xm) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


class _FeatureMajorTimeFirstLinear(torch.autograd.Function):
    """out (B, T, O) = z'^T @ w^T for a feature-major z (B, I, T), z' its (I, B*T) matrix (read in place):
    one GEMM each way, grad_z comes back feature-major (a fresh (I, B*T) matrix, so the conv's backward
    reads it in place) and grad_w = g^T z'^T is one GEMM over all positions."""

    @staticmethod
    def forward(ctx, z, w):
        B, I, T = z.shape
        zm = z.transpose(0, 1).reshape(I, B * T)  # a view: z is feature-major
        ctx.save_for_backward(zm, w)
        ctx.shape = (B, I, T)
        return torch.mm(zm.t(), w.t()).view(B, T, w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        zm, w = ctx.saved_tensors
        B, I, T = ctx.shape
        gm = grad.reshape(B * T, w.shape[0])
        grad_z = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.mm(w.t(), gm.t()).view(I, B, T).transpose(0, 1)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(gm.t(), zm.t())
        return grad_z, grad_w


class _TimeFirstLinear(torch.autograd.Function):
    """out (B, T, O) = z^T @ w^T per sequence, z (B, I, T) packed channels-first; grad_z comes back
    (B, I, T), so the conv's backward reads its gradient row-contiguous."""

    @staticmethod
    def forward(ctx, z, w):
        ctx.save_for_backward(z, w)
        return torch.bmm(z.transpose(1, 2), w.t().expand(z.shape[0], -1, -1))

    @staticmethod
    def backward(ctx, grad):
        z, w = ctx.saved_tensors
        grad_z = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.bmm(w.t().expand(grad.shape[0], -1, -1), grad.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad.transpose(1, 2), z.transpose(1, 2)).sum(0, dtype=torch.float32).to(w.dtype)
        return grad_z, grad_w


def channels_first_linear(w: torch.Tensor, x: torch.Tensor, parts: int = 1):
    """x @ w^T channels-first, from x (B, T, in): `parts` equal row blocks of w, each result a (B, out/parts,
    T) feature-major tensor (strides (T, B*T, 1), time contiguous), from one GEMM. parts=1 returns the
    tensor, else a tuple."""
    w = _autocast_weight(w, x)
    out_features = w.shape[0]
    if out_features % parts:
        raise ValueError(f"channels_first_linear: expected out_features ({out_features}) divisible by parts ({parts})")
    outs = _FeatureMajorLinear.apply(x.to(w.dtype), w, [out_features // parts] * parts)
    return outs[0] if parts == 1 else outs


def time_first_linear(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """z^T @ w^T as a contiguous (B, T, out) tensor, from channels-first z (B, in, T): one GEMM when z
    is feature-major (what channels_first_linear and causal_conv of it give), else a batched GEMM."""
    w = _autocast_weight(w, z)
    z = z.to(w.dtype)
    if feature_major(z):
        return _FeatureMajorTimeFirstLinear.apply(z, w)
    return _TimeFirstLinear.apply(z, w)


class WindowAttentionMixer(nn.Module):
    """Causal softmax attention over the last `window` positions (itself included), heads of 64
    channels, no positional encoding (the conv blocks before it give each position its local context).
    It adds what the fixed convolutions lack, lookup by content (benchmarks/context_use.py).

    Streaming keeps the layer's last window-1 inputs as its tail, as the conv keeps its last
    kernel_len-1: (B, D + 1, window - 1) float32, the extra channel 1 where a real byte sits (0 in a
    fresh cache), so a step costs O(window) whatever the context and needs no host-side position
    (CUDA graphs replay it). Training and recompute apply the same window: one SDPA call up to
    `window` positions, block-local beyond (each block of `window` queries against itself and the
    block before)."""

    def __init__(self, cfg: SpectralLMConfig):
        super().__init__()
        D = cfg.d_model
        self.window = cfg.attn_window or cfg.seq_len
        self.heads = attention_heads(D)
        self.in_proj = nn.Linear(D, 3 * D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)
        self.out_proj.is_residual_out = True
        self.dropout = nn.Dropout(cfg.dropout)

    def taps(self):
        return None

    def tail_shape(self, batch_size: int):
        return (batch_size, self.in_proj.in_features + 1, self.window - 1)

    def _heads(self, y, parts):
        """(B, S, parts * D) -> parts tensors (B, H, S, Dh)."""
        B, S, PD = y.shape
        return y.view(B, S, parts, self.heads, PD // (parts * self.heads)).permute(2, 0, 3, 1, 4).unbind(0)

    def _qkv(self, x):
        return self._heads(self.in_proj(x), 3)

    def _out(self, y):
        B, H, T, Dh = y.shape
        return self.dropout(self.out_proj(y.transpose(1, 2).reshape(B, T, H * Dh)))

    def forward(self, x, tail=None, taps=None):
        """x (B, T, D); tail None or (B, D + 1, window - 1) as above. Returns (out (B, T, D), new tail or None)."""
        if tail is None:
            return self._out(self._window_attention(*self._qkv(x))), None
        outs = []
        for start in range(0, x.shape[1], self.window):  # a long prefill in pieces: at most 2 windows of keys
            y, tail = self._stream(x[:, start:start + self.window], tail)
            outs.append(y)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, 1)), tail

    def _window_attention(self, q, k, v):
        B, H, T, Dh = q.shape
        W = self.window
        if T <= W:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        nb = -(-T // W)
        pad = nb * W - T  # at the end: padded keys come after every real query, so causality masks them

        def blocks(t):
            return F.pad(t, (0, 0, 0, pad)).view(B, H, nb, W, Dh).transpose(1, 2)  # (B, nb, H, W, Dh)

        def with_block_before(t):  # (B, nb, H, 2W, Dh): the block before (zeros for block 0), then this one
            return torch.cat([F.pad(t, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1], t], dim=3)
        qb, keys, vals = blocks(q), with_block_before(blocks(k)), with_block_before(blocks(v))
        i = torch.arange(W, device=q.device)[:, None]
        j = torch.arange(2 * W, device=q.device)[None, :]
        allowed = (j > i) & (j <= i + W)  # key j of the 2W is query i's own position or one of the W-1 before
        mask = allowed.expand(nb, W, 2 * W).clone()
        mask[0, :, :W] = False  # block 0 has no block before it
        y = F.scaled_dot_product_attention(qb.reshape(B * nb, H, W, Dh), keys.reshape(B * nb, H, 2 * W, Dh),
                                           vals.reshape(B * nb, H, 2 * W, Dh),
                                           attn_mask=mask[None].expand(B, nb, W, 2 * W).reshape(B * nb, 1, W, 2 * W))
        return y.view(B, nb, H, W, Dh).transpose(1, 2).reshape(B, H, nb * W, Dh)[:, :, :T]

    def _stream(self, x, tail):
        B, T, D = x.shape
        W = self.window
        # the tail's dtype: float32, float64 in a float64 model (which must stream at its own precision)
        new = torch.cat([x.transpose(1, 2).to(tail.dtype), torch.ones(B, 1, T, device=x.device, dtype=tail.dtype)], 1)
        u_all = torch.cat([tail, new], dim=2)  # (B, D + 1, W - 1 + T)
        # keys and values for the whole window, queries for the new positions only
        w_q, w_kv = self.in_proj.weight.split([D, 2 * D])
        (q,) = self._heads(F.linear(x, w_q), 1)
        k, v = self._heads(F.linear(u_all[:, :D].transpose(1, 2).to(x.dtype), w_kv), 2)
        S = W - 1 + T
        i = torch.arange(T, device=x.device)[:, None]
        j = torch.arange(S, device=x.device)[None, :]
        allowed = (j >= i) & (j <= i + W - 1)  # query i sits at W - 1 + i: itself and the W - 1 before
        mask = allowed[None] & (u_all[:, D, None, :] > 0)  # and only real bytes
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self._out(y), u_all[..., T:]  # the last W - 1 columns


class SpectralBlock(nn.Module):
    def __init__(self, cfg: SpectralLMConfig, attention: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.mixer = WindowAttentionMixer(cfg) if attention else SpectralMixer(cfg)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.dropout, cfg.mlp_mult)

    def forward(self, x, tail=None, taps=None):
        if can_fuse_norms(self.norm1, x):
            x, pending, new_tail = self.forward_fused_norms(x, None, tail, taps)
            return x + pending, new_tail
        mixed, new_tail = self.mixer(self.norm1(x), tail, taps)
        x = x + mixed
        x = x + self.mlp(self.norm2(x))
        return x, new_tail

    def forward_fused_norms(self, x, pending, tail=None, taps=None):
        """forward with grad off (generation, evaluation), each norm one fft_tensor.rms_norm /
        add_rms_norm launch that also writes the next GEMM's input dtype (ATen: residual add, norm and
        autocast's cast, three kernels). The block's input is x + pending (pending: None, or the previous
        block's MLP output, added by this block's first norm); returns (x, pending, new_tail) with the
        MLP output left pending the same way. Same values as forward up to float rounding."""
        gemm_dtype = _autocast_weight(self.mixer.out_proj.weight, x).dtype
        if pending is None:
            h = fft_tensor.rms_norm(x, self.norm1.weight, self.norm1.eps, gemm_dtype)
        else:
            x, h = fft_tensor.add_rms_norm(x, pending, self.norm1.weight, self.norm1.eps, gemm_dtype)
        mixed, new_tail = self.mixer(h, tail, taps)
        x, h = fft_tensor.add_rms_norm(x, mixed, self.norm2.weight, self.norm2.eps, gemm_dtype)
        return x, self.mlp(h), new_tail


def can_fuse_norms(norm: RMSNorm, x: torch.Tensor) -> bool:
    """Whether a no-grad forward may use fft_tensor's fused norms: grad off and norm weights of the
    dtype the op takes for x (float64 for float64 x, else float32)."""
    want = torch.float64 if x.dtype == torch.float64 else torch.float32
    return not torch.is_grad_enabled() and norm.weight.dtype == want


class SpectralCache:
    """Streaming state: per layer the last kernel_len-1 conv inputs, float32 (B, D, kernel_len-1).

    pos counts the bytes seen. Kernel taps are cached here while gradients are off (generation).
    With gradients off the tails are updated in place, so their storage never moves: a CUDA graph
    of a step (fft_lm.generation) reads and writes these same tensors on every replay."""

    def __init__(self, tails, batch_size: int):
        self.tails = tails
        self.batch_size = batch_size
        self.pos = 0
        self.taps = None          # per-layer (k, skip) computed once for generation
        self.taps_cutoff = None   # the freq_cutoff those taps were made with

    def own_buffers(self) -> None:
        """Tails a step with grad on left are views autograd may have saved for backward: replace them
        by copies of their own, so the in-place updates of no-grad steps never write into them."""
        for i, t in enumerate(self.tails):
            if t.requires_grad or t._base is not None:
                self.tails[i] = t.detach().clone()

    # the protocol fft_lm.generation.StepGraphs records steps with
    def state_tensors(self):
        """Tensors a step updates in place: their addresses must not change while a graph records."""
        return list(self.tails)

    def graph_tensors(self):
        """Tensors a recorded step reads or writes (a new address means recording again): the tails and
        the cached taps (made anew when the frequency cutoff changes)."""
        return self.state_tensors() + [t for pair in (self.taps or []) if pair is not None for t in pair if t is not None]

    def snapshot(self):
        """What a step changes (tails, pos), for undoing a recording's warm-up calls."""
        return [t.clone() for t in self.tails], self.pos

    def restore(self, snap) -> None:
        for t, saved in zip(self.tails, snap[0]):
            t.copy_(saved)
        self.pos = snap[1]


def _cutoff_from_kernels(model: "SpectralLM", incompatible_keys) -> None:
    """After load_state_dict: the config's cutoff is the one the loaded kernel masks hold."""
    kernels = [block.mixer.kernel for block in model.blocks if isinstance(block.mixer, SpectralMixer)]
    if kernels:
        model.config.freq_cutoff = kernels[0].cutoff


class SpectralLM(ByteLM):
    family = "spectral"
    config_class = SpectralLMConfig
    presets = PRESETS

    def __init__(self, config: SpectralLMConfig):
        super().__init__()
        if not isinstance(config, SpectralLMConfig):
            raise TypeError(f"SpectralLM: expected a SpectralLMConfig, got {type(config).__name__}")
        self.config = dataclasses.replace(config)  # own copy: set_freq_cutoff writes to it
        self._build_trunk(config, lambda i: SpectralBlock(config, config.is_attention_block(i)))
        self.register_load_state_dict_post_hook(_cutoff_from_kernels)

    def describe(self) -> str:
        c = self.config
        return (f"SpectralLM {format_params(self.num_params())} params: d_model={c.d_model} n_layers={c.n_layers} "
                f"seq_len={c.seq_len} kernel_len={c.kernel_len} fft_size={c.fft_size} "
                f"freq_cutoff={self.freq_cutoff}/{self.freq_bins}"
                + (f" attn_blocks={c.attn_blocks} (window {c.attn_window or c.seq_len})" if c.attn_blocks else ""))

    # ------------------------------------------------------------------ curriculum

    @property
    def freq_bins(self) -> int:
        """Spectral bins at full band: fft_size // 2 + 1 of causal_conv's FFT at seq_len."""
        return self.config.freq_bins

    @property
    def freq_cutoff(self) -> int:
        """Bins in use now (== freq_bins at full band)."""
        return self.freq_bins if self.config.freq_cutoff is None else self.config.freq_cutoff

    def set_freq_cutoff(self, bins: Optional[int]) -> None:
        """Keep spectral bins [0, bins) of every kernel; None = full band. Saved in self.config."""
        if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= self.freq_bins):
            raise ValueError(f"set_freq_cutoff: expected None or an int bins in [1, {self.freq_bins}], got {bins!r}")
        self.config.freq_cutoff = bins
        for block in self.blocks:
            if isinstance(block.mixer, SpectralMixer):
                block.mixer.kernel.set_freq_cutoff(bins)

    def set_grad_checkpoint(self, enabled: bool) -> None:
        self.config.grad_checkpoint = bool(enabled)

    # ------------------------------------------------------------------ streaming

    def init_cache(self, batch_size: int, device=None, max_len: Optional[int] = None) -> SpectralCache:
        """Empty streaming state; max_len is accepted for protocol symmetry (the state has fixed size)."""
        if device is None:
            device = self.embed.weight.device
        # the conv's inputs as the op reads them: float32 (float64 in a float64 model)
        dtype = torch.float64 if self.embed.weight.dtype == torch.float64 else torch.float32
        return SpectralCache([torch.zeros(block.mixer.tail_shape(batch_size), device=device, dtype=dtype)
                              for block in self.blocks], batch_size)

    # ------------------------------------------------------------------ forward

    def features(self, idx: torch.Tensor, *, cache: Optional[SpectralCache] = None) -> torch.Tensor:
        """Final-normed hidden states (B, T, d_model) for bytes idx (B, T)."""
        self._check_idx(idx, cache)
        x = self.drop(self.embed(idx))
        if idx.shape[1] == 0:  # no positions to mix (the op takes L >= 1); the cache stays as it is
            return self.norm_f(x)
        taps = [None] * len(self.blocks)
        if cache is not None and not torch.is_grad_enabled():
            cache.own_buffers()
            if cache.taps is None or cache.taps_cutoff != self.freq_cutoff:
                cache.taps = [block.mixer.taps() for block in self.blocks]
                cache.taps_cutoff = self.freq_cutoff
            taps = cache.taps
        fused = can_fuse_norms(self.norm_f, x)
        pending = None  # fused norms: the last block's MLP output, added by the next norm
        for i, block in enumerate(self.blocks):
            if cache is not None:
                if fused:
                    x, pending, new_tail = block.forward_fused_norms(x, pending, cache.tails[i], taps[i])
                else:
                    x, new_tail = block(x, cache.tails[i], taps[i])
                if torch.is_grad_enabled():
                    cache.tails[i] = new_tail  # a new tensor: autograd sees a plain chain of tails
                elif new_tail is not cache.tails[i]:  # (causal_conv_update shifted it in place already)
                    cache.tails[i].copy_(new_tail)  # in place: fixed addresses (CUDA graphs replay steps)
            elif self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, _ = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            elif fused:
                x, pending, _ = block.forward_fused_norms(x, pending)
            else:
                x, _ = block(x)
        if cache is not None:
            cache.pos += idx.shape[1]
        if pending is not None:
            return fft_tensor.add_rms_norm(x, pending, self.norm_f.weight, self.norm_f.eps)[1]
        return self.norm_f(x)
