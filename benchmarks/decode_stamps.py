"""Where chunk_decode's slots spend their cycles: clock64 stamps at the end of every phase of every slot,
per block of the cluster (29m preset decoder, bf16 weights, batch 1, greedy).

Needs the profiling build, whose kernel records the stamps when FFT_TENSOR_DECODE_STAMPS names a file:

    FFT_TENSOR_DECODE_STAMPS_BUILD=1 python setup.py build_ext --inplace
    python benchmarks/decode_stamps.py

Each stamp follows a block barrier, so a phase's cycles include its slowest warp. "wait" phases are the
exchanges (st.async stores from the other blocks landing); the others are the block's own work.
Writes $OUT/decode_stamps.md when OUT is set.
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


def analyse(path):
    lines = open(path).read().splitlines()
    head = lines[0].split()  # "# N n G g K k layers l stamps s"
    N, G, K, layers, width = (int(head[i]) for i in (2, 4, 6, 8, 10))
    rows = np.array([[int(v) for v in l.split()] for l in lines[1:1 + N * G * K]], dtype=np.int64)
    used = 2 + 10 * layers + 4
    st = rows[:, :used].reshape(N, G, K, used)[0]          # row 0: (G, K, stamps)
    d = np.diff(st, axis=-1).astype(np.float64)             # (G, K, phases)
    slot = (st[:, :, -1] - st[:, :, 0]).astype(np.float64)  # (G, K)
    out = [f"### {G} blocks: cycles per slot (mean over slots 1..{K - 1}; slot 0 is cold), per phase", "",
           "| phase | mean over blocks | max over blocks | min over blocks |", "|---|---|---|---|"]
    dm = d[:, 1:, :].mean(axis=1)
    for k, name in enumerate(phases(layers)):
        out.append(f"| {name} | {dm[:, k].mean():.0f} | {dm[:, k].max():.0f} | {dm[:, k].min():.0f} |")
    sm = slot[:, 1:].mean(axis=1)
    out.append(f"| whole slot | {sm.mean():.0f} | {sm.max():.0f} | {sm.min():.0f} |")
    out.append(f"\nslot 0: {slot[:, 0].mean():.0f} cycles; the chunk: {(st[:, -1, -1] - st[:, 0, 0]).mean():.0f}")
    return out


def main():
    if not torch.cuda.is_available():
        raise SystemExit("decode_stamps.py: needs a CUDA GPU")
    _, chunk = setup(Args)
    out = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}",
           f"{graph_time_us(chunk, Args.replays):.1f} us per chunk (CUDA graph replay, stamps off)", ""]
    path = "/tmp/fft_tensor_decode_stamps.txt"
    if os.path.exists(path):
        os.remove(path)
    for _ in range(3):
        chunk()
    torch.cuda.synchronize()
    os.environ["FFT_TENSOR_DECODE_STAMPS"] = path
    chunk()
    torch.cuda.synchronize()
    del os.environ["FFT_TENSOR_DECODE_STAMPS"]
    if not os.path.exists(path):
        raise SystemExit("decode_stamps.py: no stamps written; build with FFT_TENSOR_DECODE_STAMPS_BUILD=1")
    text = "\n".join(out + analyse(path))
    print(text)
    if os.environ.get("OUT"):
        open(os.path.join(os.environ["OUT"], "decode_stamps.md"), "w").write(text + "\n")


if __name__ == "__main__":
    main()
