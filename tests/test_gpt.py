"""GPT baseline: shapes, init loss, causality, KV cache == full forward (past seq_len, with growth),
bf16, activation checkpointing, presets and bad inputs."""
import dataclasses
import math

import pytest
import torch

from fft_lm.gpt import GPT, GPTConfig




def small_gpt(**overrides):
    cfg = dict(d_model=32, n_layers=2, n_head=2, seq_len=128)
    cfg.update(overrides)
    return GPT.from_preset("tiny", **cfg)


def test_shapes_and_loss_at_init_is_uniform():
    model = GPT.from_preset("tiny")
    idx = torch.randint(0, 256, (2, 160))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 160, 256) and logits.dtype == torch.float32
    assert abs(loss.item() - math.log(256)) < 0.1
    assert model.features(idx).shape == (2, 160, 128)
    assert model(idx)[1] is None
    assert not hasattr(model, "set_freq_cutoff")


def test_causal():
    model = small_gpt()
    idx = torch.randint(0, 256, (2, 200))
    t0 = 90
    changed = idx.clone()
    changed[:, t0] = (changed[:, t0] + 1) % 256
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert (a[:, :t0] - b[:, :t0]).abs().max() < 1e-6
    assert (a[:, t0:] - b[:, t0:]).abs().max() > 1e-4


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_kv_cache_equals_full_forward(chunk, one_thread):
    model = small_gpt().eval()
    T = 610  # past seq_len; the cache starts at 64 slots and grows
    idx = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.init_cache(2, idx.device, max_len=64)
        pieces = [model(idx[:, i:i + chunk], cache=cache)[0] for i in range(0, T, chunk)]
    assert cache.pos == T and cache.keys[0].shape[2] >= T
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)


def test_kv_cache_mixed_chunks_and_batch_check():
    model = small_gpt().eval()
    idx = torch.randint(0, 256, (1, 150))
    bounds = [0, 33, 34, 100, 150]
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.init_cache(1)
        pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in zip(bounds, bounds[1:])]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)
        with pytest.raises(ValueError, match="batch size"):
            model(idx.repeat(2, 1)[:, :3], cache=cache)


def test_bf16_autocast_forward_backward():
    model = small_gpt()
    idx = torch.randint(0, 256, (2, 100))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    loss.backward()
    assert logits.dtype == torch.float32 and abs(loss.item() - math.log(256)) < 0.1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_grad_checkpoint_gives_the_same_gradients():
    model = small_gpt()
    idx = torch.randint(0, 256, (2, 64))
    model(idx, idx)[1].backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpoint(True)
    model(idx, idx)[1].backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_bad_preset_field_and_config():
    with pytest.raises(ValueError, match="base512"):
        GPT.from_preset("nope")
    with pytest.raises(ValueError, match="n_head"):
        GPT.from_preset("tiny", heads=4)
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(d_model=96, n_head=5)
    with pytest.raises(ValueError, match="idx"):
        small_gpt()(torch.zeros(4))


def test_config_round_trip():
    model = small_gpt()
    rebuilt = GPT.from_config(dataclasses.asdict(model.config))
    rebuilt.load_state_dict(model.state_dict())
    idx = torch.randint(0, 256, (1, 40))
    torch.testing.assert_close(rebuilt(idx)[0], model(idx)[0])
    assert GPT.family == "gpt" and GPT.config_class is GPTConfig


# ---------------------------------------------------------------- an independent float64 reference

def gpt_reference(model, idx):
    """The GPT forward in float64 plain torch: explicit causal softmax attention (no SDPA) and RoPE
    as a complex rotation of the pairs (x[:Dh/2], x[Dh/2:]) by position * base^(-2j/Dh)."""
    cfg = model.config
    B, T = idx.shape
    H, Dh = cfg.n_head, cfg.d_model // cfg.n_head

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w.double()

    freqs = cfg.rope_base ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    rot = torch.polar(torch.ones(T, Dh // 2, dtype=torch.float64),
                      torch.arange(T, dtype=torch.float64)[:, None] * freqs)

    def rope(x):  # (B, H, T, Dh)
        c = torch.complex(x[..., :Dh // 2], x[..., Dh // 2:]) * rot
        return torch.cat([c.real, c.imag], dim=-1)

    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    x = model.embed.weight.double()[idx]
    for block in model.blocks:
        h = norm(x, block.norm1.weight)
        q, k, v = (h @ block.attn.qkv.weight.double().T).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)
        scores = (rope(q) @ rope(k).transpose(-1, -2)) / Dh ** 0.5
        att = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, cfg.d_model)
        x = x + y @ block.attn.proj.weight.double().T
        h = norm(x, block.norm2.weight)
        x = x + torch.nn.functional.gelu(h @ block.mlp.fc.weight.double().T) @ block.mlp.proj.weight.double().T
    return norm(x, model.norm_f.weight) @ model.head.weight.double().T


@pytest.mark.parametrize("rope_base", [10000.0, 50.0])
def test_forward_matches_float64_reference(rope_base):
    from conftest import rel_err
    model = small_gpt(n_head=4, rope_base=rope_base)
    with torch.no_grad():  # spread the weights so attention is far from uniform
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1, 0.3)
            else:
                p.normal_(0, 1.0 if "embed" in name else 1.0 / p.shape[-1] ** 0.5)
    idx = torch.randint(0, 256, (2, 150))  # past seq_len (128)
    targets = torch.randint(0, 256, (2, 150))
    targets[torch.rand(2, 150) < 0.2] = -1
    logits, loss = model(idx, targets)
    ref = gpt_reference(model, idx)
    assert ref.std() > 0.1
    assert rel_err(logits, ref) < 1e-5
    logp = ref - torch.logsumexp(ref, -1, keepdim=True)
    keep = targets != -1
    assert abs(loss.item() - (-logp[keep, targets[keep]].mean()).item()) < 1e-5
    # the KV-cached path against the same reference
    with torch.no_grad():
        cache = model.init_cache(2, max_len=16)
        pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 1), (1, 70), (70, 71), (71, 150)]]
    assert rel_err(torch.cat(pieces, dim=1), ref) < 1e-5


def test_config_errors_name_the_field():
    for kwargs, field in [(dict(d_model=0), "d_model"), (dict(n_layers=0), "n_layers"), (dict(seq_len=1.5), "seq_len"),
                          (dict(vocab_size=0), "vocab_size"), (dict(mlp_mult=0), "mlp_mult"),
                          (dict(d_model=96, n_head=32), "n_head"),  # head dim 3: odd, no RoPE pairs
                          (dict(n_head=0), "n_head"), (dict(dropout=1.0), "dropout")]:
        with pytest.raises(ValueError, match=rf"GPTConfig\.{field}"):
            GPTConfig(**kwargs)
    idx = torch.randint(0, 256, (2, 5))
    with pytest.raises(ValueError, match=r"targets of shape \(2, 5\)"):
        small_gpt()(idx, idx[:1])
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(dict(d_model=8))
