"""WIP profiling aid: where chunk_decode's slots spend their cycles (clock64 stamps per block and phase,
written by the kernel when FFT_TENSOR_DECODE_STAMPS names a file). Also times the MLP exchange in 16-byte
stores (FFT_TENSOR_DECODE_STAGE=0: weights read from global
memory) against the staged kernel, from CUDA graph replays.

    python benchmarks/decode_stamps.py
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_chunk_decode import graph_time_us, setup  # noqa: E402


class Args:
    preset = "29m"
    dtype = "bfloat16"
    replays = 300


def phases(layers):
    names = ["embed"]
    for l in range(layers):
        names += [f"L{l} norm1", f"L{l} qkv matvec+send", f"L{l} wait qkv", f"L{l} attention",
                  f"L{l} proj matvec+send", f"L{l} wait proj", f"L{l} norm2+fc+gelu", f"L{l} fc_proj matvec+send",
                  f"L{l} wait mlp", f"L{l} sum partials"]
    return names + ["final norm", "head matvec+send", "wait head", "pick+write"]


def analyse(path, out):
    lines = open(path).read().splitlines()
    i = 0
    while i < len(lines):
        head = lines[i].split()
        N, G, K, layers, vec = int(head[2]), int(head[4]), int(head[6]), int(head[8]), int(head[10])
        rows = np.array([[int(v) for v in l.split()] for l in lines[i + 1:i + 1 + N * G * K]], dtype=np.int64)
        i += 1 + N * G * K
        used = 2 + 10 * layers + 4
        st = rows[:, :used].reshape(N, G, K, used)[0]          # (G, K, stamps)
        d = np.diff(st, axis=-1).astype(np.float64)             # (G, K, phases)
        slot = (st[:, :, -1] - st[:, :, 0]).astype(np.float64)  # (G, K)
        names = phases(layers)
        out.append(f"\n### G={G} staged={vec}: cycles per slot (mean over slots 1..{K-1}), per phase\n")
        out.append("| phase | mean over blocks | max over blocks | min over blocks |\n|---|---|---|---|")
        dm = d[:, 1:, :].mean(axis=1)  # (G, phases), slot 0 skipped (cold)
        for k, name in enumerate(names):
            out.append(f"| {name} | {dm[:, k].mean():.0f} | {dm[:, k].max():.0f} | {dm[:, k].min():.0f} |")
        sm = slot[:, 1:].mean(axis=1)
        out.append(f"| whole slot | {sm.mean():.0f} | {sm.max():.0f} | {sm.min():.0f} |")
        out.append(f"slot 0 (cold): {slot[:, 0].mean():.0f} cycles; all slots: {(st[:, -1, -1] - st[:, 0, 0]).mean():.0f}")


def main():
    out = []
    props = torch.cuda.get_device_properties(0)
    out.append(f"{props.name}, torch {torch.__version__}")
    _, chunk = setup(Args)
    results = {}
    for rep in range(2):
        for vec in ("0", "1"):
            os.environ["FFT_TENSOR_DECODE_STAGE"] = vec
            us = graph_time_us(chunk, Args.replays)
            results[vec] = chunk()
            out.append(f"staged={vec} (round {rep}): {us:.1f} us per chunk (graph replay)")
    same = all(torch.equal(a, b) for a, b in zip(results["0"], results["1"]))
    out.append(f"staged 0 and 1 give the same logits and bytes bit for bit: {same}")
    for vec in ("0", "1"):
        os.environ["FFT_TENSOR_DECODE_STAGE"] = vec
        path = f"/tmp/stamps_{vec}.txt"
        if os.path.exists(path):
            os.remove(path)
        for _ in range(3):
            chunk()
        torch.cuda.synchronize()
        os.environ["FFT_TENSOR_DECODE_STAMPS"] = path
        chunk()
        torch.cuda.synchronize()
        del os.environ["FFT_TENSOR_DECODE_STAMPS"]
        analyse(path, out)
    text = "\n".join(out)
    print(text)
    if os.environ.get("OUT"):
        open(os.path.join(os.environ["OUT"], "decode_stamps.md"), "w").write(text + "\n")


if __name__ == "__main__":
    main()
