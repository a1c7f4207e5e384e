"""ChunkLM: per-byte loss, chunk decoder causality, presets, checkpoints, the training script."""
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import fft_lm
from fft_lm.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_chunk(chunk=4, **kw):
    return fft_lm.ChunkLM.from_preset("tiny", d_model=32, n_layers=2, seq_len=32, kernel_len=8, head_dim=32,
                                      chunk=chunk, **kw)


def test_loss_is_mean_per_byte_cross_entropy():
    model = tiny_chunk(chunk=4).eval()
    B, T, K = 2, 10, 4
    seq = torch.randint(0, 256, (B, T + 1))
    idx, targets = seq[:, :-1], seq[:, 1:]
    logits, loss = model(idx, targets)
    assert logits.shape == (B, T, 256)
    h = model.features(idx)
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T):
            for j in range(K):
                if t + 1 + j > T:  # target past the window
                    continue
                inputs = seq[b, t:t + j + 1][None]  # the byte before the chunk, then c_0..c_{j-1}
                row = model.decode_logits(h[b, t][None], inputs)[0, -1]
                total += -F.log_softmax(row.double(), -1)[seq[b, t + 1 + j]].item()
                count += 1
    assert count == B * (T * K - K * (K - 1) // 2)
    assert abs(loss.item() - total / count) < 1e-5
    # slot 0 of the chunk is the plain next-byte prediction, which forward returns as logits
    torch.testing.assert_close(logits, model(idx)[0])


def test_ignored_targets_are_excluded():
    model = tiny_chunk(chunk=4).eval()
    seq = torch.randint(0, 256, (1, 13))
    idx, targets = seq[:, :-1], seq[:, 1:].clone()
    _, full = model(idx, targets)
    targets[0, 5] = -1
    _, masked = model(idx, targets)
    assert masked.item() != full.item()
    assert math.isfinite(masked.item())


def test_chunk_decoder_is_causal():
    model = tiny_chunk(chunk=8).eval()
    h = torch.randn(3, 32)
    inputs = torch.randint(0, 256, (3, 8))
    ref = model.decode_logits(h, inputs)
    for j in range(8):
        changed = inputs.clone()
        changed[:, j:] = (changed[:, j:] + 1 + torch.arange(8 - j)) % 256
        out = model.decode_logits(h, changed)
        # row i predicts c_i from inputs[:i+1] (the byte before the chunk and c_0..c_{i-1})
        torch.testing.assert_close(out[:, :j], ref[:, :j], atol=1e-6, rtol=0)
        assert (out[:, j] - ref[:, j]).abs().max() > 1e-6  # and it does see its own input slot
    # the prefix alone gives the same rows as the full chunk (generation feeds growing prefixes)
    torch.testing.assert_close(model.decode_logits(h, inputs[:, :3]), ref[:, :3], atol=1e-6, rtol=0)


def test_forward_uses_the_backbone_cache():
    model = tiny_chunk().eval()
    idx = torch.randint(0, 256, (2, 40))  # longer than seq_len
    full, _ = model(idx)
    cache = model.init_cache(2, "cpu")
    with torch.no_grad():
        parts = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 17), (17, 18), (18, 40))]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 40


def test_init_cache_device_defaults_to_the_models():
    # the README's `model.init_cache(batch_size=1)` must work for every family, ChunkLM included
    model = tiny_chunk().eval()
    idx = torch.randint(0, 256, (1, 12))
    cache = model.init_cache(batch_size=1)
    with torch.no_grad():
        torch.testing.assert_close(model(idx, cache=cache)[0], model(idx)[0], atol=1e-5, rtol=1e-5)


def test_presets_and_overrides():
    model = fft_lm.ChunkLM.from_preset("tiny", seq_len=48, kernel_len=8, chunk=5, head_dim=16, head_heads=2)
    assert model.config.chunk == model.chunk == 5
    assert model.config.head_dim == 16
    assert model.backbone.config.seq_len == 48 and model.backbone.config.kernel_len == 8
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        fft_lm.ChunkLM.from_preset("huge")
    with pytest.raises(ValueError, match="chunk must be an int >= 1"):
        fft_lm.ChunkLM.from_preset("tiny", chunk=0)
    with pytest.raises(ValueError, match="at most chunk=5 slots"):
        model.decode_logits(torch.randn(1, 128), torch.zeros(1, 6, dtype=torch.long))


def test_29m_preset_matches_the_seed():
    cfg = fft_lm.ChunkLM.from_preset("29m").config
    assert (cfg.backbone["seq_len"], cfg.backbone["kernel_len"], cfg.chunk) == (1024, 128, 16)
    hybrid = fft_lm.ChunkLM.from_preset("29m-hybrid").config  # same head, the hybrid backbone
    assert hybrid.backbone == asdict(fft_lm.SpectralLM.from_preset("29m-hybrid").config)
    assert hybrid.backbone["attn_blocks"] == 2 and hybrid.backbone["pre_gate"]
    assert {k: v for k, v in asdict(hybrid).items() if k != "backbone"} == \
        {k: v for k, v in asdict(cfg).items() if k != "backbone"}


def test_checkpoint_round_trip_and_backbone_init(tmp_path):
    model = tiny_chunk().eval()
    model.set_freq_cutoff(5)
    path = str(tmp_path / "chunk.pt")
    save_checkpoint(path, model=model)
    loaded, meta = fft_lm.load_checkpoint(path)
    assert isinstance(loaded, fft_lm.ChunkLM) and meta["family"] == "chunk"
    assert loaded.freq_cutoff == 5
    idx = torch.randint(0, 256, (1, 20))
    torch.testing.assert_close(loaded(idx, idx)[1], model(idx, idx)[1])

    backbone = fft_lm.SpectralLM.from_preset("tiny", d_model=32, n_layers=2, seq_len=32, kernel_len=8)
    bpath = str(tmp_path / "backbone.pt")
    save_checkpoint(bpath, model=backbone)
    chunk_lm = fft_lm.ChunkLM.from_backbone_checkpoint(bpath, chunk=6, head_dim=32)
    assert chunk_lm.chunk == 6
    torch.testing.assert_close(chunk_lm.features(idx), backbone.features(idx))
    gpt_path = str(tmp_path / "gpt.pt")
    save_checkpoint(gpt_path, model=fft_lm.GPT.from_preset("tiny", d_model=32, n_layers=1, seq_len=32))
    with pytest.raises(ValueError, match="expected a SpectralLM"):
        fft_lm.ChunkLM.from_backbone_checkpoint(gpt_path)


def run_train(*args):
    env = {**os.environ, "FFT_TENSOR_SKIP_STALE_CHECK": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "scripts.train_chunk_head", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def test_train_script_learns_and_starts_from_backbone(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the cat sat on the mat. " * 400)
    bpath = str(tmp_path / "backbone.pt")
    torch.manual_seed(0)  # the run is deterministic given the backbone (the script seeds the rest)
    save_checkpoint(bpath, model=fft_lm.SpectralLM.from_preset("tiny", d_model=32, n_layers=2, seq_len=32,
                                                                 kernel_len=8))
    ckpt = str(tmp_path / "run" / "chunk.pt")
    r = run_train("--init-backbone", bpath, "--seq-len", "32", "--kernel-len", "8", "--chunk", "4",
                  "--head-dim", "32", "--batch-size", "8", "--steps-per-epoch", "60", "--epochs", "1",
                  "--lr", "1e-2", "--warmup-steps", "3", "--ckpt", ckpt, "--log-every", "5", "--eval-every", "0",
                  "--eval-batches", "2", "--data", str(corpus), "--no-progress", "--plot-path", "-")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["family"] == "chunk" and metrics["step"] == 60
    assert metrics["val_bpb"] < 3.0, metrics  # a 24-byte cycle: far below 8 bits per byte (uniform) after 60 steps
    model, meta = fft_lm.load_checkpoint(ckpt)
    assert model.chunk == 4 and meta["train_config"]["chunk"] == 4
    assert fft_lm.generate(model, b"the cat ", 16, temperature=0) != b""

    bad = run_train("--init-backbone", bpath, "--kernel-len", "16", "--ckpt", ckpt, "--data", str(corpus))
    assert bad.returncode == 2 and "--kernel-len 16 does not match the backbone checkpoint" in bad.stderr
    bad = run_train("--preset", "huge", "--data", str(corpus))
    assert bad.returncode == 2 and "--preset: expected one of" in bad.stderr


def test_train_script_defaults_seq_len_and_head_from_the_preset(tmp_path):
    # no --seq-len: the backbone's (init) or the run's (resume); --init-backbone keeps the preset's head sizes
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the cat sat on the mat. " * 40)
    bpath = str(tmp_path / "backbone.pt")
    save_checkpoint(bpath, model=fft_lm.SpectralLM.from_preset("tiny", d_model=16, n_layers=1, seq_len=24,
                                                                 kernel_len=8))
    ckpt = str(tmp_path / "run" / "chunk.pt")
    common = ["--batch-size", "1", "--steps-per-epoch", "1", "--eval-every", "0", "--eval-batches", "1",
              "--ckpt", ckpt, "--data", str(corpus), "--no-progress", "--plot-path", "-"]
    r = run_train("--init-backbone", bpath, "--chunk", "4", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    model, meta = fft_lm.load_checkpoint(ckpt)
    tiny = fft_lm.chunk.PRESETS["tiny"]
    assert (model.config.head_dim, model.config.head_layers, model.config.head_heads) == \
        (tiny["head_dim"], tiny["head_layers"], tiny["head_heads"])
    assert meta["train_config"]["seq_len"] == 24
    for flag, message in [(["--head-dim", "8"], "--head-dim 8 differs from the run being resumed"),
                          (["--chunk", "8"], "--chunk 8 differs from the run being resumed"),
                          (["--ckpt", bpath], "is a 'spectral' checkpoint, not a ChunkLM")]:
        bad = run_train("--resume", "--epochs", "2", *common, *flag)  # the later --ckpt wins
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
    r = run_train("--resume", "--epochs", "2", "--chunk", "4", *common)  # repeating the run's --chunk is fine
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 2
    # a bare --resume keeps the run's settings (batch size 1, its data, no plot), not the flags' defaults
    r = run_train("--resume", "--ckpt", ckpt, "--epochs", "3", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "changed here: --epochs 2 -> 3" in r.stdout, r.stdout[-2000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["step"] == 3 and metrics["bytes_seen"] == 3 * 1 * 24, metrics
    bad = run_train("--data", str(tmp_path / "missing.txt"), "--ckpt", str(tmp_path / "x.pt"))
    assert bad.returncode == 2 and "error: --data" in bad.stderr and "Traceback" not in bad.stderr


def test_train_chunk_head_resume_of_another_family_and_hidden_flags(tmp_path, capsys):
    """--resume on a checkpoint a backbone run wrote (its train_config says family 'spectral') names the
    checkpoint's family, not a --family the user never gave; --help leaves out the flags the script fixes."""
    from fft_lm.train import TrainConfig, train
    from scripts import train_chunk_head
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the cat sat on the mat. " * 40)
    ckpt = str(tmp_path / "spectral" / "ckpt.pt")
    train(TrainConfig(data=str(corpus), seq_len=16, batch_size=1, steps_per_epoch=1, eval_every=0, eval_batches=1,
                      ckpt_path=ckpt, plot_path="-", progress=False),
          model=fft_lm.SpectralLM.from_preset("tiny", d_model=16, n_layers=1, seq_len=16, kernel_len=4))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_chunk_head.main(["--resume", "--ckpt", ckpt, "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is a 'spectral' checkpoint, not a ChunkLM" in err and "--family" not in err, err
    with pytest.raises(SystemExit):
        train_chunk_head.main(["--help"])
    out = capsys.readouterr().out
    assert "--head-dim" in out and "--family" not in out and "--model-set" not in out, out


def test_train_chunk_head_refuses_model_set():
    # TrainConfig's --model-set is for the backbone families; the chunk script names its own flags
    from scripts.train_chunk_head import ChunkTrainConfig, build_chunk_model
    with pytest.raises(ValueError, match="--model-set: not supported by train_chunk_head"):
        build_chunk_model(ChunkTrainConfig(model_set="pre_gate=true"))
