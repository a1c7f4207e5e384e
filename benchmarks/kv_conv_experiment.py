"""An experiment, not product code (issue 4, the all-conv model's missing lookup by content): an
H3-style multi-head mixer built on causal_conv, trained on the CPU testbed by the product's trainer.

Per head of dh channels the outer product shift(k) v^T (dh * dh channels) goes through a long causal
conv (decayed spectral taps over the whole window, one kernel per (head, key dim) shared by the value
dims), then is read out by q: a dh x dh state per head, a linear-attention-like lookup whose decay is a
convolution kernel. It replaces block `at` of a pre-gated SpectralLM (at = -1: the plain model).

    OMP_NUM_THREADS=1 python benchmarks/kv_conv_experiment.py --steps 2000 --at 3 --head-dim 8 --out runs/kv3
    (--at -1: the pre-gated model alone, the baseline; the runs of RESULTS.md took their data from /tmp/q)

RESULTS.md, twenty-seventh session: the testbed (preset small at L = 256, the first 1.2 MB of gcide).
No generation path (streaming would need the kv state as a tail); checkpoints it writes do not load
(the config does not describe the swapped block).
"""

import dataclasses
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_tensor  # noqa: E402
from fft_lm.model import SpectralKernel, SpectralLM  # noqa: E402
from fft_lm.train import TrainConfig, train  # noqa: E402


class KVConvMixer(nn.Module):
    def __init__(self, cfg, head_dim=8, decay_min=0.05, decay_max=4.0, qk_norm=False):
        super().__init__()
        self.qk_norm = qk_norm  # q and k of unit length per head (cosine matching), times a learned scale
        D = cfg.d_model
        if not (isinstance(head_dim, int) and head_dim >= 1 and D % head_dim == 0):
            raise ValueError(f"KVConvMixer.head_dim: expected a positive divisor of d_model ({D}), got {head_dim!r}")
        self.dh, self.H = head_dim, D // head_dim
        self.in_proj = nn.Linear(D, 4 * D, bias=False)  # q, k, v, gate
        self.out_proj = nn.Linear(D, D, bias=False)
        self.out_proj.is_residual_out = True
        shift = torch.zeros(D, 4)
        shift[:, 1] = 1.0  # k at t starts as the projection of x[t-1] (H3's shift SSM)
        self.shift = nn.Parameter(shift + 0.02 * torch.randn(D, 4))
        self.qk_scale = nn.Parameter(torch.full((1, self.H, 1, 1), math.sqrt(head_dim))) if qk_norm else None
        kcfg = dataclasses.replace(cfg, d_model=self.H * head_dim, kernel_len=cfg.seq_len, short_conv_len=0,
                                   decay_min=decay_min, decay_max=decay_max, fft_size=None, freq_cutoff=None,
                                   attn_blocks=0)
        self.kernel = SpectralKernel(kcfg)

    def forward(self, x, tail=None, taps=None):
        B, T, D = x.shape
        H, dh = self.H, self.dh
        h = self.in_proj(x)
        h = h if h.dtype == torch.float64 else h.float()  # the op's fp32 (fp64 for gradcheck-style tests)
        q, k, v, g = h.transpose(1, 2).chunk(4, 1)  # (B, D, T) each
        k = fft_tensor.causal_conv(k.contiguous(), self.shift) / math.sqrt(dh)
        if self.qk_norm:
            q = (F.normalize(q.reshape(B, H, dh, T), dim=2) * self.qk_scale).reshape(B, D, T)
            k = F.normalize(k.reshape(B, H, dh, T), dim=2).reshape(B, D, T)
        kv = (k.view(B, H, dh, 1, T) * v.reshape(B, H, 1, dh, T)).reshape(B, H * dh * dh, T)
        kern, skip = self.kernel()
        s = fft_tensor.causal_conv(kv, kern.repeat_interleave(dh, 0), skip.repeat_interleave(dh, 0))
        y = (q.reshape(B, H, dh, 1, T) * s.view(B, H, dh, dh, T)).sum(2)  # (B, H, dh, T)
        y = y * torch.rsqrt(y.pow(2).mean(2, keepdim=True) + 1e-6)  # per-head RMS norm
        z = y.reshape(B, D, T) * F.silu(g)
        return self.out_proj(z.transpose(1, 2).to(x.dtype)), None


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="train the testbed model with one KVConvMixer block")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--at", type=int, default=3, help="block replaced by the KV mixer (-1: none)")
    parser.add_argument("--head-dim", type=int, default=8)
    parser.add_argument("--qk-norm", action="store_true", help="unit-length q and k per head, learned scale")
    parser.add_argument("--data", default="/tmp/q/slice.txt", help="the testbed corpus (first 1.2 MB of gcide)")
    parser.add_argument("--out", default="runs/kvconv", help="checkpoint and metrics directory")
    args = parser.parse_args(argv)
    torch.manual_seed(1337)
    model = SpectralLM.from_preset("small", seq_len=256, pre_gate=True)
    cfg = model.config
    if args.at >= 0:
        model.blocks[args.at].mixer = KVConvMixer(cfg, args.head_dim, qk_norm=args.qk_norm)
    print(sum(p.numel() for p in model.parameters()), "params", flush=True)
    tc = TrainConfig(data=args.data, family="spectral", preset="small", seq_len=256, batch_size=8,
                     steps_per_epoch=args.steps, epochs=1, eval_every=250, eval_batches=30, device="cpu",
                     progress=False, warmup_steps=50, ckpt_path=os.path.join(args.out, "ckpt.pt"), overwrite=True,
                     plot_path="-", keep_best=False)
    print(train(tc, model=model), flush=True)


if __name__ == "__main__":
    main()
