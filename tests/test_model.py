"""SpectralLM: shapes, init loss, causality, the exact frequency cutoff, streaming == full forward,
bf16, activation checkpointing, torch.compile, presets and bad inputs."""
import dataclasses
import math

import pytest
import torch

import fft_tensor
from fft_lm.gpt import GPT
from fft_lm.gpt import PRESETS as GPT_PRESETS
from fft_lm.model import PRESETS, SpectralLM, SpectralLMConfig




def small_model(**overrides):
    """A few-thousand-parameter model that still has every part (2 layers, short conv, decay)."""
    cfg = dict(d_model=32, n_layers=2, seq_len=128, kernel_len=32)
    cfg.update(overrides)
    return SpectralLM.from_preset("tiny", **cfg)


def randomize_kernels(model):
    """Spread the kernel parameters so every tap and bin matters (a fresh model's short taps are 0)."""
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.kernel.short_taps.normal_(0, 0.3)
            block.mixer.kernel.skip.normal_(1, 0.3)


def test_shapes_and_loss_at_init_is_uniform():
    model = SpectralLM.from_preset("tiny")
    idx = torch.randint(0, 256, (2, 160))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 160, 256) and logits.dtype == torch.float32
    assert abs(loss.item() - math.log(256)) < 0.1
    assert model.features(idx).shape == (2, 160, 128)
    logits, loss = model(idx)
    assert loss is None


def test_runs_past_seq_len_and_at_length_one():
    model = small_model()
    for T in (1, 5, 3 * model.config.seq_len + 7):
        logits, _ = model(torch.randint(0, 256, (2, T)))
        assert logits.shape == (2, T, 256) and torch.isfinite(logits).all()


def test_causal():
    model = small_model()
    randomize_kernels(model)
    idx = torch.randint(0, 256, (2, 300))
    t0 = 170
    changed = idx.clone()
    changed[:, t0] = (changed[:, t0] + 1) % 256
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    # FFT round-off reaches every position, so compare with a tolerance far below the real effect
    assert (a[:, :t0] - b[:, :t0]).abs().max() < 1e-5
    assert (a[:, t0:] - b[:, t0:]).abs().max() > 1e-3


@pytest.mark.parametrize("seq_len,kernel_len", [(128, 32), (1024, 128), (96, 96)])
def test_kernel_grid_is_the_ops_fft_size(seq_len, kernel_len):
    cfg = SpectralLMConfig(d_model=8, n_layers=1, seq_len=seq_len, kernel_len=kernel_len, short_conv_len=0)
    model = SpectralLM(cfg)
    N = fft_tensor.causal_conv_fft_size(seq_len, kernel_len)
    assert cfg.fft_size == N and model.freq_bins == N // 2 + 1 == model.freq_cutoff
    kernel = model.blocks[0].mixer.kernel
    assert kernel.coef_real.shape == (8, N // 2 + 1)
    # the taps are exactly irfft over the op's N points, truncated and windowed
    with torch.no_grad():
        taps, _ = kernel()
        Z = torch.complex(kernel.coef_real.double(), kernel.coef_imag.double())
        window = torch.exp(-kernel.log_decay.double().exp()[:, None] * torch.arange(kernel_len).double() / kernel_len)
        expected = torch.fft.irfft(Z, n=N, norm="ortho")[:, :kernel_len] * window
    torch.testing.assert_close(taps.double(), expected, atol=1e-5, rtol=1e-4)


def test_frequency_cutoff_is_exact():
    model = small_model()
    randomize_kernels(model)
    cutoff = 7
    model.set_freq_cutoff(cutoff)
    assert model.freq_cutoff == cutoff and model.config.freq_cutoff == cutoff
    kernel = model.blocks[0].mixer.kernel
    assert int(kernel.bin_mask.sum().item()) == cutoff and kernel.bin_mask[:cutoff].eq(1).all()

    idx = torch.randint(0, 256, (2, 100))
    logits, loss = model(idx, idx)
    loss.backward()
    for block in model.blocks:
        k = block.mixer.kernel
        for coef in (k.coef_real, k.coef_imag):
            assert torch.equal(coef.grad[:, cutoff:], torch.zeros_like(coef.grad[:, cutoff:]))
        assert k.coef_real.grad[:, :cutoff].abs().sum() > 0 and k.coef_imag.grad[:, 1:cutoff].abs().sum() > 0

    # changing the coefficients of bins >= cutoff changes nothing, bit for bit (both forwards with grad
    # off: that path's fused norms round differently from the grad-on path's)
    with torch.no_grad():
        taps_before = kernel()[0].clone()
        logits_before = model(idx)[0]
        kernel.coef_real[:, cutoff:].normal_(0, 10.0)
        kernel.coef_imag[:, cutoff:].normal_(0, 10.0)
        assert torch.equal(kernel()[0], taps_before)
        assert torch.equal(model(idx)[0], logits_before)
        # ... while the full band does see them
        model.set_freq_cutoff(None)
        assert model.freq_cutoff == model.freq_bins
        assert not torch.allclose(kernel()[0], taps_before)


def test_bad_cutoff_and_config_raise():
    model = small_model()
    for bad in (0, model.freq_bins + 1, 2.5, True):
        with pytest.raises(ValueError, match="bins"):
            model.set_freq_cutoff(bad)
    with pytest.raises(ValueError, match="kernel_len"):
        SpectralLMConfig(seq_len=64, kernel_len=128)
    with pytest.raises(ValueError, match="freq_cutoff"):
        SpectralLMConfig(seq_len=1024, kernel_len=128, freq_cutoff=100000)
    with pytest.raises(ValueError, match="d_model"):
        SpectralLMConfig(d_model=0)
    with pytest.raises(ValueError, match="idx"):
        model(torch.zeros(2, 5, dtype=torch.int32))


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_streaming_equals_full_forward(chunk, one_thread):
    model = small_model().eval()
    randomize_kernels(model)
    model.set_freq_cutoff(20)
    T = 620  # past seq_len (128)
    idx = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.init_cache(2, idx.device)
        pieces = [model(idx[:, i:i + chunk], cache=cache)[0] for i in range(0, T, chunk)]
    assert cache.pos == T
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pre_gate", [False, True])
def test_fused_norm_inference_matches_training_forward(pre_gate, one_thread):
    """With grad off the blocks run fft_tensor's fused norms and (streaming) the single in_proj GEMM
    with the gate inside causal_conv_update; the same logits as the grad-on path, full and streamed,
    and the fused path is really taken."""
    model = small_model(pre_gate=pre_gate).eval()
    randomize_kernels(model)
    idx = torch.randint(0, 256, (2, 150))
    ref, _ = model(idx)  # grad on: ATen norms, two GEMMs, the unfused gate
    calls = []
    real_add_rms_norm = fft_tensor.add_rms_norm

    def counting(*args, **kwargs):
        calls.append(1)
        return real_add_rms_norm(*args, **kwargs)

    import fft_lm.model as model_module
    old, model_module.fft_tensor.add_rms_norm = model_module.fft_tensor.add_rms_norm, counting
    try:
        with torch.no_grad():
            full, _ = model(idx)
            cache = model.init_cache(2, idx.device)
            pieces = [model(idx[:, i:i + 16], cache=cache)[0] for i in range(0, 150, 16)]
    finally:
        model_module.fft_tensor.add_rms_norm = old
    assert len(calls) == (1 + len(pieces)) * 2 * 2  # two per block (the second block's first norm adds)
    torch.testing.assert_close(full, ref.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(pieces, dim=1), ref.detach(), atol=1e-4, rtol=0)


def test_pre_gate_streams_exactly_and_gates(one_thread):
    """pre_gate: the conv reads value * pre; streaming stays exact, and the gate is not a no-op."""
    model = small_model(pre_gate=True).eval()
    randomize_kernels(model)
    assert model.blocks[0].mixer.in_proj.out_features == 3 * 32
    idx = torch.randint(0, 256, (2, 300))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.init_cache(2, idx.device)
        pieces = [model(idx[:, i:i + 13], cache=cache)[0] for i in range(0, 300, 13)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)
        w = model.blocks[0].mixer.in_proj.weight
        w[32:64].mul_(2.0)  # doubles the pre-gate rows: the conv input doubles
        changed, _ = model(idx)
    assert (changed - full).abs().max() > 1e-3


def test_streaming_with_grad_and_mixed_chunks():
    model = small_model()
    randomize_kernels(model)
    idx = torch.randint(0, 256, (1, 300))
    full, _ = model(idx)
    cache = model.init_cache(1)
    bounds = [0, 1, 40, 41, 200, 300]
    pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in zip(bounds, bounds[1:])]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="batch size"):
        model(idx.repeat(2, 1)[:, :3], cache=cache)


def test_streaming_grad_step_then_no_grad_step_keeps_backward():
    # A no-grad step after a grad step must not write into the tail the grad step saved for backward,
    # and the streamed outputs must still equal the full forward.
    model = small_model()
    randomize_kernels(model)
    idx = torch.randint(0, 256, (1, 60))
    with torch.no_grad():
        full, _ = model(idx)
    cache = model.init_cache(1)
    first, _ = model(idx[:, :40], cache=cache)
    with torch.no_grad():
        rest = [model(idx[:, a:b], cache=cache)[0] for a, b in ((40, 50), (50, 60))]
    first.sum().backward()  # raised "modified by an inplace operation" when the tail was written in place
    assert model.embed.weight.grad is not None
    torch.testing.assert_close(torch.cat([first.detach()] + rest, dim=1), full, atol=1e-4, rtol=0)


def test_bf16_autocast_forward_backward():
    model = small_model()
    idx = torch.randint(0, 256, (2, 150))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    loss.backward()
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - math.log(256)) < 0.1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_compile_fullgraph_inference_with_fused_norms():
    """With grad off the forward runs fft_tensor.rms_norm / add_rms_norm: torch.compile(fullgraph=True)
    traces them (fake kernels) and gives the eager logits, in float32 and under bf16 autocast."""
    model = small_model().eval()
    randomize_kernels(model)
    idx = torch.randint(0, 256, (2, 100))
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx)[0], model(idx)[0], atol=1e-5, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(compiled(idx)[0], model(idx)[0], atol=2e-2, rtol=0)


def test_grad_checkpoint_gives_the_same_gradients():
    model = small_model()
    randomize_kernels(model)
    idx = torch.randint(0, 256, (2, 100))
    model(idx, idx)[1].backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpoint(True)
    model(idx, idx)[1].backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_compile_fullgraph_forward_backward():
    # aot_eager traces the whole graph (dynamo fullgraph + AOTAutograd through the op's fake kernel
    # and autograd formula) without inductor's slow CPU codegen; the benchmark compiles with inductor.
    model = small_model(n_layers=1)
    randomize_kernels(model)
    model.set_freq_cutoff(9)
    assert_compiled_matches_eager(model, torch.randint(0, 256, (2, 64)))


def assert_compiled_matches_eager(model, idx):
    """torch.compile(fullgraph=True) of model's loss and gradients equals eager (leaves eager's grads)."""
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _, loss = compiled(idx, idx)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, expected = model(idx, idx)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)


def test_presets_and_parameter_counts_match_gpt():
    assert set(PRESETS) == set(GPT_PRESETS)
    for name in PRESETS:
        with torch.device("meta"):  # shapes only: no time spent initialising 30M weights
            spectral = SpectralLM.from_preset(name).num_params()
            gpt = GPT.from_preset(name).num_params()
        assert abs(spectral / gpt - 1) < 0.10, (name, spectral, gpt)
    tiny = SpectralLM.from_preset("tiny").num_params()
    assert 0.3e6 <= tiny <= 1.1e6 and SpectralLM.from_preset("tiny").config.seq_len == 256
    assert SpectralLM.from_preset("base512").config.d_model == 512
    with torch.device("meta"):
        hybrid = SpectralLM.from_preset("29m-hybrid")
        gpt29 = GPT.from_preset("29m").num_params()
    mixers = [type(b.mixer).__name__ for b in hybrid.blocks]
    assert mixers.count("WindowAttentionMixer") == 2 and mixers.count("SpectralMixer") == 6, mixers
    assert hybrid.config.pre_gate and abs(hybrid.num_params() / gpt29 - 1) < 0.01


def test_bad_preset_or_field_names_the_choices():
    with pytest.raises(ValueError, match="tiny"):
        SpectralLM.from_preset("huge")
    with pytest.raises(ValueError, match="kernel_len"):
        SpectralLM.from_preset("tiny", kernel_length=64)


def test_config_round_trip_rebuilds_the_same_model():
    model = small_model()
    model.set_freq_cutoff(5)
    rebuilt = SpectralLM.from_config(dataclasses.asdict(model.config))
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.freq_cutoff == 5 and rebuilt.config == model.config
    idx = torch.randint(0, 256, (1, 50))
    torch.testing.assert_close(rebuilt(idx)[0], model(idx)[0])


def test_state_dict_round_trip_keeps_the_cutoff_and_old_state_dicts_load():
    """The cutoff travels in the state_dict (each kernel's bin_mask), not only in the config that
    fft_lm.load_checkpoint reads: plain load_state_dict into a full-band model (DDP, user code) runs at
    the saved cutoff. A state_dict from before bin_mask was saved still loads strictly, at the cutoff of
    the config the model was built from."""
    model = small_model()
    randomize_kernels(model)
    model.set_freq_cutoff(5)
    idx = torch.randint(0, 256, (1, 50))
    fresh = small_model()
    fresh.load_state_dict(model.state_dict())
    assert fresh.freq_cutoff == 5 and fresh.config.freq_cutoff == 5
    assert torch.equal(fresh(idx)[0], model(idx)[0])
    full_masks = {k: v for k, v in small_model().state_dict().items() if k.endswith("bin_mask")}
    full_band = small_model(freq_cutoff=5)
    full_band.load_state_dict(model.state_dict() | full_masks)  # the same weights at full band
    assert full_band.config.freq_cutoff is None and full_band.freq_cutoff == full_band.freq_bins
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("bin_mask")}
    assert len(old) < len(model.state_dict())
    at_five = small_model(freq_cutoff=5)
    at_five.load_state_dict(old)  # strict
    assert at_five.freq_cutoff == 5 and torch.equal(at_five(idx)[0], model(idx)[0])


def test_empty_sequence_gives_empty_logits():
    """T = 0 (the GPT's behaviour): empty logits, with or without a cache, and the cache unchanged."""
    model = small_model(attn_blocks=1)
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert model(empty)[0].shape == (2, 0, 256)
    cache = model.init_cache(2)
    tails = [t.clone() for t in cache.tails]
    assert model(empty, cache=cache)[0].shape == (2, 0, 256)
    assert all(torch.equal(a, b) for a, b in zip(tails, cache.tails))


def test_chunk_lm_state_dict_round_trip_keeps_the_cutoff():
    from fft_lm.chunk import ChunkLM
    a = ChunkLM.from_preset("tiny")
    a.set_freq_cutoff(7)
    b = ChunkLM.from_preset("tiny")
    b.load_state_dict(a.state_dict())
    assert b.freq_cutoff == 7 and b.config.backbone["freq_cutoff"] == 7


def test_meta_device_then_to_empty_then_load_state_dict():
    """The large-model pattern: build on the meta device, materialise with to_empty, load weights. The
    kernel grid (not saved) is filled again on load, so the outputs are the source model's exactly."""
    source = small_model()
    randomize_kernels(source)
    source.set_freq_cutoff(9)
    with torch.device("meta"):
        model = small_model()
        logits, _ = model(torch.zeros(2, 40, dtype=torch.long, device="meta"))  # shapes only
    assert logits.shape == (2, 40, 256) and logits.device.type == "meta"
    model = model.to_empty(device="cpu")
    model.load_state_dict(source.state_dict())
    idx = torch.randint(0, 256, (2, 60))
    assert model.freq_cutoff == 9 and torch.equal(model(idx)[0], source(idx)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_cast_to_16_bit(dtype):
    """model.to(bf16/fp16): the kernel taps are still summed in float32 from a float32 grid (the op
    takes float32 taps), so the cast model runs forward and backward and stays near the float32 one."""
    model = small_model()
    randomize_kernels(model)
    idx = torch.randint(0, 256, (2, 70))
    ref = model(idx)[0]
    cast = model.to(dtype)
    kernel = cast.blocks[0].mixer.kernel
    assert kernel.coef_real.dtype == dtype and kernel.basis.dtype == torch.float32
    k, skip = kernel()
    assert k.dtype == skip.dtype == torch.float32
    logits, loss = cast(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in cast.parameters())
    assert (logits.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_float64_model_streams_and_generates():
    """A float64 model keeps float64 stream tails (the op takes the taps' dtype), so overlap-save
    generation equals recompute, and streaming with grad on works too."""
    from fft_lm.generation import generate
    model = small_model().double()
    randomize_kernels(model)
    prompt = bytes(range(60, 90))
    assert generate(model, prompt, 12, temperature=0) == generate(model, prompt, 12, temperature=0, mode="recompute")
    cache = model.init_cache(1)
    assert cache.tails[0].dtype == torch.float64
    idx = torch.randint(0, 256, (1, 30))
    logits, _ = model(idx[:, :20], cache=cache)
    more, _ = model(idx[:, 20:], cache=cache)
    torch.testing.assert_close(torch.cat([logits, more], 1), model(idx)[0], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- an independent float64 reference

def rms_norm64(x, weight, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()


def spectral_reference(model, idx):
    """The whole SpectralLM forward in float64 plain torch from the weights and the documented
    formulas: taps = irfft(Z * [bin < cutoff], n=N, norm='ortho')[:Lk] * exp(-exp(log_decay) t/Lk)
    + short taps, the conv as a direct sum (causal_conv_reference), no fft_tensor op."""
    from fft_tensor.reference import causal_conv_reference
    cfg = model.config
    x = model.embed.weight.double()[idx]
    for block in model.blocks:
        kern = block.mixer.kernel
        N, Lk = cfg.fft_size, cfg.kernel_len
        bins = torch.arange(N // 2 + 1)
        Z = torch.complex(kern.coef_real.double(), kern.coef_imag.double()) * (bins < model.freq_cutoff)
        t = torch.arange(Lk, dtype=torch.float64) / Lk
        taps = torch.fft.irfft(Z, n=N, norm="ortho")[:, :Lk] * torch.exp(-kern.log_decay.double().exp()[:, None] * t)
        taps[:, :cfg.short_conv_len] += kern.short_taps.double()
        h = rms_norm64(x, block.norm1.weight)
        parts = (h @ block.mixer.in_proj.weight.double().T).chunk(3 if cfg.pre_gate else 2, dim=-1)
        value = parts[0] * parts[1] if cfg.pre_gate else parts[0]  # pre_gate: the conv reads value * pre
        gate = parts[-1]
        y = causal_conv_reference(value.transpose(1, 2), taps, kern.skip.double()).transpose(1, 2)
        x = x + (y * gate * torch.sigmoid(gate)) @ block.mixer.out_proj.weight.double().T
        h = rms_norm64(x, block.norm2.weight)
        x = x + torch.nn.functional.gelu(h @ block.mlp.fc.weight.double().T) @ block.mlp.proj.weight.double().T
    return rms_norm64(x, model.norm_f.weight) @ model.head.weight.double().T


def nll64(logits, targets):
    """Mean -log softmax(logits)[target] in float64 over targets != -1."""
    logp = logits.double() - torch.logsumexp(logits.double(), -1, keepdim=True)
    keep = targets != -1
    return -logp[keep, targets[keep]].mean()


def spread_weights(model):
    """Weights spread so every part of the model contributes visibly."""
    randomize_kernels(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1, 0.3)
            elif "coef" not in name and "decay" not in name and "short_taps" not in name and "skip" not in name:
                p.normal_(0, 0.3 / p.shape[-1] ** 0.5 if p.dim() == 2 and "embed" not in name else 1.0)


@pytest.mark.parametrize("pre_gate", [False, True])
def test_gradients_match_float64_reference(pre_gate):
    """Every parameter's gradient against autograd through the float64 reference (its .double() copies
    lead back to the same parameters): the projections' split into parts, the taps' one GEMM."""
    model = small_model(seq_len=64, kernel_len=24, short_conv_len=3, pre_gate=pre_gate)
    spread_weights(model)
    model.set_freq_cutoff(int(torch.randint(2, model.freq_bins, ()).item()))
    idx, targets = torch.randint(0, 256, (2, 97)), torch.randint(0, 256, (2, 97))
    nll64(spectral_reference(model, idx), targets).backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model(idx, targets)[1].backward()
    from conftest import rel_err
    for name, p in model.named_parameters():
        if want[name].abs().max() == 0:  # e.g. coefficients above the cutoff: exactly zero in both
            assert p.grad.abs().max() == 0, name
        else:
            assert rel_err(p.grad, want[name]) < 1e-4, name


@pytest.mark.parametrize("pre_gate", [False, True])
def test_forward_matches_float64_reference(pre_gate):
    model = small_model(seq_len=64, kernel_len=24, short_conv_len=3, pre_gate=pre_gate)
    spread_weights(model)
    cutoff = int(torch.randint(2, model.freq_bins, ()).item())
    model.set_freq_cutoff(cutoff)
    idx = torch.randint(0, 256, (2, 150))  # past seq_len
    targets = torch.randint(0, 256, (2, 150))
    targets[torch.rand(2, 150) < 0.2] = -1
    logits, loss = model(idx, targets)
    ref = spectral_reference(model, idx)
    assert ref.std() > 0.1  # not a near-constant output
    from conftest import rel_err
    assert rel_err(logits, ref) < 1e-5, cutoff
    assert abs(loss.item() - nll64(ref, targets).item()) < 1e-5
    # the reference sees the cutoff: a clearly different one (at least half the band away; the top bin
    # alone moved the logits by only 4e-4 for one seed) gives clearly different logits
    model.set_freq_cutoff(1 if cutoff > model.freq_bins // 2 else None)
    assert rel_err(model(idx)[0], ref) > 1e-3, cutoff


def test_config_errors_name_the_field():
    for kwargs, field in [(dict(short_conv_len=200, kernel_len=128), "short_conv_len"),
                          (dict(short_conv_len=-1), "short_conv_len"),
                          (dict(decay_min=0.0), "decay_min"), (dict(decay_min=4.0, decay_max=2.0), "decay_min"),
                          (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"),
                          (dict(fft_size=64, kernel_len=128), "fft_size"), (dict(fft_size=1.5), "fft_size"),
                          (dict(n_layers=0), "n_layers"), (dict(seq_len=2.0), "seq_len"),
                          (dict(vocab_size=0), "vocab_size"), (dict(mlp_mult=0), "mlp_mult"),
                          (dict(freq_cutoff=0), "freq_cutoff"), (dict(pre_gate="yes"), "pre_gate")]:
        with pytest.raises(ValueError, match=rf"SpectralLMConfig\.{field}"):
            SpectralLMConfig(**kwargs)
    model = small_model()
    idx = torch.randint(0, 256, (2, 5))
    with pytest.raises(ValueError, match=r"targets of shape \(2, 5\)"):
        model(idx, idx[:, :4])
    with pytest.raises(TypeError, match="SpectralLMConfig"):
        SpectralLM(dict(d_model=8))


def test_channels_first_projections_values_grads_and_layouts():
    # the mixer's projections: x (B, T, I) -> parts of (B, O, T) feature-major (strides (T, B*T, 1),
    # from one GEMM) and z (B, I, T) -> (B, T, O), each result and each input gradient in the layout its
    # neighbour reads in place (no transposes around the conv)
    from fft_lm.model import channels_first_linear, feature_major, time_first_linear
    B, T, I, O = 3, 11, 5, 4
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3 * O, I, dtype=torch.float64, requires_grad=True)
    for parts in (1, 3):
        assert torch.autograd.gradcheck(lambda w, x: channels_first_linear(w, x, parts), (w, x))
        outs = channels_first_linear(w, x, parts)
        outs = (outs,) if parts == 1 else outs
        for part, wj in zip(outs, w.chunk(parts)):
            torch.testing.assert_close(part, torch.einsum("oi,bti->bot", wj, x))
            assert feature_major(part) and part.stride() == (T, B * T, 1)
        # gradient through some parts only (the others get None)
        grads = torch.autograd.grad(outs[0].sum(), (x, w))
        ref = torch.autograd.grad(torch.einsum("oi,bti->bot", w.chunk(parts)[0], x).sum(), (x, w))
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r)
        assert grads[0].is_contiguous()
    wo = torch.randn(O, I, dtype=torch.float64, requires_grad=True)
    z_packed = torch.randn(B, I, T, dtype=torch.float64, requires_grad=True)
    z_major = torch.randn(I, B, T, dtype=torch.float64).transpose(0, 1).requires_grad_()
    for z, major in ((z_packed, False), (z_major, True)):
        assert feature_major(z) == major
        assert torch.autograd.gradcheck(time_first_linear, (wo, z))
        out = time_first_linear(wo, z)
        torch.testing.assert_close(out, torch.einsum("oi,bit->bto", wo, z))
        grad_z, = torch.autograd.grad(out, z, torch.randn_like(out))
        assert out.is_contiguous()
        assert feature_major(grad_z) if major else grad_z.is_contiguous()


# ----------------------------------------------------------------------------- attention blocks

def hybrid_model(**overrides):
    """small_model with block 1 of 2 mixing by attention over a 48-position window (< seq_len 128)."""
    model = small_model(attn_blocks=1, attn_window=48, **overrides)
    with torch.no_grad():
        for block in model.blocks:
            if hasattr(block.mixer, "kernel"):
                block.mixer.kernel.short_taps.normal_(0, 0.3)
                block.mixer.kernel.skip.normal_(1, 0.3)
    return model


def test_attention_block_placement_and_config_errors():
    cfg = SpectralLMConfig(d_model=64, n_layers=8, seq_len=64, kernel_len=16, attn_blocks=2)
    assert [i for i in range(8) if cfg.is_attention_block(i)] == [2, 6]
    assert [i for i in range(6) if SpectralLMConfig(n_layers=6, attn_blocks=1).is_attention_block(i)] == [3]
    assert not any(SpectralLMConfig(n_layers=6).is_attention_block(i) for i in range(6))
    model = hybrid_model()
    assert [type(b.mixer).__name__ for b in model.blocks] == ["SpectralMixer", "WindowAttentionMixer"]
    assert "attn_blocks=1 (window 48)" in model.describe()
    for field, value in [("attn_blocks", 3), ("attn_blocks", -1), ("attn_window", 1)]:
        with pytest.raises(ValueError, match=f"SpectralLMConfig.{field}"):
            SpectralLMConfig(d_model=32, n_layers=2, seq_len=64, kernel_len=16, **{field: value})


@pytest.mark.parametrize("T", [1, 47, 48, 49, 150])
def test_window_attention_matches_float64_reference(T):
    """Each position attends to itself and the window - 1 before it: one SDPA call up to the window,
    block-local beyond (150 = 3 blocks of 48 and a padded fourth)."""
    mixer = hybrid_model().blocks[1].mixer.double()
    x = torch.randn(2, T, 32, dtype=torch.float64)
    q, k, v = mixer._qkv(x)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~((j <= i) & (i - j < 48)), -math.inf)
    expected = mixer._out(torch.softmax(scores, -1) @ v)
    torch.testing.assert_close(mixer(x)[0], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_attention_blocks_stream_equal_full_forward(chunk, one_thread):
    model = hybrid_model().eval()
    model.set_freq_cutoff(20)  # reaches the conv blocks only
    T = 300  # past seq_len and several windows
    idx = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.init_cache(2, idx.device)
        assert [tuple(t.shape) for t in cache.tails] == [(2, 32, 31), (2, 33, 47)]
        pieces = [model(idx[:, i:i + chunk], cache=cache)[0] for i in range(0, T, chunk)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)
    # what a CUDA graph of a step reads and writes: both tails and the conv block's taps (none for attention)
    assert cache.taps[1] is None
    assert [tuple(t.shape) for t in cache.graph_tensors()] == [(2, 32, 31), (2, 33, 47), (32, 32), (32,)]
    # causal: a change at t0 leaves every earlier position alone
    changed = idx.clone()
    changed[:, 170] = (changed[:, 170] + 1) % 256
    with torch.no_grad():
        other, _ = model(changed)
    assert (other[:, :170] - full[:, :170]).abs().max() < 1e-5


def test_attention_blocks_compile_fullgraph_forward_backward_and_round_trip(tmp_path):
    from fft_lm.checkpoint import load_checkpoint, save_checkpoint
    model = hybrid_model()
    model.set_freq_cutoff(9)
    idx = torch.randint(0, 256, (2, 100))  # > window: the block-local path
    assert_compiled_matches_eager(model, idx)
    assert model.blocks[1].mixer.in_proj.weight.grad.abs().sum() > 0
    save_checkpoint(tmp_path / "ckpt.pt", model=model, step=1)
    loaded, _ = load_checkpoint(tmp_path / "ckpt.pt")
    assert loaded.config.attn_blocks == 1 and loaded.config.attn_window == 48
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model(idx)[0])
