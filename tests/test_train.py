"""fft_lm.train: exact resume, non-finite stop, curriculum, schedules, --help, DDP (gloo on CPU, NCCL on two GPUs)."""
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fft_lm.train as train_mod
from conftest import write_word_corpus
from fft_lm.data import ByteCorpus
from fft_lm.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from fft_lm.model import SpectralLM
from fft_lm.train import ConfigError, NonFiniteLossError, TrainConfig, build_arg_parser, cutoff_at, lr_at, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_FLAGS = ["--seq-len", "--kernel-len", "--lr", "--batch-size", "--accum-steps", "--steps-per-epoch", "--epochs",
              "--ckpt-path", "--log-every-steps", "--data", "--preset", "--family", "--device", "--dtype", "--amp",
              "--compile", "--seed", "--eval-every", "--eval-batches", "--resume", "--grad-checkpoint",
              "--warmup-steps", "--weight-decay", "--grad-clip", "--metrics-path", "--plot-path",
              "--curriculum-start-bins", "--curriculum-frac", "--max-time-s", "--compile-mode", "--cpp-wrapper"]


@pytest.fixture
def corpus(tmp_path):
    return write_word_corpus(tmp_path / "corpus.txt", 4000)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return SpectralLM.from_preset("tiny", d_model=16, n_layers=1, seq_len=32, kernel_len=8, **overrides)


def tiny_cfg(corpus, tmp_path, **kw):
    base = dict(data=corpus, seq_len=32, batch_size=2, accum_steps=2, steps_per_epoch=4, epochs=1, lr=3e-3,
                warmup_steps=1, eval_every=2, eval_batches=2, log_every_steps=1, curriculum_start_bins=4,
                ckpt_path=str(tmp_path / "run" / "ckpt.pt"), plot_path="-", progress=False, seed=7)
    return TrainConfig(**{**base, **kw})


def train_losses(metrics_path):
    rows = [json.loads(line) for line in open(metrics_path)]
    return [(r["step"], r["train_bpb"]) for r in rows if "train_bpb" in r]


def test_resume_continues_exactly(corpus, tmp_path):
    # dropout draws from the global RNG: the losses after resume match only if its state is restored
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full = train(tiny_cfg(corpus, full_dir), model=tiny_model(dropout=0.2))
    cfg = tiny_cfg(corpus, split_dir)
    half = train(dataclasses.replace(cfg, stop_after_steps=2), model=tiny_model(dropout=0.2))
    assert half["step"] == 2 and read_checkpoint(cfg.ckpt_path)["step"] == 2
    rest = train(dataclasses.replace(cfg, resume=True))  # model rebuilt from the checkpoint
    assert rest["step"] == full["step"] == 4
    a, b = train_losses(full_dir / "run" / "metrics.jsonl"), train_losses(split_dir / "run" / "metrics.jsonl")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    assert all(abs(x - y) <= 1e-6 for (_, x), (_, y) in zip(a, b)), (a, b)
    assert a[0][1] != a[-1][1]  # it did train
    m_full, _ = load_checkpoint(full_dir / "run" / "ckpt.pt")
    m_split, meta = load_checkpoint(cfg.ckpt_path)
    assert meta["step"] == 4 and meta["extra"]["data"]["next_step"] == 4
    for (k, p), q in zip(m_full.state_dict().items(), m_split.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), k
    assert math.isclose(full["val_bpb"], rest["val_bpb"], abs_tol=1e-6)


def test_resume_mid_log_window_and_stale_metrics_rows(corpus, tmp_path):
    # stopped at step 3 with a logging window of 2 open: the step-4 row still averages steps 3 and 4,
    # and rows past the checkpoint (left by a crash) are dropped, not logged twice
    kw = dict(log_every_steps=2, eval_every=0, eval_batches=1)
    full = tiny_cfg(corpus, tmp_path / "full", **kw)
    train(full, model=tiny_model())
    cfg = tiny_cfg(corpus, tmp_path / "split", **kw)
    train(dataclasses.replace(cfg, stop_after_steps=3), model=tiny_model())
    metrics = tmp_path / "split" / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": 4, "train_bpb": 123.0}) + "\n" + '{"step": 5, "tra')  # and a torn line
    train(dataclasses.replace(cfg, resume=True))
    a, b = train_losses(tmp_path / "full" / "run" / "metrics.jsonl"), train_losses(metrics)
    assert [s for s, _ in a] == [s for s, _ in b] == [2, 4]
    assert all(abs(x - y) <= 1e-6 for (_, x), (_, y) in zip(a, b)), (a, b)


def test_resume_refuses_another_stream_or_a_weights_only_checkpoint(corpus, tmp_path):
    cfg = tiny_cfg(corpus, tmp_path, eval_every=0, eval_batches=1)
    train(dataclasses.replace(cfg, stop_after_steps=1), model=tiny_model())
    with pytest.raises(ConfigError, match="--seed: the run being resumed used --seed 7, got 8; pass --seed 7"):
        train(dataclasses.replace(cfg, resume=True, seed=8))
    with pytest.raises(ConfigError, match="--data / --val-frac: the corpus split differs"):
        train(dataclasses.replace(cfg, resume=True, val_frac=0.2))
    other = tmp_path / "other.txt"  # the same size, other bytes
    other.write_bytes(bytes(reversed(open(corpus, "rb").read())))
    with pytest.raises(ConfigError, match="--data: the corpus has the run's size but other bytes"):
        train(dataclasses.replace(cfg, resume=True, data=str(other)))
    bare = str(tmp_path / "bare.pt")
    save_checkpoint(bare, model=tiny_model())
    with pytest.raises(ConfigError, match="holds no optimizer or RNG state"):
        train(dataclasses.replace(cfg, resume=True, ckpt_path=bare))


def nan_after(model, n_calls):
    """A forward hook that makes the training loss NaN from the n-th training forward on."""
    calls = [0]

    def hook(module, args, output):
        if not module.training:
            return output
        calls[0] += 1
        logits, loss = output
        return (logits, loss * float("nan")) if calls[0] > n_calls else output

    model.register_forward_hook(hook)
    return model


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    cfg = tiny_cfg(corpus, tmp_path)
    model = nan_after(tiny_model(), n_calls=2 * 3)  # steps 1-3 fine (2 micro-batches each), step 4 NaN
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*last good checkpoint .*ckpt.pt \(step 2\)"):
        train(cfg, model=model)
    kept, meta = load_checkpoint(cfg.ckpt_path)
    assert meta["step"] == 2
    assert all(torch.isfinite(p).all() for p in kept.parameters())


def test_cli_exits_non_zero_on_non_finite_loss(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "build_model", lambda cfg: nan_after(tiny_model(), n_calls=0))
    argv = ["--data", corpus, "--seq-len", "32", "--batch-size", "2", "--steps-per-epoch", "3", "--no-progress",
            "--ckpt-path", str(tmp_path / "ckpt.pt"), "--plot-path", "-"]
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(argv)
    assert exit_info.value.code == 1
    assert "non-finite loss at step 0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "ckpt.pt")


def test_curriculum_grows_cutoff_to_full_band(corpus, tmp_path):
    model = tiny_model()
    full = model.freq_bins
    cfg = tiny_cfg(corpus, tmp_path, steps_per_epoch=8, curriculum_frac=0.5, eval_every=0)
    cutoffs = [cutoff_at(cfg, s, full) for s in range(8)]
    assert cutoffs[0] == 4 and cutoffs[4:] == [None] * 4
    assert cutoffs[0] < cutoffs[1] < cutoffs[2] < cutoffs[3] < full
    assert cutoff_at(dataclasses.replace(cfg, curriculum_frac=0.0), 0, full) is None
    train(cfg, model=model)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["cutoff"] for r in rows if "train_bpb" in r] == cutoffs
    assert model.freq_cutoff == full


def test_cutoff_is_applied_when_it_moves(corpus, tmp_path, monkeypatch):
    # set_freq_cutoff runs on the first step and then only when the curriculum's cutoff changes; a
    # model that arrives with a cutoff of its own (a checkpoint saved mid-curriculum) is set to the
    # schedule's value even when that is the full band (None) from the start
    model = tiny_model()
    model.set_freq_cutoff(3)
    applied = []
    real = model.set_freq_cutoff
    monkeypatch.setattr(model, "set_freq_cutoff", lambda bins: (applied.append(bins), real(bins)))
    cfg = tiny_cfg(corpus, tmp_path, steps_per_epoch=8, curriculum_frac=0.0, eval_every=0)
    train(cfg, model=model)
    assert applied == [None] and model.freq_cutoff == model.freq_bins
    applied.clear()
    cfg = tiny_cfg(corpus, tmp_path / "grow", steps_per_epoch=8, curriculum_frac=0.5, eval_every=0)
    train(cfg, model=model)
    schedule = [cutoff_at(cfg, s, model.freq_bins) for s in range(8)]
    assert applied == [c for i, c in enumerate(schedule) if i == 0 or c != schedule[i - 1]]


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps_per_epoch=110, min_lr_frac=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0) and lr_at(cfg, 60) == pytest.approx(0.55, abs=0.01)
    assert lr_at(cfg, 109) == pytest.approx(0.1)  # the last step (of 110) runs at lr * min_lr_frac
    decay = [lr_at(cfg, s) for s in range(10, 110)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    timed = dataclasses.replace(cfg, max_time_s=100.0)
    assert lr_at(timed, 20, elapsed_s=100.0) == pytest.approx(0.1)  # the budget ends the cosine


def test_gpt_family_trains_through_the_same_loop(corpus, tmp_path):
    from fft_lm.gpt import GPT
    torch.manual_seed(0)
    model = GPT.from_preset("tiny", d_model=16, n_layers=1, n_head=2, seq_len=32)
    out = train(tiny_cfg(corpus, tmp_path, family="gpt", steps_per_epoch=2), model=model)
    assert out["family"] == "gpt" and math.isfinite(out["val_bpb"])
    loaded, meta = load_checkpoint(out["ckpt_path"])
    assert isinstance(loaded, GPT) and meta["family"] == "gpt"


def test_help_lists_every_flag():
    text = build_arg_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    for flag in SEED_FLAGS:
        assert flag in text, flag
    assert build_arg_parser().parse_args(["--amp"]).dtype == "bfloat16"
    parsed = build_arg_parser().parse_args(["--seq-len", "64", "--compile", "--lr", "3e-4"])
    assert (parsed.seq_len, parsed.compile, parsed.lr) == (64, True, 3e-4)
    out = subprocess.run([sys.executable, "-m", "scripts.train_fixed_full", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "--curriculum-start-bins" in out and "--kernel-len" in out


def test_bad_flags_are_named(corpus, tmp_path):
    with pytest.raises(ValueError, match="--batch-size"):
        train(tiny_cfg(corpus, tmp_path, batch_size=0), model=tiny_model())
    with pytest.raises(ValueError, match="--dtype"):
        train(tiny_cfg(corpus, tmp_path, dtype="float16"), model=tiny_model())
    with pytest.raises(ValueError, match="--compile-mode"):
        train(tiny_cfg(corpus, tmp_path, compile=True, compile_mode="fast"), model=tiny_model())
    with pytest.raises(ValueError, match="--cpp-wrapper: .*add --compile"):
        train(tiny_cfg(corpus, tmp_path, cpp_wrapper=True), model=tiny_model())
    with pytest.raises(ValueError, match="--resume and --overwrite: give one"):
        train(tiny_cfg(corpus, tmp_path, resume=True, overwrite=True))


def test_compile_with_cpp_wrapper_trains_like_eager(corpus, tmp_path):
    # --compile --cpp-wrapper: every compiled graph has a C++ entry point (the wrapper's), the losses
    # are eager's up to float rounding, and Inductor's global config is left as it was
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import run_and_get_code
    before = inductor_config.cpp_wrapper  # False unless TORCHINDUCTOR_CPP_WRAPPER=1 is set
    kw = dict(eval_every=0, eval_batches=1)
    train(tiny_cfg(corpus, tmp_path / "eager", **kw), model=tiny_model())
    _, codes = run_and_get_code(
        lambda: train(tiny_cfg(corpus, tmp_path / "cpp", compile=True, cpp_wrapper=True, **kw), model=tiny_model()))
    assert codes and all("inductor_entry_impl" in code for code in codes)
    a, b = (train_losses(tmp_path / d / "run" / "metrics.jsonl") for d in ("eager", "cpp"))
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    assert all(abs(x - y) <= 1e-4 for (_, x), (_, y) in zip(a, b)), (a, b)
    assert inductor_config.cpp_wrapper == before


def test_cli_user_errors_exit_2_naming_the_flag(corpus, tmp_path, capsys):
    # a user's mistake gives usage + one line naming the flag (exit 2), not a traceback
    empty, short = tmp_path / "empty.txt", tmp_path / "short.txt"
    empty.write_bytes(b"")
    short.write_bytes(b"too short\n")
    bad_ckpt = tmp_path / "bad" / "ckpt.pt"
    bad_ckpt.parent.mkdir()
    bad_ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    base = ["--seq-len", "32", "--kernel-len", "8", "--no-progress", "--plot-path", "-",
            "--ckpt-path", str(tmp_path / "run" / "ckpt.pt")]
    cases = [(["--data", str(tmp_path / "missing.txt")], "--data"), (["--data", str(empty)], "--data"),
             (["--data", str(short)], "--seq-len 32"), (["--data", corpus, "--preset", "huge"], "--preset"),
             (["--data", corpus, "--family", "rnn"], "--family"), (["--data", corpus, "--batch-size", "0"], "--batch-size"),
             (["--data", corpus, "--device", "tpu0"], "--device"),
             (["--data", corpus, "--seq-len", "100000", "--kernel-len", "0"], "--seq-len 100000"),
             (["--data", corpus, "--resume", "--ckpt-path", str(bad_ckpt)], "--resume")]
    for args, flag in cases:
        with pytest.raises(SystemExit) as exit_info:
            train_mod.main(base + args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (args, err)
        assert f"error: {flag}" in err and "Traceback" not in err, (args, err)
    # train() itself still raises (a ValueError subclass) for callers of the API
    with pytest.raises(ValueError, match="--data"):
        train(tiny_cfg(str(empty), tmp_path), model=tiny_model())


def test_resume_without_seq_len_keeps_the_runs_window(corpus, tmp_path):
    # the model's config says 32, the run trained on 16-byte windows: --resume alone must continue at 16
    cfg = tiny_cfg(corpus, tmp_path, seq_len=16, accum_steps=1, eval_every=0, eval_batches=1)
    train(dataclasses.replace(cfg, stop_after_steps=2), model=tiny_model())
    rest = train(dataclasses.replace(cfg, seq_len=0, resume=True))
    assert rest["step"] == 4 and rest["bytes_seen"] == 4 * 2 * 16
    assert read_checkpoint(cfg.ckpt_path)["train_config"]["seq_len"] == 16


# gloo on the CPU (CI); NCCL where a machine has two GPUs (each rank on its own, bf16 autocast): DDP's
# all-reduce must leave both ranks' parameters bit-identical after every step.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL)"))])
def test_ddp_two_ranks_stay_identical(device, corpus, tmp_path):
    sums = tmp_path / "sums"
    env = {**os.environ, "FFT_LM_PARAM_CHECKSUM_DIR": str(sums), "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fft_lm.train_fixed_full", "--data", corpus, "--preset", "tiny", "--seq-len", "32",
           "--kernel-len", "8", "--batch-size", "2", "--accum-steps", "2", "--steps-per-epoch", "3",
           "--eval-every", "0", "--eval-batches", "1", "--device", device, "--no-progress", "--log-every-steps", "1",
           "--ckpt-path", str(tmp_path / "ddp" / "ckpt.pt"), "--plot-path", "-"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = [json.load(open(sums / f"rank{r}.json"))["sha256"] for r in (0, 1)]
    assert digests[0] == digests[1]
    _, meta = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")  # only rank 0 wrote it, at the end
    assert meta["step"] == 3 and meta["extra"]["data"]["world_size"] == 2
    assert meta["extra"]["bytes_seen"] == 3 * 2 * 2 * 32 * 2
    # only rank 0 logs: one start line, and each step's row once in the metrics file
    assert proc.stdout.count(" params=") == 1, proc.stdout[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
    steps = [r["step"] for r in rows if "train_bpb" in r]
    assert steps == [1, 2, 3], rows


def test_model_set_parses_each_field_as_its_type():
    from fft_lm.model import SpectralLMConfig
    from fft_lm.train import parse_model_set
    got = parse_model_set("pre_gate=true, dropout=0.1,short_conv_len=0,freq_cutoff=none", SpectralLMConfig)
    assert got == {"pre_gate": True, "dropout": 0.1, "short_conv_len": 0, "freq_cutoff": None}
    assert parse_model_set("freq_cutoff=12", SpectralLMConfig) == {"freq_cutoff": 12}
    assert parse_model_set("", SpectralLMConfig) == {}
    for text, match in [("pre_gate=maybe", "pre_gate expects a bool, got 'maybe'"),
                        ("dropout=lots", "dropout expects a float"), ("short_conv_len=2.5", "short_conv_len expects an? int"),
                        ("depth=3", "has no field 'depth'"), ("pre_gate", "expected name=value")]:
        with pytest.raises(ValueError, match=match):
            parse_model_set(text, SpectralLMConfig)


def test_model_set_builds_the_variant_and_errors_name_the_flag(corpus, tmp_path, capsys):
    model = train_mod.build_model(tiny_cfg(corpus, tmp_path, kernel_len=8, model_set="pre_gate=true,dropout=0.1"))
    assert model.config.pre_gate and model.config.dropout == 0.1
    assert model.blocks[0].mixer.in_proj.out_features == 3 * model.config.d_model
    with pytest.raises(ValueError, match="--model-set: kernel_len is also given by --kernel-len"):
        train_mod.build_model(tiny_cfg(corpus, tmp_path, kernel_len=8, model_set="kernel_len=16"))
    # the config's own check (dropout in [0, 1)) still runs
    with pytest.raises(ValueError, match="dropout"):
        train_mod.build_model(tiny_cfg(corpus, tmp_path, kernel_len=8, model_set="dropout=1.5"))
    # a resumed run keeps its config: --model-set may repeat it, not change it
    cfg = tiny_cfg(corpus, tmp_path, kernel_len=8, accum_steps=1, eval_every=0, eval_batches=1, model_set="pre_gate=true")
    train(dataclasses.replace(cfg, stop_after_steps=2), model=train_mod.build_model(cfg))
    assert train(dataclasses.replace(cfg, resume=True))["step"] == 4
    with pytest.raises(ValueError, match="--model-set pre_gate=False differs from the run being resumed"):
        train(dataclasses.replace(cfg, resume=True, model_set="pre_gate=false"))


def test_progress_bar_shows_step_bpb_lr_cutoff_and_throughput(corpus, tmp_path, capsys):
    # tqdm writes to stderr; the last refresh carries the postfix of the last step
    train(tiny_cfg(corpus, tmp_path, progress=True), model=tiny_model())
    err = capsys.readouterr().err
    assert "train" in err and "4/4" in err, err
    for key in ("step=4", "bpb=", "lr=", "cutoff=", "Bps="):
        assert key in err, (key, err)


def test_progress_bar_into_a_file_redraws_rarely(corpus, tmp_path, capsys):
    # stderr captured (not a terminal): 40 steps give the first and last draws, not one per step
    # (a run of a few seconds; the bar's file interval is 30 s)
    train(tiny_cfg(corpus, tmp_path, progress=True, steps_per_epoch=40, eval_every=0), model=tiny_model())
    err = capsys.readouterr().err
    assert "40/40" in err and "step=40" in err, err
    assert err.count("train:") <= 4, err  # draws (one per step before: 45)


def test_weight_decay_only_on_linear_weights():
    # decay would shrink the spectral coefficients the curriculum masks off, and norms/embeddings
    model = tiny_model()
    cfg = TrainConfig(weight_decay=0.1)
    decay, no_decay = train_mod.make_optimizer(model, cfg).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    embedding = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    decayed = {id(p) for p in decay["params"]}
    assert decayed == {id(w) for w in linear} - {id(w) for w in embedding} and decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len([p for p in model.parameters() if p.requires_grad])
    kernel = model.blocks[0].mixer.kernel
    for p in (kernel.coef_real, kernel.coef_imag, kernel.log_decay):
        assert id(p) not in decayed


def test_grad_checkpoint_and_bf16_through_the_training_loop(corpus, tmp_path):
    # activation checkpointing recomputes the same forward: the same losses step for step (CPU, no
    # dropout); bf16 autocast runs the same loop to finite losses near the fp32 ones
    runs = {name: train(tiny_cfg(corpus, tmp_path / name, **kw), model=tiny_model())
            for name, kw in [("plain", {}), ("ckpt", {"grad_checkpoint": True}), ("bf16", {"dtype": "bfloat16"})]}
    plain, ckpt, bf16 = (train_losses(tmp_path / name / "run" / "metrics.jsonl") for name in ("plain", "ckpt", "bf16"))
    assert [s for s, _ in plain] == [s for s, _ in ckpt] == [s for s, _ in bf16] == [1, 2, 3, 4]
    assert all(abs(a - b) <= 1e-5 for (_, a), (_, b) in zip(plain, ckpt)), (plain, ckpt)
    assert all(math.isfinite(b) and abs(a - b) < 0.1 * a for (_, a), (_, b) in zip(plain, bf16)), (plain, bf16)
    assert runs["ckpt"]["step"] == runs["bf16"]["step"] == 4


def test_resume_takes_this_runs_optimizer_settings_and_grad_checkpoint(corpus, tmp_path, monkeypatch):
    """Settings a resumed run changes take effect: the optimizer's moments come from the checkpoint but
    its weight decay and betas from this run (load_state_dict alone restores the saved ones), and
    --no-grad-checkpoint turns off the checkpointing that the saved model config had on."""
    cfg = tiny_cfg(corpus, tmp_path, grad_checkpoint=True)
    train(dataclasses.replace(cfg, stop_after_steps=2), model=tiny_model())
    seen, checkpointed = [], []
    real_step, real_checkpoint = torch.optim.AdamW.step, torch.utils.checkpoint.checkpoint

    def spy_step(self, *args, **kwargs):
        seen.append([(g["weight_decay"], tuple(g["betas"])) for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    def spy_checkpoint(*args, **kwargs):
        checkpointed.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy_step)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy_checkpoint)
    rest = train(dataclasses.replace(cfg, resume=True, grad_checkpoint=False, weight_decay=0.05, beta2=0.99))
    assert rest["step"] == 4 and len(seen) == 2
    # the decay group takes the new weight decay, the no-decay group keeps none
    assert all(groups == [(0.05, (0.9, 0.99)), (0.0, (0.9, 0.99))] for groups in seen), seen
    assert not checkpointed
    _, meta = load_checkpoint(cfg.ckpt_path)
    assert meta["model_config"]["grad_checkpoint"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resume_across_devices_with_the_fused_optimizer(corpus, tmp_path):
    """A CPU run's checkpoint resumed on the GPU (fused AdamW: its step counts must land on the GPU, the
    groups' fused flag is this run's) with a new weight decay, then that GPU run's checkpoint resumed on
    the CPU (unfused): every leg trains and the optimizer's step counts carry on."""
    cfg = tiny_cfg(corpus, tmp_path, device="cpu", epochs=2)  # 8 steps
    train(dataclasses.replace(cfg, stop_after_steps=2), model=tiny_model())
    for device, stop, end in (("cuda", 3, 5), ("cpu", 0, 8)):  # stop_after_steps counts this run's steps
        leg = train(dataclasses.replace(cfg, resume=True, device=device, stop_after_steps=stop, weight_decay=0.05))
        assert leg["step"] == end and math.isfinite(leg["val_bpb"]), (device, leg)
        state = read_checkpoint(cfg.ckpt_path)["optimizer"]
        assert [float(s["step"]) for s in state["state"].values()] == [end] * len(state["state"])
        assert all(g["weight_decay"] in (0.0, 0.05) for g in state["param_groups"])


def test_accumulation_equals_the_larger_batch(corpus, tmp_path, monkeypatch):
    """batch_size 2 x accum_steps 2 takes the same steps as batch_size 4 x 1 when the micro-batches are
    the halves of that batch: the same losses and the same weights (to float32 summation order)."""
    draw = train_mod.ByteCorpus.train_batch

    def halves_of_four(self, batch_size, seq_len, *, seed, step, rank=0, micro_step=0, device=None):
        x, y = draw(self, 4, seq_len, seed=seed, step=step, rank=rank, micro_step=0, device=device)
        part = slice(micro_step * batch_size, (micro_step + 1) * batch_size)
        return x[part], y[part]

    monkeypatch.setattr(train_mod.ByteCorpus, "train_batch", halves_of_four)
    kw = dict(grad_clip=0.0, eval_every=0)
    train(tiny_cfg(corpus, tmp_path / "big", batch_size=4, accum_steps=1, **kw), model=tiny_model())
    train(tiny_cfg(corpus, tmp_path / "acc", batch_size=2, accum_steps=2, **kw), model=tiny_model())
    big, acc = (train_losses(tmp_path / d / "run" / "metrics.jsonl") for d in ("big", "acc"))
    assert [s for s, _ in big] == [s for s, _ in acc] == [1, 2, 3, 4]
    assert all(abs(a - b) <= 1e-5 for (_, a), (_, b) in zip(big, acc)), (big, acc)
    assert big[0][1] != big[-1][1]  # the weights moved between steps
    # the gradient itself (AdamW alone would hide a factor of accum_steps)
    norms = [[json.loads(line)["grad_norm"] for line in open(tmp_path / d / "run" / "metrics.jsonl")
              if "grad_norm" in line] for d in ("big", "acc")]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(*norms)), norms
    m_big, _ = load_checkpoint(tmp_path / "big" / "run" / "ckpt.pt")
    m_acc, _ = load_checkpoint(tmp_path / "acc" / "run" / "ckpt.pt")
    for (name, p), q in zip(m_big.state_dict().items(), m_acc.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), name
    # a different split of the same windows is not the same step: the halves really were used
    monkeypatch.setattr(train_mod.ByteCorpus, "train_batch", draw)
    train(tiny_cfg(corpus, tmp_path / "own", batch_size=2, accum_steps=2, **kw), model=tiny_model())
    own = train_losses(tmp_path / "own" / "run" / "metrics.jsonl")
    assert any(abs(a - b) > 1e-3 for (_, a), (_, b) in zip(big, own)), (big, own)


@pytest.mark.parametrize("clip", [1e-3, 0.0])
def test_grad_clip_bounds_the_norm_the_optimizer_sees(corpus, tmp_path, monkeypatch, clip):
    """--grad-clip scales the gradients to that global norm before AdamW steps (0: untouched); the
    metrics rows log the norm before clipping."""
    seen = []
    make = train_mod.make_optimizer

    def recording_optimizer(model, cfg, fused=False):
        opt = make(model, cfg, fused)
        step = opt.step

        def recorded_step(*args, **kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
            return step(*args, **kwargs)
        opt.step = recorded_step
        return opt

    monkeypatch.setattr(train_mod, "make_optimizer", recording_optimizer)
    cfg = tiny_cfg(corpus, tmp_path, grad_clip=clip, eval_every=0)
    train(cfg, model=tiny_model())
    logged = [json.loads(line)["grad_norm"] for line in open(tmp_path / "run" / "metrics.jsonl")
              if "grad_norm" in line]
    assert len(seen) == len(logged) == 4 and all(n > 1e-2 for n in logged), logged  # log_every_steps=1
    if clip:
        assert all(math.isclose(n, clip, rel_tol=1e-4) for n in seen), seen
    else:
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(seen, logged)), (seen, logged)


def test_cli_resume_continues_with_the_runs_settings(corpus, tmp_path, capsys):
    """`--resume --ckpt-path P` alone continues the run as it was: every flag it does not repeat (batch
    size, steps, lr, schedule, curriculum, preset, model) comes from the checkpoint, and the losses equal
    an uninterrupted run's. A flag given with --resume changes that setting and is named."""
    run = ["--data", corpus, "--preset", "tiny", "--model-set", "d_model=16,n_layers=1", "--seq-len", "32",
           "--kernel-len", "8", "--batch-size", "3", "--steps-per-epoch", "6", "--lr", "3e-3", "--warmup-steps", "1",
           "--eval-every", "0", "--eval-batches", "1", "--log-every-steps", "1", "--curriculum-start-bins", "4",
           "--seed", "5", "--no-progress", "--plot-path", "-"]
    full = train_mod.main(run + ["--ckpt-path", str(tmp_path / "full" / "ckpt.pt")])
    split = str(tmp_path / "split" / "ckpt.pt")
    train_mod.main(run + ["--ckpt-path", split, "--stop-after-steps", "3"])
    capsys.readouterr()
    rest = train_mod.main(["--resume", "--ckpt-path", split, "--no-progress"])
    out = capsys.readouterr().out
    assert f"--resume: the run's own settings from {split}" in out and "changed here" not in out, out
    assert rest["step"] == full["step"] == 6 and rest["bytes_seen"] == full["bytes_seen"] == 6 * 3 * 32
    a, b = train_losses(tmp_path / "full" / "metrics.jsonl"), train_losses(tmp_path / "split" / "metrics.jsonl")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    assert all(abs(x - y) <= 1e-6 for (_, x), (_, y) in zip(a, b)), (a, b)
    assert math.isclose(full["val_bpb"], rest["val_bpb"], abs_tol=1e-6)
    meta = read_checkpoint(split)["train_config"]
    assert (meta["batch_size"], meta["lr"], meta["preset"], meta["seed"]) == (3, 3e-3, "tiny", 5)
    # a setting given with --resume wins and is announced
    more = train_mod.main(["--resume", "--ckpt-path", split, "--epochs", "2", "--stop-after-steps", "1", "--no-progress"])
    assert "changed here: --epochs 1 -> 2" in capsys.readouterr().out and more["step"] == 7


def test_cli_resume_refuses_model_flags_it_would_ignore(corpus, tmp_path, capsys):
    """--resume rebuilds the run's model from its checkpoint, so --family, --preset or --kernel-len that
    differ from it are usage errors (they were announced as changes and ignored); repeating them is fine."""
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    train_mod.main(["--data", corpus, "--preset", "tiny", "--model-set", "d_model=16,n_layers=1", "--seq-len", "32",
                    "--kernel-len", "8", "--batch-size", "2", "--steps-per-epoch", "3", "--eval-every", "0",
                    "--eval-batches", "1", "--stop-after-steps", "1", "--no-progress", "--plot-path", "-",
                    "--ckpt-path", ckpt])
    capsys.readouterr()
    for flags, words in ((["--preset", "small"], "--preset 'small' differs from the run being resumed (preset='tiny'"),
                         (["--kernel-len", "16"], "--kernel-len 16 differs from the run being resumed (kernel_len=8"),
                         (["--family", "gpt"], "--family 'gpt' differs from the run being resumed (family='spectral'")):
        with pytest.raises(SystemExit) as exit_info:
            train_mod.main(["--resume", "--ckpt-path", ckpt, "--no-progress", *flags])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err and "Traceback" not in err, err
    assert read_checkpoint(ckpt)["step"] == 1  # untouched
    more = train_mod.main(["--resume", "--ckpt-path", ckpt, "--no-progress", "--preset", "tiny", "--kernel-len", "8",
                           "--family", "spectral", "--stop-after-steps", "1"])
    assert more["step"] == 2 and "changed here" not in capsys.readouterr().out


def test_new_run_at_an_existing_checkpoint_is_refused_unless_overwrite(corpus, tmp_path, capsys):
    """A run without --resume whose --ckpt-path holds a checkpoint would replace it and its metrics:
    an error that names --resume and --overwrite; the old run's files stay as they were."""
    cfg = tiny_cfg(corpus, tmp_path, eval_every=0, eval_batches=1)
    train(cfg, model=tiny_model())
    metrics = tmp_path / "run" / "metrics.jsonl"
    before = (metrics.read_bytes(), read_checkpoint(cfg.ckpt_path)["step"])
    with pytest.raises(ConfigError, match="already holds a checkpoint .*: pass --resume .* --overwrite"):
        train(dataclasses.replace(cfg, steps_per_epoch=2), model=tiny_model())
    assert (metrics.read_bytes(), read_checkpoint(cfg.ckpt_path)["step"]) == before
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--data", corpus, "--ckpt-path", cfg.ckpt_path, "--no-progress"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    again = train(dataclasses.replace(cfg, steps_per_epoch=2, overwrite=True), model=tiny_model())
    assert again["step"] == 2 and read_checkpoint(cfg.ckpt_path)["step"] == 2


def test_overwrite_deletes_the_old_checkpoint_before_training(corpus, tmp_path, monkeypatch):
    """--overwrite: the old checkpoint goes at the start, with the old metrics, so a crash before the new
    run's first save cannot leave the old checkpoint paired with the new run's metric rows."""
    cfg = tiny_cfg(corpus, tmp_path, eval_every=0, eval_batches=1)
    train(cfg, model=tiny_model())

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the first save")
    monkeypatch.setattr(train_mod, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(cfg, overwrite=True, seed=8), model=tiny_model())
    assert not os.path.exists(cfg.ckpt_path)
    with pytest.raises(ConfigError, match="--resume"):
        train(dataclasses.replace(cfg, resume=True), model=None)


def test_output_paths_are_checked_before_training(corpus, tmp_path, capsys):
    """A directory as --ckpt-path, --metrics-path or --plot-path, or a plot directory that cannot be made,
    is a usage error naming the flag before the first step (it was a traceback at the end, or a wrong
    'already holds a checkpoint')."""
    (tmp_path / "adir").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for flag, value in (("--ckpt-path", str(tmp_path / "adir")), ("--metrics-path", str(tmp_path / "adir")),
                        ("--plot-path", str(tmp_path / "adir")), ("--plot-path", str(blocker / "x" / "y.png"))):
        args = ["--data", corpus, "--ckpt-path", str(tmp_path / "run" / "c.pt"), "--no-progress", "--overwrite",
                "--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps-per-epoch", "1", flag, value]
        with pytest.raises(SystemExit) as exit_info:
            train_mod.main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"error: {flag} {value}" in err and "Traceback" not in err, err
        assert not os.path.exists(tmp_path / "run" / "c.pt")


def test_stale_temp_files_of_a_killed_save_are_removed(corpus, tmp_path, capsys):
    cfg = tiny_cfg(corpus, tmp_path, eval_every=0, eval_batches=1)
    os.makedirs(tmp_path / "run")
    stale = tmp_path / "run" / ".ckpt.pt.abc123.tmp"
    stale_best = tmp_path / "run" / ".ckpt.best.pt.def456.tmp"  # the best checkpoint's (--keep-best)
    other = tmp_path / "run" / ".other.pt.abc123.tmp"  # another checkpoint's: not ours to remove
    stale.write_bytes(b"half a checkpoint")
    stale_best.write_bytes(b"half a best checkpoint")
    other.write_bytes(b"x")
    train(cfg, model=tiny_model())
    out = capsys.readouterr().out
    assert not stale.exists() and not stale_best.exists() and other.exists(), out
    assert f"removed {stale}" in out and f"removed {stale_best}" in out


def test_corrupt_gzip_corpus_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--data", str(bad), "--ckpt-path", str(tmp_path / "c.pt"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"error: --data {bad}: cannot read it" in err and "Traceback" not in err, err


@pytest.mark.parametrize("flag,value", [("--min-lr-frac", "-1"), ("--grad-clip", "-1"), ("--warmup-steps", "-5"),
                                        ("--weight-decay", "-1"), ("--eval-every", "-1"), ("--stop-after-steps", "-1"),
                                        ("--lr", "inf"), ("--beta1", "2"), ("--beta2", "1"), ("--val-frac", "0"),
                                        ("--max-time-s", "-3")])
def test_out_of_range_flags_are_usage_errors(corpus, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--data", corpus, "--ckpt-path", str(tmp_path / "c.pt"), "--no-progress", flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"error: {flag}: got" in err and "out of range" in err, err


def test_resuming_a_complete_run_says_so(corpus, tmp_path, capsys):
    cfg = tiny_cfg(corpus, tmp_path, eval_every=0, eval_batches=1)
    train(cfg, model=tiny_model())
    capsys.readouterr()
    train(dataclasses.replace(cfg, resume=True), model=None)
    assert "that run is complete (4 of 4 steps)" in capsys.readouterr().out


def test_train_module_runs_as_a_script():
    """`python -m fft_lm.train --help` prints the flags (train_fixed_full's docstring points there)."""
    r = subprocess.run([sys.executable, "-m", "fft_lm.train", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--overwrite" in r.stdout and "--resume" in r.stdout, r.stderr[-2000:]


def test_resolve_device(monkeypatch):
    """One parse of --device for training (takes auto) and generation (leaving it out is automatic)."""
    from fft_lm.device import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None, allow_auto=False) == torch.device("cpu")
    assert resolve_device("auto", allow_auto=True) == torch.device("cpu")
    assert resolve_device("cpu", allow_auto=False) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device: expected cpu, cuda or cuda:N, got 'auto'"):
        resolve_device("auto", allow_auto=False)
    with pytest.raises(ValueError, match=r"--device: expected auto, cpu, cuda or cuda:N, got 'gpu0'"):
        resolve_device("gpu0", allow_auto=True)
    with pytest.raises(ValueError, match=r"--device cuda:1: no CUDA GPU is visible to torch; use --device cpu or auto"):
        resolve_device("cuda:1", allow_auto=True)
    with pytest.raises(ValueError, match=r"--device cuda: no CUDA GPU .* use --device cpu \(or leave it out\)"):
        resolve_device("cuda", allow_auto=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None, allow_auto=False) == torch.device("cuda")
    assert resolve_device("auto", allow_auto=True) == torch.device("cuda")
    assert resolve_device("cuda:1", allow_auto=False) == torch.device("cuda", 1)


def test_cli_device_cuda_without_a_gpu_is_a_usage_error(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--data", corpus, "--device", "cuda", "--no-progress", "--ckpt-path", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: --device cuda: no CUDA GPU" in err and "Traceback" not in err, err


def test_warmup_longer_than_the_run_is_noted(corpus, tmp_path, capsys):
    train(tiny_cfg(corpus, tmp_path, warmup_steps=100, eval_every=0, eval_batches=1), model=tiny_model())
    assert "note: --warmup-steps 100 >= this run's 4 steps" in capsys.readouterr().out
    train(tiny_cfg(corpus, tmp_path / "b", eval_every=0, eval_batches=1), model=tiny_model())
    assert "--warmup-steps" not in capsys.readouterr().out


def test_summary_train_bpb_without_a_metrics_row(corpus, tmp_path):
    # 4 steps with --log-every-steps 10 write no train row; the summary still reports their mean loss
    out = train(tiny_cfg(corpus, tmp_path, log_every_steps=10, eval_every=0, eval_batches=1), model=tiny_model())
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert not any("train_bpb" in r for r in rows) and 0 < out["train_bpb"] < 9, out


def memorising_corpus(path):
    """Training bytes one repeated phrase, the held-out tail (last 10%) other letters: the better a model
    fits its training bytes the worse it predicts validation, so validation is best early."""
    rng = np.random.default_rng(1)
    tail = rng.choice(np.frombuffer(b"vwxyz", dtype=np.uint8), 400).tobytes()
    path.write_bytes(b"abcd " * 720 + tail)
    return str(path)


def test_keep_best_holds_the_best_validation_point_and_notes_memorisation(tmp_path, capsys):
    data = memorising_corpus(tmp_path / "memo.txt")
    # 512 bytes a step: about 7 steps a pass over the 3,600 training bytes
    cfg = tiny_cfg(data, tmp_path, batch_size=8, steps_per_epoch=12, eval_every=4, lr=5e-2, curriculum_frac=0)
    result = train(cfg, model=tiny_model())
    vals = {r["step"]: r["val_bpb"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl"))
            if "val_bpb" in r}
    assert sorted(vals) == [4, 8, 12]
    best_step = min(vals, key=vals.get)
    assert best_step < 12 and vals[12] > vals[best_step] + 0.02, vals  # this corpus makes validation worsen
    best_path = tmp_path / "run" / "ckpt.best.pt"
    assert result["best_ckpt_path"] == str(best_path) and result["best_val_bpb"] == vals[best_step]
    model, meta = load_checkpoint(best_path)
    assert meta["step"] == best_step and meta["best_val_bpb"] == vals[best_step]
    assert read_checkpoint(best_path)["optimizer"] is None  # weights only
    assert read_checkpoint(cfg.ckpt_path)["extra"]["best_step"] == best_step  # what a resumed run's note names
    # the weights are that step's: evaluated again they give the validation recorded there
    corpus = ByteCorpus(data, val_frac=cfg.val_frac)
    again = train_mod.evaluate(model, corpus, cfg, torch.device("cpu"), contextlib.nullcontext, "val")
    assert math.isclose(again, vals[best_step], abs_tol=1e-5), (again, vals)
    final, _ = load_checkpoint(cfg.ckpt_path)
    last = train_mod.evaluate(final, corpus, cfg, torch.device("cpu"), contextlib.nullcontext, "val")
    assert math.isclose(last, vals[12], abs_tol=1e-5)
    out = capsys.readouterr().out
    assert out.count("(memorising)") == 1 and str(best_path) in out, out  # noted once, naming the file
    assert "too early for memorising" not in out


def test_validation_worse_before_one_pass_is_not_called_memorising(capsys):
    say = []
    noted = set()
    for passes in (0.3, 0.6):
        train_mod.note_worse_validation(say.append, 5.1, 5.0, 2, passes, 3600, "", noted)
    train_mod.note_worse_validation(say.append, 5.2, 5.0, 2, 1.5, 3600, "b.pt", noted)
    train_mod.note_worse_validation(say.append, 5.3, 5.0, 2, 2.5, 3600, "b.pt", noted)
    assert len(say) == 2 and "too early for memorising" in say[0] and "(memorising)" in say[1], say
    assert "best weights are kept in b.pt" in say[1] and "kept in" not in say[0]


def test_keep_best_off_and_overwrite_with_a_best_checkpoint(corpus, tmp_path, capsys):
    cfg = tiny_cfg(corpus, tmp_path, steps_per_epoch=2, keep_best=False)
    assert train(cfg, model=tiny_model())["best_ckpt_path"] is None
    best_path = tmp_path / "run" / "ckpt.best.pt"
    assert not best_path.exists()
    os.remove(cfg.ckpt_path)
    run = dataclasses.replace(cfg, keep_best=True)
    assert train(run, model=tiny_model())["best_ckpt_path"] == str(best_path)
    # a new run beside an earlier run's best checkpoint alone is refused too; --overwrite deletes it first
    os.remove(cfg.ckpt_path)
    with pytest.raises(ConfigError, match="ckpt.best.pt.*--overwrite"):
        train(run, model=tiny_model())
    capsys.readouterr()
    train(dataclasses.replace(run, overwrite=True, eval_every=0, steps_per_epoch=1), model=tiny_model())
    assert f"deleted the previous run's checkpoint {best_path}" in capsys.readouterr().out
    assert read_checkpoint(best_path)["step"] == 1  # the new run's (its one evaluation, at the end)
    # --no-keep-best: an earlier run's best file is an earlier run's file all the same (refused, or deleted
    # by --overwrite), not left beside the new checkpoint as if it were the new run's best weights
    os.remove(cfg.ckpt_path)
    with pytest.raises(ConfigError, match="ckpt.best.pt.*--overwrite"):
        train(cfg, model=tiny_model())
    capsys.readouterr()
    train(dataclasses.replace(cfg, overwrite=True), model=tiny_model())
    assert f"deleted the previous run's checkpoint {best_path}" in capsys.readouterr().out
    assert not best_path.exists()
