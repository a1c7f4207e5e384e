"""How much of its context each model uses: validation bits per byte of checkpoints on the held-out
tail of a corpus, split by position in the window and by whether the next byte could be copied from
earlier in the window.

    python benchmarks/context_use.py --ckpt runs/spectral/ckpt.pt --ckpt runs/gpt/ckpt.pt --data corpus.txt

Windows of seq_len + 1 bytes tile the validation tail (fft_lm.data.ByteCorpus, the split training
uses) without overlap; every model reads the same windows. A target byte x[t] is "copyable" when the
4 bytes before it occurred earlier in the window and the byte that followed them then equals x[t]
(what an induction head predicts), "copy wrong" when they occurred but were followed by another byte,
and "no match" otherwise. A model that gains nothing from context past a few bytes has flat bits per
byte across the position buckets; a model that looks things up gains most on copyable bytes.
Writes $OUT/context_use.md when OUT is set.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_lm  # noqa: E402
from fft_lm.data import ByteCorpus  # noqa: E402

CLASSES = ("no match", "copyable", "copy wrong")


def copy_classes(windows, n=4):
    """(W, L) int8 per target x[t], t = 1..L of each window: 0 no earlier n-gram match, 1 copyable, 2 copy
    wrong (the most recent earlier occurrence of the n bytes before x[t] decides)."""
    W, L = windows.shape[0], windows.shape[1] - 1
    out = np.zeros((W, L), dtype=np.int8)
    for wi in range(W):
        w = windows[wi].tobytes()
        follower = {}  # n-gram -> index of the byte that followed its latest occurrence
        for t in range(n, L + 1):
            key = w[t - n:t]
            if key in follower:
                out[wi, t - 1] = 1 if w[follower[key]] == w[t] else 2
            follower[key] = t
    return out


@torch.no_grad()
def bits_per_target(model, windows, batch, device):
    """(W, L) bits of each target byte under model."""
    x = torch.from_numpy(windows.astype(np.int64))
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device)
        logits = model(xb[:, :-1])
        logits = logits[0] if isinstance(logits, tuple) else logits
        lp = torch.log_softmax(logits.float(), -1).gather(-1, xb[:, 1:, None])[..., 0]
        out.append((-lp / math.log(2)).cpu())
    return torch.cat(out).numpy()


def context_table(ckpts, data=None, seq_len=None, max_windows=512, batch=16, device="cpu"):
    """The markdown table for checkpoints ckpts on data's validation tail (see the module doc)."""
    models = []
    for path in ckpts:
        model, meta = fft_lm.load_checkpoint(path, map_location=device)
        models.append((os.path.basename(os.path.dirname(os.path.abspath(path))) or path, meta["family"],
                       model.to(device).eval()))
    L = seq_len or models[0][2].config.seq_len
    val = np.asarray(ByteCorpus(data or None).val)
    W = min(max_windows, len(val) // (L + 1))
    if W < 1:
        raise ValueError(f"context_use: the validation tail ({len(val)} bytes) is shorter than one window of {L + 1}")
    windows = val[:W * (L + 1)].reshape(W, L + 1)
    cls = copy_classes(windows)
    bits = [bits_per_target(m, windows, batch, device) for _, _, m in models]
    head = "| | bytes | " + " | ".join(f"{name} ({family})" for name, family, _ in models) + " |"
    lines = [f"## Validation bits per byte by context use ({W} windows of {L} targets)", "", head,
             "|---|---|" + "---|" * len(models)]

    def row(label, mask):
        lines.append(f"| {label} | {mask.mean():.1%} | " + " | ".join(f"{b[mask].mean():.3f}" for b in bits) + " |")
    row("all", np.ones_like(cls, dtype=bool))
    for c, label in enumerate(CLASSES):
        row(f"next byte {label}", cls == c)
    pos = np.broadcast_to(np.arange(L)[None, :], cls.shape)
    edges = [e for e in (0, 16, 64, 128, 256, 512, 1024, 4096) if e < L] + [L]
    for lo, hi in zip(edges[:-1], edges[1:]):
        row(f"positions {lo}-{hi - 1}", (pos >= lo) & (pos < hi))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, help="checkpoint (repeat for each model)")
    p.add_argument("--data", default=None, help="corpus file or folder (default: the training default)")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: the first model's)")
    p.add_argument("--max-windows", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        table = context_table(args.ckpt, args.data, args.seq_len, args.max_windows, args.batch, args.device)
    except ValueError as e:
        raise SystemExit(f"context_use.py: {e}")
    print(table)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "context_use.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
