"""chunk_decode: a ChunkLM decoder's whole chunk in one op (CPU and CUDA).

Against the decoder module run in float64 (teacher-forced on the bytes the op picked: the same
computation as the op's slot-by-slot loop), picks against fft_lm.generation.sample_bytes on the op's
own logits, odd sizes, opcheck, torch.compile, CUDA graph replay, bf16 weights and every bad input."""
import os
import re

import pytest
import torch

import fft_tensor
from conftest import DEVICES, requires_cuda
from fft_lm.chunk import ChunkLM
from fft_lm.generation import sample_bytes

ops = torch.ops.fft_tensor

# (head_dim, heads, layers, chunk, slots decoded, rows N)
CONFIGS = [(64, 2, 2, 16, 16, 3), (40, 5, 1, 8, 5, 1), (32, 1, 3, 4, 4, 2), (128, 4, 2, 16, 16, 1)]
PICKS = [(0.0, None), (0.8, None), (1.3, 7), (1.0, 1)]


def make(head_dim, heads, layers, chunk, device, std=0.3, seed=0):
    torch.manual_seed(seed)
    model = ChunkLM.from_preset("tiny", head_dim=head_dim, head_heads=heads, head_layers=layers, chunk=chunk).eval()
    with torch.no_grad():  # weights large enough that the logits spread and the picks vary
        for p in model.decoder.parameters():
            p.normal_(0, std)
    return model.to(device)


def reference_logits(model, h, first, picked):
    """The decoder in float64, teacher-forced: slot j reads first, then the bytes picked at slots < j."""
    inputs = torch.cat([first[:, None], picked[:, :-1]], dim=1)
    dec = model.decoder
    dec64 = type(dec)(h.shape[-1], model.config).to(h.device).double()
    dec64.load_state_dict({k: v.double() for k, v in dec.state_dict().items()})
    with torch.no_grad():
        return dec64(h.double(), inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=["C{}-H{}-L{}-chunk{}-K{}-N{}".format(*c) for c in CONFIGS])
@pytest.mark.parametrize("pick", PICKS, ids=[f"T{t}-top{k}" for t, k in PICKS])
def test_values_and_picks(config, pick, device):
    C, H, layers, chunk, K, N = config
    temperature, top_k = pick
    model = make(C, H, layers, chunk, device)
    h = torch.randn(N, model.backbone.config.d_model, device=device)
    first = torch.randint(0, 256, (N,), device=device)
    uniforms = torch.rand(N, K, dtype=torch.float64, device=device)
    with torch.no_grad():
        logits, picked = model.decode_chunk(h, first, uniforms, temperature, top_k)
    assert logits.shape == (N, K, 256) and logits.dtype == torch.float32 and logits.device.type == device
    assert picked.shape == (N, K) and picked.dtype == torch.int64
    ref = reference_logits(model, h, first, picked)
    assert (logits.double() - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    # each pick is the rule applied to the op's own logits (float64 CDF: equal barring rounding at a CDF step)
    expect = torch.stack([sample_bytes(logits[:, j], uniforms[:, j], temperature, top_k) for j in range(K)], dim=1)
    assert torch.equal(picked, expect)
    if temperature > 0 and top_k is None and K >= 8:
        assert len(set(picked.flatten().tolist())) > 1  # sampling really varies


@pytest.mark.parametrize("device", DEVICES)
def test_generation_uses_it_and_matches_decoder_calls(device, monkeypatch):
    """generate() through the fused op gives the bytes of the decoder-call loop it replaces."""
    import fft_lm.generation as generation
    model = make(64, 2, 2, 16, device, std=0.1)
    prompt = bytes(range(40, 90))
    fused = generation.generate_with_logits(model, prompt, 40, temperature=0, cuda_graphs=False)
    monkeypatch.setattr(generation, "FUSED_CHUNK_DECODE", False)
    loop = generation.generate_with_logits(model, prompt, 40, temperature=0, cuda_graphs=False)
    assert fused[0] == loop[0]
    for a, b in zip(fused[1], loop[1]):
        assert (a - b).abs().max().item() < 1e-4


def test_fused_decode_is_taken():
    from fft_lm.generation import ByteStream
    model = make(32, 2, 1, 8, "cpu")
    assert ByteStream(model, b"abc", 8).fused_decode
    # more layers than the op takes: generation keeps the decoder module
    deep = make(32, 2, 9, 8, "cpu", std=0.1)
    assert not deep.can_decode_chunk(8, "cpu") and not ByteStream(deep, b"abc", 8).fused_decode
    out = __import__("fft_lm").generate(deep, b"abc", 20, temperature=0)
    assert len(out) == 20


@pytest.mark.parametrize("C,F,H,K,layers", [(256, 1024, 4, 16, 2), (64, 256, 2, 16, 2), (33, 7, 3, 5, 1)])
def test_smem_bytes(C, F, H, K, layers):
    """The kernel's shared-memory need, counted here independently: float32 residual, norm, attention
    output and query (C each), MLP hidden (F), the MLP output's 16 column-group partials (16 C), 256 logits,
    keys and values (rows padded to a multiple of 4 floats that is 4 mod 8), scores (H per slot), the
    2 layers + 1 norm weights (C each), every array rounded up to 4 floats, and 32 reduction slots; then
    256 + 32 float64, the pick and two 8-byte mbarriers."""
    up4 = lambda n: -(-n // 4) * 4  # noqa: E731
    stride = up4(C) if up4(C) % 8 == 4 else up4(C) + 4
    floats = (4 * up4(C) + up4(F) + up4(16 * C) + 256 + 2 * layers * K * stride + up4(H * K)
              + up4((2 * layers + 1) * C) + 32)
    expect = 4 * floats + 8 * (256 + 32) + 8 + 16
    assert fft_tensor.chunk_decode_smem_bytes(C, F, H, K, layers) == expect
    model = make(C, H, layers, K, "cpu") if (C, H) == (64, 2) else None
    if model is not None:
        assert model.decoder.fused_state_bytes(K) == expect
    with pytest.raises(RuntimeError, match="expected positive sizes"):
        fft_tensor.chunk_decode_smem_bytes(C, F, H, 0, layers)


def test_fused_path_only_for_inference():
    """In training mode (dropout) or with grad on, a stream steps the decoder module, not the op."""
    import fft_lm.generation as generation
    from fft_lm.generation import ByteStream
    model = make(32, 2, 1, 8, "cpu")
    calls = []
    model.decode_chunk = lambda *a, **k: calls.append(1) or ChunkLM.decode_chunk(model, *a, **k)
    stream = ByteStream(model, b"abc", 8, cuda_graphs=False)
    with torch.enable_grad():
        stream.step()
    assert not calls
    stream = ByteStream(model, b"abc", 8, cuda_graphs=False)
    with torch.no_grad():
        stream.step()
    assert calls and generation.FUSED_CHUNK_DECODE


def decode_args(model, device, h, first, uniforms, temperature=0.0, top_k=0, weight_dtype=None):
    """The op's positional arguments from a ChunkLM's decoder (linear weights cast to weight_dtype)."""
    dec = model.decoder
    blocks = dec.blocks
    lin = lambda m: m.weight.detach().to(device, weight_dtype or m.weight.dtype)  # noqa: E731
    vec = lambda t: t.detach().to(device)  # noqa: E731
    with torch.no_grad():
        context = dec.context(h).to(device)
    return (context, first.to(device), uniforms.to(device), vec(dec.byte_emb.weight), vec(dec.slot_emb.weight),
            [vec(b.norm1.weight) for b in blocks], [lin(b.qkv) for b in blocks], [lin(b.proj) for b in blocks],
            [vec(b.norm2.weight) for b in blocks], [lin(b.mlp.fc) for b in blocks], [lin(b.mlp.proj) for b in blocks],
            vec(dec.norm_f.weight), lin(dec.head), blocks[0].heads, 1e-6, temperature, top_k)


def random_inputs(model, N, K, device="cpu"):
    return (torch.randn(N, model.backbone.config.d_model, device=device), torch.randint(0, 256, (N,), device=device),
            torch.rand(N, K, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    model = make(32, 2, 2, 8, device)
    args = decode_args(model, device, *random_inputs(model, 2, 8, device))
    torch.library.opcheck(ops.chunk_decode.default, args)
    torch.library.opcheck(ops.chunk_decode.default, args[:-2] + (0.7, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    model = make(32, 2, 2, 8, device)
    args = decode_args(model, device, *random_inputs(model, 2, 8, device), temperature=0.9)
    eager = ops.chunk_decode.default(*args)
    compiled = torch.compile(lambda *a: ops.chunk_decode.default(*a), fullgraph=True)(*args)
    assert torch.equal(eager[1], compiled[1]) and torch.equal(eager[0], compiled[0])


def round_linear_weights(model, dtype):
    """Linear weights of the decoder replaced by their dtype-rounded values (so a float64 reference sees
    exactly the weights a bf16/fp16 kernel reads)."""
    with torch.no_grad():
        for m in model.decoder.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(m.weight.to(dtype).float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pick", [(0.0, None), (0.9, 20)], ids=["greedy", "T0.9-top20"])
def test_low_precision_weights(weight_dtype, pick, device):
    """bf16/fp16 weights are read as they are and accumulated in float32: the float64 reference on the same
    (rounded) weights agrees to float32 accuracy (1.5e-7 of the largest logit measured on the CPU)."""
    model = make(128, 4, 2, 16, "cpu", std=0.1)
    round_linear_weights(model, weight_dtype)
    h, first, uniforms = random_inputs(model, 3, 16)
    args = decode_args(model, device, h, first, uniforms, pick[0], pick[1] or 0, weight_dtype)
    logits, picked = ops.chunk_decode.default(*args)
    ref = reference_logits(model, h, first, picked.cpu())
    assert (logits.cpu().double() - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


@requires_cuda
def test_cuda_graph_replay():
    model = make(64, 2, 2, 16, "cuda")
    h, first, uniforms = random_inputs(model, 1, 16, "cuda")
    args = decode_args(model, "cuda", h, first, uniforms, 0.8, 0)
    expect = ops.chunk_decode.default(*args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.chunk_decode.default(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.chunk_decode.default(*args)
    for _ in range(2):
        out[0].zero_()
        graph.replay()
        assert torch.equal(out[0], expect[0]) and torch.equal(out[1], expect[1])
    args[2].copy_(torch.rand_like(args[2]))  # new uniforms: the replay reads them
    graph.replay()
    assert torch.equal(out[1], ops.chunk_decode.default(*args)[1])


@requires_cuda
def test_cuda_one_block_per_row_equals_cluster(tmp_path):
    """FFT_TENSOR_DECODE_CLUSTER=1 (the pre-Hopper path, one block per row) gives the same bits as
    clusters of 2, 4 and 16 blocks: every row's dot product, and the MLP's column-group partial sums
    and their order, are the same wherever they run."""
    import subprocess
    import sys
    tests = os.path.dirname(os.path.abspath(__file__))
    bench = os.path.join(os.path.dirname(tests), "benchmarks")
    script = f"""
import sys, torch
sys.path.insert(0, {tests!r})
sys.path.insert(0, {bench!r})
from test_chunk_decode import make, decode_args, random_inputs
from bench_chunk_decode import kernel_grid
results = []
for width in (128, 40):  # 40: no cluster of 16 splits 3C = 120 rows over 16 blocks, so the op takes 8
    model = make(width, 4, 2, 16, "cuda")
    torch.manual_seed(1)
    args = decode_args(model, "cuda", *random_inputs(model, 2, 16, "cuda"), temperature=0.9)
    out = [t.cpu() for t in torch.ops.fft_tensor.chunk_decode.default(*args)]
    # the launch grid (blocks per row) from a profiler trace: the cluster size the kernel really ran with
    grid = kernel_grid(lambda: torch.ops.fft_tensor.chunk_decode.default(*args))
    results.append([out, grid])
torch.save(results, sys.argv[1])
"""
    outs = {}
    for g in (1, 2, 4, 12, 16):  # each block owns 16 / g of the MLP's column groups; 12 is taken as 8
        path = tmp_path / f"g{g}.pt"
        env = dict(os.environ, FFT_TENSOR_DECODE_CLUSTER=str(g))
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=300)  # a hang fails
        outs[g] = torch.load(path)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    for i, width in enumerate((128, 40)):
        one, grid_one = outs[1][i]
        assert grid_one == [2, 1, 1]  # 2 rows, one block each
        for g in (2, 4, 12, 16):
            cluster, grid_cluster = outs[g][i]
            # 2 rows, a cluster each: the largest power of two <= g that divides C
            blocks = min(8 if g == 12 else g, 8 if width == 40 else 16)
            if hopper:
                assert grid_cluster == [2 * blocks, 1, 1], (width, g, grid_cluster)
            assert torch.equal(one[0], cluster[0]) and torch.equal(one[1], cluster[1]), (width, g)


def test_unsupported_names_the_rule():
    """chunk_decode_unsupported: "" for the 29m decoder; otherwise the op's own error (the same rule
    ChunkLM.can_decode_chunk asks instead of repeating it)."""
    assert fft_tensor.chunk_decode_unsupported(256, 1024, 4, 2, torch.bfloat16, True) == ""
    assert fft_tensor.chunk_decode_unsupported(36, 20, 4, 1, torch.float32, True) == ""  # 16-byte rows of float32
    assert "decoder layers" in fft_tensor.chunk_decode_unsupported(256, 1024, 4, 9, torch.bfloat16, False)
    assert "dividing C = 32" in fft_tensor.chunk_decode_unsupported(32, 64, 3, 2, torch.float32, False)
    why = fft_tensor.chunk_decode_unsupported(36, 20, 4, 1, torch.bfloat16, True)
    assert "divisible by 8 (16-byte weight rows), got C = 36, F = 20" in why
    assert fft_tensor.chunk_decode_unsupported(36, 20, 4, 1, torch.bfloat16, False) == ""  # no row rule on the CPU
    assert "weights of dtype float32, bfloat16 or float16, got Double" in \
        fft_tensor.chunk_decode_unsupported(32, 64, 4, 1, torch.float64, False)
    # the op raises what the query says
    model = make(32, 2, 2, 8, "cpu")
    args = decode_args(model, "cpu", *random_inputs(model, 2, 8))
    args = args[:13] + (3,) + args[14:]
    with pytest.raises(RuntimeError, match=re.escape(fft_tensor.chunk_decode_unsupported(32, 128, 3, 2, torch.float32, False))):
        ops.chunk_decode.default(*args)


def bad_cases():
    def with_(i, value):
        return lambda a: a[:i] + (value,) + a[i + 1:]
    return [
        ("context int", with_(0, torch.zeros(2, 32, dtype=torch.int64)), "context of dtype float32"),
        ("context 1-d", with_(0, torch.zeros(32)), "context of shape (N, C)"),
        ("first shape", with_(1, torch.zeros(3, dtype=torch.int64)), "first of shape (N,)"),
        ("first float", with_(1, torch.zeros(2)), "first of dtype int64"),
        ("uniforms float32", with_(2, torch.rand(2, 8)), "uniforms of dtype float64"),
        ("uniforms rows", with_(2, torch.rand(3, 8, dtype=torch.float64)), "uniforms of shape (N, K)"),
        ("byte_emb shape", with_(3, torch.zeros(255, 32)), "byte_emb of shape (256, 32)"),
        ("slot_emb short", with_(4, torch.zeros(4, 32)), "slot_emb of shape (>= K = 8"),
        ("list lengths", lambda a: a[:5] + (a[5][:1],) + a[6:], "one tensor per layer"),
        ("qkv shape", lambda a: a[:6] + ([torch.zeros(95, 32)] * 2,) + a[7:], "qkv[0] of shape"),
        ("mixed dtypes", lambda a: a[:7] + ([t.bfloat16() for t in a[7]],) + a[8:], "proj[0] of dtype"),
        ("byte_emb int", with_(3, torch.zeros(256, 32, dtype=torch.int64)), "floating-point embeddings"),
        ("norm1 int", lambda a: a[:5] + ([torch.ones(32, dtype=torch.int64)] * 2,) + a[6:], "norm1 to be floating point"),
        ("heads", with_(13, 3), "heads >= 1 dividing C = 32"),
        ("temperature", with_(15, -1.0), "temperature 0 (greedy) or a finite number >= 1e-30"),
        ("temperature subnormal", with_(15, 1e-310), "temperature 0 (greedy) or a finite number >= 1e-30"),
        ("top_k", with_(16, -2), "top_k >= 0"),
        ("fc 0-d", lambda a: a[:9] + ([torch.zeros(())] * 2,) + a[10:], "expected fc[0] of shape (F, C), got []"),
        ("no hidden units", lambda a: a[:9] + ([torch.zeros(0, 32)] * 2,) + (([torch.zeros(32, 0)] * 2),) + a[11:],
         "F >= 1 hidden units"),
    ]


def test_inference_only():
    model = make(32, 2, 1, 8, "cpu")
    args = list(decode_args(model, "cpu", *random_inputs(model, 2, 8)))
    args[12] = args[12].clone().requires_grad_()  # head
    with pytest.raises(RuntimeError, match="chunk_decode: inference only .* head requires grad"):
        fft_tensor.chunk_decode(*args[:13], heads=args[13])
    with torch.no_grad():
        fft_tensor.chunk_decode(*args[:13], heads=args[13])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_inputs(case, device):
    _, mutate, words = case
    model = make(32, 2, 2, 8, "cpu")
    args = mutate(decode_args(model, "cpu", *random_inputs(model, 2, 8)))
    move = lambda a: [t.to(device) for t in a] if isinstance(a, list) else (a.to(device) if torch.is_tensor(a) else a)  # noqa: E731
    args = tuple(move(a) for a in args)
    with pytest.raises(RuntimeError, match=re.escape(words)):
        ops.chunk_decode.default(*args)
    # the fake kernel (torch.compile's tracing) reports the same
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(RuntimeError, match=re.escape(words)):
            ops.chunk_decode.default(*args)


@requires_cuda
def test_cuda_device_mismatch():
    model = make(32, 2, 2, 8, "cpu")
    args = decode_args(model, "cuda", *random_inputs(model, 2, 8))
    with pytest.raises(RuntimeError, match="on context's device"):
        ops.chunk_decode.default(*((args[0].cpu(),) + args[1:]))


def test_autocast_close_to_the_decoder_module():
    """Under bf16 autocast the op reads bf16 weights but keeps float32 activations; the module also rounds
    its activations to bf16, so the two agree to about bf16 rounding (not to the bit)."""
    model = make(64, 2, 2, 16, "cpu", std=0.1)
    h, first, uniforms = random_inputs(model, 2, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, picked = model.decode_chunk(h, first, uniforms)
        module = model.decode_logits(h, torch.cat([first[:, None], picked[:, :-1]], dim=1)).float()
    exact = reference_logits(model, h, first, picked)
    err_op, err_module = ((x.double() - exact).abs().max().item() for x in (logits, module))
    assert err_op <= 0.03 * exact.abs().max().item() and err_module <= 0.03 * exact.abs().max().item()
    print(f"max error vs float64: op {err_op:.3g}, module under autocast {err_module:.3g}")
