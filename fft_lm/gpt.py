"""GPT: the byte-level transformer baseline (SDPA causal attention, RoPE, pre-norm).

Same protocol as SpectralLM (fft_lm/families.py): forward(idx, targets, *, cache=None), features(),
init_cache() for KV-cached generation, presets with the same names and ~ the same parameter counts.
RoPE instead of learned positions, so it runs past seq_len.
"""
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

from fft_lm.layers import MLP, ByteLM, RMSNorm, apply_rotary, format_params, rotary_cos_sin


@dataclass
class GPTConfig:
    vocab_size: int = 256          # bytes
    d_model: int = 512
    n_layers: int = 8
    n_head: Optional[int] = None   # None = d_model // 64
    seq_len: int = 1024            # training context (RoPE: runs at any length)
    dropout: float = 0.0
    mlp_mult: int = 4
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    grad_checkpoint: bool = False  # torch.utils.checkpoint per block while training

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "seq_len", "mlp_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name}: expected a positive int, got {value!r}")
        if self.n_head is None:
            self.n_head = max(1, self.d_model // 64)
        if not (isinstance(self.n_head, int) and self.n_head >= 1 and self.d_model % self.n_head == 0
                and (self.d_model // self.n_head) % 2 == 0):
            raise ValueError(f"GPTConfig.n_head: expected a positive int dividing d_model={self.d_model} into even "
                             f"head dims, got {self.n_head!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"GPTConfig.dropout: expected a float in [0, 1), got {self.dropout!r}")


# Same names and (within ~10%) the same parameter counts as fft_lm.model.PRESETS.
PRESETS = {
    "tiny": dict(d_model=128, n_layers=5, seq_len=256),      # 1.05M (SpectralLM 1.05M)
    "small": dict(d_model=256, n_layers=7, seq_len=512),     # 5.64M (6.04M)
    "29m": dict(d_model=512, n_layers=9, seq_len=1024),      # 28.6M (29.2M)
    "base512": dict(d_model=512, n_layers=8, seq_len=1024),  # 25.4M (27.6M), ANCHORS.md throughput model
    "29m-hybrid": dict(d_model=512, n_layers=9, seq_len=1024),  # 28.6M (28.6M): 29m, the hybrid's baseline
}


# SDPA backends outside training. PyTorch may pick cuDNN attention (H100, torch 2.11), which builds
# a new cuDNN graph for every new (query, key) length, i.e. for every KV-cached generation step
# (~80 ms a byte). Flash / memory-efficient attention have no per-shape setup; math is the fallback.
INFERENCE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def inference_attention(module: nn.Module):
    """Context for a module's attention calls: no cuDNN attention when not training (generation and
    eval see many shapes); training keeps the default backends (fixed shapes; cuDNN is fine there).
    Under torch.compile nothing changes (the compiled graph has fixed shapes too)."""
    if module.training or torch.compiler.is_compiling() or not torch.backends.cuda.cudnn_sdp_enabled():
        return contextlib.nullcontext()
    # only drop cuDNN: backends the caller turned off (e.g. sdpa_kernel(MATH) outside) stay off
    enabled = {SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
               SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
               SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled()}
    backends = [b for b in INFERENCE_SDPA_BACKENDS if enabled[b]]
    return sdpa_kernel(backends) if backends else contextlib.nullcontext()  # cuDNN alone: the caller's choice


class KVCache:
    """Per layer keys and values (B, H, capacity, Dh), allocated on first use (capacity max_len, or the
    prompt's length if longer) and grown by doubling when a write would pass the end.

    pos counts the positions written; pos_tensor holds the same count on the device (made at the first
    step), so a step reads its positions from memory: a CUDA graph of a step (fft_lm.generation)
    then writes each replay's keys at the right place, attends to the right prefix and advances it."""

    def __init__(self, n_layers: int, batch_size: int, max_len: int):
        self.keys = [None] * n_layers
        self.values = [None] * n_layers
        self.batch_size = batch_size
        self.capacity = max_len
        self.pos = 0
        self.pos_tensor = None

    def positions(self, T: int, device) -> torch.Tensor:
        """The positions (T,) of the next T inputs, from pos_tensor (the device copy of pos)."""
        if self.pos_tensor is None:
            self.pos_tensor = torch.zeros((), dtype=torch.long, device=device)
        return self.pos_tensor + torch.arange(T, device=device)

    def advance(self, T: int) -> None:
        self.pos += T
        self.pos_tensor += T  # in place: fixed address

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Write k, v (B, H, T, Dh) at positions (T,) (= [pos, pos+T)); return the whole key and value
        buffers (B, H, capacity, Dh): the caller masks what lies past the last position."""
        B, H, T, Dh = k.shape
        end = self.pos + T
        old_k = self.keys[layer]
        if old_k is None or old_k.shape[2] < end or old_k.dtype != k.dtype:
            capacity = max(self.capacity, end) if old_k is None else max(2 * old_k.shape[2], end)
            new_k = k.new_zeros(B, H, capacity, Dh)
            new_v = v.new_zeros(B, H, capacity, Dh)
            if old_k is not None and self.pos:
                new_k[:, :, :self.pos] = old_k[:, :, :self.pos].to(k.dtype)
                new_v[:, :, :self.pos] = self.values[layer][:, :, :self.pos].to(v.dtype)
            self.keys[layer], self.values[layer] = new_k, new_v
        self.keys[layer].index_copy_(2, positions, k)
        self.values[layer].index_copy_(2, positions, v)
        return self.keys[layer], self.values[layer]

    # the protocol fft_lm.generation.StepGraphs records steps with
    def own_buffers(self) -> None:
        """Nothing to do: the buffers are never views autograd holds (writes go in with index_copy_)."""

    def state_tensors(self):
        """Tensors a step updates in place: their addresses must not change while a graph records."""
        return [t for t in self.keys + self.values + [self.pos_tensor] if t is not None]

    def graph_tensors(self):
        """Tensors a recorded step reads or writes (a new address means recording again)."""
        return self.state_tensors()

    def snapshot(self):
        """What a step changes and a recording's warm-up calls must undo: the position (keys written
        past it are never read, and are overwritten when their position comes)."""
        return self.pos, None if self.pos_tensor is None else self.pos_tensor.clone()

    def restore(self, snap) -> None:
        self.pos = snap[0]
        if snap[1] is not None:
            self.pos_tensor.copy_(snap[1])


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.proj.is_residual_out = True
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache: Optional[KVCache] = None, positions=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B,H,T,Dh)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        if cache is None or cache.pos == 0:
            if cache is not None:
                cache.append(self.layer, k, v, positions)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            keys, values = cache.append(self.layer, k, v, positions)
            # query i sits at positions[i] and sees the keys up to there (the buffer past them is masked).
            # Plain matmuls, not SDPA: SDPA's fused kernels take a masked single-query step as B*H blocks
            # that each walk every key (1.6 ms per byte at 1K context, 5 ms at 8K for the 29M preset on an
            # H200), while cuBLAS spreads the keys over the whole GPU. Fixed shape: a CUDA graph records it.
            mask = torch.arange(keys.shape[2], device=x.device)[None, :] <= positions[:, None]
            # (Under bf16 autocast the scores come out of the matmul in bf16, rounded before the float32
            # softmax, where SDPA's fused kernels keep them in float32: a float32 copy of the cache per
            # step would cost more than the attention.)
            scores = torch.matmul(q, keys.transpose(-2, -1))  # float32 at least (float64 stays float64)
            scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * q.shape[-1] ** -0.5
            probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = torch.matmul(probs.to(values.dtype), values)  # generation only: no dropout
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.resid_dropout(self.proj(y))


class GPTBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, layer)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.dropout, cfg.mlp_mult)

    def forward(self, x, cos, sin, cache=None, positions=None):
        x = x + self.attn(self.norm1(x), cos, sin, cache, positions)
        return x + self.mlp(self.norm2(x))


class GPT(ByteLM):
    family = "gpt"
    config_class = GPTConfig
    presets = PRESETS

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: expected a GPTConfig, got {type(config).__name__}")
        self.config = dataclasses.replace(config)
        self._build_trunk(config, lambda i: GPTBlock(self.config, i))

    def describe(self) -> str:
        c = self.config
        return (f"GPT {format_params(self.num_params())} params: d_model={c.d_model} n_layers={c.n_layers} "
                f"n_head={c.n_head} seq_len={c.seq_len}")

    def set_grad_checkpoint(self, enabled: bool) -> None:
        self.config.grad_checkpoint = bool(enabled)

    def init_cache(self, batch_size: int, device=None, max_len: Optional[int] = None) -> KVCache:
        """Empty KV cache; max_len (default seq_len) is the initial capacity, grown when exceeded."""
        return KVCache(self.config.n_layers, batch_size, max_len or self.config.seq_len)

    def features(self, idx: torch.Tensor, *, cache: Optional[KVCache] = None) -> torch.Tensor:
        """Final-normed hidden states (B, T, d_model) for bytes idx (B, T)."""
        self._check_idx(idx, cache)
        T = idx.shape[1]
        positions = (torch.arange(T, device=idx.device) if cache is None else cache.positions(T, idx.device))
        cos, sin = rotary_cos_sin(positions, self.config.d_model // self.config.n_head, self.config.rope_base)
        x = self.drop(self.embed(idx))
        with inference_attention(self):
            for block in self.blocks:
                if cache is None and self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                    x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False)
                else:
                    x = block(x, cos, sin, cache, positions)
        if cache is not None:
            cache.advance(T)
        return self.norm_f(x)
