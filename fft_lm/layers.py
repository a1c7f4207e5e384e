"""Pieces shared by the LM families: RMSNorm, the MLP, rotary embeddings, config helpers."""
import dataclasses
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """x / rms(x) * weight, over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class MLP(nn.Module):
    """Position-wise D -> 4D -> D with GELU, no biases (nanoGPT's block MLP)."""

    def __init__(self, d_model: int, dropout: float = 0.0, hidden_mult: int = 4):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden_mult * d_model, bias=False)
        self.proj = nn.Linear(hidden_mult * d_model, d_model, bias=False)
        self.proj.is_residual_out = True  # scaled-down init, see init_weights
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


def init_weights(model: nn.Module, n_layers: int, head_std: float = 0.01) -> None:
    """GPT-2 init: N(0, 0.02) for linears and embeddings; residual output projections scaled by
    1/sqrt(2 * n_layers) so the residual stream does not grow with depth; a small head so a fresh
    model predicts nearly uniform bytes (loss ~ ln 256)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layers) if getattr(module, "is_residual_out", False) else 0.02
            if name == "head":
                std = head_std
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)


# ----------------------------------------------------------------------------- rotary embeddings

def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0):
    """cos, sin of shape (T, head_dim // 2) for integer positions (T,), in float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h], x[..., h:]) of x (B, H, T, Dh) by the angles in cos/sin (T, Dh/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- config helpers

def config_from_preset(config_class, presets: dict, name: str, overrides: dict):
    """presets[name] updated by overrides, as config_class; ValueError naming the valid choices."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for {config_class.__name__}; expected one of {sorted(presets)}")
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} field(s) {unknown}; valid fields are {sorted(fields)}")
    return config_class(**{**presets[name], **overrides})


def format_params(n: int) -> str:
    """1234567 -> '1.23M'."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


class ByteLM(nn.Module):
    """What every model family shares: construction from a config (or its dict) or a preset, and
    the parameter count. Subclasses set family, config_class and presets (see fft_lm/families.py)."""
    family: str = ""
    config_class = None
    presets: dict = {}

    @classmethod
    def from_config(cls, cfg):
        if isinstance(cfg, dict):
            cfg = cls.config_class(**cfg)
        return cls(cfg)

    @classmethod
    def from_preset(cls, name: str, **overrides):
        return cls(config_from_preset(cls.config_class, cls.presets, name, overrides))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() counts a tied weight once

    # The trunk every single-stream family shares (SpectralLM, GPT): embedding, dropout, blocks,
    # final norm and a (optionally tied) byte head; subclasses supply the blocks and features().

    def _build_trunk(self, config, make_block) -> None:
        """embed, drop, blocks = [make_block(i) for i < n_layers], norm_f, head; initialised and tied.
        (Modules are created in this order so a seed gives the same weights as before the refactor.)"""
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([make_block(i) for i in range(config.n_layers)])
        self.norm_f = RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config.n_layers)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def _check_idx(self, idx: torch.Tensor, cache) -> None:
        name = type(self).__name__
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"{name}: expected idx of shape (B, T) and dtype torch.long, "
                             f"got shape {tuple(idx.shape)} and dtype {idx.dtype}")
        if cache is not None and idx.shape[0] != cache.batch_size:
            raise ValueError(f"{name}: expected idx with batch size {cache.batch_size} (the cache's), "
                             f"got {idx.shape[0]}")

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, *, cache=None):
        """logits (B, T, vocab) float32 and, with targets, the mean cross-entropy in nats per byte
        (targets of -1 are ignored)."""
        logits = self.head(self.features(idx, cache=cache)).float()
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"{type(self).__name__}: expected targets of shape {tuple(idx.shape)} (idx's), "
                                 f"got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

