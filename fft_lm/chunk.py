"""ChunkLM: the spectral backbone plus a chunk head (the original pipeline's "piston engine").

From every position t the backbone gives one feature h_t (it has read bytes 0..t). The head predicts
the next `chunk` bytes c_0..c_{K-1} = x[t+1..t+K] from h_t with a small causal transformer over the
chunk: the decoder input at slot j is the byte before c_j (x[t+j]; for j=0 that is x[t] itself)
plus a slot embedding plus a projection of h_t, so c_j is predicted from h_t and c_0..c_{j-1} only.
Training is teacher-forced on every position at once; the loss is the plain per-byte cross-entropy
averaged over every (t, j) whose target byte lies inside the window (nats per byte).

Generation (fft_lm.generation) runs the backbone once per chunk (through its overlap-save cache, or
over the full context) and the decoder `chunk` times, so the expensive part runs 1/chunk as often.
"""
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

import fft_tensor

from fft_lm.gpt import inference_attention
from fft_lm.layers import MLP, ByteLM, RMSNorm, format_params, init_weights
from fft_lm.model import SpectralLM, SpectralLMConfig


@dataclass
class ChunkLMConfig:
    backbone: dict = field(default_factory=dict)  # SpectralLMConfig fields
    chunk: int = 16        # bytes predicted per backbone step
    head_dim: int = 256    # width of the chunk decoder
    head_layers: int = 2   # transformer blocks in the chunk decoder
    head_heads: int = 4    # attention heads in the chunk decoder
    head_dropout: float = 0.0

    def __post_init__(self):
        if isinstance(self.backbone, SpectralLMConfig):
            self.backbone = asdict(self.backbone)
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"ChunkLMConfig: chunk must be an int >= 1, got {self.chunk!r}")
        if self.head_dim % self.head_heads != 0:
            raise ValueError(f"ChunkLMConfig: head_dim ({self.head_dim}) must be divisible by "
                             f"head_heads ({self.head_heads})")


# backbone preset name and head sizes per ChunkLM preset
PRESETS = {
    "tiny": dict(backbone_preset="tiny", chunk=16, head_dim=64, head_layers=1, head_heads=2),
    "small": dict(backbone_preset="small", chunk=16, head_dim=128, head_layers=2, head_heads=4),
    # the original pipeline's ~29M chunk LM: 1024 context, kernel 128, chunk 16
    # (8-layer d=512 backbone 27.6M + head 1.8M)
    "29m": dict(backbone_preset="base512", chunk=16, head_dim=256, head_layers=2, head_heads=4,
                backbone_overrides=dict(seq_len=1024, kernel_len=128)),
    "base512": dict(backbone_preset="base512", chunk=16, head_dim=256, head_layers=2, head_heads=4),
    # the 29m head on the hybrid backbone (two attention blocks of eight; its quality as a ChunkLM is
    # not measured, the backbone's alone is: RESULTS.md, eleventh session)
    "29m-hybrid": dict(backbone_preset="29m-hybrid", chunk=16, head_dim=256, head_layers=2, head_heads=4),
}


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention + MLP over the slots of one chunk."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.proj.is_residual_out = True
        self.norm2 = RMSNorm(dim)
        self.mlp = MLP(dim, dropout)

    def forward(self, x):  # x: [N, J, dim]
        N, J, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=-1)
        q, k, v = (t.view(N, J, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(N, J, C))
        return x + self.mlp(self.norm2(x))


class ChunkDecoder(nn.Module):
    """Predicts chunk bytes from a backbone feature and the chunk's previous bytes (causal)."""

    def __init__(self, feature_dim, cfg: ChunkLMConfig):
        super().__init__()
        self.byte_emb = nn.Embedding(256, cfg.head_dim)
        self.slot_emb = nn.Embedding(cfg.chunk, cfg.head_dim)
        self.context = nn.Linear(feature_dim, cfg.head_dim)
        self.blocks = nn.ModuleList(DecoderBlock(cfg.head_dim, cfg.head_heads, cfg.head_dropout)
                                    for _ in range(cfg.head_layers))
        self.norm_f = RMSNorm(cfg.head_dim)
        self.head = nn.Linear(cfg.head_dim, 256, bias=False)
        init_weights(self, cfg.head_layers)  # names are relative: "head" gets the small output init

    def forward(self, h, inputs):  # h: [N, D] features, inputs: [N, J] bytes, J <= chunk
        J = inputs.shape[1]
        x = self.byte_emb(inputs) + self.slot_emb.weight[:J] + self.context(h)[:, None, :]
        with inference_attention(self):  # generation: no cuDNN attention (per-shape setup, see fft_lm.gpt)
            for block in self.blocks:
                x = block(x)
        return self.head(self.norm_f(x))  # [N, J, 256]

    def fused_state_bytes(self, slots):
        """Shared memory per block that fft_tensor.chunk_decode's CUDA kernel needs for `slots` slots."""
        C, F = self.norm_f.weight.shape[0], self.blocks[0].mlp.fc.weight.shape[0]
        return fft_tensor.chunk_decode_smem_bytes(C, F, self.blocks[0].heads, slots, len(self.blocks))

    def decode_chunk(self, h, first, uniforms, temperature=0.0, top_k=None):
        """The whole chunk in one fft_tensor.chunk_decode call: h [N, D] features, first [N] the byte before
        the chunk, uniforms [N, K] float64 (read when temperature > 0). Returns (logits [N, K, 256] float32,
        bytes [N, K] int64): K calls of forward() with each pick fed back, without dropout. Activations stay
        in float32 throughout; under bf16/fp16 autocast the weights are read in that dtype but, unlike the
        module under autocast, no activation is rounded to it, so the logits differ from the module's at
        that rounding and a near-tie can pick another byte."""
        blocks = self.blocks
        # the kernel reads the linear weights in one dtype: under low-precision autocast the one autocast
        # would cast them to (the same values whether stored so or cast here), else their own
        device_type = h.device.type
        weight_dtype = blocks[0].qkv.weight.dtype
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in (torch.bfloat16, torch.float16):
            weight_dtype = torch.get_autocast_dtype(device_type)
        lin = lambda m: m.weight.to(weight_dtype)  # noqa: E731 (a no-op when stored in that dtype)
        return fft_tensor.chunk_decode(
            self.context(h).float(), first, uniforms, self.byte_emb.weight, self.slot_emb.weight,
            [b.norm1.weight for b in blocks], [lin(b.qkv) for b in blocks], [lin(b.proj) for b in blocks],
            [b.norm2.weight for b in blocks], [lin(b.mlp.fc) for b in blocks], [lin(b.mlp.proj) for b in blocks],
            self.norm_f.weight, lin(self.head), heads=blocks[0].heads, eps=self.norm_f.eps,
            temperature=float(temperature), top_k=top_k)


def _cutoff_from_backbone(model: "ChunkLM", incompatible_keys) -> None:
    """After load_state_dict (the backbone's own hook has run): the config records the loaded cutoff."""
    model.config.backbone["freq_cutoff"] = model.backbone.config.freq_cutoff


class ChunkLM(ByteLM):
    family = "chunk"
    config_class = ChunkLMConfig
    presets = PRESETS

    def __init__(self, cfg: ChunkLMConfig):
        super().__init__()
        self.config = cfg
        self.chunk = cfg.chunk
        self.backbone = SpectralLM.from_config(SpectralLMConfig(**cfg.backbone))
        self.decoder = ChunkDecoder(self.backbone.config.d_model, cfg)
        self.register_load_state_dict_post_hook(_cutoff_from_backbone)

    # --- construction ---
    @classmethod
    def from_preset(cls, name, **overrides):
        """ChunkLM preset; overrides may name ChunkLMConfig fields or backbone (SpectralLMConfig) fields."""
        if name not in PRESETS:
            raise ValueError(f"ChunkLM.from_preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        p = dict(PRESETS[name])
        head_names = {f.name for f in fields(ChunkLMConfig)} - {"backbone"}
        backbone_overrides = dict(p.pop("backbone_overrides", {}))
        head = {k: v for k, v in p.items() if k in head_names}
        for k, v in overrides.items():
            (head if k in head_names else backbone_overrides)[k] = v
        backbone = SpectralLM.from_preset(p["backbone_preset"], **backbone_overrides).config
        return cls(ChunkLMConfig(backbone=asdict(backbone), **head))

    @classmethod
    def from_backbone_checkpoint(cls, path, chunk=16, **head_overrides):
        """A ChunkLM whose backbone starts from a trained SpectralLM (or ChunkLM) checkpoint."""
        from fft_lm.checkpoint import load_checkpoint
        model, _ = load_checkpoint(path)
        if isinstance(model, ChunkLM):
            model = model.backbone
        if not isinstance(model, SpectralLM):
            raise ValueError(f"ChunkLM.from_backbone_checkpoint: {path} holds a {type(model).__name__}, "
                             "expected a SpectralLM (family 'spectral') or ChunkLM checkpoint")
        chunk_lm = cls(ChunkLMConfig(backbone=asdict(model.config), chunk=chunk, **head_overrides))
        chunk_lm.backbone.load_state_dict(model.state_dict())
        return chunk_lm

    # --- protocol ---
    def init_cache(self, batch_size, device=None, max_len=None):
        return self.backbone.init_cache(batch_size, device, max_len=max_len)

    @property
    def freq_bins(self):
        return self.backbone.freq_bins

    @property
    def freq_cutoff(self):
        return self.backbone.freq_cutoff

    def set_freq_cutoff(self, bins):
        """The backbone's curriculum cutoff (kept in self.config too, so checkpoints record it)."""
        self.backbone.set_freq_cutoff(bins)
        self.config.backbone["freq_cutoff"] = bins

    def set_grad_checkpoint(self, enabled: bool = True) -> None:
        """Activation checkpointing of the backbone's blocks (what fft_lm.train's --grad-checkpoint calls)."""
        self.backbone.set_grad_checkpoint(enabled)
        self.config.backbone["grad_checkpoint"] = bool(enabled)

    def features(self, idx, *, cache=None):
        return self.backbone.features(idx, cache=cache)

    def decode_logits(self, h, inputs):
        """Chunk decoder logits: h [..., D], inputs [..., J] bytes (slot j holds the byte before c_j)
        -> [..., J, 256], row j predicting c_j from h and inputs[..., :j+1]."""
        lead = inputs.shape[:-1]
        J = inputs.shape[-1]
        if J > self.chunk:
            raise ValueError(f"ChunkLM.decode_logits: at most chunk={self.chunk} slots, got {J}")
        out = self.decoder(h.reshape(-1, h.shape[-1]), inputs.reshape(-1, J))
        return out.view(*lead, J, 256)

    def can_decode_chunk(self, slots, device):
        """Whether decode_chunk runs here: at most 8 decoder layers, and on a CUDA device widths in whole
        16-byte weight rows and a per-chunk state that fits a block's shared memory."""
        dec = self.decoder
        C, F = dec.norm_f.weight.shape[0], dec.blocks[0].mlp.fc.weight.shape[0]
        cuda = torch.device(device).type == "cuda"
        # the op's own rules; on CUDA for 16-bit weights, the stricter row rule (the autocast dtype is
        # not known yet)
        why = fft_tensor.chunk_decode_unsupported(C, F, dec.blocks[0].heads, len(dec.blocks),
                                                  torch.bfloat16 if cuda else dec.head.weight.dtype, cuda)
        if why:
            return False
        if not cuda:
            return True
        return dec.fused_state_bytes(slots) <= torch.cuda.get_device_properties(device).shared_memory_per_block_optin

    def decode_chunk(self, h, first, uniforms, temperature=0.0, top_k=None):
        """A whole chunk from features h [N, D] and the byte before it first [N]: each slot's byte picked
        (argmax when temperature == 0, else sampled at uniforms [N, K] as fft_lm.generation.sample_bytes
        does) and fed to the next slot, in one fused op (fft_tensor.chunk_decode). Inference only.
        Returns (logits [N, K, 256] float32, bytes [N, K] int64)."""
        return self.decoder.decode_chunk(h, first, uniforms, temperature, top_k)

    def chunk_windows(self, idx, targets):
        """Teacher-forcing windows: inputs[b,t,j] = idx[b,t+j], tgt[b,t,j] = targets[b,t+j]
        (the byte c_j after position t), -1 where t+j falls past the window."""
        B, T = idx.shape
        K = self.chunk
        pad_in = F.pad(idx, (0, K - 1), value=0)
        pad_tg = F.pad(targets, (0, K - 1), value=-1)
        inputs = pad_in.unfold(1, K, 1)  # [B, T, K]
        tgt = pad_tg.unfold(1, K, 1)
        return inputs, tgt

    def forward(self, idx, targets=None, *, cache=None):
        """Returns (next-byte logits [B,T,256] (chunk slot 0), loss): loss is the mean cross-entropy
        in nats over every chunk byte with a real target (targets[b,t] = byte after idx[b,t])."""
        h = self.features(idx, cache=cache)  # [B, T, D]
        if targets is None:
            return self.decode_logits(h, idx[..., None])[..., 0, :], None
        inputs, tgt = self.chunk_windows(idx, targets)
        logits = self.decode_logits(h, inputs)  # [B, T, K, 256]
        loss = F.cross_entropy(logits.float().reshape(-1, 256), tgt.reshape(-1), ignore_index=-1)
        return logits[:, :, 0], loss

    def describe(self):
        c = self.config
        return (f"ChunkLM {format_params(self.num_params())} params: chunk={c.chunk} head_dim={c.head_dim} "
                f"head_layers={c.head_layers} head {format_params(sum(p.numel() for p in self.decoder.parameters()))}"
                f"; backbone {self.backbone.describe()}")

