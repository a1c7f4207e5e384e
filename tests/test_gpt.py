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
