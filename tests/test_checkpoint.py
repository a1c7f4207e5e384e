"""fft_lm.checkpoint: round trip, atomic writes, clear errors for bad files, DDP/compile prefixes."""
import os
import zipfile

import pytest
import torch

import fft_lm
from fft_lm.checkpoint import CheckpointError, clean_state_dict, load_checkpoint, read_checkpoint, save_checkpoint
from fft_lm.model import SpectralLM


def tiny_model():
    return SpectralLM.from_preset("tiny", d_model=16, n_layers=1, seq_len=32, kernel_len=8)


def save_tiny(path, step=3, model=None):
    model = model or tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32)))[1].backward()
    opt.step()
    save_checkpoint(path, model=model, optimizer=opt, step=step, train_config={"lr": 1e-3},
                    extra={"best_val_bpb": 2.5, "metrics": {"val_bpb": 2.5}})
    return model


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = save_tiny(path)
    loaded, meta = fft_lm.load_checkpoint(path)
    assert isinstance(loaded, SpectralLM) and not loaded.training
    assert same_weights(model, loaded)
    assert meta["family"] == "spectral" and meta["step"] == 3 and meta["best_val_bpb"] == 2.5
    assert meta["model_config"]["d_model"] == 16 and meta["train_config"] == {"lr": 1e-3}
    ckpt = read_checkpoint(path)  # plain torch.load(weights_only=True) works: only safe types inside
    assert ckpt["optimizer"]["state"] and set(ckpt["rng"]) == {"torch", "cuda", "cuda_current", "numpy", "python"}


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model = save_tiny(path, step=1)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(1000)}, f)  # some bytes reach the temp file, then a crash
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=tiny_model(), step=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 1 and same_weights(model, loaded)


@pytest.mark.parametrize("damage", ["truncated", "garbage_head", "garbage_tail", "empty"])
def test_damaged_file_gives_clear_error(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    save_tiny(path)
    blob = path.read_bytes()
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "garbage_head":
        blob = os.urandom(200) + blob[200:]
    elif damage == "garbage_tail":
        blob = blob[:-300] + os.urandom(300)
    else:
        blob = b""
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="ckpt.pt.*cannot be read: truncated, corrupted"):
        load_checkpoint(path)


def test_changed_bytes_inside_a_tensor_give_clear_error(tmp_path):
    """A flipped bit inside the weights (bit rot, a bad copy) leaves a file torch.load reads without a
    word (it does not check the zip records' CRC-32s): the loader checks them."""
    path = tmp_path / "ckpt.pt"
    save_tiny(path)
    with zipfile.ZipFile(path) as z:
        record = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's bytes, stored as is
        start = record.header_offset + len(record.FileHeader())  # a bound: the stored header may be longer
        offset = start + record.file_size // 2
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x10
    path.write_bytes(bytes(blob))
    torch.load(path, weights_only=True)  # what torch alone would have accepted
    with pytest.raises(CheckpointError, match=f"ckpt.pt.*cannot be read: .*its record '{record.filename}' fails its CRC-32"):
        load_checkpoint(path)
    assert read_checkpoint(path, mmap=True)["step"] >= 0  # a metadata look (mmap) does not read every byte


def test_foreign_files_give_clear_errors(tmp_path):
    torch.save({"weights": torch.ones(3), "epoch": 4}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt.*not an fft_lm checkpoint.*'epoch', 'weights'"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="tensor.pt.*not an fft_lm checkpoint.*Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")
    (tmp_path / "notes.txt").write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.txt.*cannot be read"):
        load_checkpoint(tmp_path / "notes.txt")
    torch.save({"format": "fft_lm.checkpoint", "obj": ValueError("pickled class")}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="unsafe.pt.*cannot be read"):  # weights_only refuses it
        load_checkpoint(tmp_path / "unsafe.pt")
    torch.save({"format": "fft_lm.checkpoint", "version": 1, "family": "spectral", "model_config": {},
                "model": [torch.ones(2)], "step": 0}, tmp_path / "listed.pt")
    with pytest.raises(CheckpointError, match=r"listed.pt.*malformed: expected dicts .*got model \(list\)"):
        load_checkpoint(tmp_path / "listed.pt")
    with pytest.raises(CheckpointError, match="missing.pt.*no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a directory, expected a checkpoint file"):
        load_checkpoint(tmp_path)


def test_ddp_and_compile_prefixes_are_removed(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = save_tiny(path)
    ckpt = read_checkpoint(path)
    ckpt["model"] = {"module._orig_mod." + k: v for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    loaded, _ = load_checkpoint(path)
    assert same_weights(model, loaded)
    assert clean_state_dict({"module.blocks.0._orig_mod.w": 1, "_orig_mod.x": 2}) == {"blocks.0.w": 1, "x": 2}
    # saving a wrapped model stores plain names
    wrapped = torch.nn.Module()
    wrapped._orig_mod = model
    save_checkpoint(path, model=wrapped, step=0)
    assert set(read_checkpoint(path)["model"]) == set(model.state_dict())


def test_weights_that_do_not_fit_are_reported(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_tiny(path)
    ckpt = read_checkpoint(path)
    ckpt["model_config"]["d_model"] = 32
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="ckpt.pt.*weights do not fit"):
        load_checkpoint(path)
