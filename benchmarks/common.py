"""Shared benchmark helpers: CUDA-event timing, peak memory, copy bandwidth, markdown tables and
benchmarks/RESULTS.md. Method: ../.library/device/METHOD.md (warm-up, median of many, random
data, rotate input sets that fit in L2)."""
import datetime
import os
import shlex
import statistics
import sys
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
# Without a GPU the scripts still run (tiny sizes, host clock) as a smoke test of their own code;
# such numbers mean nothing and are not written to RESULTS.md.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def input_sets(make, set_bytes, l2_multiple=4, max_sets=8):
    """Enough independent input sets (each from make()) that cycling them does not hit in L2."""
    if DEVICE != "cuda":
        return [make()]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    n = max(1, min(max_sets, -(-l2_multiple * l2 // max(set_bytes, 1))))
    return [make() for _ in range(n)]


def time_ms(fn, arg_sets=((),), warmup_ms=50.0, budget_ms=400.0, min_reps=5, max_reps=200):
    """Median milliseconds of fn(*args) over CUDA events, cycling through arg_sets.

    Warm-up runs first (module load, plan creation, autotuning stay out of the numbers); then reps
    are added until budget_ms of measured time or max_reps.
    """
    arg_sets = list(arg_sets)
    if DEVICE != "cuda":  # smoke test only
        times = []
        for i in range(min_reps):
            t0 = time.perf_counter()
            fn(*arg_sets[i % len(arg_sets)])
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    # Warm-up: the first call may pay plan creation, module load or a JIT compile, so the loop is sized
    # from a second, warm call; then at least 2 more calls and warmup_ms of GPU time.
    fn(*arg_sets[0])
    start.record()
    fn(*arg_sets[1 % len(arg_sets)])
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    for i in range(max(2, min(1000, int(warmup_ms / one)))):
        fn(*arg_sets[i % len(arg_sets)])
    torch.cuda.synchronize()
    reps = int(max(min_reps, min(max_reps, budget_ms / one)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        args = arg_sets[i % len(arg_sets)]
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def record_cuda_graph(fn, warmup=3):
    """fn recorded into a CUDA graph, after `warmup` calls on a side stream (allocator and library
    warm-up outside the capture, as torch.cuda.graphs recommends)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def time_graph_ms(fn, arg_sets=((),), **kwargs):
    """Median milliseconds of CUDA-graph replays of fn(*args), one graph per input set (each recorded by
    record_cuda_graph after its warm-up calls): the GPU's own time, without the host's launch gaps that
    decide eager timings of small problems. Without a GPU: time_ms (smoke test)."""
    if DEVICE != "cuda":
        return time_ms(fn, arg_sets, **kwargs)
    graphs = [record_cuda_graph(lambda args=args: fn(*args)) for args in arg_sets]
    try:
        return time_ms(lambda graph: graph.replay(), [(g,) for g in graphs], **kwargs)
    finally:
        del graphs
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def peak_extra_bytes(fn, *args):
    """Peak bytes allocated during fn(*args) beyond what was allocated before the call (so the
    outputs and every workspace count; the inputs, already allocated, do not). None without a GPU."""
    if DEVICE != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def saved_for_backward_bytes(fn, *args):
    """Bytes a forward with autograd keeps allocated for its backward beyond its output: memory allocated
    after out = fn(*args) minus before, minus out's own storage (tensors the inputs already hold, such as
    saved inputs, cost nothing). None without a GPU."""
    if DEVICE != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    out = fn(*args)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - base - out.untyped_storage().nbytes()
    del out
    return max(kept, 0)


def copy_bandwidth_gbs(nbytes=1 << 30):
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    if DEVICE != "cuda":
        nbytes = 1 << 24
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE).random_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup_ms=20, budget_ms=200)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


def tensor_bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def rel_err(out, ref):
    """||out - ref|| / ||ref||, computed in float64."""
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def fmt(x, digits=3):
    """Numbers for tables: None or a string passes through; floats get `digits` significant digits."""
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment():
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n- GPU: {gpu}\n"
            f"- torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}\n")


def command_line():
    """The command that produced a table, with the FFT_TENSOR_* switches that were set in front."""
    switches = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("FFT_TENSOR_CONV_")]
    return " ".join(switches + [shlex.quote(a) for a in ["python"] + sys.argv])


def write_out(name, text):
    """text as $OUT/<name>.md when $OUT is set (the folder the device tool brings back)."""
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
            f.write(text)


def append_results(title, command, table, name=None, notes=""):
    """Append a section to benchmarks/RESULTS.md (and write $OUT/<name>.md when $OUT is set)."""
    name = name or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    if DEVICE != "cuda":
        return ""  # smoke test: nothing recorded
    section = f"\n## {title}\n\n{environment()}- command: `{command}`\n\n{table}\n"
    if notes:
        section += f"\n{notes}\n"
    with open(RESULTS, "a") as f:
        f.write(section)
    write_out(name, section.lstrip())
    return section
