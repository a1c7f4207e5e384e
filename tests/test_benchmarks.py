"""Smoke runs of the benchmark scripts on the CPU at toy sizes.

The numbers mean nothing here; the point is that every script still runs end to end and prints its
table, so a broken script is found on this machine rather than in a GPU session's limited time.
Nothing is written to benchmarks/RESULTS.md (that happens only on CUDA) or to $OUT (unset here).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script, *args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(CUDA_VISIBLE_DEVICES="", FFT_TENSOR_SKIP_STALE_CHECK="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_table(result, header):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert header in result.stdout, result.stdout[-2000:]


def test_bench_phase_rotate():
    assert_table(run_benchmark("bench_phase_rotate.py", "--quick", "--rows", "2", "--cols", "4096"),
                 "| method | ms | GB/s | % of copy bw |")


@pytest.mark.parametrize("layout", [[], ["--channels-last", "--graphs"], ["--no-sdpa"]],
                         ids=["contiguous", "channels-last-graphs", "no-sdpa"])
def test_bench_causal_conv(layout):
    r = run_benchmark("bench_causal_conv.py", "--quick", "--lengths", "256", "--kernels", "L,16", "--dtypes",
                      "fp32,bf16", "--batch", "2", "--dim", "4", "--no-peer", *layout)
    assert_table(r, "| L | Lk | u dtype | ref/ours fwd |")
    assert r.stdout.count("| 256 |") >= 8  # 2 kernels x 2 dtypes, in both tables
    # the ms table (header "| L | Lk | u dtype | ours fwd ms |"): SDPA's two columns are n/a exactly when
    # it was skipped
    lines = r.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| L | Lk | u dtype | ours fwd ms |")))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start + 2:start + 6]]
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    sdpa = [row[header.index("SDPA bf16 fwd ms"):header.index("SDPA fwd+bwd ms") + 1] for row in rows]
    assert len(sdpa) == 4 and all(row[0] == "256" for row in rows), rows
    assert all((cells == ["n/a", "n/a"]) == ("--no-sdpa" in layout) for cells in sdpa), sdpa
    assert ("SDPA: --no-sdpa" in r.stdout) == ("--no-sdpa" in layout)
    if "--graphs" in layout:  # (on the CPU the "replays" are plain calls: the table's code path only)
        assert_table(r, "| L | Lk | u dtype | ours fwd | ours fwd+bwd | ref fwd |")
        assert r.stdout.count("| 256 |") >= 12


def test_bench_causal_conv_cpu(tmp_path):
    out = tmp_path / "table.md"
    r = run_benchmark("bench_causal_conv_cpu.py", "--batch", "2", "--dim", "3", "--lengths", "100", "--kernels",
                      "4,L", "--dtypes", "fp32,bf16", "--budget-s", "0", "--out", str(out))
    assert_table(r, "| L | Lk | dtype | ours fwd ms | ours, FFT path fwd |")
    assert r.stdout.count("| 100 | 4 |") == 4 and r.stdout.count("| 100 | 100 |") == 4  # each row, twice
    assert out.read_text().count("| 100 |") == 4


def test_bench_cpu_lanes(tmp_path):
    out = tmp_path / "table.md"
    r = run_benchmark("bench_cpu_lanes.py", "--batch", "2", "--dim", "17", "--lengths", "300", "--kernels", "40",
                      "--dtypes", "fp32,bf16", "--budget-s", "0", "--out", str(out))
    assert_table(r, "| L | taps | dtype | fwd ms, 16 | fwd ms, 8 | fwd ms, 0 |")
    assert r.stdout.count("| 300 | 40 |") == 4 and out.read_text().count("| 300 | 40 |") == 2


def test_bench_lm_throughput():
    r = run_benchmark("bench_lm_throughput.py", "--device", "cpu", "--preset", "tiny", "--lengths", "128",
                      "--batch", "2", "--steps", "1", "--warmup", "1", "--no-compile")
    assert_table(r, "| L | batch | SpectralLM M bytes/s | GPT (SDPA) M bytes/s |")


def test_bench_lm_throughput_spectral_variant():
    r = run_benchmark("bench_lm_throughput.py", "--device", "cpu", "--preset", "tiny", "--lengths", "128",
                      "--batch", "2", "--steps", "1", "--warmup", "1", "--no-compile", "--families", "spectral",
                      "--spectral-set", "attn_blocks=1,attn_window=64")
    assert_table(r, "| L | batch | SpectralLM M bytes/s |")
    assert "(SpectralLM: attn_blocks=1,attn_window=64)" in r.stdout
    # tiny: 4 blocks of 64 taps, one of them attention with a 64-byte window: 3 * 63 + 63 bytes back
    assert "SpectralLM context: at most 252 bytes back (3 conv blocks of 64 taps, 1 attention block of window 64)" \
        in r.stdout


def test_bench_lm_throughput_gpt_preset():
    r = run_benchmark("bench_lm_throughput.py", "--device", "cpu", "--preset", "tiny", "--gpt-preset", "small",
                      "--lengths", "64", "--batch", "1", "--steps", "1", "--warmup", "1", "--no-compile")
    assert_table(r, "| L | batch | SpectralLM M bytes/s | GPT (SDPA) M bytes/s |")
    assert "preset tiny (GPT: preset small)" in r.stdout
    # each family printed its own parameter count: the tiny SpectralLM (1.05M) and the small GPT (5.64M)
    assert "1.1M params" in r.stdout and "5.6M params" in r.stdout
    bad = run_benchmark("bench_lm_throughput.py", "--device", "cpu", "--gpt-preset", "nope")
    assert bad.returncode == 2 and "--gpt-preset: expected one of" in bad.stderr and "got 'nope'" in bad.stderr


def test_bench_lm_throughput_alternating_rounds():
    r = run_benchmark("bench_lm_throughput.py", "--device", "cpu", "--preset", "tiny", "--lengths", "64",
                      "--batch", "1", "--steps", "1", "--warmup", "1", "--no-compile", "--rounds", "3")
    assert_table(r, "| L | batch | SpectralLM M bytes/s | GPT (SDPA) M bytes/s |")
    assert "median of 3 alternating windows of 1 steps" in r.stdout
    per_round = [line for line in r.stdout.splitlines() if line.startswith("L=64: spectral / GPT per round: ")]
    assert len(per_round) == 1 and per_round[0].count("x") == 3, r.stdout[-2000:]
    assert "x (rounds " in r.stdout  # the table's ratio cell carries the rounds' range
    bad = run_benchmark("bench_lm_throughput.py", "--device", "cpu", "--rounds", "0")
    assert bad.returncode == 2 and "--rounds: expected an int >= 1, got 0" in bad.stderr


def test_bench_generation():
    r = run_benchmark("bench_generation.py", "--device", "cpu", "--preset", "tiny", "--contexts", "64,128",
                      "--new-bytes", "4", "--budget-s", "0.2", "--dtype", "float32")
    assert_table(r, "| model | params | mode |")


def run_lm_quality(tmp_path, *args):
    """bench_lm_quality.py on a small synthetic corpus: tiny presets, 64-byte windows, float32."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    return run_benchmark("bench_lm_quality.py", "--data", str(corpus), "--preset", "tiny", "--seq-len", "64",
                         "--warmup-steps", "2", "--dtype", "float32", "--ckpt-dir", str(tmp_path / "ckpt"), *args)


def test_bench_lm_quality(tmp_path):
    r = run_lm_quality(tmp_path, "--budget-s", "1", "--batch-size", "4", "--eval-batches", "2", "--sample-bytes", "16",
                       "--spectral-set", "pre_gate=true")
    assert_table(r, "| model | params | steps |")
    assert "| spectral (pre_gate=true) |" in r.stdout and "| gpt |" in r.stdout
    assert "### Validation bits per byte by context use" in r.stdout and "| next byte copyable |" in r.stdout


def test_bench_lm_quality_seeds(tmp_path):
    r = run_lm_quality(tmp_path, "--budget-s", "0.5", "--batch-size", "2", "--eval-batches", "1", "--sample-bytes", "4",
                       "--seeds", "3,4", "--no-context-use")
    assert_table(r, "| model | params | steps |")
    for family in ("spectral", "gpt"):
        for seed in (3, 4):
            assert f"| {family}, seed {seed} |" in r.stdout
            assert (tmp_path / "ckpt" / f"{family}_seed{seed}" / "ckpt.pt").exists()
    means = [line for line in r.stdout.splitlines() if line.startswith(("| spectral | 2 |", "| gpt | 2 |"))]
    assert len(means) == 2, r.stdout
    vals = {f: [float(line.split("|")[-2]) for line in r.stdout.splitlines() if line.startswith(f"| {f}, seed")]
            for f in ("spectral", "gpt")}
    line = next(line for line in r.stdout.splitlines() if line.startswith("spectral - gpt val bpb per seed: "))
    printed = [float(v) for v in line.split(": ")[1].split(" (")[0].split(", ")]
    assert len(printed) == 2 and all(abs(d - (s - g)) < 2e-3 for d, s, g in zip(printed, vals["spectral"], vals["gpt"]))
    bad = run_benchmark("bench_lm_quality.py", "--seeds", "1,x")
    assert bad.returncode == 2 and "--seeds: expected comma-separated integers" in bad.stderr


def test_bench_lm_quality_eval_every(tmp_path):
    # --eval-every adds the best validation figure (and when it came) from each run's metrics file
    # every step evaluates: the check holds however many steps the 1 s budget allows (a loaded CI
    # machine once ran only 2, fewer than an --eval-every of 3 needed)
    r = run_lm_quality(tmp_path, "--budget-s", "1", "--batch-size", "2", "--eval-batches", "1", "--sample-bytes", "4",
                       "--eval-every", "1", "--no-context-use")
    assert_table(r, "| model | params | steps |")
    assert "| best val bpb (step, s) |" in r.stdout
    for family in ("spectral", "gpt"):
        row = next(line for line in r.stdout.splitlines() if line.startswith(f"| {family} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        steps, final_val = int(cells[2]), float(cells[6])
        best_val, when = cells[7].split(" (")
        best_step = int(when.split(",")[0])
        evals = [json.loads(line) for line in open(tmp_path / "ckpt" / "out" / f"bench_lm_quality_{family}.jsonl")]
        vals = {e["step"]: e["val_bpb"] for e in evals if e.get("val_bpb") is not None}
        assert steps >= 1 and set(vals) == set(range(1, steps + 1)), (steps, vals)  # periodic ones and the final
        assert best_step in vals and float(best_val) == pytest.approx(min(vals.values()), abs=6e-4)
        assert float(best_val) <= final_val + 5e-4


def test_bench_generation_graphs_label():
    """The "graphs" column names the steps that were replayed, whatever form their keys take."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from bench_generation import graphs_used
    from types import SimpleNamespace as NS

    def stream(keys, replays):
        return NS(graph_replays=replays, graphs=NS(graphs={(k, (), None): None for k in keys}))
    assert graphs_used(stream([("backbone", None), "decoder"], 5)) == "backbone+decoder"
    assert graphs_used(stream([("backbone", 12)], 5)) == "backbone"
    assert graphs_used(stream(["decoder"], 5)) == "decoder"
    assert graphs_used(stream([("backbone", None)], 0)) == "no"


def test_bench_chunk_decode_needs_cuda():
    # it times CUDA graph replays only: without a GPU it says so and exits non-zero (it ran on the device)
    r = run_benchmark("bench_chunk_decode.py")
    assert r.returncode != 0 and "needs a CUDA GPU" in r.stdout + r.stderr


def test_decode_stamps_needs_cuda():
    r = run_benchmark("decode_stamps.py")
    assert r.returncode != 0 and "needs a CUDA GPU" in r.stdout + r.stderr


def test_decode_stamps_tables_per_phase(tmp_path):
    """The stamp file the profiling build writes, made up here: every phase of every slot 10 cycles long
    except layer 1's MLP wait, 50 in block 1 only."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from decode_stamps import analyse, phases
    G, K, layers, width = 2, 3, 2, 96
    names = phases(layers)
    lines = [f"# N 1 G {G} K {K} layers {layers} stamps {width}"]
    for g in range(G):
        for j in range(K):
            t, stamps = 1000 * (j + 1), [1000 * (j + 1)]
            for name in names:
                t += 50 if (name == "L1 wait mlp" and g == 1) else 10
                stamps.append(t)
            lines.append(" ".join(str(v) for v in stamps + [0] * (width - len(stamps))))
    path = tmp_path / "stamps.txt"
    path.write_text("\n".join(lines) + "\n")
    out = "\n".join(analyse(str(path)))
    assert "| L0 wait mlp | 10 | 10 | 10 |" in out
    assert "| L1 wait mlp | 30 | 50 | 10 |" in out
    assert f"| whole slot | {10 * len(names) + 20} | {10 * len(names) + 40} | {10 * len(names)} |" in out


def test_context_use_copy_classes():
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from context_use import copy_classes
    w = np.frombuffer(b"abcdXabcdXabcdY", dtype=np.uint8)[None, :]  # targets are bytes 1..14
    cls = copy_classes(w)[0]
    assert cls.shape == (14,)
    # target 9 ('X' after the second "abcd") is copyable, target 14 ('Y' after the third) is a wrong copy;
    # "bcdX" -> 'a' (target 10) was seen followed by 'a' too
    assert cls[9 - 1] == 1 and cls[14 - 1] == 2 and cls[10 - 1] == 1
    assert (cls[:5] == 0).all()  # nothing repeats before the second "abcd" completes


def test_context_use(tmp_path):
    import fft_lm
    from fft_lm.checkpoint import save_checkpoint
    paths = []
    for name, model in [("spectral", fft_lm.SpectralLM.from_preset("tiny", d_model=16, n_layers=1, seq_len=32,
                                                                     kernel_len=8)),
                        ("gpt", fft_lm.GPT.from_preset("tiny", d_model=16, n_layers=1, seq_len=32))]:
        (tmp_path / name).mkdir()
        paths.append(str(tmp_path / name / "ckpt.pt"))
        save_checkpoint(paths[-1], model=model, step=0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat; the cat sat on the hat. " * 100)
    r = run_benchmark("context_use.py", "--ckpt", paths[0], "--ckpt", paths[1], "--data", str(corpus),
                      "--device", "cpu", "--max-windows", "8")
    assert_table(r, "| | bytes | spectral (spectral) | gpt (gpt) |")
    assert "| next byte copyable |" in r.stdout and "| positions 16-31 |" in r.stdout and "nan" not in r.stdout


def test_emulate_tc_dft():
    # The emulator behind RESULTS.md's tensor-core precision table: its tf32 rounding is cvt.rna's, its
    # matrix-product FFT is a DFT, and its conv is exact in fp32 and 3xtf32 but not in tf32.
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import torch
    default_dtype = torch.get_default_dtype()
    try:
        import emulate_tc_dft as emu
    finally:
        sys.path.pop(0)
    assert torch.get_default_dtype() == default_dtype  # importing it must not change global state
    x = torch.tensor([1 + 2 ** -11, 1 + 2 ** -12, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), 1 + 2 ** -10], dtype=torch.float32)
    assert emu.round_tf32(x).tolist() == [1 + 2 ** -10, 1.0, 1 + 2 ** -9, -(1 + 2 ** -10), 1 + 2 ** -10]
    gen = torch.Generator().manual_seed(3)
    for N, radix in ((2048, 16), (512, 8), (96, 16)):  # 96 = 16 * 6: a last pass of another size
        z = torch.randn(3, N, dtype=torch.complex128, generator=gen)
        yr, yi, scale = emu.fft_tc(z.real.float(), z.imag.float(), radix, "fp32")
        assert scale == 1.0
        ref = torch.fft.fft(z)
        assert ((torch.complex(yr.double(), yi.double()) - ref).norm() / ref.norm()).item() < 1e-6
    u = torch.randn(8, 300, generator=gen).float()
    k = (torch.randn(300, generator=gen) / 300 ** 0.5).float()
    exact = emu.direct64(u, k)
    errs = {mode: emu.rel_err(emu.conv_tc(u, k, mode, 16), exact) for mode in ("fp32", "3xtf32", "tf32", "fp16")}
    assert errs["fp32"] < 1e-6 and errs["3xtf32"] < 1e-6, errs
    assert 1e-4 < errs["tf32"] < 3e-3 and 1e-4 < errs["fp16"] < 3e-3, errs
    # the chained orientation (two dense passes, each contracting the previous result's column index)
    assert emu.rel_err(emu.conv_tc_chain(u, k, "fp32", 32), exact) < 1e-6  # N = 1024 = 32 x 32
    big = u * 3000.0  # fp16 operands: the power-of-two scales keep every product in range
    err = emu.rel_err(emu.conv_tc_chain(big, k, "fp16", 16), emu.direct64(big, k))  # 16 x 64
    assert 1e-4 < err < 3e-3, err
    r = run_benchmark("emulate_tc_dft.py", "--lengths", "64", "--rows", "4")
    assert_table(r, "| L = Lk | FFT points | input | fp32 | tf32 | 3xtf32 | fp16 | bf16 | 2xbf16 | bound |")
    # tc_window.cuh's algorithm: each row within its own bf16 bound when the rows of a pair differ only in
    # size, not an impulse next to a +-1 row at 4K (the error is relative to the pair)
    L = 4096
    k = (torch.randn(L, generator=gen, dtype=torch.float64) / L ** 0.5).float()
    errs = {}
    for name, a, b in emu.pair_cases(L, gen):
        u = torch.stack([a, b])
        exact = emu.direct64(u, k)
        y = emu.conv_tc_window(u, k).to(torch.bfloat16).float()
        errs[name] = [(emu.rel_err(y[r], exact[r]), emu.bf16_bound(exact[r])) for r in (0, 1)]
    for name in ("randn / randn", "1e-4 randn / randn", "impulse / randn"):
        assert all(e <= bound for e, bound in errs[name]), (name, errs[name])
    e, bound = errs["impulse / signs"][0]
    assert e > bound, errs
    r = run_benchmark("emulate_tc_dft.py", "--pairs", "--lengths", "1024")
    assert_table(r, "| L = Lk | row 0 / row 1 | row 0 error | row 0 bound | row 1 error | row 1 bound |")


def test_kv_conv_experiment_mixer_is_causal_and_trains():
    """The experiment's mixer (benchmarks/kv_conv_experiment.py): outputs before t0 do not depend on inputs
    from t0 on, and every parameter gets a gradient."""
    import torch

    from fft_lm.model import SpectralLMConfig
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import kv_conv_experiment as kv
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    cfg = SpectralLMConfig(d_model=16, n_layers=1, seq_len=32, kernel_len=8)
    for bad in (3, 0):
        with pytest.raises(ValueError, match=rf"KVConvMixer.head_dim: expected a positive divisor of d_model \(16\), got {bad}"):
            kv.KVConvMixer(cfg, head_dim=bad)
    for qk_norm in (False, True):
        mixer = kv.KVConvMixer(cfg, head_dim=4, qk_norm=qk_norm).double()
        x = torch.randn(2, 29, 16, dtype=torch.float64)
        y, _ = mixer(x)
        x2 = x.clone()
        x2[:, 17:] += torch.randn_like(x2[:, 17:])
        y2, _ = mixer(x2)
        # (FFT rounding only before t0: float64, 1e-12)
        assert y.shape == x.shape and torch.allclose(y[:, :17], y2[:, :17], rtol=0, atol=1e-12)
        assert not torch.allclose(y[:, 17:], y2[:, 17:])
        y.square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters() if p.numel())


def test_bench_conv_update_cpu():
    r = run_benchmark("bench_conv_update_cpu.py", "--shapes", "8:1:7:8,8:16:7:8", "--calls", "3", "--repeats", "1")
    assert_table(r, "| D | T | S | Lk | us per call |")
    assert sum(line.startswith("| 8 | ") for line in r.stdout.splitlines()) == 2
    bad = run_benchmark("bench_conv_update_cpu.py", "--shapes", "8:1:7")
    assert bad.returncode == 2 and "--shapes: expected comma-separated D:T:S:Lk" in bad.stderr


def _prebuilt_checker():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_prebuilt_ok", os.path.join(ROOT, "benchmarks", "prebuilt_ok.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_checkout(root, **info):
    """A source tree with a 'built' module: csrc/, fft_tensor/_loader.py (the real one) and _build_info.py."""
    import shutil
    import torch
    (root / "csrc" / "op").mkdir(parents=True)
    (root / "csrc" / "op" / "cuda.cu").write_text("// kernel\n")
    (root / "fft_tensor").mkdir()
    shutil.copy(os.path.join(ROOT, "fft_tensor", "_loader.py"), root / "fft_tensor" / "_loader.py")
    (root / "fft_tensor" / "_C.abi3.so").write_bytes(b"\0")
    (root / "fft_tensor" / "__init__.py").write_text("raise ImportError('a fake checkout')\n")
    (root / "setup.py").write_text("# flags\n")
    checker = _prebuilt_checker()
    loader = checker._module_from(str(root / "fft_tensor" / "_loader.py"), "_fake_loader")
    loader._ROOT = str(root)
    fields = dict(TORCH_VERSION=torch.__version__, WITH_CUDA=True, SOURCES_SHA1=loader._sources_sha1(),
                  CUDA_ARCH_LIST="9.0", DECODE_STAMPS=False, DEBUG=False,
                  MODULE_SHA1=loader._file_sha1(str(root / "fft_tensor" / "_C.abi3.so")),
                  SETUP_SHA1=loader._file_sha1(str(root / "setup.py")))
    fields.update(info)
    (root / "fft_tensor" / "_build_info.py").write_text(
        "".join(f"{k} = {v!r}\n" for k, v in fields.items() if v is not ...))


@pytest.mark.parametrize("case, info, expected", [
    ("usable", {}, None),
    ("usable, arch with PTX", {"CUDA_ARCH_LIST": "8.0;9.0+PTX"}, None),
    ("other torch", {"TORCH_VERSION": "2.0.0"}, "built against torch 2.0.0"),
    ("cpu only", {"WITH_CUDA": False}, "built without CUDA"),
    ("other arch", {"CUDA_ARCH_LIST": "8.0"}, "this GPU is sm_90"),
    ("arch not recorded", {"CUDA_ARCH_LIST": ...}, "does not say which GPU architectures"),
    ("instrumented", {"DECODE_STAMPS": True}, "instrumented build"),
    ("debug", {"DEBUG": True}, "instrumented build"),
    ("other sources", {"SOURCES_SHA1": "0" * 40}, "other sources"),
    ("other setup.py", {"SETUP_SHA1": "0" * 40}, "another setup.py"),
    ("other module", {"MODULE_SHA1": "0" * 40}, "another module file"),
    ("module hash not recorded", {"MODULE_SHA1": ...}, "another module file"),
])
def test_prebuilt_module_check(tmp_path, case, info, expected):
    # device_run.sh skips the GPU machine's build only when every condition holds
    checker = _prebuilt_checker()
    _fake_checkout(tmp_path, **info)
    found = checker.problems(root=str(tmp_path), device_capability=(9, 0))
    if expected is None:
        assert found == [], (case, found)
    else:
        assert any(expected in reason for reason in found), (case, found)


def test_prebuilt_module_check_sees_a_changed_source(tmp_path):
    checker = _prebuilt_checker()
    _fake_checkout(tmp_path)
    assert checker.problems(root=str(tmp_path), device_capability=(9, 0)) == []
    (tmp_path / "csrc" / "op" / "cuda.cu").write_text("// kernel, edited after the build\n")
    assert any("other sources" in r for r in checker.problems(root=str(tmp_path), device_capability=(9, 0)))
    (tmp_path / "csrc" / "op" / "cuda.cu").write_text("// kernel\n")
    (tmp_path / "fft_tensor" / "_C.abi3.so").write_bytes(b"\1")  # a module from another build beside the old info
    assert any("another module file" in r for r in checker.problems(root=str(tmp_path), device_capability=(9, 0)))
    os.remove(tmp_path / "fft_tensor" / "_C.abi3.so")
    assert checker.problems(root=str(tmp_path), device_capability=(9, 0)) == ["no fft_tensor/_C.abi3.so with its _build_info.py"]
    ok, why = checker.loads(root=str(tmp_path))  # the import probe runs in a child process, in that tree
    assert not ok and "a fake checkout" in why, why


def test_emulate_radix3_window():
    # The plan for 3 x 2^m-point windows (RESULTS.md, thirty-second session): the three-group transform is a
    # DFT, its decimation-in-frequency inverse too, so are the residue split and its inverse (the kernels'
    # now), the half-spectrum lookup is the full spectrum, and the emulated pair and real-window kernels
    # (both schemes) match a float64 direct convolution.
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import emulate_radix3_window as emu
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(5)
    for N in (48, 384, 3072):
        z = rng.standard_normal((2, N)) + 1j * rng.standard_normal((2, N))
        ref = np.fft.fft(z, axis=-1)
        assert np.abs(emu.dft_3m(z) - ref).max() < 1e-9 * np.abs(ref).max()
        assert np.abs(emu.inverse_3m(z) - ref).max() < 1e-9 * np.abs(ref).max()
        zh = z.copy()
        zh[:, N // 2:] = 0
        assert np.abs(emu.dft_3m(zh, half_input=True) - np.fft.fft(zh, axis=-1)).max() < 1e-9 * N
        with pytest.raises(AssertionError, match="upper half"):
            emu.dft_3m(z, half_input=True)
        x = rng.standard_normal(N)
        K = np.fft.fft(x)
        assert np.allclose(emu.spectrum_bin(K[:N // 2 + 1], np.arange(N), N), K)
        # the residue split (the kernels' since the thirty-fifth session): A[g, k] = X[3k + g], and its inverse
        # takes the same layout
        M = N // 3
        A = emu.dft_3m_residues(z)
        assert A.shape == (2, 3, M)
        assert np.abs(A.transpose(0, 2, 1).reshape(2, N) - ref).max() < 1e-9 * np.abs(ref).max()
        assert np.abs(emu.dft_3m_residues(zh, half_input=True).transpose(0, 2, 1).reshape(2, N)
                      - np.fft.fft(zh, axis=-1)).max() < 1e-9 * N
        with pytest.raises(AssertionError, match="upper half"):
            emu.dft_3m_residues(z, half_input=True)
        Z = z.reshape(2, M, 3).transpose(0, 2, 1)  # a[3k + g] at [g, k]
        assert np.abs(emu.inverse_3m_residues(Z) - ref).max() < 1e-9 * np.abs(ref).max()
        half_out = emu.inverse_3m_residues(Z, half_output=True)
        assert np.isnan(half_out[:, N // 2:]).all()
        assert np.abs(half_out[:, :N // 2] - ref[:, :N // 2]).max() < 1e-9 * np.abs(ref).max()
    assert [emu.window_size(n) for n in (1, 7, 1999, 2049, 3072, 3073, 24575)] == [1, 8, 2048, 3072, 3072, 4096, 24576]
    assert emu.window_size(24575, allow_radix3=False) == 32768
    assert max(emu.check(seed=1).values()) < 1e-12
    r = run_benchmark("emulate_radix3_window.py")
    assert_table(r, "| kernel | L | Lk | window points | rel err vs float64 direct |")
    assert "ALL OK" in r.stdout


def test_emulate_fourstep3(monkeypatch):
    # The four-step path's index math on 3M points (fourstep.cuh, R = 3), emulated in float64: the residue
    # groups' bin order, Kp's mirrors (group 2 from group 1) and the recombined convolution match numpy's FFT
    # and a direct convolution, for several splits and row lengths; a wrong mirror is caught.
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import emulate_fourstep3 as emu
    finally:
        sys.path.pop(0)
    for N1, N2, L, taps in ((8, 16, None, None), (16, 8, 200, 150), (4, 8, 96, 1), (8, 4, 40, 57)):
        errs = emu.check(N1, N2, L=L, taps=taps, seed=N1 + N2)
        assert all(v < 1e-12 for v in errs.values()), (N1, N2, errs)
    good = emu.spectrum_row
    monkeypatch.setattr(emu, "spectrum_row", lambda Kp_d, grp, k1, N1: good(Kp_d, 1 if grp == 2 else grp, k1, N1))
    assert emu.check(8, 16)["conv"] > 1e-3
    r = run_benchmark("emulate_fourstep3.py", "--n1", "4", "--n2", "8")
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
