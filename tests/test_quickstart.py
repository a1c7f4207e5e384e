"""fft_lm.quickstart (the README's main command after scripts/install.sh): train, save, load, generate, report."""
import json
import os

import numpy as np
import pytest

import fft_lm
from conftest import write_word_corpus
from fft_lm import quickstart


@pytest.fixture
def corpus(tmp_path):
    return write_word_corpus(tmp_path / "corpus.txt", 6000)


def test_quickstart_trains_generates_and_reports(corpus, tmp_path, capsys):
    # A short budget on the CPU: every artefact the command promises is there and readable (the step
    # count depends on the clock, so nothing here depends on it beyond "at least one").
    out_dir = tmp_path / "qs"
    result = quickstart.main(["--data", corpus, "--out", str(out_dir), "--budget-s", "2", "--device", "cpu",
                              "--gen-bytes", "16", "--prompt", "the "])
    out = capsys.readouterr().out
    assert result["step"] >= 1 and np.isfinite(result["val_bpb"])
    assert "params=" in out  # the parameter count printed at the start
    assert "--- sample" in out and "--- end of sample ---" in out
    assert f"validation bits per byte: {result['val_bpb']:.3f}" in out
    for name in ("ckpt.pt", "metrics.jsonl", "curves.png"):
        assert os.path.abspath(out_dir / name) in out, name
    assert (out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG, not an empty file
    assert not (out_dir / "ckpt.best.pt").exists()  # one evaluation: no second copy of the same weights
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    # the final evaluation always logs; train rows come every 10 steps, which a loaded machine may not
    # reach within the budget
    assert rows[-1].get("val_bpb") == pytest.approx(result["val_bpb"])
    assert all(r["step"] % 10 == 0 for r in rows if "train_bpb" in r)
    model, meta = fft_lm.load_checkpoint(str(out_dir / "ckpt.pt"))
    assert meta["step"] == result["step"] and sum(p.numel() for p in model.parameters()) == result["n_params"]
    # run again into the same --out: each quickstart starts over (a training run would refuse the checkpoint)
    again = quickstart.main(["--data", corpus, "--out", str(out_dir), "--budget-s", "1", "--device", "cpu",
                             "--gen-bytes", "4", "--prompt", "a"])
    assert fft_lm.load_checkpoint(str(out_dir / "ckpt.pt"))[1]["step"] == again["step"] >= 1


def test_quickstart_device_cuda_without_a_gpu_is_a_usage_error(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quickstart.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--data", corpus, "--out", str(tmp_path / "qs"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--device cuda: no CUDA GPU" in err and "Traceback" not in err, err


def test_quickstart_missing_corpus_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "qs"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: --data" in err and "Traceback" not in err, err
