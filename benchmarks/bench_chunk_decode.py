"""The ChunkLM decoder's chunk on the GPU: the fused fft_tensor.chunk_decode op against the same chunk as
`chunk` calls of the decoder module, both replayed from a CUDA graph (GPU time per chunk, no host launch
cost), under each cluster size the op may use.

    python benchmarks/bench_chunk_decode.py                 # 29m preset decoder, bf16 weights, batch 1
    python benchmarks/bench_chunk_decode.py --clusters 1,16 --replays 200

Each cluster size runs in a subprocess with FFT_TENSOR_DECODE_CLUSTER set (the op reads it once); the
grid the kernel was launched with (from a torch.profiler trace) shows the cluster size it really used.
Writes $OUT/bench_chunk_decode.md when OUT is set.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_lm  # noqa: E402
from common import record_cuda_graph, write_out  # noqa: E402
import fft_lm.generation as generation  # noqa: E402
from fft_lm.generation import ByteStream, low_precision_copy  # noqa: E402


def graph_time_us(fn, replays):
    """GPU microseconds per call of fn, recorded once into a CUDA graph and replayed back to back."""
    graph = record_cuda_graph(fn)
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def kernel_grid(fn):
    """The launch grid of the chunk_decode kernel in one call of fn (from a profiler trace)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    for e in events:
        if "chunk_decode_kernel" in e.get("name", ""):
            return e.get("args", {}).get("grid")
    return None


def setup(args):
    torch.manual_seed(0)
    model = fft_lm.ChunkLM.from_preset(args.preset).cuda().eval()
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    runner = low_precision_copy(model, dtype) if dtype != torch.float32 else model
    stream = ByteStream(runner, b"x", model.chunk, temperature=0, cuda_graphs=False)
    assert stream.fused_decode == generation.FUSED_CHUNK_DECODE
    h = torch.randn(1, model.backbone.config.d_model, device="cuda")
    first = torch.randint(0, 256, (1, 1), device="cuda")
    uniforms = torch.zeros(model.chunk, dtype=torch.float64, device="cuda")
    autocast = torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32)

    def chunk():
        with torch.no_grad(), autocast:
            return stream._decode_chunk(h, first, uniforms)
    return model, chunk


def child(args):
    _, chunk = setup(args)
    out = {"fused_us": graph_time_us(chunk, args.replays), "grid": kernel_grid(chunk)}
    print("RESULT " + json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="29m")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--clusters", default="1,2,4,8,16", help="FFT_TENSOR_DECODE_CLUSTER values to run")
    p.add_argument("--replays", type=int, default=100)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_chunk_decode.py: needs a CUDA GPU (it times CUDA graph replays)")
    if args.child:
        return child(args)
    generation.FUSED_CHUNK_DECODE = False  # read when the stream is made
    model, chunk = setup(args)
    calls_us = graph_time_us(chunk, args.replays)
    rows = []
    for g in [c for c in args.clusters.split(",") if c]:
        env = dict(os.environ, FFT_TENSOR_DECODE_CLUSTER=g)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--preset", args.preset, "--dtype", args.dtype,
               "--replays", str(args.replays)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode != 0 or not line:
            rows.append((g, None, None, res.stderr.strip().splitlines()[-1:] or ["failed"]))
            continue
        r = json.loads(line[0][7:])
        rows.append((g, r["fused_us"], r["grid"], None))
    c = model.config
    lines = [f"## chunk_decode: one {c.chunk}-byte chunk of the {args.preset} ChunkLM decoder ({c.head_layers} layers, "
             f"width {c.head_dim}, {c.head_heads} heads), batch 1, {args.dtype} weights, greedy; GPU us per chunk "
             f"(CUDA graph replay, {args.replays} replays; {torch.cuda.get_device_name()}, torch {torch.__version__})", "",
             "| decoder | max cluster (FFT_TENSOR_DECODE_CLUSTER) | kernel grid | us per chunk | vs decoder calls |",
             "|---|---|---|---|---|",
             f"| {c.chunk} decoder module calls (eager ops in one graph) | - | - | {calls_us:.1f} | 1.00x |"]
    for g, us, grid, err in rows:
        if us is None:
            lines.append(f"| fused chunk_decode | {g} | - | failed: {err[0]} | - |")
        else:
            lines.append(f"| fused chunk_decode | {g} | {grid} | {us:.1f} | {calls_us / us:.2f}x |")
    table = "\n".join(lines)
    print(table)
    write_out("bench_chunk_decode", table + "\n")


if __name__ == "__main__":
    main()
